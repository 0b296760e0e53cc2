"""The longest prompt an engine takes: TensorRT-LLM's own rule, in one place.

The C++ runtime decides its `maxInputLen` when it loads an engine (`TrtGptModel`), from the engine's
`config.json` and the executor's options, and refuses a longer prompt:

    chunked context enabled (`enable_chunked_context`)         max_seq_len - 1
    else context FMHA and packed input (remove_input_padding)  min(max_seq_len - 1, max_num_tokens)
    else                                                       build_config.max_input_len

`trtllm-bench build` never sets `max_input_len`, so its engines carry BuildConfig's default 1024; they have
context FMHA, packed input, a paged KV cache and paged context FMHA, so the second line applies, or the first
with chunked context, which needs all of those (the runtime refuses to load it otherwise: "Chunked context
requires context FMHA, paged kv_cache and paged context FMHA all enabled at the same time.").

TensorRT-LLM's LLM API (the PyTorch backend) follows the same shape with chunked prefill in place of chunked
context: a prompt longer than max_num_tokens is refused unless `enable_chunked_prefill` is on; its
`max_input_len` is never checked. So it is the rule above with context FMHA and packed input always on.

Every prompt must leave room for one generated token, so no limit exceeds max_seq_len - 1.

This module imports only the standard library: the reference backend's Triton model ships it beside its
`model.py` (as `prompt_limit.py`) and applies the same rule to the engine it serves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# BuildConfig's default max_input_len, which every `trtllm-bench build` engine carries.
BUILD_CONFIG_MAX_INPUT_LEN = 1024

# TorchLlmArgs' max_num_tokens default (tensorrt_llm/llmapi/llm_args.py), and the max_seq_len the LLM API model
# assumes when neither the LLM arguments nor the checkpoint's config give one.
LLM_API_MAX_NUM_TOKENS = 8192
LLM_API_FALLBACK_MAX_SEQ_LEN = 2048

CHUNKED_CONTEXT_NEEDS = (
    "chunked context needs context FMHA, a paged KV cache and paged context FMHA in the engine"
)


@dataclass(frozen=True)
class RuntimeLimits:
    """What the runtime's prompt limit is computed from: the engine's build limits and attention plugins.

    Args:
        max_seq_len: prompt plus generated tokens of one sequence.
        max_num_tokens: tokens of one forward pass (all sequences of a batch together).
        max_input_len: `build_config.max_input_len` (the limit only without context FMHA or packed input).
        context_fmha: `plugin_config.context_fmha`.
        packed_input: `plugin_config.remove_input_padding`.
        paged_kv_cache: `plugin_config.paged_kv_cache`.
        paged_context_fmha: `plugin_config.use_paged_context_fmha`.
    """

    max_seq_len: int
    max_num_tokens: int
    max_input_len: int
    context_fmha: bool = True
    packed_input: bool = True
    paged_kv_cache: bool = True
    paged_context_fmha: bool = True

    @property
    def chunked_context_possible(self) -> bool:
        """Whether the runtime can serve this engine with chunked context."""
        return self.context_fmha and self.paged_kv_cache and self.paged_context_fmha

    def prompt_limit(self, *, chunked_context: bool) -> int:
        """The longest prompt the runtime accepts with chunked context on or off (at least 1 token of room)."""
        room = self.max_seq_len - 1
        if chunked_context:
            return room
        if self.context_fmha and self.packed_input:
            return min(room, self.max_num_tokens)
        return min(room, self.max_input_len)

    def prompt_limit_rule(self, *, chunked_context: bool) -> str:
        """Which of the rule's lines gives `prompt_limit` (for people reading `plan` and `inspect`)."""
        if chunked_context:
            return "max_seq_len - 1: chunked context"
        if self.context_fmha and self.packed_input:
            return "min(max_seq_len - 1, max_num_tokens): no chunked context"
        return "build_config.max_input_len: no context FMHA or packed input"


