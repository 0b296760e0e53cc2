"""trtforge `tensorrt_llm_bls` model (Triton python backend, decoupled): text in, correct text deltas out.

For clients that speak Triton rather than OpenAI, e.g. Triton's HTTP `generate_stream`:

    POST /v2/models/tensorrt_llm_bls/generate_stream  {"text_input": "...", "max_tokens": 64, "stream": true}

Each request is tokenized here, sent to `tensorrt_llm` as a streaming BLS request, and the token ids coming
back are detokenized with per-request state: each token maps to the bytes it stands for (the postprocessing
model's table, in `token_bytes.py` beside this file), and an incremental UTF-8 decoder turns the growing byte
stream into text, holding back a character split across tokens until it is whole. So, unlike decoding each
chunk on its own, no leading space is lost, no multi-byte character is broken into U+FFFD, the work is linear
in the output, and

    the joined `text_output` deltas of a streamed request == the `text_output` of the same request unstreamed.

With `stream` false (the default) one response carries the whole text. Every request ends with a final
empty-flagged response. Requests run on their own threads, so one long generation does not hold up others.

`stop_words` (strings) end the generation once its tokens end with a word's tokens (the word is returned, as
TensorRT-LLM does); each word is tokenized on its own, so a word whose tokens differ in context never matches.
`end_id` overrides the tokenizer's end token (-1: never stop at it).

A client that goes (a cancelled gRPC stream, a closed HTTP `generate_stream`) ends the inner generation too,
noticed at its next token: tritonserver 2.51's BLS API cannot cancel an inner `exec(decoupled=True)` request (its
response iterator has no `cancel`), so the model sends `tensorrt_llm` a second request with the same request id
and `stop=true` (the contract's way to end a request, as the proxy does), then reads the first request's
responses until its final one.

Self-contained on purpose (numpy, transformers, triton_python_backend_utils): it also runs in NVIDIA's
tritonserver containers, where trtforge is not installed.

Parameters: `tokenizer_dir`, `add_special_tokens`, `skip_special_tokens` ("true"/"false").
"""

from __future__ import annotations

import codecs
import json
import threading
import uuid
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
from token_bytes import token_byte_table
from transformers import AutoTokenizer

ENGINE_MODEL = "tensorrt_llm"

# Optional BLS input -> (tensorrt_llm input, numpy dtype).
_PASSTHROUGH = {
    "temperature": ("temperature", np.float32),
    "top_k": ("runtime_top_k", np.int32),
    "top_p": ("runtime_top_p", np.float32),
    "seed": ("seed", np.uint64),
    "repetition_penalty": ("repetition_penalty", np.float32),
    "presence_penalty": ("presence_penalty", np.float32),
    "frequency_penalty": ("frequency_penalty", np.float32),
    "min_tokens": ("min_tokens", np.int32),
}


def _flag(value: str, default: bool) -> bool:
    text = value.strip().lower()
    return default if not text else text not in ("false", "0", "no")


