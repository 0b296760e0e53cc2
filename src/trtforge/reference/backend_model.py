"""Reference `tensorrt_llm` model: the TensorRT-LLM backend's tensor contract, run by transformers on CPU/GPU.

Copied into generated model repositories as `tensorrt_llm/1/model.py` (Triton python backend, decoupled), so it
imports only numpy, torch, transformers, triton_python_backend_utils and the standard library.

Behaviour follows the TensorRT-LLM backend:
- `execute` only queues requests; one worker thread decodes all active requests, one token each in turn
  (interleaved), each with its own KV cache. Triton's threads never wait on the model.
- Streaming: one response per new token holding just that token. Non-streaming: one response with every token
  (the prompt first unless `exclude_input_in_output`). The last response carries the final flag, like the real
  backend: when generation ends without a new token (end_id, cancel, stop) it holds zero tokens ([1, 1, 0]).
  A final flag is never sent alone: `tritonclient.grpc.aio` cannot ask for empty final responses, so its
  users would never see the end. Errors: one response carrying the error, flagged final; a request the
  contract does not allow is refused with INVALID_ARG and a message starting `invalid request: `.
- Inputs: `[1]` inputs are read whether they arrive as [1] or [1, 1]; one sequence per request (batch 1);
  `stop=true` needs the required inputs too (Triton checks them), their values are ignored.
- Generation stops at `end_id` (the end token is not returned, like TensorRT-LLM's executor), at a stop word
  (its tokens are returned), after `request_output_len` tokens, at the engine's max_seq_len, on cancellation of
  the request, or on a request with the same id carrying `stop=true`. Without `end_id` it never stops at EOS.
- `return_generation_logits` returns each new token's raw logits (`generation_logits` [1, 1, n, vocab]) when the
  engine's build_config has `gather_generation_logits` (as TensorRT-LLM needs the engine built for it); a
  request for them from another engine is an error.
- Greedy unless sampling is asked for: temperature 0, top_k 1 or top_k = top_p = 0 (TensorRT-LLM's defaults)
  mean greedy; otherwise top-k/top-p sampling seeded by `seed` (default 0, so repeatable).
- Guided decoding (`guided_decoding_guide_type` json | json_schema | regex | ebnf_grammar, and
  `guided_decoding_guide`) with xgrammar, the grammar backend TensorRT-LLM uses: each step masks the tokens the
  grammar does not allow; generation ends when the grammar is complete.
Prompt text is never logged.
"""

from __future__ import annotations

import inspect
import json
import math
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import triton_python_backend_utils as pb_utils

_FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
# A stop request that names no active request is kept this long, for a request still waiting to start.
_STOP_MEMORY_S = 60.0
# Below this many parameters a CPU decoding step runs on one thread (see `intra_op_threads`).
SMALL_MODEL_PARAMETERS = 50_000_000


class RequestError(ValueError):
    """A request the contract does not allow; its message goes back to the client, after `INVALID_REQUEST`."""


# Starts the message of every refusal that is the client's fault (a RequestError), so that a client of the gRPC
# stream, which carries an error's message but not its code, can tell it from a failure of the model.
INVALID_REQUEST = "invalid request: "


GUIDE_TYPES = ("json", "json_schema", "regex", "ebnf_grammar")
_MAX_CACHED_GRAMMARS = 32


# --- parameters ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackendParameters:
    """The backend parameters this model honours (others, like kv_cache_free_gpu_mem_fraction, mean nothing here)."""

    gpt_model_path: str
    tokenizer_dir: str = ""  # for guided decoding; the engine directory when unset
    max_beam_width: int = 1
    exclude_input_in_output: bool = False
    cancellation_check_period_ms: int = 100


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


def parse_request(
    request: Any, params: BackendParameters, max_input_len: int, *, generation_logits: bool = False
) -> GenerationRequest:
    """Validate one request against the contract; raises RequestError with a one-line reason.

    `generation_logits`: the engine was built with `gather_generation_logits`.
    """
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
    if len(ids) > max_input_len:
        raise RequestError(f"the prompt has {len(ids)} tokens; this engine takes at most {max_input_len}")
    output_len = _scalar(request, "request_output_len", None)
    if output_len is None:
        raise RequestError("input request_output_len is required")
    if output_len < 1:
        raise RequestError(f"request_output_len must be at least 1, not {output_len}")
    beam_width = int(_scalar(request, "beam_width", 1))
    if beam_width != 1:
        raise RequestError(
            f"beam_width {beam_width} is not supported: the reference backend decodes beam 1 only"
        )
    sequences = int(_scalar(request, "num_return_sequences", 1))
    if sequences != 1:
        raise RequestError(f"num_return_sequences {sequences} is not supported: only 1")
    end_id = _scalar(request, "end_id", None)
    bias = _tensor(request, "embedding_bias")
    return_generation_logits = bool(_scalar(request, "return_generation_logits", False))
    if return_generation_logits and not generation_logits:
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
    )


