"""One generation's text → assistant message deltas: the reasoning parser first, the tool parser on its content."""

from __future__ import annotations

from trtforge.proxy.parsers.base import MessageDelta, ReasoningDelta, ReasoningParser, ToolParser


class MessageParser:
    """Chains an optional reasoning parser and an optional tool parser over one generation's text."""

    def __init__(self, reasoning: ReasoningParser | None, tools: ToolParser | None) -> None:
        self._reasoning = reasoning
        self._tools = tools

    @property
    def called_tools(self) -> bool:
        return self._tools is not None and self._tools.calls > 0

    def feed(self, text: str) -> MessageDelta:
        split = self._reasoning.feed(text) if self._reasoning else ReasoningDelta(content=text)
        return self._content(split, final=False)

    def finish(self) -> MessageDelta:
        split = self._reasoning.finish() if self._reasoning else ReasoningDelta()
        return self._content(split, final=True)

    def _content(self, split: ReasoningDelta, *, final: bool) -> MessageDelta:
        if self._tools is None:
            return MessageDelta(reasoning=split.reasoning, content=split.content)
        found = self._tools.feed(split.content) if split.content else None
        content = found.content if found else ""
        calls = found.tool_calls if found else ()
        if final:
            rest = self._tools.finish()
            content += rest.content
            calls += rest.tool_calls
        return MessageDelta(reasoning=split.reasoning, content=content, tool_calls=calls)
