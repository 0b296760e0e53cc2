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

    A plugin field that is missing counts as off (the runtime itself requires them, so only hand-made configs
    lack them), which never makes the limit larger than the runtime's.
    """
    pretrained = config.get("pretrained_config") or {}
    build = config.get("build_config") or {}
    plugins = build.get("plugin_config") or {}
    max_seq_len = int(build.get("max_seq_len") or pretrained.get("max_position_embeddings") or 0)
    return RuntimeLimits(
        max_seq_len=max_seq_len,
        max_num_tokens=int(build.get("max_num_tokens") or max_seq_len),
        max_input_len=int(build.get("max_input_len") or BUILD_CONFIG_MAX_INPUT_LEN),
        context_fmha=plugins.get("context_fmha") is True,
        packed_input=plugins.get("remove_input_padding") is True,
        paged_kv_cache=plugins.get("paged_kv_cache") is True,
        paged_context_fmha=plugins.get("use_paged_context_fmha") is True,
    )


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
