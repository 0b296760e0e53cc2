"""Tool calls the request forced (`tool_choice` required or a named function), generated as guided JSON.

The output is JSON that guided decoding held to a schema: for a named function, its arguments object; for
`required`, one `{"name": …, "parameters": {…}}` object. `required` makes exactly one call: an array of calls
would let a weak model add calls until it runs out of tokens. Neither depends on the model family.
"""

from __future__ import annotations

import json
from typing import Any

from trtforge.proxy.parsers.base import ToolCallDelta, ToolDelta, ToolParser, new_tool_call_id


def named_tool_schema(parameters: dict[str, Any]) -> dict[str, Any]:
    """The guided-decoding schema of a call to one named function: its parameters."""
    return parameters or {"type": "object", "properties": {}}


def required_tool_schema(tools: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The guided-decoding schema of a call to any one of `tools` ((name, parameters) pairs)."""
    choices = [
        {
            "type": "object",
            "properties": {"name": {"const": name}, "parameters": named_tool_schema(parameters)},
            "required": ["name", "parameters"],
        }
        for name, parameters in tools
    ]
    return choices[0] if len(choices) == 1 else {"anyOf": choices}


class NamedToolParser(ToolParser):
    """All output is the arguments of a call to `function`, streamed as it comes."""

    name = "named"

    def __init__(self, function: str) -> None:
        super().__init__()
        self._function = function

    def feed(self, text: str) -> ToolDelta:
        if not text:
            return ToolDelta()
        if self.calls == 0:
            self.calls = 1
            call = ToolCallDelta(index=0, arguments=text, id=new_tool_call_id(), name=self._function)
        else:
            call = ToolCallDelta(index=0, arguments=text)
        return ToolDelta(tool_calls=(call,))

    def finish(self) -> ToolDelta:
        if self.calls == 0:  # nothing generated: still the forced call, with empty arguments
            self.calls = 1
            return ToolDelta(tool_calls=(ToolCallDelta(index=0, id=new_tool_call_id(), name=self._function),))
        return ToolDelta()


class RequiredToolParser(ToolParser):
    """The output is a `{"name", "parameters"}` object (or an array of them); it is read whole at the end."""

    name = "required"

    def __init__(self) -> None:
        super().__init__()
        self._text: list[str] = []

    def feed(self, text: str) -> ToolDelta:
        self._text.append(text)
        return ToolDelta()

    def finish(self) -> ToolDelta:
        text = "".join(self._text)
        try:
            value: Any = json.loads(text)
        except ValueError:
            return ToolDelta(content=text)  # cut short (length): not a complete call
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list) or not all(
            isinstance(item, dict) and isinstance(item.get("name"), str) for item in value
        ):
            return ToolDelta(content=text)
        calls = []
        for index, item in enumerate(value):
            arguments = json.dumps(item.get("parameters", {}), ensure_ascii=False)
            calls.append(
                ToolCallDelta(index=index, arguments=arguments, id=new_tool_call_id(), name=item["name"])
            )
        self.calls = len(calls)
        return ToolDelta(tool_calls=tuple(calls))