# --- decoding -----------------------------------------------------------------------------------------------------


@dataclass
class Sequence:
    """One request being decoded: its sender, its cache and what it has produced so far."""

    request: Any
    sender: Any
    request_id: str
    spec: GenerationRequest
    max_new_tokens: int
    cache: Any = None
    next_logits: torch.Tensor | None = None
    tokens: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    logits: list[npt.NDArray[np.float32]] = field(
        default_factory=list
    )  # raw logits per token, when asked for
    generator: torch.Generator | None = None
    last_cancel_check: float = 0.0
    stopped: bool = False
    matcher: Any = None  # xgrammar.GrammarMatcher when the request is guided


class Guides:
    """Compiles guided-decoding grammars with xgrammar for one tokenizer (loaded at the first guided request).

    Args:
        tokenizer_dir: the directory of the engine's Hugging Face tokenizer.
        vocab_size: the model's vocabulary size (its logits' width, which may exceed the tokenizer's).
    """

    def __init__(self, tokenizer_dir: Path, vocab_size: int) -> None:
        self.tokenizer_dir = tokenizer_dir
        self.vocab_size = vocab_size
        self._compiler: Any = None
        self._compiled: dict[tuple[str, str], Any] = {}

    def _grammar_compiler(self) -> Any:
        if self._compiler is None:
            try:
                import xgrammar
            except ImportError:  # the deployment's fault, not the client's: a server error
                raise RuntimeError(
                    "guided decoding needs the xgrammar package, which is not installed"
                ) from None
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(self.tokenizer_dir), local_files_only=True)
            info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=self.vocab_size)
            self._compiler = xgrammar.GrammarCompiler(info)
        return self._compiler

    def matcher(self, guide_type: str, guide: str) -> Any:
        """A fresh matcher for one request; the compiled grammar is cached."""
        import xgrammar

        key = (guide_type, guide)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiler = self._grammar_compiler()
            try:
                if guide_type == "json":
                    compiled = compiler.compile_builtin_json_grammar()
                elif guide_type == "json_schema":
                    # Compact JSON: with free whitespace a weak model can pad forever instead of finishing.
                    compiled = compiler.compile_json_schema(guide, any_whitespace=False)
                elif guide_type == "regex":
                    compiled = compiler.compile_regex(guide)
                else:
                    compiled = compiler.compile_grammar(guide)
            except Exception as exc:  # xgrammar raises several types for a bad guide
                raise RequestError(
                    f"invalid guided_decoding_guide ({guide_type}): {_grammar_error_text(str(exc))}"
                ) from None
            if len(self._compiled) >= _MAX_CACHED_GRAMMARS:
                self._compiled.pop(next(iter(self._compiled)))
            self._compiled[key] = compiled
        return xgrammar.GrammarMatcher(compiled)

    def mask(self, matcher: Any, logits: torch.Tensor) -> None:
        """Set the logits of the tokens the grammar does not allow next to -inf."""
        import xgrammar

        bitmask = xgrammar.allocate_token_bitmask(1, self.vocab_size)
        matcher.fill_next_token_bitmask(bitmask)
        xgrammar.apply_token_bitmask_inplace(logits.view(1, -1), bitmask.to(logits.device))


# xgrammar prefixes its C++ errors with a time and a source location: `[15:47:23] /project/cpp/x.cc:83: `.
_XGRAMMAR_LOCATION = re.compile(r"(?:\[[0-9:]+\]\s*)?\S+\.(?:cc|cpp|h):\d+:\s*")


def _grammar_error_text(message: str) -> str:
    """xgrammar's reason for refusing a guide, without its source location, on one line."""
    text = " ".join(line.strip() for line in message.splitlines() if line.strip())
    return _XGRAMMAR_LOCATION.sub("", text).strip() or "xgrammar cannot compile it"


