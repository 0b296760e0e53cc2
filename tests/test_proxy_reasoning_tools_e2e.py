"""Reasoning, tool calls and structured output end to end: the official `openai` SDK against the proxy over a
real tritonserver serving the tiny model on each backend (`proxy_fixtures.BACKENDS`: the reference
`tensorrt_llm` model, and a PyTorch entry through the LLM API model on the 1.3 stand-in).

Tiny learned two behaviours by heart (see `trtforge.reference.tiny.BEHAVIOURS`): a thinking block before a
greeting, and a `get_weather` call. Guided decoding holds even its untrained replies to a schema.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pytest

from conftest import free_port
from proxy_fixtures import BACKENDS, serve_in_thread, serving_tiny
from tool_schemas import CHAT_MOOD_TOOL, FORECAST_SCHEMA
from trtforge.engine import EngineInfo
from trtforge.proxy import ProxySettings, make_server
from trtforge.proxy.backend import GenerationRequest, TritonBackend
from trtforge.proxy.errors import InvalidRequestError
from trtforge.reference.tiny import (
    THINK_ANSWER,
    THINK_PROMPT,
    THINK_REASONING,
    WEATHER_CALL,
    WEATHER_PROMPT,
    WEATHER_TOOL,
)
from trtforge.triton.server import TritonServer

pytestmark = pytest.mark.triton

MODEL = "tiny"
THINK = [{"role": "user", "content": THINK_PROMPT}]
WEATHER = [{"role": "user", "content": WEATHER_PROMPT}]
NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}}
# Parameters with a bounded JSON form: tiny never learned this tool, guided decoding alone must make the call.
MOOD_TOOL = CHAT_MOOD_TOOL
LIGHT_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "switch_light",
        "parameters": {
            "type": "object",
            "properties": {"on": {"type": "boolean"}},
            "required": ["on"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(scope="module", params=BACKENDS)
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[EngineInfo, TritonServer]]:
    root = tmp_path_factory.mktemp(f"features-{request.param}")
    with serving_tiny(request.param, request, root, max_batch_size=4) as running:
        yield running


@pytest.fixture(scope="module")
def tiny(served: tuple[EngineInfo, TritonServer]) -> EngineInfo:
    return served[0]


@pytest.fixture(scope="module")
def triton(served: tuple[EngineInfo, TritonServer]) -> TritonServer:
    return served[1]


@pytest.fixture(scope="module")
def sdk(tiny: EngineInfo, triton: TritonServer) -> Iterator[openai.OpenAI]:
    settings = ProxySettings.from_engine(MODEL, tiny, triton.grpc_url)
    with serve_in_thread(make_server([settings], port=free_port(), log_level="warning")) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=300)


def _chat(sdk: openai.OpenAI, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
    return sdk.chat.completions.create(model=MODEL, messages=messages, temperature=0, **kwargs)  # type: ignore[arg-type]


def _joined_stream(sdk: openai.OpenAI, messages: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
    """The streamed deltas of one chat, joined: reasoning, content, tool calls by index, finish reason."""
    joined: dict[str, Any] = {"reasoning": "", "content": "", "calls": {}, "finish": None}
    for chunk in _chat(sdk, messages, stream=True, **kwargs):
        for choice in chunk.choices:
            delta = choice.delta
            joined["reasoning"] += getattr(delta, "reasoning_content", None) or ""
            joined["content"] += delta.content or ""
            for call in delta.tool_calls or []:
                entry = joined["calls"].setdefault(call.index, {"id": None, "name": "", "arguments": ""})
                entry["id"] = entry["id"] or call.id
                entry["name"] += (call.function and call.function.name) or ""
                entry["arguments"] += (call.function and call.function.arguments) or ""
            joined["finish"] = choice.finish_reason or joined["finish"]
    return joined


def _whole(response: Any) -> dict[str, Any]:
    choice = response.choices[0]
    message = choice.message
    calls = {
        i: {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
        for i, c in enumerate(message.tool_calls or [])
    }
    return {
        "reasoning": getattr(message, "reasoning_content", None) or "",
        "content": message.content or "",
        "calls": calls,
        "finish": choice.finish_reason,
    }


def _without_ids(parsed: dict[str, Any]) -> dict[str, Any]:
    calls = {i: {k: v for k, v in c.items() if k != "id"} for i, c in parsed["calls"].items()}
    return {**parsed, "calls": calls}


def _same_streamed_and_not(
    sdk: openai.OpenAI, messages: list[dict[str, Any]], **kwargs: Any
) -> dict[str, Any]:
    whole = _whole(_chat(sdk, messages, **kwargs))
    streamed = _joined_stream(sdk, messages, **kwargs)
    assert _without_ids(streamed) == _without_ids(whole)
    assert all(call["id"].startswith("call_") for call in streamed["calls"].values())
    return whole


# ------------------------------------------------------------------------------------------------ reasoning


def test_thinking_goes_to_reasoning_content_streamed_and_not(sdk: openai.OpenAI) -> None:
    response = _chat(sdk, THINK)
    message = response.choices[0].message
    assert message.reasoning_content == THINK_REASONING  # type: ignore[attr-defined]
    assert message.content == THINK_ANSWER
    assert response.choices[0].finish_reason == "stop"
    whole = _same_streamed_and_not(sdk, THINK)
    assert "<think>" not in whole["content"] and "</think>" not in whole["content"]


def test_thinking_off_gives_content_only(sdk: openai.OpenAI) -> None:
    whole = _same_streamed_and_not(sdk, THINK, extra_body=NO_THINKING)
    assert whole == {"reasoning": "", "content": THINK_ANSWER, "calls": {}, "finish": "stop"}
    message = _chat(sdk, THINK, extra_body=NO_THINKING).choices[0].message
    assert getattr(message, "reasoning_content", None) is None


def test_earlier_reasoning_in_the_history_is_accepted(sdk: openai.OpenAI) -> None:
    history = [
        *THINK,
        {"role": "assistant", "content": THINK_ANSWER, "reasoning_content": THINK_REASONING},
        {"role": "user", "content": "Hello"},
    ]
    assert _chat(sdk, history, max_tokens=16).choices[0].finish_reason in ("stop", "length")


# ----------------------------------------------------------------------------------------------- tool calls


def test_tool_call_streamed_and_not(sdk: openai.OpenAI) -> None:
    whole = _same_streamed_and_not(sdk, WEATHER, tools=[WEATHER_TOOL])
    assert whole["finish"] == "tool_calls"
    assert whole["content"] == ""
    [call] = whole["calls"].values()
    assert call["name"] == WEATHER_CALL["name"]
    assert json.loads(call["arguments"]) == WEATHER_CALL["arguments"] == {"city": "Paris"}
    response = _chat(sdk, WEATHER, tools=[WEATHER_TOOL])
    assert response.choices[0].message.content is None
    assert response.choices[0].message.tool_calls[0].type == "function"


def test_the_sdk_stream_helper_reassembles_the_tool_call(sdk: openai.OpenAI) -> None:
    with sdk.chat.completions.stream(
        model=MODEL,
        messages=WEATHER,
        tools=[WEATHER_TOOL],
        temperature=0,  # type: ignore[arg-type, list-item]
    ) as stream:
        final = stream.get_final_completion()
    [call] = final.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert final.choices[0].finish_reason == "tool_calls"


def test_tool_choice_none_offers_no_tools(sdk: openai.OpenAI) -> None:
    whole = _same_streamed_and_not(sdk, WEATHER, tools=[WEATHER_TOOL], tool_choice="none", max_tokens=48)
    assert whole["calls"] == {}
    assert whole["content"] and "<tool_call>" not in whole["content"]
    assert whole["finish"] in ("stop", "length")


def test_tool_results_in_the_history_render_through_the_template(sdk: openai.OpenAI) -> None:
    response = _chat(sdk, WEATHER, tools=[WEATHER_TOOL])
    call = response.choices[0].message.tool_calls[0]
    history = [
        *WEATHER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 °C."},
    ]
    follow_up = _chat(sdk, history, tools=[WEATHER_TOOL], max_tokens=32)
    assert follow_up.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert follow_up.usage is not None and follow_up.usage.prompt_tokens > response.usage.prompt_tokens  # type: ignore[union-attr]


def test_named_tool_choice_is_enforced(sdk: openai.OpenAI) -> None:
    choice = {"type": "function", "function": {"name": "set_mood"}}
    tools = [WEATHER_TOOL, MOOD_TOOL]
    whole = _same_streamed_and_not(sdk, THINK, tools=tools, tool_choice=choice, max_tokens=64)
    assert whole["finish"] == "tool_calls"
    assert whole["content"] == "" and whole["reasoning"] == ""
    [call] = whole["calls"].values()
    assert call["name"] == "set_mood"
    jsonschema.validate(json.loads(call["arguments"]), MOOD_TOOL["function"]["parameters"])


def test_required_tool_choice_is_enforced(sdk: openai.OpenAI) -> None:
    whole = _same_streamed_and_not(
        sdk, THINK, tools=[LIGHT_TOOL, MOOD_TOOL], tool_choice="required", max_tokens=96
    )
    assert whole["finish"] == "tool_calls"
    [call] = whole["calls"].values()
    tool = {"switch_light": LIGHT_TOOL, "set_mood": MOOD_TOOL}[call["name"]]
    jsonschema.validate(json.loads(call["arguments"]), tool["function"]["parameters"])


# ---------------------------------------------------------------------------------------- structured output


def test_json_schema_response_validates(sdk: openai.OpenAI) -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "forecast", "schema": FORECAST_SCHEMA, "strict": True},
    }
    whole = _same_streamed_and_not(sdk, WEATHER, response_format=response_format, max_tokens=64)
    assert whole["finish"] == "stop"
    jsonschema.validate(json.loads(whole["content"]), FORECAST_SCHEMA)


def test_json_object_response_is_an_object(sdk: openai.OpenAI) -> None:
    response = _chat(sdk, THINK, response_format={"type": "json_object"}, max_tokens=64)
    if response.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(response.choices[0].message.content or ""), dict)
    else:  # cut by max_tokens: still the start of an object
        assert (response.choices[0].message.content or "").startswith("{")


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"tool_choice": "required"}, None),
        ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, None),
        (
            {"tools": [WEATHER_TOOL], "tool_choice": "required", "response_format": {"type": "json_object"}},
            "response_format",
        ),
    ],
)
def test_bad_structured_requests_are_400s(
    sdk: openai.OpenAI, kwargs: dict[str, Any], param: str | None
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _chat(sdk, THINK, **kwargs)
    if param is not None:
        assert caught.value.body["param"] == param  # type: ignore[index]
    assert _chat(sdk, THINK).choices[0].message.content == THINK_ANSWER  # and the server keeps serving


# Schemas xgrammar cannot turn into a grammar, each with the reason the client must be told.
BAD_SCHEMAS: list[tuple[dict[str, Any], str]] = [
    ({"type": "foo"}, 'Unsupported type "foo"'),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, "missing"),
    ({"type": "string", "pattern": "(unclosed"}, "parenthesis is not closed"),
    ({"type": "integer", "minimum": 5, "maximum": 1}, "minimum greater than maximum"),
    # Well formed, but so deep that xgrammar would take seconds (about 15 s here) to convert it.
    (json.loads('{"type": "object", "properties": {"a": ' * 200 + "{}" + "}}" * 200), "nested more than"),
]


def _assert_one_line_400(error: openai.BadRequestError, reason: str, param: str) -> None:
    body: dict[str, Any] = error.body  # type: ignore[assignment]
    assert body["type"] == "invalid_request_error"
    assert body["param"] == param
    assert reason in body["message"]
    assert "\n" not in body["message"] and ".cc:" not in body["message"]  # no xgrammar source location


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("schema", "reason"), BAD_SCHEMAS)
def test_a_response_format_xgrammar_cannot_compile_is_a_400(
    sdk: openai.OpenAI, schema: dict[str, Any], reason: str, stream: bool
) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "bad", "schema": schema}}
    with pytest.raises(openai.BadRequestError) as caught:
        _chat(sdk, THINK, response_format=response_format, stream=stream, max_tokens=8)
    _assert_one_line_400(caught.value, reason, "response_format.json_schema")
    assert _chat(sdk, THINK).choices[0].message.content == THINK_ANSWER  # and the server keeps serving


def test_forced_tool_parameters_xgrammar_cannot_compile_are_a_400(sdk: openai.OpenAI) -> None:
    tool = {"type": "function", "function": {"name": "broken", "parameters": {"type": "foo"}}}
    named = {"type": "function", "function": {"name": "broken"}}
    for choice in (named, "required"):
        with pytest.raises(openai.BadRequestError) as caught:
            _chat(sdk, WEATHER, tools=[tool], tool_choice=choice, max_tokens=8)
        _assert_one_line_400(caught.value, 'Unsupported type "foo"', "tools")
    assert _chat(sdk, THINK).choices[0].message.content == THINK_ANSWER


async def _generate_all(backend: TritonBackend, gen: GenerationRequest) -> list[int]:
    ids: list[int] = []
    async for chunk in backend.generate(gen):
        ids.extend(chunk.ids)
    return ids


@pytest.mark.parametrize(
    ("guide", "reason"),
    [
        (("json_schema", json.dumps(BAD_SCHEMAS[0][0])), 'Unsupported type "foo"'),
        (("regex", "(unclosed"), "parenthesis is not closed"),
        (("ebnf_grammar", "root ::= undefined_rule"), 'Rule "undefined_rule" is not defined'),
    ],
)
def test_a_guide_the_model_refuses_is_an_invalid_request(
    tiny: EngineInfo, triton: TritonServer, guide: tuple[str, str], reason: str
) -> None:
    """The path a guide takes when the proxy does not check it: the model's refusal maps to a 400, one line."""

    async def run() -> None:
        backend = TritonBackend(triton.grpc_url, "tensorrt_llm", request_timeout_s=300)
        await backend.open()
        try:
            gen = GenerationRequest(
                request_id="bad-guide", prompt_ids=(5, 6, 7), max_tokens=4, end_id=None, pad_id=0, guide=guide
            )
            with pytest.raises(InvalidRequestError) as caught:
                await _generate_all(backend, gen)
            assert reason in caught.value.message
            assert "\n" not in caught.value.message and ".cc:" not in caught.value.message
            good = GenerationRequest(
                request_id="good", prompt_ids=(5, 6, 7), max_tokens=4, end_id=None, pad_id=0
            )
            assert len(await _generate_all(backend, good)) == 4  # the model keeps serving
        finally:
            await backend.close()

    asyncio.run(run())
