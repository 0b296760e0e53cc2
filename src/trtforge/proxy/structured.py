"""Structured output: `response_format` and forced tool calls as TensorRT-LLM guided-decoding inputs.

The `tensorrt_llm` model takes a guide type (`json`, `json_schema`, `regex`, `ebnf_grammar`) and the guide
text; its grammar backend (xgrammar) then masks every token the guide does not allow. OpenAI's `json_object`
asks for an object, so it becomes the schema `{"type": "object"}` (the `json` type would allow arrays too).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from trtforge.proxy.errors import InvalidRequestError
from trtforge.proxy.parsers import named_tool_schema, required_tool_schema
from trtforge.proxy.protocol import ChatCompletionRequest, NamedToolChoice

GUIDE_TYPES = ("json", "json_schema", "regex", "ebnf_grammar")


@dataclass(frozen=True)
class GuidedDecoding:
    """The `guided_decoding_guide_type` and `guided_decoding_guide` inputs of one generation."""

    guide_type: str
    guide: str

    def __post_init__(self) -> None:
        if self.guide_type not in GUIDE_TYPES:
            raise ValueError(f"guide type {self.guide_type!r} is not one of {', '.join(GUIDE_TYPES)}")

    @classmethod
    def schema(cls, schema: dict[str, Any]) -> GuidedDecoding:
        return cls("json_schema", json.dumps(schema, ensure_ascii=False, sort_keys=True))


def guided_decoding_for(request: ChatCompletionRequest) -> GuidedDecoding | None:
    """What guided decoding a chat request needs: its response format, or the tool calls it forces.

    Raises:
        InvalidRequestError: an unknown response format, or a response format with a forced tool call.
    """
    choice = request.effective_tool_choice
    forced = choice == "required" or isinstance(choice, NamedToolChoice)
    response_format = request.response_format
    if response_format is not None and response_format.type != "text":
        if forced:
            raise InvalidRequestError(
                "response_format cannot be combined with tool_choice `required` or a named function",
                param="response_format",
            )
        return _for_response_format(response_format.type, response_format.json_schema)
    tools = {tool.function.name: tool.function.parameters or {} for tool in request.tools or []}
    if isinstance(choice, NamedToolChoice):
        return GuidedDecoding.schema(named_tool_schema(tools[choice.function.name]))
    if choice == "required":
        return GuidedDecoding.schema(required_tool_schema(list(tools.items())))
    return None


def _for_response_format(kind: str, json_schema: Any) -> GuidedDecoding:
    if kind == "json_object":
        return GuidedDecoding.schema({"type": "object"})
    if kind == "json_schema":
        if json_schema is None:
            raise InvalidRequestError(
                "response_format `json_schema` needs a `json_schema` object with a `schema`",
                param="response_format.json_schema",
            )
        return GuidedDecoding.schema(json_schema.json_schema)
    raise InvalidRequestError(
        f"response_format `{kind}` is not supported; use text, json_object or json_schema",
        param="response_format.type",
    )
