"""Async client for Triton's decoupled `tensorrt_llm` model over gRPC `ModelStreamInfer`, with token ids.

One bidirectional stream per generation. Each response carries the NEW token ids (`output_ids` [1, 1, n]),
when asked their log probabilities (`output_log_probs` [1, 1, n]) and the raw logits they were chosen from
(`generation_logits` [1, 1, n, vocab], engines built with `gather_generation_logits` only); the response
whose `triton_final_response` parameter is true ends the generation.

A generation that is abandoned early (client gone, stop string matched, server shutting down) is never ended by
cancelling its gRPC call: tritonserver 2.51 (the one nvidia-pytriton bundles) crashes — SIGSEGV in
`ModelStreamInferHandler::Process` or the gRPC assertion `prior > 0` — when dozens of streams are cancelled at
once while responses are queued. Instead the same stream carries a second request with the same id and
`stop=true` (the `tensorrt_llm` contract's way to end a request), and a background task reads the stream until
both final responses have arrived, then half-closes it so the call ends normally. A finished generation also
half-closes its stream instead of cancelling it. Only a stream that does not drain within `drain_timeout_s` is
cancelled. Each stream is read by a task of its own, so a cancelled HTTP request never cancels a gRPC read
(grpc.aio cancels the whole call when a read is cancelled).


Why not `tritonclient.grpc.aio.InferenceServerClient.stream_infer`: it refuses request parameters that
start with `triton_`, so it cannot ask for `triton_enable_empty_final_response`. Without that, a backend that
sends its final flag without data (as python-backend models do with `COMPLETE_FINAL` alone) never tells the
client that it is done. The request is the same protobuf message, built here from tritonclient's own stubs.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc
import numpy as np
import numpy.typing as npt
from tritonclient.grpc import service_pb2, service_pb2_grpc

from trtforge.proxy.errors import (
    InvalidRequestError,
    TritonRequestError,
    TritonTimeoutError,
    TritonUnavailableError,
)
from trtforge.proxy.structured import grammar_error_text

logger = logging.getLogger(__name__)

_MAX_MESSAGE_BYTES = 2**31 - 1
_FINAL_PARAM = "triton_final_response"
_EMPTY_FINAL_PARAM = "triton_enable_empty_final_response"
DEFAULT_DRAIN_TIMEOUT_S = 10.0
_LITTLE_ENDIAN = sys.byteorder == "little"
_NO_ERROR = Exception()  # `generate_ready`: the batch ended because the inbox is empty, not by an error
_OUTPUT_IDS = "output_ids"
T = TypeVar("T")


@dataclass(frozen=True)
class SamplingParams:
    """The optional sampling inputs of `tensorrt_llm`; only those that are set are sent."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """One generation as Triton sees it (batch of one)."""

    request_id: str
    prompt_ids: tuple[int, ...]
    max_tokens: int
    end_id: int | None  # None: never stop at EOS (`ignore_eos`)
    pad_id: int
    streaming: bool = True
    sampling: SamplingParams = field(default_factory=SamplingParams)
    return_log_probs: bool = False
    return_generation_logits: bool = False
    # Guided decoding: (`guided_decoding_guide_type`, `guided_decoding_guide`), e.g. ("json_schema", "{…}").
    guide: tuple[str, str] | None = None


# Not frozen: one is made per token, and a frozen dataclass's __init__ costs 3× as much.
@dataclass(slots=True)
class TokenChunk:
    """What one response adds: token ids, and their log probabilities and logits when asked for."""

    ids: list[int]
    log_probs: list[float] | None = None
    logits: npt.NDArray[np.float32] | None = None  # [len(ids), vocab]


@dataclass(frozen=True)
class StopRecord:
    """One abandoned generation: when it was given up (time.monotonic()) and when the model confirmed the stop."""

    request_id: str
    abandoned_at: float
    stopped_at: float


def _tensor(
    request: service_pb2.ModelInferRequest, name: str, datatype: str, values: npt.NDArray[Any]
) -> None:
    tensor = request.inputs.add()
    tensor.name = name
    tensor.datatype = datatype
    tensor.shape.extend(values.shape)
    request.raw_input_contents.append(values.tobytes())


def _text(request: service_pb2.ModelInferRequest, name: str, value: str) -> None:
    """A BYTES [1, 1] input: raw BYTES contents are each element's 4-byte little-endian length, then it."""
    data = value.encode("utf-8")
    tensor = request.inputs.add()
    tensor.name = name
    tensor.datatype = "BYTES"
    tensor.shape.extend([1, 1])
    request.raw_input_contents.append(len(data).to_bytes(4, "little") + data)