def intra_op_threads(parameters: int, device_type: str) -> int | None:
    """How many intra-op threads torch should use to decode a model of `parameters` on `device_type`.

    None leaves torch's default (one per core). A small model on a CPU gets one: its decoding step (one token,
    batch 1) is a few small matmuls, so more threads only add their synchronisation, and on a busy host each
    step waits until every OpenMP worker gets a CPU. Measured with the tiny engine on 2 busy cores: 5-7 ms per
    step on one thread, 80-130 ms on two (see docs/benchmarks.md).
    """
    if device_type == "cpu" and parameters < SMALL_MODEL_PARAMETERS:
        return 1
    return None


class Decoder:
    """Runs the transformers model: prefill, one decoding step, token choice. Used from one thread only."""

    def __init__(self, model_dir: Path, device: torch.device) -> None:
        from transformers import AutoModelForCausalLM, DynamicCache

        self.device = device
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        # transformers' decorated PreTrainedModel.to() is typed as taking the model itself, not a device.
        self.model = model.to(device).eval()  # type: ignore[arg-type]
        threads = intra_op_threads(sum(p.numel() for p in self.model.parameters()), device.type)
        if threads is not None:
            torch.set_num_threads(threads)  # this process (the model's Triton stub) decodes only this model
        self.vocab_size = int(self.model.config.vocab_size)
        # transformers 5.x renamed forward's `past_key_values` to `cache`; use whichever this version has.
        forward_args = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward_args else "past_key_values"
        self._new_cache = DynamicCache

    def make_cache(self) -> Any:
        try:
            return self._new_cache(config=self.model.config)
        except TypeError:
            return self._new_cache()

    @torch.inference_mode()
    def forward(self, ids: list[int], cache: Any) -> torch.Tensor:
        """Feed `ids` after what `cache` holds; returns the float32 logits of the last position."""
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        outputs = self.model(
            input_ids=input_ids, use_cache=True, logits_to_keep=1, **{self._cache_arg: cache}
        )
        logits: torch.Tensor = outputs.logits[0, -1].float()
        return logits

    def choose(self, seq: Sequence, guides: Guides | None = None) -> tuple[int, float]:
        """Pick the next token from `seq.next_logits`; returns it with its log probability."""
        spec, sampling = seq.spec, seq.spec.sampling
        if seq.next_logits is None:
            raise RuntimeError(f"request {seq.request_id}: a token chosen before the prompt was read")
        logits = seq.next_logits.clone()
        if spec.embedding_bias is not None and spec.embedding_bias.size == logits.numel():
            logits += torch.from_numpy(spec.embedding_bias).to(logits.device)
        self._penalise(logits, seq)
        for word in spec.bad_words:
            if len(word) == 1 or seq.tokens[-(len(word) - 1) :] == word[:-1]:
                logits[word[-1]] = -math.inf
        if (
            spec.end_id is not None
            and len(seq.tokens) < sampling.min_tokens
            and 0 <= spec.end_id < logits.numel()
        ):
            logits[spec.end_id] = -math.inf
        if seq.matcher is not None and guides is not None:
            guides.mask(seq.matcher, logits)
        if sampling.greedy:
            log_probs = torch.log_softmax(logits, dim=-1)
            token = int(torch.argmax(logits))
            return token, float(log_probs[token])
        logits = logits / max(sampling.temperature, 1e-5)
        if sampling.top_k > 0:
            kth = torch.topk(logits, min(sampling.top_k, logits.numel())).values[-1]
            logits[logits < kth] = -math.inf
        if 0.0 < sampling.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True)
            cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
            drop = cumulative - torch.softmax(sorted_logits, dim=-1) > sampling.top_p
            logits[order[drop]] = -math.inf
        log_probs = torch.log_softmax(logits, dim=-1)
        if seq.generator is None:
            seq.generator = torch.Generator(device=logits.device).manual_seed(sampling.seed)
        token = int(torch.multinomial(log_probs.exp(), 1, generator=seq.generator))
        return token, float(log_probs[token])

    @staticmethod
    def _penalise(logits: torch.Tensor, seq: Sequence) -> None:
        """Repetition penalty over prompt and output; presence and frequency penalties over the output."""
        sampling = seq.spec.sampling
        if sampling.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(seq.spec.input_ids) | set(seq.tokens)), device=logits.device)
            seen = seen[seen < logits.numel()]
            values = logits[seen]
            logits[seen] = torch.where(
                values > 0, values / sampling.repetition_penalty, values * sampling.repetition_penalty
            )
        if seq.tokens and (sampling.presence_penalty or sampling.frequency_penalty):
            counts = torch.bincount(torch.tensor(seq.tokens, device=logits.device), minlength=logits.numel())[
                : logits.numel()
            ].float()
            logits -= sampling.frequency_penalty * counts + sampling.presence_penalty * (counts > 0).float()


