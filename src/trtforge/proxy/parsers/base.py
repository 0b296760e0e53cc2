"""The parser interfaces: reasoning parsers split thinking from the answer, tool parsers find tool calls.

Both are incremental: `feed` takes the next piece of generated text and returns what is certain so far, holding
back text that might still turn out to be markup (a partial `</think>`); `finish` returns the rest. A
non-streamed response runs the same parser over the same pieces, so the joined stream deltas equal it exactly.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of one tool call: its first piece has the id and name, later ones more argument text."""

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class ReasoningDelta:
    reasoning: str = ""
    content: str = ""


@dataclass(frozen=True)
class ToolDelta:
    content: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()


@dataclass(frozen=True)
class MessageDelta:
    """What one piece of generated text adds to the assistant message."""

    reasoning: str = ""
    content: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content or self.tool_calls)


def new_tool_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def partial_tag_length(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `tag` (to hold back, in case)."""
    for size in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


class ReasoningParser(ABC):
    """Splits generated text into reasoning and content, for one generation.

    Args:
        prompt_text: the end of the rendered prompt; templates that open (or close) the thinking block in the
            prompt decide the parser's starting state.
    """

    name: str = ""

    def __init__(self, *, prompt_text: str = "") -> None:
        self.prompt_text = prompt_text

    @abstractmethod
    def feed(self, text: str) -> ReasoningDelta:
        """Split the next piece of text (possibly holding back some of it)."""

    @abstractmethod
    def finish(self) -> ReasoningDelta:
        """The held-back text, at the end of the generation."""


class ToolParser(ABC):
    """Finds tool calls in the content (what the reasoning parser leaves), for one generation."""

    name: str = ""

    def __init__(self) -> None:
        self.calls = 0

    @abstractmethod
    def feed(self, text: str) -> ToolDelta:
        """Parse the next piece of content (possibly holding back some of it)."""

    @abstractmethod
    def finish(self) -> ToolDelta:
        """The held-back text and any unfinished call, at the end of the generation."""


@dataclass
class ParsedMessage:
    """An assistant message assembled from deltas (what a non-streamed response returns)."""

    reasoning: list[str] = field(default_factory=list)
    content: list[str] = field(default_factory=list)
    tool_calls: list[dict[str, str]] = field(default_factory=list)

    def add(self, delta: MessageDelta) -> None:
        if delta.reasoning:
            self.reasoning.append(delta.reasoning)
        if delta.content:
            self.content.append(delta.content)
        for call in delta.tool_calls:
            if call.id is not None:
                self.tool_calls.append({"id": call.id, "name": call.name or "", "arguments": ""})
            self.tool_calls[call.index]["arguments"] += call.arguments