def engine_runtime_limits(config: Mapping[str, Any]) -> RuntimeLimits:
    """The runtime limits of an engine's parsed `config.json` (`build_config` and its `plugin_config`).

    The config is untrusted. A size that is missing takes the runtime's fallback (max_seq_len: the model's
    max_position_embeddings; max_num_tokens: max_seq_len; max_input_len: BuildConfig's 1024); one that is there
    but not a positive whole number is refused. A plugin field that is missing or not `true` counts as off (the
    runtime itself requires them, so only hand-made configs lack them), which never makes the limit larger than
    the runtime's.

    Raises:
        ValueError: a size is not a positive whole number, or max_seq_len is under 2 (no room for a prompt and
            a generated token); its message is one line naming the field.
    """
    pretrained = _mapping(config.get("pretrained_config"))
    build = _mapping(config.get("build_config"))
    plugins = _mapping(build.get("plugin_config"))
    max_seq_len = _size(build, "max_seq_len", "build_config")
    if max_seq_len is None:
        max_seq_len = _size(pretrained, "max_position_embeddings", "pretrained_config")
    if max_seq_len is None or max_seq_len < 2:
        raise ValueError(
            f"build_config.max_seq_len is {max_seq_len if max_seq_len is not None else 'missing'}: an engine "
            "needs at least 2 (a prompt token and a generated one)"
        )
    max_num_tokens = _size(build, "max_num_tokens", "build_config")
    max_input_len = _size(build, "max_input_len", "build_config")
    return RuntimeLimits(
        max_seq_len=max_seq_len,
        max_num_tokens=max_seq_len if max_num_tokens is None else max_num_tokens,
        max_input_len=BUILD_CONFIG_MAX_INPUT_LEN if max_input_len is None else max_input_len,
        context_fmha=plugins.get("context_fmha") is True,
        packed_input=plugins.get("remove_input_padding") is True,
        paged_kv_cache=plugins.get("paged_kv_cache") is True,
        paged_context_fmha=plugins.get("use_paged_context_fmha") is True,
    )


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _size(table: Mapping[str, Any], key: str, where: str) -> int | None:
    """`table[key]` as a positive whole number; None when it is missing or null."""
    value = table.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        shown = repr(value) if len(repr(value)) <= 40 else f"a {type(value).__name__}"
        raise ValueError(f"{where}.{key} is {shown}, not a positive whole number")
    return value


def bench_engine_limits(*, max_seq_len: int, max_num_tokens: int) -> RuntimeLimits:
    """The runtime limits of an engine `trtllm-bench build` will make with these sizes (what `plan` reports)."""
    return RuntimeLimits(
        max_seq_len=max_seq_len, max_num_tokens=max_num_tokens, max_input_len=BUILD_CONFIG_MAX_INPUT_LEN
    )


def llm_api_prompt_limit(*, max_seq_len: int, max_num_tokens: int, chunked_prefill: bool = False) -> int:
    """The longest prompt TensorRT-LLM's LLM API (PyTorch backend) accepts."""
    limits = RuntimeLimits(
        max_seq_len=max_seq_len, max_num_tokens=max_num_tokens, max_input_len=BUILD_CONFIG_MAX_INPUT_LEN
    )
    return limits.prompt_limit(chunked_context=chunked_prefill)


def llm_api_arguments_prompt_limit(arguments: Mapping[str, Any], checkpoint_config: Mapping[str, Any]) -> int:
    """The longest prompt `LLM(model=<checkpoint>, **arguments)` accepts (what the LLM API model enforces).

    `arguments` are TorchLlmArgs fields (a PyTorch entry's `llm_api_options.yaml`); where they leave a size out,
    the LLM API's own fallback applies: max_num_tokens 8192, max_seq_len the checkpoint's
    max_position_embeddings (its `text_config`'s for a multimodal config), else LLM_API_FALLBACK_MAX_SEQ_LEN.

    Raises:
        ValueError: a size is there but not a positive whole number, or max_seq_len is under 2.
    """
    text = _mapping(checkpoint_config.get("text_config")) or checkpoint_config
    max_seq_len = _size(arguments, "max_seq_len", "llm_api_options")
    if max_seq_len is None:
        max_seq_len = _size(text, "max_position_embeddings", "config") or LLM_API_FALLBACK_MAX_SEQ_LEN
    if max_seq_len < 2:
        raise ValueError(f"llm_api_options.max_seq_len is {max_seq_len}: it needs at least 2")
    max_num_tokens = _size(arguments, "max_num_tokens", "llm_api_options") or LLM_API_MAX_NUM_TOKENS
    chunked = arguments.get("enable_chunked_prefill") is True
    return llm_api_prompt_limit(
        max_seq_len=max_seq_len, max_num_tokens=max_num_tokens, chunked_prefill=chunked
    )
