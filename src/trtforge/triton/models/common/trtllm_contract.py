"""The `tensorrt_llm` model's tensor contract for python-backend models: request tensors → a typed request,
results → response tensors, refusals → error responses.

A python-backend model that serves the `tensorrt_llm` contract (the reference backend, a model over TensorRT-LLM's
LLM API) ships this file beside its `model.py` as `trtllm_contract.py` and imports it by that name: Triton puts
the model's version directory on `sys.path`. So it imports only numpy, triton_python_backend_utils and the
standard library. Under mypy, import it as `trtforge.triton.models.common.trtllm_contract` inside
`if TYPE_CHECKING:` and as `trtllm_contract` otherwise, so the model is type-checked against it.

What it reads, as the TensorRT-LLM backend does:
- `[1]` inputs whether they arrive as [1] or [1, 1]; one sequence per request (batch 1).
- Word lists (`stop_words_list`, `bad_words_list`) in TensorRT-LLM's [2, N] format: flattened ids, end offsets.
- The model config's string parameters (`gpt_model_path`, `exclude_input_in_output`, ...); a `${...}` one is unset.
- A request whose `stop` input is true ends the request with the same id; it carries the required inputs too
  (Triton checks them), their values are ignored.

Responses have the backend's output shapes, [batch=1, beam=1, ...]. A request the contract (or the model) does
not allow is a `RequestError`; `send_error` answers it with INVALID_ARG, which Triton's HTTP endpoints turn into a
400, and a message starting `invalid request: `, which is all a gRPC stream's client sees; any other error is the
model's own failure (a plain error, 500).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import triton_python_backend_utils as pb_utils

# The flag of a request's last response.
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL

# Starts the message of every refusal that is the client's fault (a RequestError), so that a client of the gRPC
# stream, which carries an error's message but not its code, can tell it from a failure of the model.
INVALID_REQUEST = "invalid request: "

GUIDE_TYPES = ("json", "json_schema", "regex", "ebnf_grammar")


class RequestError(ValueError):
    """A request the contract does not allow; its message goes back to the client, after `INVALID_REQUEST`."""


# --- parameters ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackendParameters:
    """The model config parameters a python `tensorrt_llm` model honours (others, like
    kv_cache_free_gpu_mem_fraction, are the engine's business)."""

    gpt_model_path: str
    tokenizer_dir: str = ""  # for guided decoding; the engine directory when unset
    max_beam_width: int = 1
    exclude_input_in_output: bool = False
    cancellation_check_period_ms: int = 100
    enable_chunked_context: bool = False  # the backend's default when the parameter is absent


def _parameter_values(model_config: dict[str, Any]) -> dict[str, str]:
    raw = model_config.get("parameters") or {}
    return {key: str(value.get("string_value", "")) for key, value in raw.items() if isinstance(value, dict)}


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError(text)


def parse_parameters(model_config: dict[str, Any], log: Any) -> BackendParameters:
    """Read the string parameters; an unparsable or unfilled one falls back to its default with a log line."""
    values = _parameter_values(model_config)
    model_path = values.get("gpt_model_path", "")
    if not model_path or model_path.startswith("${"):
        raise pb_utils.TritonModelException("parameter gpt_model_path (the engine directory) is not set")
    parsed: dict[str, Any] = {"gpt_model_path": model_path}
    tokenizer_dir = values.get("tokenizer_dir", "")
    if tokenizer_dir and not tokenizer_dir.startswith("${"):
        parsed["tokenizer_dir"] = tokenizer_dir
    parsers: dict[str, Callable[[str], Any]] = {
        "max_beam_width": int,
        "exclude_input_in_output": _parse_bool,
        "cancellation_check_period_ms": int,
        "enable_chunked_context": _parse_bool,
    }
    for name, parse in parsers.items():
        text = values.get(name)
        if text is None or text.startswith("${"):
            continue
        try:
            parsed[name] = parse(text)
        except ValueError:
            default = getattr(BackendParameters, name)
            log.log_warn(f"parameter {name}={text!r} is not valid; using the default {default}")
    return BackendParameters(**parsed)


# --- requests -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelLimits:
    """What the serving model can do; `parse_request` refuses a request asking for more."""

    max_input_len: int  # prompt tokens
    generation_logits: bool = (
        False  # the engine gathers generation logits (built with gather_generation_logits)
    )
    max_beam_width: int = 1
    max_return_sequences: int = 1
    name: str = "this model"  # who refuses, in refusals' words


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    min_tokens: int = 0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        """Temperature 0, top_k 1, or top_k = top_p = 0 (TensorRT-LLM's defaults) mean greedy."""
        return self.temperature == 0.0 or self.top_k == 1 or (self.top_k <= 0 and self.top_p <= 0.0)


@dataclass(frozen=True)
class GenerationRequest:
    """One validated request, as plain Python values."""

    input_ids: list[int]
    max_new_tokens: int
    end_id: int | None
    streaming: bool
    exclude_input_in_output: bool
    return_log_probs: bool
    return_generation_logits: bool
    return_num_input_tokens: bool
    return_num_output_tokens: bool
    sampling: SamplingSettings
    stop_words: list[list[int]]
    bad_words: list[list[int]]
    embedding_bias: npt.NDArray[Any] | None
    guide: tuple[str, str] | None = None  # (guide type, guide)
    pad_id: int | None = None
    beam_width: int = 1
    num_return_sequences: int = 1


def _tensor(request: Any, name: str) -> npt.NDArray[Any] | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _scalar(request: Any, name: str, default: Any) -> Any:
    """A `[1]` input: it arrives as [batch] or [batch, 1] depending on the reshape; the batch must be 1."""
    array = _tensor(request, name)
    if array is None or array.size == 0:
        return default
    if array.size != 1:
        raise RequestError(f"input {name} must hold one value per request, got shape {list(array.shape)}")
    return array.reshape(-1)[0].item()


def _text(request: Any, name: str) -> str | None:
    """A BYTES `[1]` input as text."""
    array = _tensor(request, name)
    if array is None or array.size == 0:
        return None
    if array.size != 1:
        raise RequestError(f"input {name} must hold one value per request, got shape {list(array.shape)}")
    value = array.reshape(-1)[0]
    try:
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)
    except UnicodeDecodeError:
        raise RequestError(f"input {name} is not UTF-8 text") from None


