"""Parsers by name, and the defaults for a model architecture.

An engine's catalogue entry may name its parsers; otherwise its architecture picks them (Qwen3 → `qwen3`
reasoning and `hermes` tool calls). Asking for a name that does not exist lists the ones that do.
"""

from __future__ import annotations

from trtforge.proxy.parsers.base import ReasoningParser, ToolParser
from trtforge.proxy.parsers.hermes import HermesToolParser
from trtforge.proxy.parsers.qwen3 import Qwen3ReasoningParser

NONE = "none"  # no parser: the text is content as generated

REASONING_PARSERS: dict[str, type[ReasoningParser]] = {"qwen3": Qwen3ReasoningParser}
TOOL_PARSERS: dict[str, type[ToolParser]] = {"hermes": HermesToolParser}

# Architecture (engine config `pretrained_config.architecture`) → (reasoning parser, tool parser).
_ARCHITECTURE_DEFAULTS: dict[str, tuple[str, str]] = {
    "Qwen3ForCausalLM": ("qwen3", "hermes"),
    "Qwen3MoeForCausalLM": ("qwen3", "hermes"),
    "Qwen2ForCausalLM": (NONE, "hermes"),
}


class UnknownParserError(LookupError):
    """A parser name that is not registered; the message lists those that are."""


def _check(kind: str, name: str, known: dict[str, object]) -> str:
    if name != NONE and name not in known:
        choices = ", ".join(sorted([*known, NONE]))
        raise UnknownParserError(f"unknown {kind} parser `{name}`; choose one of: {choices}")
    return name


def check_reasoning_parser(name: str) -> str:
    return _check("reasoning", name, dict(REASONING_PARSERS))


def check_tool_parser(name: str) -> str:
    return _check("tool", name, dict(TOOL_PARSERS))


def default_parsers(architecture: str) -> tuple[str, str]:
    """(reasoning, tool) parser names for an architecture; `none` for both when it has no defaults."""
    return _ARCHITECTURE_DEFAULTS.get(architecture, (NONE, NONE))


def make_reasoning_parser(name: str, *, prompt_text: str) -> ReasoningParser | None:
    if check_reasoning_parser(name) == NONE:
        return None
    return REASONING_PARSERS[name](prompt_text=prompt_text)


def make_tool_parser(name: str) -> ToolParser | None:
    if check_tool_parser(name) == NONE:
        return None
    return TOOL_PARSERS[name]()
