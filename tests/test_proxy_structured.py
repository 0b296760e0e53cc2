"""`response_format` and forced `tool_choice` → the guided-decoding inputs the `tensorrt_llm` model takes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from trtforge.proxy.errors import InvalidRequestError
from trtforge.proxy.protocol import ChatCompletionRequest
from trtforge.proxy.structured import MAX_SCHEMA_DEPTH, GuidedDecoding, check_guide, guided_decoding_for

PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": PARAMS}},
    {"type": "function", "function": {"name": "ping"}},
]


def _request(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], **fields}
    )


def _guide(**fields: Any) -> tuple[str, Any] | None:
    guided = guided_decoding_for(_request(**fields))
    return None if guided is None else (guided.guide_type, json.loads(guided.guide))


def test_plain_requests_are_not_guided() -> None:
    assert _guide() is None
    assert _guide(response_format={"type": "text"}) is None
    assert _guide(tools=TOOLS) is None  # auto: the model decides
    assert _guide(tools=TOOLS, tool_choice="none") is None


def test_response_formats() -> None:
    assert _guide(response_format={"type": "json_object"}) == ("json_schema", {"type": "object"})
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    assert _guide(response_format=response_format) == ("json_schema", schema)


def test_forced_tool_calls() -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert _guide(tools=TOOLS, tool_choice=named) == ("json_schema", PARAMS)
    kind, schema = _guide(tools=TOOLS, tool_choice="required") or ("", {})
    assert kind == "json_schema"
    names = [choice["properties"]["name"]["const"] for choice in schema["anyOf"]]
    assert names == ["get_weather", "ping"]
    assert schema["anyOf"][0]["properties"]["parameters"] == PARAMS
    assert schema["anyOf"][1]["properties"]["parameters"] == {"type": "object", "properties": {}}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"response_format": {"type": "regex"}}, "response_format.type"),
        (
            {"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}},
            "response_format",
        ),
    ],
)
def test_requests_it_refuses(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        guided_decoding_for(_request(**fields))
    assert caught.value.param == param


def test_only_the_backend_guide_types_exist() -> None:
    with pytest.raises(ValueError, match="not one of json, json_schema, regex, ebnf_grammar"):
        GuidedDecoding("structural_tag", "{}")


@pytest.mark.parametrize(
    ("guided", "reason"),
    [
        (GuidedDecoding.schema({"type": "foo"}), 'Unsupported type "foo"'),
        (GuidedDecoding.schema({"enum": []}), "enum array must not be empty"),
        (GuidedDecoding.schema({"type": "string", "minLength": 5, "maxLength": 1}), "greater than maxLength"),
        (GuidedDecoding("regex", "[a-"), "Regex parsing error"),
        (GuidedDecoding("ebnf_grammar", "root ::= other"), 'Rule "other" is not defined'),
    ],
)
def test_guides_xgrammar_cannot_compile_are_refused_in_one_line(guided: GuidedDecoding, reason: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        check_guide(guided, what="guide", param="p")
    assert caught.value.param == "p"
    assert caught.value.message.startswith("invalid guide: ")
    assert reason in caught.value.message
    assert "\n" not in caught.value.message and ".cc:" not in caught.value.message


def test_guides_xgrammar_compiles_pass() -> None:
    for guided in (
        GuidedDecoding.schema(PARAMS),
        GuidedDecoding.schema({"type": "object"}),
        GuidedDecoding("json", ""),
        GuidedDecoding("regex", "[a-z]+"),
        GuidedDecoding("ebnf_grammar", 'root ::= "yes" | "no"'),
    ):
        assert check_guide(guided, what="guide", param="p") is guided


def _nested(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def test_schemas_nested_too_deep_for_xgrammar_to_convert_quickly_are_refused() -> None:
    # Each level of properties is two JSON objects deep.
    assert check_guide(GuidedDecoding.schema(_nested(MAX_SCHEMA_DEPTH // 2 - 1)), what="schema", param="p")
    with pytest.raises(
        InvalidRequestError, match=f"invalid schema: nested more than {MAX_SCHEMA_DEPTH} levels"
    ):
        check_guide(GuidedDecoding.schema(_nested(400)), what="schema", param="p")