def _guide(request: Any) -> tuple[str, str] | None:
    guide_type = _text(request, "guided_decoding_guide_type")
    if not guide_type:
        return None
    if guide_type not in GUIDE_TYPES:
        raise RequestError(
            f"guided_decoding_guide_type {guide_type!r} is not one of {', '.join(GUIDE_TYPES)}"
        )
    guide = _text(request, "guided_decoding_guide") or ""
    if guide_type != "json" and not guide:
        raise RequestError(f"guided_decoding_guide_type {guide_type} needs guided_decoding_guide")
    return guide_type, guide


def _word_list(request: Any, name: str) -> list[list[int]]:
    """TensorRT-LLM word-list format: [2, N] (after an optional batch dim of 1): flattened ids, end offsets."""
    array = _tensor(request, name)
    if array is None or array.size == 0:
        return []
    if array.ndim == 3:
        if array.shape[0] != 1:
            raise RequestError(f"input {name} must be for one request, got shape {list(array.shape)}")
        array = array[0]
    if array.ndim != 2 or array.shape[0] != 2:
        raise RequestError(f"input {name} must have shape [2, N], got {list(array.shape)}")
    ids, offsets = array[0].tolist(), array[1].tolist()
    words: list[list[int]] = []
    start = 0
    for end in offsets:
        if end < 0:
            break
        if end < start or end > len(ids):
            raise RequestError(f"input {name} has an invalid offset {end}")
        if end > start:
            words.append([int(i) for i in ids[start:end]])
        start = end
    return words


