"""What the `tensorrtllm` Triton backend expects of a `tensorrt_llm` model config, as data, and a checker.

The backend (NVIDIA's C++ `inflight_batcher_llm`) cannot run here, so this table is how trtforge knows a
generated repository will load: every tensor the backend accepts (name, dtype, dims, optional, scalar reshape,
ragged batching), every parameter it reads (how it parses the string value, whether it is read without a
fallback), and the model-config fields it relies on. `check_tensorrt_llm_config` compares a parsed config with
it; `write_model_repository` runs it on every repository it writes, and the contract tests run it for TP 1 and
TP > 1 engines.

Facts worth knowing when editing this table:
- `tokenizer_dir`, `xgrammar_tokenizer_info_path` and `guided_decoding_backend` are read without a fallback:
  a config without them never loads ("Cannot find parameter with name: ..."). Empty strings switch guided
  decoding off.
- `prompt_embedding_table` has the engine's activation dtype (`pretrained_config.dtype`); the logits tensors
  have its `logits_dtype`, which the backend checks against the engine when logits are returned.
- Other parameters fall back to the backend's default when absent; an unparsable value also falls back, with
  only a log line, so a typo silently changes behaviour: the checker refuses it instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from tritonclient.grpc import model_config_pb2

from trtforge.constants import DEFAULT_KV_CACHE_FREE_GPU_MEM_FRACTION

__all__ = [
    "BACKEND_PARAMETERS",
    "BOOL_VALUES",
    "ENGINE_DTYPE",
    "LOGITS_DTYPE",
    "MIN_TRTLLM_VERSION",
    "TRTLLM_INPUTS",
    "TRTLLM_OUTPUTS",
    "ParameterFact",
    "TensorFact",
    "check_tensorrt_llm_config",
    "check_tensorrt_llm_tensors",
    "triton_dtype",
]

# The tables below follow the backend as shipped with TensorRT-LLM 0.19 and later (`min_tokens`/`seed`, not the
# older `min_length`/`random_seed`; `return_num_input_tokens`...). Older engines are refused by the gate.
MIN_TRTLLM_VERSION = "0.19"

# Dtype markers resolved per engine.
ENGINE_DTYPE = "<engine dtype>"
LOGITS_DTYPE = "<logits dtype>"

# The strings the backend's bool parser accepts.
BOOL_VALUES = frozenset({"True", "true", "TRUE", "1", "False", "false", "FALSE", "0"})

_TORCH_TO_TRITON = {
    "float16": "TYPE_FP16",
    "bfloat16": "TYPE_BF16",
    "float32": "TYPE_FP32",
    "float": "TYPE_FP32",
    "half": "TYPE_FP16",
}


def triton_dtype(dtype: str) -> str:
    """The Triton `data_type` of an engine dtype name (`pretrained_config.dtype`), e.g. bfloat16 → TYPE_BF16.

    Raises:
        ValueError: a dtype no TensorRT-LLM engine config uses for activations or logits.
    """
    try:
        return _TORCH_TO_TRITON[dtype.lower()]
    except KeyError:
        raise ValueError(
            f"unknown engine dtype {dtype!r} (expected one of {', '.join(sorted(_TORCH_TO_TRITON))})"
        ) from None


@dataclass(frozen=True)
class TensorFact:
    """One tensor the backend accepts or produces; dims exclude the batch dimension."""

    name: str
    data_type: str  # a TYPE_* name, ENGINE_DTYPE or LOGITS_DTYPE
    dims: tuple[int, ...]
    optional: bool = True
    scalar: bool = False  # declared with `reshape: { shape: [ ] }`
    ragged: bool = False  # declared with `allow_ragged_batch: true`
    # Declared in the configs trtforge generates (decoder-only text models): encoder-decoder, multimodal,
    # disaggregated-serving, KV-retention and lookahead tensors are left out.
    generated: bool = True


def _in(name: str, data_type: str, dims: tuple[int, ...] = (1,), **flags: bool) -> TensorFact:
    return TensorFact(name, data_type, dims, **flags)


def _scalar_in(name: str, data_type: str, *, generated: bool = True) -> TensorFact:
    return TensorFact(name, data_type, (1,), optional=True, scalar=True, generated=generated)


TRTLLM_INPUTS: tuple[TensorFact, ...] = (
    _in("input_ids", "TYPE_INT32", (-1,), ragged=True),  # declared optional: encoder models send features
    _in("encoder_input_features", ENGINE_DTYPE, (-1, -1), ragged=True, generated=False),
    _scalar_in("encoder_output_lengths", "TYPE_INT32", generated=False),
    TensorFact("input_lengths", "TYPE_INT32", (1,), optional=False, scalar=True),
    TensorFact("request_output_len", "TYPE_INT32", (1,), optional=False, scalar=True),
    _scalar_in("num_return_sequences", "TYPE_INT32"),
    _in("draft_input_ids", "TYPE_INT32", (-1,), ragged=True),
    _in("decoder_input_ids", "TYPE_INT32", (-1,), ragged=True, generated=False),
    _scalar_in("decoder_input_lengths", "TYPE_INT32", generated=False),
    _in("draft_logits", LOGITS_DTYPE, (-1, -1), ragged=True),
    _scalar_in("draft_acceptance_threshold", "TYPE_FP32"),
    _scalar_in("end_id", "TYPE_INT32"),
    _scalar_in("pad_id", "TYPE_INT32"),
    _in("stop_words_list", "TYPE_INT32", (2, -1), ragged=True),
    _in("bad_words_list", "TYPE_INT32", (2, -1), ragged=True),
    _in("embedding_bias", "TYPE_FP32", (-1,), ragged=True),
    _scalar_in("beam_width", "TYPE_INT32"),
    _scalar_in("temperature", "TYPE_FP32"),
    _scalar_in("runtime_top_k", "TYPE_INT32"),
    _scalar_in("runtime_top_p", "TYPE_FP32"),
    _scalar_in("runtime_top_p_min", "TYPE_FP32"),
    _scalar_in("runtime_top_p_decay", "TYPE_FP32"),
    _scalar_in("runtime_top_p_reset_ids", "TYPE_INT32"),
    _scalar_in("len_penalty", "TYPE_FP32"),
    _scalar_in("early_stopping", "TYPE_BOOL"),
    _scalar_in("repetition_penalty", "TYPE_FP32"),
    _scalar_in("min_tokens", "TYPE_INT32"),
    _scalar_in("beam_search_diversity_rate", "TYPE_FP32"),
    _scalar_in("presence_penalty", "TYPE_FP32"),
    _scalar_in("frequency_penalty", "TYPE_FP32"),
    _scalar_in("seed", "TYPE_UINT64"),
    _scalar_in("return_log_probs", "TYPE_BOOL"),
    _scalar_in("return_context_logits", "TYPE_BOOL"),
    _scalar_in("return_generation_logits", "TYPE_BOOL"),
    _scalar_in("return_perf_metrics", "TYPE_BOOL"),
    _scalar_in("return_num_input_tokens", "TYPE_BOOL"),
    _scalar_in("return_num_output_tokens", "TYPE_BOOL"),
    _scalar_in("exclude_input_in_output", "TYPE_BOOL"),
    _scalar_in("stop", "TYPE_BOOL"),
    _scalar_in("streaming", "TYPE_BOOL"),
    _in("prompt_embedding_table", ENGINE_DTYPE, (-1, -1), ragged=True),
    _in("prompt_table_extra_ids", "TYPE_UINT64", (-1,), ragged=True),
    _scalar_in("prompt_vocab_size", "TYPE_INT32"),
    _in("cross_attention_mask", "TYPE_BOOL", (-1, -1), ragged=True, generated=False),
    _in("mrope_rotary_cos_sin", "TYPE_FP32", (-1,), generated=False),
    _in("mrope_position_deltas", "TYPE_INT64", (1,), generated=False),
    _scalar_in("lora_task_id", "TYPE_UINT64"),
    _in("lora_weights", "TYPE_FP16", (-1, -1), ragged=True),
    _in("lora_config", "TYPE_INT32", (-1, 3), ragged=True),
    _in("context_phase_params", "TYPE_UINT8", (-1,), ragged=True, generated=False),
    _in("skip_cross_attn_blocks", "TYPE_BOOL", (1,), ragged=True, generated=False),
    _in("retention_token_range_starts", "TYPE_INT32", (-1,), ragged=True, generated=False),
    _in("retention_token_range_ends", "TYPE_INT32", (-1,), ragged=True, generated=False),
    _in("retention_token_range_priorities", "TYPE_INT32", (-1,), ragged=True, generated=False),
    _in("retention_token_range_durations_ms", "TYPE_INT32", (-1,), ragged=True, generated=False),
    _in("retention_decode_priority", "TYPE_INT32", (1,), ragged=True, generated=False),
    _in("retention_decode_duration_ms", "TYPE_INT32", (1,), ragged=True, generated=False),
    _in("guided_decoding_guide_type", "TYPE_STRING", (1,), ragged=True),
    _in("guided_decoding_guide", "TYPE_STRING", (1,), ragged=True),
    _in("lookahead_window_size", "TYPE_INT32", (1,), ragged=True, generated=False),
    _in("lookahead_ngram_size", "TYPE_INT32", (1,), ragged=True, generated=False),
    _in("lookahead_verification_set_size", "TYPE_INT32", (1,), ragged=True, generated=False),
)


def _out(name: str, data_type: str, dims: tuple[int, ...], *, generated: bool = True) -> TensorFact:
    return TensorFact(name, data_type, dims, optional=False, generated=generated)


TRTLLM_OUTPUTS: tuple[TensorFact, ...] = (
    _out("output_ids", "TYPE_INT32", (-1, -1)),
    _out("sequence_length", "TYPE_INT32", (-1,)),
    _out("cum_log_probs", "TYPE_FP32", (-1,)),
    _out("output_log_probs", "TYPE_FP32", (-1, -1)),
    _out("context_logits", LOGITS_DTYPE, (-1, -1)),
    _out("generation_logits", LOGITS_DTYPE, (-1, -1, -1)),
    _out("batch_index", "TYPE_INT32", (1,)),
    _out("sequence_index", "TYPE_INT32", (1,)),
    _out("context_phase_params", "TYPE_UINT8", (-1,), generated=False),
    _out("kv_cache_alloc_new_blocks", "TYPE_INT32", (1,)),
    _out("kv_cache_reused_blocks", "TYPE_INT32", (1,)),
    _out("kv_cache_alloc_total_blocks", "TYPE_INT32", (1,)),
    _out("arrival_time_ns", "TYPE_INT64", (1,)),
    _out("first_scheduled_time_ns", "TYPE_INT64", (1,)),
    _out("first_token_time_ns", "TYPE_INT64", (1,)),
    _out("last_token_time_ns", "TYPE_INT64", (1,)),
    _out("acceptance_rate", "TYPE_FP32", (1,)),
    _out("total_accepted_draft_tokens", "TYPE_INT32", (1,)),
    _out("total_draft_tokens", "TYPE_INT32", (1,)),
    _out("num_input_tokens", "TYPE_INT32", (1,)),
    _out("num_output_tokens", "TYPE_INT32", (1,)),
)

# The inputs a decoder-only request must carry (the backend errors without them).
REQUIRED_REQUEST_INPUTS = frozenset({"input_ids", "input_lengths", "request_output_len"})

ParameterKind = Literal[
    "enum", "bool", "int", "uint", "float", "path", "string", "device_ids", "int_csv", "int_csv_list", "any"
]


@dataclass(frozen=True)
class ParameterFact:
    """One `parameters { key: ... }` entry the backend reads; values are strings parsed as `kind`."""

    kind: ParameterKind
    required: bool = False  # read without a fallback: the model does not load without it
    values: frozenset[str] = frozenset()  # accepted values of an enum
    off: frozenset[str] = frozenset()  # extra accepted values meaning "off" (guided decoding)
    range: tuple[float, float] | None = None  # inclusive bounds of a float
    default: str | None = None  # the backend's behaviour when absent, for the docs


def _p(kind: ParameterKind, **fields: object) -> ParameterFact:
    return ParameterFact(kind, **fields)  # type: ignore[arg-type]


BACKEND_PARAMETERS: dict[str, ParameterFact] = {
    "gpt_model_type": _p(
        "enum",
        required=True,
        values=frozenset({"V1", "v1", "inflight_batching", "inflight_fused_batching"}),
    ),
    "gpt_model_path": _p("path", required=True),
    "encoder_model_path": _p("path"),
    "tokenizer_dir": _p("string", required=True),
    "xgrammar_tokenizer_info_path": _p("string", required=True),
    "guided_decoding_backend": _p("enum", required=True, values=frozenset({"xgrammar"}), off=frozenset({""})),
    "max_beam_width": _p("int", default="1"),
    "batch_scheduler_policy": _p(
        "enum", values=frozenset({"max_utilization", "guaranteed_no_evict"}), default="guaranteed_no_evict"
    ),
    "kv_cache_free_gpu_mem_fraction": _p(
        "float", range=(0.0, 1.0), default=str(DEFAULT_KV_CACHE_FREE_GPU_MEM_FRACTION)
    ),
    "max_tokens_in_paged_kv_cache": _p("int", default="unbounded (the free-memory fraction decides)"),
    "cross_kv_cache_fraction": _p("float", range=(0.0, 1.0)),
    "kv_cache_host_memory_bytes": _p("uint", default="0 (no host offloading)"),
    "kv_cache_onboard_blocks": _p("bool", default="true"),
    "max_attention_window_size": _p("int_csv", default="max_seq_len"),
    "sink_token_length": _p("int"),
    "enable_kv_cache_reuse": _p("bool", default="true"),
    "multi_block_mode": _p("bool", default="true"),
    "enable_context_fmha_fp32_acc": _p("bool", default="false"),
    "cuda_graph_mode": _p("bool", default="false"),
    "cuda_graph_cache_size": _p("int", default="0"),
    "num_nodes": _p("int"),
    "lora_cache_max_adapter_size": _p("int"),
    "lora_cache_optimal_adapter_size": _p("int"),
    "lora_cache_gpu_memory_fraction": _p("float", range=(0.0, 1.0)),
    "lora_cache_host_memory_bytes": _p("uint"),
    "lora_prefetch_dir": _p("string"),
    "speculative_decoding_fast_logits": _p("bool"),
    "iter_stats_max_iterations": _p("int", default="1000"),
    "request_stats_max_iterations": _p("int", default="0"),
    "normalize_log_probs": _p("bool", default="true"),
    "enable_chunked_context": _p("bool", default="false"),
    "decoding_mode": _p(
        "enum",
        values=frozenset(
            {"top_k", "top_p", "top_k_top_p", "beam_search", "medusa", "redrafter", "lookahead", "eagle"}
        ),
        default="chosen from the engine (top_k_top_p, or beam_search when max_beam_width > 1)",
    ),
    "medusa_choices": _p("int_csv_list"),
    "eagle_choices": _p("int_csv_list"),
    "lookahead_window_size": _p("uint"),
    "lookahead_ngram_size": _p("uint"),
    "lookahead_verification_set_size": _p("uint"),
    "gpu_weights_percent": _p("float", range=(0.0, 1.0)),
    "recv_poll_period_ms": _p("int"),
    "exclude_input_in_output": _p("bool", default="false"),
    "cancellation_check_period_ms": _p("int", default="100"),
    "stats_check_period_ms": _p("int", default="100"),
    "gpu_device_ids": _p("device_ids", default="every visible GPU"),
    "participant_ids": _p("device_ids"),
    "executor_worker_path": _p("path"),
    # Read by Triton's python-side helpers, not the C++ backend; harmless and in NVIDIA's own config.
    "FORCE_CPU_ONLY_INPUT_TENSORS": _p("enum", values=frozenset({"yes", "no"})),
}

# Parameters the backend refuses outright.
FORBIDDEN_PARAMETERS = frozenset({"worker_path"})


def check_tensorrt_llm_config(
    config: model_config_pb2.ModelConfig, *, engine_dtype: str, logits_dtype: str = "float32"
) -> list[str]:
    """Everything in a parsed `tensorrt_llm` config that the `tensorrtllm` backend would not accept as meant.

    Args:
        config: the parsed `config.pbtxt`.
        engine_dtype: the engine's `pretrained_config.dtype` (e.g. "bfloat16").
        logits_dtype: the engine's `pretrained_config.logits_dtype`.

    Returns:
        One line per problem; empty when the config meets the contract.
    """
    problems = check_tensorrt_llm_tensors(config, engine_dtype=engine_dtype, logits_dtype=logits_dtype)
    params = {key: value.string_value for key, value in config.parameters.items()}
    return problems + check_parameters(params)


def check_tensorrt_llm_tensors(
    config: model_config_pb2.ModelConfig, *, engine_dtype: str, logits_dtype: str = "float32"
) -> list[str]:
    """What clients of the `tensorrt_llm` contract rely on in a config: its name, batching, decoupled policy
    and tensors, not the backend parameters (a python model serving the contract reads parameters of its own).

    Arguments and result as `check_tensorrt_llm_config`'s.
    """
    resolved = {ENGINE_DTYPE: triton_dtype(engine_dtype), LOGITS_DTYPE: triton_dtype(logits_dtype)}
    problems: list[str] = []
    if config.name != "tensorrt_llm":
        problems.append(f"model name is {config.name!r}, the ensemble and clients expect 'tensorrt_llm'")
    if config.max_batch_size < 1:
        problems.append("max_batch_size must be at least 1 (the backend batches requests)")
    if not config.model_transaction_policy.decoupled:
        problems.append("model_transaction_policy.decoupled must be true: streaming requests need it")
    problems += _check_tensors("input", config.input, TRTLLM_INPUTS, resolved)
    declared = {tensor.name for tensor in config.input}
    problems += [f"input {name!r} is not declared" for name in sorted(REQUIRED_REQUEST_INPUTS - declared)]
    problems += _check_tensors("output", config.output, TRTLLM_OUTPUTS, resolved)
    problems += [
        f"output {name!r} is not declared" for name in ("output_ids", "sequence_length")
        if name not in {tensor.name for tensor in config.output}
    ]  # fmt: skip
    return problems


def check_parameters(params: dict[str, str]) -> list[str]:
    """Problems in a `tensorrt_llm` config's backend parameters (missing required ones, invalid values)."""
    problems = [
        f"parameter {name!r} is missing: the backend reads it without a fallback and the model would not load"
        for name, fact in BACKEND_PARAMETERS.items()
        if fact.required and name not in params
    ]
    for name, value in sorted(params.items()):
        if name in FORBIDDEN_PARAMETERS:
            problems.append(f"parameter {name!r} is no longer supported by the backend")
            continue
        fact = BACKEND_PARAMETERS.get(name)
        if fact is None:
            problems.append(f"parameter {name!r} is not one the backend reads")
            continue
        if "${" in value:
            problems.append(f"parameter {name!r} holds an unfilled placeholder {value!r}")
            continue
        reason = _value_problem(fact, value)
        if reason:
            problems.append(f"parameter {name}={value!r}: {reason}")
    return problems


