"""Reasoning and tool-call parsers: an interface, one module per model family, a registry by name."""

from trtforge.proxy.parsers.base import (
    MessageDelta,
    ParsedMessage,
    ReasoningParser,
    ToolCallDelta,
    ToolParser,
)
from trtforge.proxy.parsers.forced import (
    NamedToolParser,
    RequiredToolParser,
    named_tool_schema,
    required_tool_schema,
)
from trtforge.proxy.parsers.message import MessageParser
from trtforge.proxy.parsers.registry import (
    NONE,
    UnknownParserError,
    check_reasoning_parser,
    check_tool_parser,
    default_parsers,
    make_reasoning_parser,
    make_tool_parser,
)

__all__ = [
    "NONE",
    "MessageDelta",
    "MessageParser",
    "NamedToolParser",
    "ParsedMessage",
    "ReasoningParser",
    "RequiredToolParser",
    "ToolCallDelta",
    "ToolParser",
    "UnknownParserError",
    "check_reasoning_parser",
    "check_tool_parser",
    "default_parsers",
    "make_reasoning_parser",
    "make_tool_parser",
    "named_tool_schema",
    "required_tool_schema",
]