# --- responses ----------------------------------------------------------------------------------------------------


def _output(name: str, array: npt.NDArray[Any]) -> Any:
    return pb_utils.Tensor(name, array)


def build_response(
    seq: Sequence,
    tokens: list[int],
    log_probs: list[float],
    logits: list[npt.NDArray[np.float32]] | None = None,
) -> Any:
    """A response in the backend's output shapes: [batch=1, beam=1, ...]."""
    spec = seq.spec
    outputs = [
        _output("output_ids", np.array([[tokens]], dtype=np.int32).reshape(1, 1, len(tokens))),
        _output("sequence_length", np.array([[len(tokens)]], dtype=np.int32)),
        _output(
            "cum_log_probs", np.array([[sum(seq.log_probs) if spec.return_log_probs else 0.0]], np.float32)
        ),
        _output(
            "output_log_probs",
            np.array([[log_probs if spec.return_log_probs else [0.0] * len(log_probs)]], np.float32).reshape(
                1, 1, len(log_probs)
            ),
        ),
    ]
    if spec.return_generation_logits:
        vocab = seq.next_logits.numel() if seq.next_logits is not None else 0
        rows = logits or []
        array = np.stack(rows) if rows else np.zeros((0, vocab), dtype=np.float32)
        outputs.append(_output("generation_logits", array.astype(np.float32).reshape(1, 1, len(rows), -1)))
    if spec.return_num_input_tokens:
        outputs.append(_output("num_input_tokens", np.array([[len(spec.input_ids)]], dtype=np.int32)))
    if spec.return_num_output_tokens:
        outputs.append(_output("num_output_tokens", np.array([[len(seq.tokens)]], dtype=np.int32)))
    return pb_utils.InferenceResponse(output_tensors=outputs)


def _empty_response() -> Any:
    """No tokens: the answer to a stop request."""
    return pb_utils.InferenceResponse(
        output_tensors=[
            _output("output_ids", np.zeros((1, 1, 0), dtype=np.int32)),
            _output("sequence_length", np.zeros((1, 1), dtype=np.int32)),
        ]
    )


def _is_stop(request: Any) -> bool:
    """A request whose `stop` input is true (a malformed one is left to the worker to refuse)."""
    try:
        return bool(_scalar(request, "stop", False))
    except RequestError:
        return False


def send_error(sender: Any, message: str, *, invalid_request: bool = False) -> None:
    """One final response carrying an error; `invalid_request`: the client's fault (INVALID_ARG, which
    Triton's HTTP endpoints answer with 400, and `INVALID_REQUEST` before the message for gRPC streams)."""
    if invalid_request:
        error = pb_utils.TritonError(f"{INVALID_REQUEST}{message}", pb_utils.TritonError.INVALID_ARG)
    else:
        error = pb_utils.TritonError(message)
    sender.send(pb_utils.InferenceResponse(output_tensors=[], error=error), flags=_FINAL)


# --- the worker ---------------------------------------------------------------------------------------------------