def _supported(name: str, value: int, most: int, reason: str) -> int:
    """`value` of input `name` if it lies in 1..`most`; `reason` says what the model supports, for the refusal."""
    if not 1 <= value <= most:
        raise RequestError(f"{name} {value} is not supported: {reason}")
    return value


def parse_request(request: Any, params: BackendParameters, limits: ModelLimits) -> GenerationRequest:
    """Validate one request against the contract and the model's limits; raises RequestError with a
    one-line reason."""
    input_ids = _tensor(request, "input_ids")
    if input_ids is None:
        raise RequestError("input input_ids is required")
    if input_ids.ndim == 2 and input_ids.shape[0] != 1:
        raise RequestError(f"one sequence per request: input_ids has batch size {input_ids.shape[0]}")
    ids = [int(i) for i in input_ids.reshape(-1).tolist()]
    input_length = _scalar(request, "input_lengths", None)
    if input_length is None:
        raise RequestError("input input_lengths is required")
    if not 0 < input_length <= len(ids):
        raise RequestError(f"input_lengths {input_length} does not fit input_ids of length {len(ids)}")
    ids = ids[: int(input_length)]
    if len(ids) > limits.max_input_len:
        raise RequestError(
            f"the prompt has {len(ids)} tokens; this engine takes at most {limits.max_input_len}"
        )
    output_len = _scalar(request, "request_output_len", None)
    if output_len is None:
        raise RequestError("input request_output_len is required")
    if output_len < 1:
        raise RequestError(f"request_output_len must be at least 1, not {output_len}")
    beams, most_beams = int(_scalar(request, "beam_width", 1)), limits.max_beam_width
    beam_width = _supported(
        "beam_width",
        beams,
        most_beams,
        f"{limits.name} decodes beam " + ("1 only" if most_beams == 1 else f"widths 1 to {most_beams}"),
    )
    most_sequences = limits.max_return_sequences
    sequences = _supported(
        "num_return_sequences",
        int(_scalar(request, "num_return_sequences", 1)),
        most_sequences,
        "only 1" if most_sequences == 1 else f"1 to {most_sequences}",
    )
    end_id = _scalar(request, "end_id", None)
    pad_id = _scalar(request, "pad_id", None)
    bias = _tensor(request, "embedding_bias")
    return_generation_logits = bool(_scalar(request, "return_generation_logits", False))
    if return_generation_logits and not limits.generation_logits:
        raise RequestError("return_generation_logits needs an engine built with gather_generation_logits")
    return GenerationRequest(
        input_ids=ids,
        max_new_tokens=int(output_len),
        end_id=None if end_id is None else int(end_id),
        streaming=bool(_scalar(request, "streaming", False)),
        exclude_input_in_output=bool(
            _scalar(request, "exclude_input_in_output", params.exclude_input_in_output)
        ),
        return_log_probs=bool(_scalar(request, "return_log_probs", False)),
        return_generation_logits=return_generation_logits,
        return_num_input_tokens=bool(_scalar(request, "return_num_input_tokens", False)),
        return_num_output_tokens=bool(_scalar(request, "return_num_output_tokens", False)),
        sampling=SamplingSettings(
            temperature=float(_scalar(request, "temperature", 1.0)),
            top_k=int(_scalar(request, "runtime_top_k", 0)),
            top_p=float(_scalar(request, "runtime_top_p", 0.0)),
            repetition_penalty=float(_scalar(request, "repetition_penalty", 1.0)),
            presence_penalty=float(_scalar(request, "presence_penalty", 0.0)),
            frequency_penalty=float(_scalar(request, "frequency_penalty", 0.0)),
            min_tokens=int(_scalar(request, "min_tokens", 0)),
            seed=int(_scalar(request, "seed", 0)),
        ),
        stop_words=_word_list(request, "stop_words_list"),
        bad_words=_word_list(request, "bad_words_list"),
        embedding_bias=None if bias is None or bias.size == 0 else bias.reshape(-1).astype(np.float32),
        guide=_guide(request),
        pad_id=None if pad_id is None else int(pad_id),
        beam_width=beam_width,
        num_return_sequences=sequences,
    )


