"""Hermes-style tool calls, as Qwen3 writes them: `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`.

Text around the blocks stays content (whitespace-only runs between blocks are layout and dropped). While a
block streams, the call is announced as soon as its name is known and its arguments follow as they arrive,
holding back the characters that may be the end of the wrapping object. A block whose name never shows in that
`{"name": …, "arguments": …}` order is parsed whole when it ends; one that is not a call stays content.
"""

from __future__ import annotations

import json
import re
from typing import Any

from trtforge.proxy.parsers.base import (
    ToolCallDelta,
    ToolDelta,
    ToolParser,
    new_tool_call_id,
    partial_tag_length,
)

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
# The start of a block up to where the arguments begin (their first character seen, so that whitespace still
# to come is never taken for part of them).
_HEADER = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*(?=\S)')
# What may close the wrapping object at the end of the arguments seen so far.
_OBJECT_END = re.compile(r"\s*\}?\s*\Z")


class _Call:
    """The block being read."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.args_start: int | None = None  # set once the name has been announced
        self.sent = 0  # argument characters sent


class HermesToolParser(ToolParser):
    name = "hermes"

    def __init__(self) -> None:
        super().__init__()
        self._held = ""
        self._call: _Call | None = None
        self._after_call = False  # nothing but whitespace since the last block closed

    def feed(self, text: str) -> ToolDelta:
        self._held += text
        content: list[str] = []
        calls: list[ToolCallDelta] = []
        while True:
            if self._call is None:
                start = self._held.find(CALL_OPEN)
                if start >= 0:
                    before = self._held[:start]
                    content.append("" if self._after_call and not before.strip() else before)
                    self._held = self._held[start + len(CALL_OPEN) :]
                    self._call = _Call(self.calls)
                    continue
                keep = partial_tag_length(self._held, CALL_OPEN)
                ready = self._held[: len(self._held) - keep]
                if self._after_call and not ready.strip():
                    break  # whitespace after a call: layout unless text follows
                content.append(ready)
                self._after_call = False
                self._held = self._held[len(ready) :]
                break
            end = self._held.find(CALL_CLOSE)
            if end < 0:
                keep = partial_tag_length(self._held, CALL_CLOSE)
                calls.extend(self._progress(self._call, self._held[: len(self._held) - keep], closed=False))
                break
            body = self._held[:end]
            self._held = self._held[end + len(CALL_CLOSE) :]
            delta = self._close(self._call, body)
            content.append(delta.content)
            calls.extend(delta.tool_calls)
            self._call = None
            self._after_call = not delta.content
        return ToolDelta(content="".join(content), tool_calls=tuple(calls))

    def finish(self) -> ToolDelta:
        held, self._held = self._held, ""
        if self._call is not None:
            call, self._call = self._call, None
            return self._close(call, held)  # cut short (length): what there is
        return ToolDelta(content="" if self._after_call and not held.strip() else held)

    def _announce(self, call: _Call, name: str, arguments: str = "") -> ToolCallDelta:
        self.calls += 1
        return ToolCallDelta(index=call.index, id=new_tool_call_id(), name=name, arguments=arguments)

    def _progress(self, call: _Call, body: str, *, closed: bool) -> list[ToolCallDelta]:
        deltas: list[ToolCallDelta] = []
        if call.args_start is None:
            header = _HEADER.match(body)
            if header is None:
                return deltas
            try:
                name = json.loads(f'"{header.group(1)}"')
            except ValueError:
                return deltas
            call.args_start = header.end()
            deltas.append(self._announce(call, name))
        arguments = body[call.args_start :]
        tail = _OBJECT_END.search(arguments)
        cut = tail.start() if tail else len(arguments)
        if closed:
            cut = len(arguments.rstrip().removesuffix("}").rstrip())
        if cut > call.sent:
            deltas.append(ToolCallDelta(index=call.index, arguments=arguments[call.sent : cut]))
            call.sent = cut
        return deltas

    def _close(self, call: _Call, body: str) -> ToolDelta:
        if call.args_start is not None or _HEADER.match(body):
            return ToolDelta(tool_calls=tuple(self._progress(call, body, closed=True)))
        parsed = _parse_call(body)
        if parsed is None:
            return ToolDelta(content=f"{CALL_OPEN}{body}{CALL_CLOSE}")
        name, arguments = parsed
        return ToolDelta(tool_calls=(self._announce(call, name, arguments),))


def _parse_call(body: str) -> tuple[str, str] | None:
    """(name, arguments as JSON text) of a whole block, or None when it is not a call."""
    try:
        value: Any = json.loads(body)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return value["name"], text