class Scheduler:
    """A worker thread that admits queued requests and decodes the active ones a token at a time, in turn."""

    def __init__(
        self,
        decoder: Decoder,
        params: BackendParameters,
        *,
        max_seq_len: int,
        max_input_len: int,
        log: Any,
        generation_logits: bool = False,
        guides: Guides | None = None,
    ) -> None:
        self.decoder = decoder
        self.guides = guides
        self.params = params
        self.max_seq_len = max_seq_len
        self.max_input_len = max_input_len
        self.generation_logits = generation_logits
        self.log = log
        self.inbox: queue.Queue[Any] = queue.Queue()
        self.active: list[Sequence] = []
        self._stops: dict[str, float] = {}  # request id -> when its stop request arrived
        self._stops_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reference-decoder", daemon=True)
        self._thread.start()

    def submit(self, request: Any) -> None:
        """Queue a request; a stop request is answered at once and takes effect before the next token step.

        Stops do not wait for a whole round (one step of every active request): with many requests active a
        round takes seconds on a CPU, and TensorRT-LLM ends a cancelled request at its next iteration.
        """
        sender = request.get_response_sender()
        if _is_stop(request):
            with self._stops_lock:
                self._stops[request.request_id()] = time.monotonic()
            sender.send(_empty_response(), flags=_FINAL)
            return
        self.inbox.put((request, sender))

    def shutdown(self) -> None:
        self._stopping.set()
        self.inbox.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._admit(block=not self.active)
            for seq in list(self.active):
                self._apply_stops()
                if seq.stopped:
                    continue  # finished by a stop request
                try:
                    self._advance(seq)
                except Exception as exc:  # a failing request must not take the model down
                    self.log.log_error(f"request {seq.request_id or '-'} failed: {type(exc).__name__}: {exc}")
                    self.active.remove(seq)
                    self._safe_error(seq.sender, f"generation failed: {type(exc).__name__}: {exc}")
        for seq in self.active:
            self._safe_error(seq.sender, "the model is being unloaded")

    def _admit(self, *, block: bool) -> None:
        while True:
            try:
                item = self.inbox.get(timeout=0.5) if block else self.inbox.get_nowait()
            except queue.Empty:
                return
            if item is None:
                return
            block = False
            request, sender = item
            try:
                self._start(request, sender)
                self._apply_stops()  # a prefill takes a while; stops need not wait for all of them
            except RequestError as exc:
                self._safe_error(sender, str(exc), invalid_request=True)
            except Exception as exc:
                self.log.log_error(f"request could not start: {type(exc).__name__}: {exc}")
                self._safe_error(sender, f"request could not start: {type(exc).__name__}: {exc}")

    def _start(self, request: Any, sender: Any) -> None:
        request_id = request.request_id()
        if request_id and self._take_stop(request_id):
            self.log.log_info(f"request {request_id} stopped before it started")
            sender.send(_empty_response(), flags=_FINAL)
            return
        spec = parse_request(
            request, self.params, self.max_input_len, generation_logits=self.generation_logits
        )
        room = self.max_seq_len - len(spec.input_ids)
        if spec.max_new_tokens > room:
            self.log.log_warn(
                f"request_output_len {spec.max_new_tokens} + prompt exceeds max_seq_len {self.max_seq_len}; "
                f"generating at most {room} tokens"
            )
        seq = Sequence(
            request=request,
            sender=sender,
            request_id=request_id,
            spec=spec,
            max_new_tokens=min(spec.max_new_tokens, room),
            last_cancel_check=time.monotonic(),
        )
        if spec.guide is not None:
            if self.guides is None:
                raise RuntimeError("guided decoding is not available in this model")
            seq.matcher = self.guides.matcher(*spec.guide)
        seq.cache = self.decoder.make_cache()
        seq.next_logits = self.decoder.forward(spec.input_ids, seq.cache)
        self.active.append(seq)

    def _take_stop(self, request_id: str) -> bool:
        with self._stops_lock:
            return self._stops.pop(request_id, None) is not None

    def _apply_stops(self) -> None:
        """Finish the active requests that a stop request named; forget stops that matched nothing for long."""
        if not self._stops:
            return
        for seq in list(self.active):
            if seq.request_id and self._take_stop(seq.request_id):
                self.log.log_info(f"request {seq.request_id} stopped after {len(seq.tokens)} tokens")
                seq.stopped = True
                self._finish(seq)
        expired = time.monotonic() - _STOP_MEMORY_S
        with self._stops_lock:
            for request_id in [r for r, at in self._stops.items() if at < expired]:
                del self._stops[request_id]

    def _advance(self, seq: Sequence) -> None:
        """One step for `seq`: check cancellation, pick a token, send it, finish when a stop condition holds."""
        if self._is_cancelled(seq):
            self.log.log_info(f"request {seq.request_id or '-'} cancelled after {len(seq.tokens)} tokens")
            self._finish(seq)
            return
        token, log_prob = self.decoder.choose(seq, self.guides)
        spec = seq.spec
        if spec.return_generation_logits and seq.next_logits is not None:
            seq.logits.append(seq.next_logits.cpu().numpy().astype(np.float32))
        if spec.end_id is not None and token == spec.end_id:
            self._finish(seq)  # the end token itself is not returned
            return
        seq.tokens.append(token)
        seq.log_probs.append(log_prob)
        # A complete grammar ends the generation (xgrammar then allows only its stop token).
        guided_done = seq.matcher is not None and (
            not seq.matcher.accept_token(token) or seq.matcher.is_terminated()
        )
        if (
            guided_done
            or len(seq.tokens) >= seq.max_new_tokens
            or any(seq.tokens[-len(w) :] == w for w in spec.stop_words)
        ):
            self._finish(seq, with_last_token=True)
            return
        if spec.streaming:
            seq.sender.send(build_response(seq, [token], [log_prob], seq.logits[-1:]))
        seq.next_logits = self.decoder.forward([token], seq.cache)

    def _is_cancelled(self, seq: Sequence) -> bool:
        now = time.monotonic()
        if (now - seq.last_cancel_check) * 1000 < self.params.cancellation_check_period_ms:
            return False
        seq.last_cancel_check = now
        return bool(seq.request.is_cancelled())

    def _finish(self, seq: Sequence, *, with_last_token: bool = False) -> None:
        """Send the last response, flagged final (a final response without outputs never reaches aio clients).

        Streaming: the last token if it has not been sent, else no tokens. Non-streaming: everything.
        """
        self.active.remove(seq)
        seq.cache = None
        if seq.spec.streaming:
            tokens = seq.tokens[-1:] if with_last_token else []
            log_probs = seq.log_probs[-1:] if with_last_token else []
            logits = seq.logits[-1:] if with_last_token else []
        else:
            prompt = [] if seq.spec.exclude_input_in_output else seq.spec.input_ids
            tokens, log_probs = prompt + seq.tokens, [0.0] * len(prompt) + seq.log_probs
            logits = seq.logits  # generation logits cover the generated tokens only
        seq.sender.send(build_response(seq, tokens, log_probs, logits), flags=_FINAL)

    def _safe_error(self, sender: Any, message: str, *, invalid_request: bool = False) -> None:
        try:
            send_error(sender, message, invalid_request=invalid_request)
        except Exception as exc:  # the client may be gone already
            self.log.log_warn(f"could not send an error response: {exc}")