class TextStream:
    """Token ids in, text out, for one request: bytes per token, then an incremental UTF-8 decoder."""

    def __init__(self, table: list[bytes]) -> None:
        self._table = table
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_ids: list[int]) -> str:
        size = len(self._table)
        data = b"".join(self._table[t] if 0 <= t < size else b"" for t in token_ids)
        return str(self._decoder.decode(data))

    def finish(self) -> str:
        return str(self._decoder.decode(b"", final=True))


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        parameters = json.loads(args["model_config"]).get("parameters", {})

        def param(key: str) -> str:
            return str(parameters.get(key, {}).get("string_value", ""))

        self.tokenizer = AutoTokenizer.from_pretrained(param("tokenizer_dir"))
        self.add_special_tokens = _flag(param("add_special_tokens"), True)
        self.table = token_byte_table(
            self.tokenizer, skip_special_tokens=_flag(param("skip_special_tokens"), True)
        )
        eos = self.tokenizer.eos_token_id
        self.end_id = int(eos) if eos is not None else None
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else (self.end_id if self.end_id is not None else 0)
        self.threads: set[threading.Thread] = set()
        self.lock = threading.Lock()
        self.log = pb_utils.Logger

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            thread = threading.Thread(target=self._serve, args=(request,), daemon=True)
            with self.lock:
                self.threads.add(thread)
            thread.start()
        return None

    def finalize(self) -> None:
        with self.lock:
            threads = list(self.threads)
        for thread in threads:
            thread.join(timeout=5)

    # -- one request --------------------------------------------------------------------------------------

    def _serve(self, request: Any) -> None:
        sender = request.get_response_sender()
        try:
            try:
                self._generate(request, sender)
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            except Exception as exc:  # the client gets the reason; the model keeps serving
                sender.send(
                    pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc))),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                )
        except Exception as exc:  # the response could not be sent: the client is gone
            self.log.log_warn(f"could not answer a request: {type(exc).__name__}: {exc}")
        finally:
            with self.lock:
                self.threads.discard(threading.current_thread())

    def _generate(self, request: Any, sender: Any) -> None:
        text = _scalar(request, "text_input")
        if text is None:
            raise ValueError("text_input is required")
        text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
        max_tokens = _scalar(request, "max_tokens")
        if max_tokens is None or int(max_tokens) < 1:
            raise ValueError("max_tokens must be a positive integer")
        stream = bool(_scalar(request, "stream") or False)
        ids = self.tokenizer.encode(text, add_special_tokens=self.add_special_tokens)
        if not ids:
            raise ValueError("text_input encodes to no tokens")

        inputs = self._engine_inputs(request, ids, int(max_tokens))
        # Our own id: a client's id may be empty or shared by several requests, and a stop names exactly one.
        outer_id = request.request_id()
        engine_id = f"{outer_id}-{uuid.uuid4().hex[:8]}" if outer_id else f"bls-{uuid.uuid4().hex[:8]}"
        responses = _engine_request(inputs, engine_id).exec(decoupled=True)
        detok = TextStream(self.table)
        whole: list[str] = []
        for received, response in enumerate(responses):
            if request.is_cancelled():
                self._stop_engine_request(inputs, engine_id, responses, received)
                return
            if response.has_error():
                raise RuntimeError(response.error().message())
            output = pb_utils.get_output_tensor_by_name(response, "output_ids")
            if output is None:
                continue  # the engine's empty final response
            tokens = output.as_numpy().reshape(-1).tolist()
            delta = detok.push(tokens)
            if stream and delta:
                sender.send(_text_response(delta))
            else:
                whole.append(delta)
        tail = detok.finish()
        if stream:
            if tail:
                sender.send(_text_response(tail))
        else:
            sender.send(_text_response("".join(whole) + tail))

    def _stop_engine_request(self, inputs: list[Any], engine_id: str, responses: Any, received: int) -> None:
        """End a generation whose client has cancelled: a stop request, then its responses up to the final."""
        self.log.log_info(
            f"request {engine_id} cancelled by its client after {received} responses; stopping it in "
            f"{ENGINE_MODEL}"
        )
        stop = _engine_request([*inputs, _tensor("stop", True, np.bool_)], engine_id)
        for response in stop.exec(decoupled=True):
            if response.has_error():
                self.log.log_warn(
                    f"request {engine_id}: the stop request failed: {response.error().message()}"
                )
        for _ in responses:  # the stopped generation's last responses, up to its final one
            pass

    def _engine_inputs(self, request: Any, ids: list[int], max_tokens: int) -> list[Any]:
        inputs = [
            pb_utils.Tensor("input_ids", np.array([ids], dtype=np.int32)),
            _tensor("input_lengths", len(ids), np.int32),
            _tensor("request_output_len", max_tokens, np.int32),
            _tensor("streaming", True, np.bool_),
            _tensor("exclude_input_in_output", True, np.bool_),
        ]
        end_id = _scalar(request, "end_id")
        end_id = self.end_id if end_id is None else int(end_id)
        if end_id is not None:
            inputs.append(_tensor("end_id", end_id, np.int32))
        pad_id = _scalar(request, "pad_id")
        inputs.append(_tensor("pad_id", self.pad_id if pad_id is None else int(pad_id), np.int32))
        for name, (engine_name, dtype) in _PASSTHROUGH.items():
            value = _scalar(request, name)
            if value is not None:
                inputs.append(_tensor(engine_name, value, dtype))
        stop_words = self._word_list(request, "stop_words")
        if stop_words is not None:
            inputs.append(pb_utils.Tensor("stop_words_list", stop_words))
        return inputs

    def _word_list(self, request: Any, name: str) -> Any:
        """Words (a BYTES input) in TensorRT-LLM's word-list layout [1, 2, n]: the words' token ids end to
        end, and each word's end offset (padded with -1); None when there are no words."""
        array = pb_utils.get_input_tensor_by_name(request, name)
        if array is None:
            return None
        ids: list[int] = []
        offsets: list[int] = []
        for value in array.as_numpy().reshape(-1):
            word = value.decode("utf-8") if isinstance(value, bytes) else str(value)
            tokens = self.tokenizer.encode(word, add_special_tokens=False) if word else []
            if tokens:
                ids.extend(tokens)
                offsets.append(len(ids))
        if not ids:
            return None
        offsets.extend([-1] * (len(ids) - len(offsets)))
        return np.array([[ids, offsets]], dtype=np.int32)


def _tensor(name: str, value: object, dtype: Any) -> Any:
    return pb_utils.Tensor(name, np.array([[value]], dtype=dtype))


def _engine_request(inputs: list[Any], request_id: str) -> Any:
    return pb_utils.InferenceRequest(
        model_name=ENGINE_MODEL,
        inputs=inputs,
        requested_output_names=["output_ids", "sequence_length"],
        request_id=request_id,
    )


def _scalar(request: Any, name: str) -> Any:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    values = tensor.as_numpy().reshape(-1)
    if not values.size:
        return None
    value = values[0]
    return value.item() if hasattr(value, "item") else value  # numpy scalar, or bytes for strings


def _text_response(text: str) -> Any:
    return pb_utils.InferenceResponse(
        output_tensors=[pb_utils.Tensor("text_output", np.array([text.encode("utf-8")], dtype=np.object_))]
    )