def _check_tensors(
    kind: str,
    declared: Iterable[model_config_pb2.ModelInput] | Iterable[model_config_pb2.ModelOutput],
    facts: tuple[TensorFact, ...],
    resolved: dict[str, str],
) -> list[str]:
    by_name = {fact.name: fact for fact in facts}
    problems: list[str] = []
    seen: set[str] = set()
    for tensor in declared:
        if tensor.name in seen:
            problems.append(f"{kind} {tensor.name!r} is declared twice")
        seen.add(tensor.name)
        fact = by_name.get(tensor.name)
        if fact is None:
            problems.append(f"{kind} {tensor.name!r} is not a tensor the backend knows")
            continue
        want_type = resolved.get(fact.data_type, fact.data_type)
        got_type = model_config_pb2.DataType.Name(tensor.data_type)
        if got_type != want_type:
            problems.append(f"{kind} {tensor.name!r} has data_type {got_type}, the backend wants {want_type}")
        if tuple(tensor.dims) != fact.dims:
            problems.append(
                f"{kind} {tensor.name!r} has dims {list(tensor.dims)}, the backend wants {list(fact.dims)}"
            )
        if isinstance(tensor, model_config_pb2.ModelInput):
            if tensor.optional != fact.optional:
                problems.append(
                    f"input {tensor.name!r} has optional: {str(tensor.optional).lower()}, want {str(fact.optional).lower()}"
                )
            scalar = tensor.HasField("reshape") and list(tensor.reshape.shape) == []
            if scalar != fact.scalar:
                want = "a" if fact.scalar else "no"
                problems.append(f"input {tensor.name!r} needs {want} `reshape: {{ shape: [ ] }}`")
            if tensor.allow_ragged_batch != fact.ragged:
                problems.append(
                    f"input {tensor.name!r} has allow_ragged_batch: {str(tensor.allow_ragged_batch).lower()}, want {str(fact.ragged).lower()}"
                )
    return problems