def _scalar(request: service_pb2.ModelInferRequest, name: str, datatype: str, value: object) -> None:
    dtypes = {"INT32": np.int32, "UINT64": np.uint64, "FP32": np.float32, "BOOL": np.bool_}
    _tensor(request, name, datatype, np.array([[value]], dtype=dtypes[datatype]))


def build_infer_request(model: str, gen: GenerationRequest) -> service_pb2.ModelInferRequest:
    """The `ModelInferRequest` for one generation: required tensors, then the optional ones that are set."""
    request = service_pb2.ModelInferRequest(model_name=model, id=gen.request_id)
    request.parameters[_EMPTY_FINAL_PARAM].bool_param = True
    _tensor(request, "input_ids", "INT32", np.array([gen.prompt_ids], dtype=np.int32))
    _scalar(request, "input_lengths", "INT32", len(gen.prompt_ids))
    _scalar(request, "request_output_len", "INT32", gen.max_tokens)
    if gen.end_id is not None:
        _scalar(request, "end_id", "INT32", gen.end_id)
    _scalar(request, "pad_id", "INT32", gen.pad_id)
    _scalar(request, "streaming", "BOOL", gen.streaming)
    _scalar(request, "exclude_input_in_output", "BOOL", True)
    if gen.return_log_probs:
        _scalar(request, "return_log_probs", "BOOL", True)
    if gen.return_generation_logits:
        _scalar(request, "return_generation_logits", "BOOL", True)
    s = gen.sampling
    optional: list[tuple[str, str, object]] = [
        ("temperature", "FP32", s.temperature),
        ("runtime_top_p", "FP32", s.top_p),
        ("runtime_top_k", "INT32", s.top_k),
        ("seed", "UINT64", s.seed),
        ("presence_penalty", "FP32", s.presence_penalty),
        ("frequency_penalty", "FP32", s.frequency_penalty),
        ("repetition_penalty", "FP32", s.repetition_penalty),
        ("min_tokens", "INT32", s.min_tokens),
    ]
    for name, datatype, value in optional:
        if value is not None:
            _scalar(request, name, datatype, value)
    if gen.guide is not None:
        _text(request, "guided_decoding_guide_type", gen.guide[0])
        _text(request, "guided_decoding_guide", gen.guide[1])
    return request


def build_stop_request(request: service_pb2.ModelInferRequest) -> service_pb2.ModelInferRequest:
    """The request that ends `request` inside the model: the same id and inputs (Triton checks the required
    ones; the model ignores their values) plus `stop=true`."""
    stop = service_pb2.ModelInferRequest()
    stop.CopyFrom(request)
    _scalar(stop, "stop", "BOOL", True)
    return stop