# --- the Triton model ---------------------------------------------------------------------------------------------


def _engine_limits(engine_dir: Path, hf_max_positions: int) -> tuple[int, int, bool]:
    """max_seq_len, max_input_len and whether generation logits are gathered, from config.json build_config."""
    try:
        build = json.loads((engine_dir / "config.json").read_text()).get("build_config", {})
    except (OSError, ValueError):
        build = {}
    max_seq_len = int(build.get("max_seq_len") or hf_max_positions)
    max_input_len = int(build.get("max_input_len") or max_seq_len - 1)
    gather = bool(build.get("gather_generation_logits") or build.get("gather_all_token_logits"))
    return max_seq_len, min(max_input_len, max_seq_len - 1), gather


class TritonPythonModel:
    """The `tensorrt_llm` model of a trtforge model repository serving a reference engine."""

    def initialize(self, args: dict[str, str]) -> None:
        self.log = pb_utils.Logger
        model_config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(model_config):
            raise pb_utils.TritonModelException(
                "the reference tensorrt_llm model needs model_transaction_policy { decoupled: true }"
            )
        params = parse_parameters(model_config, self.log)
        if params.max_beam_width != 1:
            self.log.log_warn(f"max_beam_width {params.max_beam_width} ignored: the reference backend uses 1")
        engine_dir = Path(params.gpt_model_path)
        model_dir = engine_dir / "hf_model"
        if not model_dir.is_dir():
            raise pb_utils.TritonModelException(f"{model_dir} does not exist: not a reference engine")
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        decoder = Decoder(model_dir, device)
        max_seq_len, max_input_len, gather = _engine_limits(
            engine_dir, decoder.model.config.max_position_embeddings
        )
        guides = Guides(
            Path(params.tokenizer_dir) if params.tokenizer_dir else engine_dir, decoder.vocab_size
        )
        self.scheduler = Scheduler(
            decoder,
            params,
            max_seq_len=max_seq_len,
            max_input_len=max_input_len,
            generation_logits=gather,
            log=self.log,
            guides=guides,
        )
        self.log.log_info(f"reference tensorrt_llm model ready on {device} (engine {engine_dir})")

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            self.scheduler.submit(request)
        return None

    def finalize(self) -> None:
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None:
            scheduler.shutdown()