def _value_problem(fact: ParameterFact, value: str) -> str | None:
    """Why `value` would not parse as `fact` says (the backend would log and fall back), or None."""
    if fact.kind == "enum":
        if value in fact.values or value in fact.off:
            return None
        return f"not one of {', '.join(sorted(fact.values | fact.off))}"
    if fact.kind == "bool":
        return None if value in BOOL_VALUES else "not a boolean (true/false)"
    if fact.kind in ("int", "uint"):
        try:
            number = int(value)
        except ValueError:
            return "not an integer"
        return "must not be negative" if fact.kind == "uint" and number < 0 else None
    if fact.kind == "float":
        try:
            number_f = float(value)
        except ValueError:
            return "not a number"
        if fact.range and not fact.range[0] <= number_f <= fact.range[1]:
            return f"must be within [{fact.range[0]:g}, {fact.range[1]:g}]"
        return None
    if fact.kind == "path":
        return None if value.startswith("/") else "must be an absolute path"
    if fact.kind == "device_ids":
        groups = value.split(";")
        ok = all(part.strip().isdigit() for group in groups for part in group.split(","))
        return None if ok else "must be device ids like '0,1' (';' between instances)"
    if fact.kind == "int_csv":
        ok = all(part.strip().isdigit() for part in value.split(","))
        return None if ok else "must be comma-separated integers"
    return None