def _raw_float(raw: bytes, datatype: str) -> npt.NDArray[np.float32]:
    """FP32, FP16 or BF16 bytes as float32 (engines return logits in their `logits_dtype`)."""
    if datatype == "FP16":
        return np.frombuffer(raw, dtype=np.float16).astype(np.float32)
    if datatype == "BF16":  # the upper half of a float32
        return (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(raw, dtype=np.float32)


def _output(response: service_pb2.ModelInferResponse, name: str) -> npt.NDArray[np.generic] | None:
    """Output `name` in its shape: INT32 as int32, floating types as float32."""
    for index, output in enumerate(response.outputs):
        if output.name != name:
            continue
        array: npt.NDArray[np.generic]
        integer = output.datatype == "INT32"
        if index < len(response.raw_output_contents):
            raw = response.raw_output_contents[index]
            array = np.frombuffer(raw, dtype=np.int32) if integer else _raw_float(raw, output.datatype)
        elif integer:
            array = np.array(output.contents.int_contents, dtype=np.int32)
        else:
            array = np.array(output.contents.fp32_contents, dtype=np.float32)
        shape = [int(d) for d in output.shape]
        return array.reshape(shape) if array.size == int(np.prod(shape)) else array
    return None


def parse_output_ids(response: service_pb2.ModelInferResponse) -> list[int]:
    """The token ids in one response (empty for the empty final response)."""
    # Called for every streamed token: each protobuf field access builds a Python object, so few of them.
    outputs = response.outputs
    for index, output in enumerate(outputs):
        if output.name != _OUTPUT_IDS:
            continue
        contents = response.raw_output_contents
        if index < len(contents):
            raw = contents[index]
            if len(raw) == 4:  # one token, as streaming sends: the wire is little-endian INT32
                return [int.from_bytes(raw, "little", signed=True)]
            if _LITTLE_ENDIAN:  # a memoryview cast is cheaper than numpy
                return memoryview(raw).cast("i").tolist()
            ids: list[int] = np.frombuffer(raw, dtype="<i4").tolist()
            return ids
        return list(output.contents.int_contents)
    return []


def parse_chunk(response: service_pb2.ModelInferResponse, gen: GenerationRequest) -> TokenChunk:
    """The new tokens of one response, with the log probabilities and logits `gen` asked for."""
    ids = parse_output_ids(response)
    log_probs: list[float] | None = None
    logits: npt.NDArray[np.float32] | None = None
    if gen.return_log_probs and ids:
        values = _output(response, "output_log_probs")
        if values is None or values.size < len(ids):
            raise TritonRequestError("Triton returned no output_log_probs for the new tokens")
        log_probs = values.reshape(-1)[-len(ids) :].tolist()
    if gen.return_generation_logits and ids:
        values = _output(response, "generation_logits")
        if values is None or values.ndim < 2 or values.size % len(ids):
            raise TritonRequestError("Triton returned no generation_logits for the new tokens")
        logits = values.reshape(-1, values.shape[-1])[-len(ids) :].astype(np.float32)
    return TokenChunk(ids, log_probs, logits)


def is_final(response: service_pb2.ModelInferResponse) -> bool:
    param = response.parameters.get(_FINAL_PARAM)
    return bool(param is not None and param.bool_param)


class _Inbox(Generic[T]):
    """An unbounded queue with one consumer at a time: `asyncio.Queue`'s part that `_Stream` uses, with less
    work per item (no getter/putter bookkeeping, no task-done counting) on the path every token takes."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: collections.deque[T] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: T) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def get_nowait(self) -> T:
        """The next item; IndexError when there is none."""
        return self._items.popleft()

    async def get(self) -> T:
        while not self._items:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                if self._waiter is waiter:  # cancelled while waiting
                    self._waiter = None
        return self._items.popleft()


# What `_Stream` puts in its inbox: a response with whether it is the final one (read once, by the reader), an
# error response's message, the call's error, or None when the call has ended.
_Reply = tuple[service_pb2.ModelInferResponse, bool]
_Item = _Reply | str | grpc.aio.AioRpcError | None


class _Stream:
    """One generation's `ModelStreamInfer` call, read by a task of its own into `inbox` (None ends it).

    The call ends normally: our side is half-closed once the expected final responses have arrived (one, or
    two after a stop request), and the server then finishes the call.
    """

    def __init__(
        self,
        stub: service_pb2_grpc.GRPCInferenceServiceStub,
        request: service_pb2.ModelInferRequest,
        timeout_s: float,
    ) -> None:
        self.request = request
        self.inbox: _Inbox[_Item] = _Inbox()
        self.finals = 0  # final (or error) responses read
        self.sent = asyncio.Event()  # the request is written: a stop request may follow
        self._expected_finals = 1
        # Written to, not fed from a request iterator: an iterator makes grpc.aio run a consumer task per call.
        self.call = stub.ModelStreamInfer(timeout=timeout_s)
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            await self.call.write(self.request)
            self.sent.set()
            while (message := await self.call.read()) is not grpc.aio.EOF:
                error = message.error_message
                if error:
                    self.finals += 1
                    self.inbox.put_nowait(error)
                else:
                    response = message.infer_response
                    final = is_final(response)
                    self.finals += final
                    self.inbox.put_nowait((response, final))
                if self.finals == self._expected_finals:
                    await self.call.done_writing()  # the server ends the call once it is done too
        except grpc.aio.AioRpcError as exc:
            self.inbox.put_nowait(exc)
        finally:
            self.sent.set()
            self.inbox.put_nowait(None)

    def wants_stop(self) -> bool:
        """True (and expect the stop's final response too) when the generation has not ended yet."""
        if self.finals or self.reader.done():
            return False
        self._expected_finals = 2
        return True

    async def stop(self) -> None:
        """Ask the model to end the generation, on the same stream."""
        await self.sent.wait()
        if not self.reader.done() and not self.call.done():
            await self.call.write(build_stop_request(self.request))

    def cancel(self) -> None:
        """The last resort for a stream that does not drain."""
        self.call.cancel()
        self.reader.cancel()


class TritonBackend:
    """A gRPC channel to Triton and the generation call on its `tensorrt_llm` model.

    Args:
        url: `host:port` of Triton's gRPC endpoint.
        model: the decoupled TensorRT-LLM model name.
        request_timeout_s: deadline of one generation.
        drain_timeout_s: how long an abandoned generation's stream may take to end before it is cancelled.
    """

    def __init__(
        self,
        url: str,
        model: str,
        *,
        request_timeout_s: float,
        drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S,
    ) -> None:
        self.url = url
        self.model = model
        self._timeout_s = request_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self._draining: set[asyncio.Task[None]] = set()
        self._live_ids: set[str] = set()  # Triton request ids in flight: a stop request names exactly one
        # The last 4096 stopped generations: when each was abandoned and when the model answered its stop.
        self.stops: collections.deque[StopRecord] = collections.deque(maxlen=4096)
        self._channel: grpc.aio.Channel | None = None
        self._stub: service_pb2_grpc.GRPCInferenceServiceStub | None = None

    async def open(self) -> None:
        """Create the channel (in the running event loop, as grpc.aio requires). Connects lazily."""
        options = [
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            # Triton is local: after it restarts, reconnect within a second instead of grpc's backoff of
            # up to two minutes (the proxy answers 503 until the channel is connected again).
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        self._channel = grpc.aio.insecure_channel(self.url, options=options)
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)

    async def close(self) -> None:
        await self.drain(self.drain_timeout_s)
        if self._channel is not None:
            await self._channel.close(grace=None)
        self._channel = self._stub = None

    @property
    def stub(self) -> service_pb2_grpc.GRPCInferenceServiceStub:
        if self._stub is None:
            raise RuntimeError("TritonBackend is not open")
        return self._stub

    async def is_ready(self, timeout_s: float) -> bool:
        """Triton is live and ready, and so is the model."""
        try:
            server = await self.stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=timeout_s)
            if not server.ready:
                return False
            model = await self.stub.ModelReady(
                service_pb2.ModelReadyRequest(name=self.model), timeout=timeout_s
            )
            return bool(model.ready)
        except grpc.aio.AioRpcError:
            return False

    async def generate(self, gen: GenerationRequest) -> AsyncIterator[TokenChunk]:
        """Yield the new tokens of each response until the final one (`generate_ready`, one chunk at a time).

        Raises: as `generate_ready`.
        """
        batches = self.generate_ready(gen)
        try:
            async for batch in batches:
                for chunk in batch:
                    yield chunk
        finally:
            await batches.aclose()  # type: ignore[attr-defined]

    async def generate_ready(self, gen: GenerationRequest) -> AsyncIterator[list[TokenChunk]]:
        """Yield, each time, the new tokens of every response that has arrived (one chunk per response, in
        order) until the final one.

        When the consumer is slower than the stream (its client or the event loop is behind), several
        responses wait in the inbox; taking them together lets the consumer send them as one frame. A
        consumer that keeps up gets one response at a time, as it arrives.

        Closing the generator early (or cancelling the task that iterates it) stops the request inside the
        model and drains its stream in the background (see the module docstring).

        Raises:
            TritonUnavailableError: Triton is unreachable or the model is not loaded.
            TritonTimeoutError: the generation outlived the request timeout.
            TritonRequestError: Triton answered with an error.
        """
        request = build_infer_request(self.model, gen)
        if request.id in self._live_ids:  # a client reused its X-Request-Id: a stop must not end both
            request.id = f"{request.id}-{uuid.uuid4().hex[:8]}"
        self._live_ids.add(request.id)
        stream = _Stream(self.stub, request, self._timeout_s)
        inbox = stream.inbox
        try:
            while (item := await inbox.get()) is not None:
                batch: list[TokenChunk] = []
                while True:
                    if not isinstance(item, tuple):
                        error: Exception = (
                            _response_error(item, self) if isinstance(item, str) else _rpc_error(item, self)
                        )
                        break
                    response, final = item
                    chunk = parse_chunk(response, gen)
                    if chunk.ids:
                        batch.append(chunk)
                    if final:
                        if batch:
                            yield batch
                        return
                    if inbox.empty():
                        error = _NO_ERROR
                        break
                    item = inbox.get_nowait()
                    if item is None:
                        error = TritonRequestError("Triton closed the stream before the final response")
                        break
                # The tokens that arrived before an error are the client's too (as one at a time would give).
                if batch:
                    yield batch
                if error is not _NO_ERROR:
                    raise error
            raise TritonRequestError("Triton closed the stream before the final response")
        finally:
            task = asyncio.ensure_future(self._drain(stream, time.monotonic(), stream.wants_stop()))
            self._draining.add(task)
            task.add_done_callback(self._draining.discard)

    async def _drain(self, stream: _Stream, abandoned_at: float, stopping: bool) -> None:
        """Stop an abandoned generation, then wait for its stream to end (cancel it only if it does not)."""
        request_id = stream.request.id
        try:
            if stopping:
                await stream.stop()
                while stream.finals == 0 and await stream.inbox.get() is not None:
                    pass
                if stream.finals:
                    record = StopRecord(request_id, abandoned_at, time.monotonic())
                    self.stops.append(record)
                    logger.info(
                        "request %s stopped in the model %.0f ms after it was abandoned",
                        request_id,
                        1000 * (record.stopped_at - record.abandoned_at),
                    )
            done, _ = await asyncio.wait({stream.reader}, timeout=self.drain_timeout_s)
            if not done:
                logger.warning("request %s: its Triton stream did not end; cancelling it", request_id)
                stream.cancel()
        except Exception as exc:  # the call failed while draining: it is over either way
            logger.debug("request %s: draining ended with %s", request_id, type(exc).__name__)
        finally:
            self._live_ids.discard(request_id)

    @property
    def draining(self) -> int:
        """Generations whose streams have not ended yet (abandoned, or finished a moment ago)."""
        return len(self._draining)

    async def drain(self, timeout_s: float) -> None:
        """Wait (up to `timeout_s`) for the streams of ended generations to end."""
        if self._draining:
            await asyncio.wait(set(self._draining), timeout=timeout_s)


def _rpc_error(exc: grpc.aio.AioRpcError, backend: TritonBackend) -> Exception:
    code = exc.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return TritonUnavailableError(f"Triton is unreachable at {backend.url}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return TritonTimeoutError("the generation did not finish within the request timeout")
    return TritonRequestError(f"Triton failed the request: {code.name}: {exc.details()}")


# The reference `tensorrt_llm` model starts every refusal that is the client's fault with this (the gRPC stream
# carries an error's message, not its code).
_INVALID_REQUEST = "invalid request: "
# xgrammar's converters and parsers name themselves in their errors: a guide the client sent that TensorRT-LLM's
# grammar backend cannot compile.
_GRAMMAR_ERRORS = ("json_schema_converter", "regex_converter", "grammar_parser", "EBNF parser error")


def _response_error(message: str, backend: TritonBackend) -> Exception:
    """The exception for an error response: 503 when the model is not there, 400 when the model refused the
    request as the client's fault (a request the contract does not allow, a guide xgrammar cannot compile),
    else 500."""
    lowered = message.lower()
    if "unknown model" in lowered or "not ready" in lowered or "not found" in lowered:
        return TritonUnavailableError(f"Triton model `{backend.model}` is not available: {message}")
    refusal = message.partition(_INVALID_REQUEST)[2]
    if refusal or any(marker in message for marker in _GRAMMAR_ERRORS):
        return InvalidRequestError(f"the model refused the request: {grammar_error_text(refusal or message)}")
    return TritonRequestError(f"Triton failed the request: {message}")
