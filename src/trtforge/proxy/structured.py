"""Structured output: `response_format` and forced tool calls as TensorRT-LLM guided-decoding inputs.

The `tensorrt_llm` model takes a guide type (`json`, `json_schema`, `regex`, `ebnf_grammar`) and the guide
text; its grammar backend (xgrammar) then masks every token the guide does not allow. OpenAI's `json_object`
asks for an object, so it becomes the schema `{"type": "object"}` (the `json` type would allow arrays too).

A guide xgrammar cannot turn into a grammar (an unknown type, a `$ref` to nowhere, a broken `pattern`, minimum
above maximum, ...) is refused here with a 400 naming the problem, before the request reaches Triton: xgrammar's
schema-to-grammar conversion takes well under a millisecond for ordinary schemas. xgrammar imports torch, so it is
imported at the first guided request (requests are prepared off the event loop); without xgrammar the check is
skipped and the model's own refusal comes back as a 400 instead (see `backend._response_error`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from trtforge.proxy.errors import InvalidRequestError
from trtforge.proxy.parsers import named_tool_schema, required_tool_schema
from trtforge.proxy.protocol import ChatCompletionRequest, NamedToolChoice

GUIDE_TYPES = ("json", "json_schema", "regex", "ebnf_grammar")
# xgrammar's time to convert a schema grows steeply with its nesting: ~40 ms at 64 nested JSON containers
# (about 32 levels of object properties), 0.4 s at 120, 15 s at 400: time one request would hold the proxy's
# preparation thread and then the model's decoding thread. Real schemas stay far below.
MAX_SCHEMA_DEPTH = 64


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
        guided = _for_response_format(response_format.type, response_format.json_schema)
        return check_guide(guided, what="response_format schema", param="response_format.json_schema")
    tools = {tool.function.name: tool.function.parameters or {} for tool in request.tools or []}
    if isinstance(choice, NamedToolChoice):
        guided = GuidedDecoding.schema(named_tool_schema(tools[choice.function.name]))
    elif choice == "required":
        guided = GuidedDecoding.schema(required_tool_schema(list(tools.items())))
    else:
        return None
    return check_guide(guided, what="tool parameters schema", param="tools")


def check_guide(guided: GuidedDecoding, *, what: str, param: str) -> GuidedDecoding:
    """`guided` when xgrammar can turn it into a grammar (or is not installed).

    Raises:
        InvalidRequestError: xgrammar refuses the guide; the message is its reason, on one line.
    """
    if guided.guide_type == "json_schema" and _depth(json.loads(guided.guide)) > MAX_SCHEMA_DEPTH:
        raise InvalidRequestError(
            f"invalid {what}: nested more than {MAX_SCHEMA_DEPTH} levels deep", param=param
        )
    try:
        import xgrammar
    except ImportError:  # the model compiles the guide and refuses a bad one itself
        return guided
    try:
        if guided.guide_type == "json_schema":
            # As the model compiles it (compact JSON); the whitespace option does not change what is valid.
            xgrammar.Grammar.from_json_schema(guided.guide, any_whitespace=False)
        elif guided.guide_type == "regex":
            xgrammar.Grammar.from_regex(guided.guide)
        elif guided.guide_type == "ebnf_grammar":
            xgrammar.Grammar.from_ebnf(guided.guide)
    except Exception as exc:  # xgrammar raises RuntimeError, ValueError or TypeError for a bad guide
        raise InvalidRequestError(f"invalid {what}: {grammar_error_text(str(exc))}", param=param) from None
    return guided


def _depth(value: Any) -> int:
    """How many JSON containers (objects, arrays) nest in `value`, walked without recursion."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_SCHEMA_DEPTH:
            break
        pending.extend((child, depth + 1) for child in children)
    return deepest


# xgrammar prefixes its C++ errors with a time and a source location: `[15:47:23] /project/cpp/x.cc:83: `.
_XGRAMMAR_LOCATION = re.compile(r"(?:\[[0-9:]+\]\s*)?\S+\.(?:cc|cpp|h):\d+:\s*")


def grammar_error_text(message: str) -> str:
    """xgrammar's reason for refusing a guide, without its source location, on one line."""
    text = " ".join(line.strip() for line in message.splitlines() if line.strip())
    return _XGRAMMAR_LOCATION.sub("", text).strip() or "xgrammar cannot compile it"


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