def is_stop_request(request: Any) -> bool:
    """A request whose `stop` input is true (a malformed one is left to `parse_request` to refuse)."""
    try:
        return bool(_scalar(request, "stop", False))
    except RequestError:
        return False


# --- responses ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Output:
    """What one response carries: its tokens, and the counts and log probabilities of the request so far."""

    tokens: list[int]  # output_ids: new tokens, or the prompt and every token in a whole non-streamed answer
    log_probs: list[float]  # one per token of `tokens` (0.0 for prompt tokens)
    cum_log_prob: float  # of every token generated so far
    num_output_tokens: int  # generated so far
    logits: Sequence[npt.NDArray[np.float32]] = ()  # raw logits of the generated tokens in `tokens`
    vocab_size: int = 0  # the width of generation_logits when `logits` is empty


def _output(name: str, array: npt.NDArray[Any]) -> Any:
    return pb_utils.Tensor(name, array)


def build_response(spec: GenerationRequest, output: Output) -> Any:
    """A response in the backend's output shapes: [batch=1, beam=1, ...]; the optional outputs the request asked for.

    Log probabilities are zeros unless the request asked for them, as the backend's are; `generation_logits`
    ([1, 1, n, vocab], each generated token's raw logits) only when asked for.
    """
    tokens, log_probs = output.tokens, output.log_probs
    outputs = [
        _output("output_ids", np.array([[tokens]], dtype=np.int32).reshape(1, 1, len(tokens))),
        _output("sequence_length", np.array([[len(tokens)]], dtype=np.int32)),
        _output(
            "cum_log_probs", np.array([[output.cum_log_prob if spec.return_log_probs else 0.0]], np.float32)
        ),
        _output(
            "output_log_probs",
            np.array([[log_probs if spec.return_log_probs else [0.0] * len(log_probs)]], np.float32).reshape(
                1, 1, len(log_probs)
            ),
        ),
    ]
    if spec.return_generation_logits:
        outputs.append(_output("generation_logits", _generation_logits(output)))
    if spec.return_num_input_tokens:
        outputs.append(_output("num_input_tokens", np.array([[len(spec.input_ids)]], dtype=np.int32)))
    if spec.return_num_output_tokens:
        outputs.append(_output("num_output_tokens", np.array([[output.num_output_tokens]], dtype=np.int32)))
    return pb_utils.InferenceResponse(output_tensors=outputs)


def _generation_logits(output: Output) -> npt.NDArray[np.float32]:
    """[1, 1, n, vocab]: one row per generated token of the response. A response without one (the last of a
    stream that ended at the end token, or after a cancellation) still has the vocabulary's width, which numpy
    cannot infer from zero rows."""
    rows = [np.asarray(row, dtype=np.float32).reshape(-1) for row in output.logits]
    width = rows[0].size if rows else output.vocab_size
    array = np.stack(rows) if rows else np.zeros((0, width), dtype=np.float32)
    return array.reshape(1, 1, len(rows), width)


def empty_response() -> Any:
    """No tokens: the answer to a stop request, and the last response of a request stopped before it started."""
    return pb_utils.InferenceResponse(
        output_tensors=[
            _output("output_ids", np.zeros((1, 1, 0), dtype=np.int32)),
            _output("sequence_length", np.zeros((1, 1), dtype=np.int32)),
        ]
    )


def send_error(sender: Any, message: str, *, invalid_request: bool = False) -> None:
    """One final response carrying an error; `invalid_request`: the client's fault (INVALID_ARG, which
    Triton's HTTP endpoints answer with 400, and `INVALID_REQUEST` before the message for gRPC streams)."""
    if invalid_request:
        error = pb_utils.TritonError(f"{INVALID_REQUEST}{message}", pb_utils.TritonError.INVALID_ARG)
    else:
        error = pb_utils.TritonError(message)
    sender.send(pb_utils.InferenceResponse(output_tensors=[], error=error), flags=FINAL)
