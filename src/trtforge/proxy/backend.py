"""Async client for Triton's decoupled `tensorrt_llm` model over gRPC `ModelStreamInfer`, with token ids.

One bidirectional stream per generation. Each response carries the NEW token ids (`output_ids` [1, 1, n]),
when asked their log probabilities (`output_log_probs` [1, 1, n]) and the raw logits they were chosen from
(`generation_logits` [1, 1, n, vocab], engines built with `gather_generation_logits` only); the response whose `triton_final_response` parameter is true ends the generation. Closing the generator
early (client gone, stop string matched) cancels the gRPC call, which cancels the request inside Triton.

Why not `tritonclient.grpc.aio.InferenceServerClient.stream_infer`: it refuses request parameters that
start with `triton_`, so it cannot ask for `triton_enable_empty_final_response`. Without that, a backend that
sends its final flag without data (as python-backend models do with `COMPLETE_FINAL` alone) never tells the
client that it is done. The request is the same protobuf message, built here from tritonclient's own stubs.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import numpy as np
import numpy.typing as npt
from tritonclient.grpc import service_pb2, service_pb2_grpc

from trtforge.proxy.errors import (
    TritonRequestError,
    TritonTimeoutError,
    TritonUnavailableError,
)

logger = logging.getLogger(__name__)

_MAX_MESSAGE_BYTES = 2**31 - 1
_FINAL_PARAM = "triton_final_response"
_EMPTY_FINAL_PARAM = "triton_enable_empty_final_response"
_LITTLE_ENDIAN = sys.byteorder == "little"


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


@dataclass(frozen=True)
class TokenChunk:
    """What one response adds: token ids, and their log probabilities and logits when asked for."""

    ids: list[int]
    log_probs: list[float] | None = None
    logits: npt.NDArray[np.float32] | None = None  # [len(ids), vocab]


def _tensor(request: service_pb2.ModelInferRequest, name: str, datatype: str, values: np.ndarray) -> None:
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
    for index, output in enumerate(response.outputs):
        if output.name != "output_ids":
            continue
        if index < len(response.raw_output_contents):
            raw = response.raw_output_contents[index]
            if _LITTLE_ENDIAN:  # the wire is little-endian INT32; a memoryview cast is cheaper than numpy
                return memoryview(raw).cast("i").tolist()
            return np.frombuffer(raw, dtype="<i4").tolist()
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


class TritonBackend:
    """A gRPC channel to Triton and the generation call on its `tensorrt_llm` model.

    Args:
        url: `host:port` of Triton's gRPC endpoint.
        model: the decoupled TensorRT-LLM model name.
        request_timeout_s: deadline of one generation.
    """

    def __init__(self, url: str, model: str, *, request_timeout_s: float) -> None:
        self.url = url
        self.model = model
        self._timeout_s = request_timeout_s
        self._channel: grpc.aio.Channel | None = None
        self._stub: service_pb2_grpc.GRPCInferenceServiceStub | None = None

    async def open(self) -> None:
        """Create the channel (in the running event loop, as grpc.aio requires). Connects lazily."""
        options = [
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
        ]
        self._channel = grpc.aio.insecure_channel(self.url, options=options)
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)

    async def close(self) -> None:
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
        """Yield the new tokens of each response until the final one.

        Raises:
            TritonUnavailableError: Triton is unreachable or the model is not loaded.
            TritonTimeoutError: the generation outlived the request timeout.
            TritonRequestError: Triton answered with an error.
        """
        request = build_infer_request(self.model, gen)
        # The call is written to, not fed from a request iterator: an iterator makes grpc.aio run a consumer
        # task per call, and when the call ends before the iterator does, that task is cancelled and grpc.aio
        # formats a traceback for its (disabled) debug log. Our side stays open until the answer is complete:
        # half-closing early is legal, but some servers end the stream with it.
        call = self.stub.ModelStreamInfer(timeout=self._timeout_s)
        try:
            await call.write(request)
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    raise TritonRequestError("Triton closed the stream before the final response")
                if message.error_message:
                    raise _response_error(message.error_message, self)
                response = message.infer_response
                chunk = parse_chunk(response, gen)
                if chunk.ids:
                    yield chunk
                if is_final(response):
                    return
        except grpc.aio.AioRpcError as exc:
            raise _rpc_error(exc, self) from None
        finally:
            # A no-op when the call already finished; otherwise Triton sees the cancellation and stops.
            call.cancel()


def _rpc_error(exc: grpc.aio.AioRpcError, backend: TritonBackend) -> Exception:
    code = exc.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return TritonUnavailableError(f"Triton is unreachable at {backend.url}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return TritonTimeoutError("the generation did not finish within the request timeout")
    return TritonRequestError(f"Triton failed the request: {code.name}: {exc.details()}")


def _response_error(message: str, backend: TritonBackend) -> Exception:
    lowered = message.lower()
    if "unknown model" in lowered or "not ready" in lowered or "not found" in lowered:
        return TritonUnavailableError(f"Triton model `{backend.model}` is not available: {message}")
    return TritonRequestError(f"Triton failed the request: {message}")
