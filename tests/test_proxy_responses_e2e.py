"""The OpenAI Responses API end to end: the official `openai` SDK (`responses.create`, `responses.stream`, the
stored-response calls) against the proxy over a real tritonserver serving the tiny model on each backend.

Tiny learned a thinking block before a greeting and a `get_weather` call (see `trtforge.reference.tiny`); its
replies show how the chat core's parsers become Responses output items. Every generating case is run whole and
streamed, and the stream accumulator's final Response must equal the whole one (ids aside).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from conftest import free_port
from proxy_fixtures import BACKENDS, serve_in_thread, serving_tiny, wait_until
from tool_schemas import FORECAST_SCHEMA, RESPONSES_MOOD_TOOL, RESPONSES_WEATHER_TOOL
from trtforge.engine import EngineInfo
from trtforge.proxy import ProxySettings, make_server
from trtforge.proxy.backend import TritonBackend
from trtforge.proxy.response_store import ResponseStoreLimits
from trtforge.reference.tiny import THINK_ANSWER, THINK_PROMPT, THINK_REASONING, WEATHER_CALL, WEATHER_PROMPT
from trtforge.triton.server import TritonServer

pytestmark = pytest.mark.triton

MODEL = "tiny"
WEATHER_TOOL = RESPONSES_WEATHER_TOOL
MOOD_TOOL = RESPONSES_MOOD_TOOL


@pytest.fixture(scope="module", params=BACKENDS)
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[EngineInfo, TritonServer]]:
    root = tmp_path_factory.mktemp(f"responses-{request.param}")
    with serving_tiny(request.param, request, root, max_batch_size=4) as running:
        yield running


@pytest.fixture(scope="module")
def proxy(served: tuple[EngineInfo, TritonServer]) -> Iterator[tuple[str, TritonBackend]]:
    tiny, triton = served
    settings = ProxySettings.from_engine(
        MODEL, tiny, triton.grpc_url, response_store=ResponseStoreLimits(max_responses=3)
    )
    server = make_server([settings], port=free_port(), log_level="warning")
    with serve_in_thread(server) as url:
        yield url, server.config.app.state.servings[MODEL].backend


@pytest.fixture(scope="module")
def sdk(proxy: tuple[str, TritonBackend]) -> openai.OpenAI:
    return _client(proxy[0], "key-a")


def _client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=300)


def _create(sdk: openai.OpenAI, **kwargs: Any) -> Any:
    return sdk.responses.create(model=MODEL, temperature=0, **kwargs)


def _shape(response: Any) -> dict[str, Any]:
    """What a Response says, ids and times aside (they differ from request to request)."""
    data = response.model_dump(mode="json", exclude_none=True)
    for key in ("id", "created_at", "completed_at"):
        data.pop(key, None)
    for item in data["output"]:
        item.pop("id", None)
        item.pop("call_id", None)
        item.pop("parsed_arguments", None)  # the SDK's own parse of a strict tool's arguments
        for part in item.get("content", []):
            part.pop("parsed", None)  # the SDK's own parse of text it knows to be JSON
    return data


def _streamed(sdk: openai.OpenAI, **kwargs: Any) -> tuple[Any, list[Any]]:
    """(the terminal event's Response, every event) of one streamed request, through the raw event stream."""
    events = list(_create(sdk, stream=True, **kwargs))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[1].type == "response.in_progress"
    assert events[-1].type in ("response.completed", "response.incomplete")
    assert len({e.response.id for e in events if hasattr(e, "response")}) == 1
    return events[-1].response, events


def _same_streamed_and_not(sdk: openai.OpenAI, **kwargs: Any) -> Any:
    """The whole Response, checked against the stream's terminal event and (when completed) the SDK's
    `responses.stream` accumulator, which rebuilds the Response from the events and raises on a broken order."""
    whole = _create(sdk, **kwargs)
    terminal, events = _streamed(sdk, **kwargs)
    assert _shape(terminal) == _shape(whole)
    if whole.status == "completed":
        with sdk.responses.stream(model=MODEL, temperature=0, **kwargs) as stream:
            final = stream.get_final_response()
        assert _shape(final) == _shape(whole)
        assert final.output_text == whole.output_text
    # The events rebuild the output items themselves: each added item's deltas joined are its final text.
    for index, item in enumerate(terminal.output):
        deltas = "".join(getattr(e, "delta", "") for e in events if getattr(e, "output_index", None) == index)
        final_text = item.arguments if item.type == "function_call" else item.content[0].text
        assert deltas == final_text
    return whole


# ------------------------------------------------------------------------------------------------ plain


def test_plain_text_streamed_and_not(sdk: openai.OpenAI) -> None:
    whole = _same_streamed_and_not(sdk, input="Hello", max_output_tokens=24)
    assert whole.id.startswith("resp_") and whole.object == "response"
    assert whole.status in ("completed", "incomplete")
    [message] = whole.output
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.content[0].type == "output_text" and message.content[0].annotations == []
    assert whole.output_text == message.content[0].text != ""
    assert whole.usage.total_tokens == whole.usage.input_tokens + whole.usage.output_tokens
    assert whole.usage.output_tokens <= 24


def test_request_fields_are_echoed(sdk: openai.OpenAI) -> None:
    response = _create(
        sdk,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Hello"}]}],
        instructions="Be brief.",
        max_output_tokens=8,
        top_p=0.5,
        metadata={"session": "42"},
        user="someone",
        parallel_tool_calls=False,
    )
    assert response.metadata == {"session": "42"}
    assert response.instructions == "Be brief."
    assert response.parallel_tool_calls is False
    assert response.max_output_tokens == 8 and response.temperature == 0 and response.top_p == 0.5
    assert response.tool_choice == "auto" and response.tools == []


def test_a_length_stop_is_incomplete_streamed_and_not(sdk: openai.OpenAI) -> None:
    whole = _same_streamed_and_not(sdk, input=THINK_PROMPT, max_output_tokens=4)
    assert whole.status == "incomplete"
    assert whole.incomplete_details.reason == "max_output_tokens"
    assert whole.usage.output_tokens == 4
    assert [item.status for item in whole.output] == ["incomplete"]
    with (
        sdk.responses.stream(model=MODEL, input=THINK_PROMPT, max_output_tokens=4) as stream,
        pytest.raises(RuntimeError, match=r"response\.completed"),
    ):
        stream.get_final_response()  # the SDK's own rule: an incomplete response is not a completed one


def test_instructions_are_the_system_message(sdk: openai.OpenAI) -> None:
    plain = _create(sdk, input="Hello", max_output_tokens=1)
    instructed = _create(sdk, input="Hello", instructions="Answer in one word.", max_output_tokens=1)
    assert instructed.usage.input_tokens > plain.usage.input_tokens


# ------------------------------------------------------------------------------------------------ reasoning


def test_thinking_is_a_reasoning_item_streamed_and_not(sdk: openai.OpenAI) -> None:
    whole = _same_streamed_and_not(sdk, input=THINK_PROMPT)
    assert whole.status == "completed"
    reasoning, _message = whole.output
    assert reasoning.type == "reasoning" and reasoning.id.startswith("rs_") and reasoning.summary == []
    assert [part.text for part in reasoning.content] == [THINK_REASONING]
    assert whole.output_text == THINK_ANSWER
    assert 0 < whole.usage.output_tokens_details.reasoning_tokens < whole.usage.output_tokens


def test_reasoning_effort_none_turns_thinking_off(sdk: openai.OpenAI) -> None:
    whole = _same_streamed_and_not(sdk, input=THINK_PROMPT, reasoning={"effort": "none"})
    assert [item.type for item in whole.output] == ["message"]
    assert whole.output_text == THINK_ANSWER
    assert whole.usage.output_tokens_details.reasoning_tokens == 0
    assert whole.reasoning.effort == "none"


def test_a_reasoning_item_in_the_input_goes_back_to_the_template(sdk: openai.OpenAI) -> None:
    first = _create(sdk, input=THINK_PROMPT, store=False)
    replay = [{"role": "user", "content": THINK_PROMPT}, *[item.model_dump() for item in first.output]]
    follow_up = _create(sdk, input=[*replay, {"role": "user", "content": "Hello"}], max_output_tokens=8)
    assert follow_up.status in ("completed", "incomplete")
    assert follow_up.usage.input_tokens > first.usage.input_tokens


# ----------------------------------------------------------------------------------------------- tool calls


def test_a_tool_call_is_a_function_call_item_streamed_and_not(sdk: openai.OpenAI) -> None:
    whole = _same_streamed_and_not(sdk, input=WEATHER_PROMPT, tools=[WEATHER_TOOL])
    assert whole.status == "completed"
    calls = [item for item in whole.output if item.type == "function_call"]
    assert [item.type for item in whole.output][-1] == "function_call" and len(calls) == 1
    [call] = calls
    assert call.id.startswith("fc_") and call.call_id.startswith("call_") and call.status == "completed"
    assert call.name == WEATHER_CALL["name"]
    assert json.loads(call.arguments) == WEATHER_CALL["arguments"]
    assert whole.output_text == ""


def test_the_stream_helper_sees_the_call_arguments_arrive(sdk: openai.OpenAI) -> None:
    with sdk.responses.stream(
        model=MODEL, input=WEATHER_PROMPT, tools=[WEATHER_TOOL], temperature=0
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    assert "response.function_call_arguments.done" in kinds
    [call] = [item for item in final.output if item.type == "function_call"]
    assert json.loads(call.arguments) == {"city": "Paris"}


def _second_turn_items(first: Any) -> list[dict[str, Any]]:
    [call] = [item for item in first.output if item.type == "function_call"]
    return [{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 °C."}]


def test_a_tool_result_continues_the_conversation_by_id_and_by_items(sdk: openai.OpenAI) -> None:
    first = _create(sdk, input=WEATHER_PROMPT, tools=[WEATHER_TOOL])
    result = _second_turn_items(first)
    by_id = _same_streamed_and_not(
        sdk, previous_response_id=first.id, input=result, tools=[WEATHER_TOOL], max_output_tokens=24
    )
    assert by_id.previous_response_id == first.id
    assert by_id.status in ("completed", "incomplete")
    # The same conversation sent as items (the client keeps the history, nothing stored) is the same prompt.
    history = [{"role": "user", "content": WEATHER_PROMPT}, *[item.model_dump() for item in first.output]]
    by_items = _same_streamed_and_not(
        sdk, input=[*history, *result], tools=[WEATHER_TOOL], max_output_tokens=24, store=False
    )
    assert by_items.usage.input_tokens == by_id.usage.input_tokens > first.usage.input_tokens
    assert _shape(by_items)["output"] == _shape(by_id)["output"]


def test_tool_choice_none_offers_no_tools(sdk: openai.OpenAI) -> None:
    whole = _same_streamed_and_not(
        sdk, input=WEATHER_PROMPT, tools=[WEATHER_TOOL], tool_choice="none", max_output_tokens=32
    )
    assert all(item.type != "function_call" for item in whole.output)
    assert "<tool_call>" not in whole.output_text


def test_named_tool_choice_is_enforced(sdk: openai.OpenAI) -> None:
    whole = _same_streamed_and_not(
        sdk,
        input=THINK_PROMPT,
        tools=[WEATHER_TOOL, MOOD_TOOL],
        tool_choice={"type": "function", "name": "set_mood"},
        max_output_tokens=64,
    )
    [call] = whole.output
    assert call.type == "function_call" and call.name == "set_mood"
    jsonschema.validate(json.loads(call.arguments), MOOD_TOOL["parameters"])
    assert whole.tool_choice.name == "set_mood"


def test_required_tool_choice_is_enforced(sdk: openai.OpenAI) -> None:
    whole = _same_streamed_and_not(
        sdk, input=THINK_PROMPT, tools=[MOOD_TOOL], tool_choice="required", max_output_tokens=96
    )
    [call] = whole.output
    assert call.type == "function_call" and call.name == "set_mood"
    jsonschema.validate(json.loads(call.arguments), MOOD_TOOL["parameters"])


# ---------------------------------------------------------------------------------------- structured output


def test_json_schema_text_format_validates(sdk: openai.OpenAI) -> None:
    text = {"format": {"type": "json_schema", "name": "forecast", "schema": FORECAST_SCHEMA, "strict": True}}
    whole = _same_streamed_and_not(sdk, input=WEATHER_PROMPT, text=text, max_output_tokens=64)
    assert whole.status == "completed"
    jsonschema.validate(json.loads(whole.output_text), FORECAST_SCHEMA)
    assert whole.text.format.type == "json_schema"


def test_json_object_text_format_is_an_object(sdk: openai.OpenAI) -> None:
    whole = _create(sdk, input=THINK_PROMPT, text={"format": {"type": "json_object"}}, max_output_tokens=64)
    if whole.status == "completed":
        assert isinstance(json.loads(whole.output_text), dict)
    else:
        assert whole.output_text.startswith("{")


# ------------------------------------------------------------------------------------------------ the store


def test_a_stored_response_is_read_listed_and_deleted(sdk: openai.OpenAI) -> None:
    created = _create(sdk, input="Hello", max_output_tokens=8)
    assert _shape(sdk.responses.retrieve(created.id)) == _shape(created)
    [item] = sdk.responses.input_items.list(created.id).data
    assert item.type == "message" and item.role == "user"
    assert [part.text for part in item.content] == ["Hello"]  # type: ignore[union-attr]
    sdk.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.responses.retrieve(created.id)
    assert caught.value.body["message"] == f"Response with id '{created.id}' not found."  # type: ignore[index]
    with pytest.raises(openai.NotFoundError) as caught:
        _create(sdk, previous_response_id=created.id, input="Hello")
    assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        sdk.responses.delete(created.id)


def test_store_false_keeps_nothing(sdk: openai.OpenAI) -> None:
    created = _create(sdk, input="Hello", max_output_tokens=4, store=False)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(created.id)


def test_another_keys_response_is_not_found(sdk: openai.OpenAI, proxy: tuple[str, TritonBackend]) -> None:
    created = _create(sdk, input="Hello", max_output_tokens=4)
    other = _client(proxy[0], "key-b")
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.create(model=MODEL, previous_response_id=created.id, input="Hello")
    assert sdk.responses.retrieve(created.id).id == created.id  # still there for its own key


def test_the_oldest_response_is_evicted(sdk: openai.OpenAI) -> None:
    # The proxy keeps 3 responses (`ResponseStoreLimits(max_responses=3)`).
    created = [_create(sdk, input="Hello", max_output_tokens=2) for _ in range(4)]
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(created[0].id)
    assert [sdk.responses.retrieve(r.id).id for r in created[1:]] == [r.id for r in created[1:]]


def test_a_streamed_response_is_stored_whole(sdk: openai.OpenAI) -> None:
    terminal, _ = _streamed(sdk, input=THINK_PROMPT)
    assert _shape(sdk.responses.retrieve(terminal.id)) == _shape(terminal)


# ------------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("fields", "param", "says"),
    [
        ({"background": True}, "background", "background is not supported"),
        ({"tools": [{"type": "web_search"}]}, "tools.0.type", "tool type `web_search` is not supported"),
        ({"include": ["reasoning.encrypted_content"]}, "include", "include is not supported"),
        ({"truncation": "auto"}, None, "truncation `auto` is not supported"),
        ({"moderation": "auto"}, "moderation", "moderation is not supported"),
        (
            {"tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": []}},
            "tool_choice",
            "tool_choice type `allowed_tools` is not supported",
        ),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice", "type `web_search_preview`"),
        ({"tool_choice": "required"}, None, "tool_choice `required` needs tools"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input.0", "input item type is not supported"),
        (
            {
                "input": [
                    {"role": "user", "content": [{"type": "input_image", "image_url": "x", "detail": "auto"}]}
                ]
            },
            "input.0.message.content",
            "content part type `input_image` is not supported",
        ),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format", "needs a `schema`"),
        ({"max_output_tokens": 100000}, "max_output_tokens", "max_output_tokens 100000"),
    ],
)
def test_unsupported_fields_are_400s_naming_them(
    sdk: openai.OpenAI, fields: dict[str, Any], param: str | None, says: str
) -> None:
    request = {"input": "Hello", **fields}
    with pytest.raises(openai.BadRequestError) as caught:
        _create(sdk, **request)
    body: dict[str, Any] = caught.value.body  # type: ignore[assignment]
    assert body["type"] == "invalid_request_error"
    assert says in body["message"]
    if param is not None:
        assert (body["param"] or "").startswith(param)


def test_a_schema_xgrammar_cannot_compile_is_a_400_on_text_format(sdk: openai.OpenAI) -> None:
    text = {"format": {"type": "json_schema", "name": "bad", "schema": {"type": "foo"}}}
    with pytest.raises(openai.BadRequestError) as caught:
        _create(sdk, input="Hello", text=text, max_output_tokens=4)
    assert caught.value.body["param"] == "text.format.schema"  # type: ignore[index]
    assert "text.format" in caught.value.body["message"]  # type: ignore[index]


def test_an_unknown_model_is_a_404(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.responses.create(model="nope", input="Hello")
    assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]


# ---------------------------------------------------------------------------------------------- disconnects


def _long_stream(**fields: Any) -> dict[str, Any]:
    """A streamed request whose reply runs far longer than a test waits, however fast the machine: guided
    decoding holds it to at least 450 numbers (some 900 tokens; tiny would otherwise stop within a sentence)."""
    digits = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 450}
    schema = {"type": "object", "properties": {"n": digits}, "required": ["n"], "additionalProperties": False}
    return {
        "model": MODEL,
        "input": "Count.",
        "max_output_tokens": 950,
        "text": {"format": {"type": "json_schema", "name": "numbers", "schema": schema}},
        "stream": True,
        **fields,
    }


def test_a_client_that_leaves_a_stream_stops_its_generation(proxy: tuple[str, TritonBackend]) -> None:
    url, backend = proxy
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps(_long_stream()).encode()
    request = (
        f"POST /v1/responses HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"X-Request-Id: leaves-mid-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection((host, int(port)), timeout=300) as conn:
        conn.sendall(request)
        received = b""
        while b"response.output_text.delta" not in received:
            chunk = conn.recv(4096)
            assert chunk, "the stream ended before its first text delta"
            received += chunk
        assert b"response.completed" not in received and b"response.incomplete" not in received
    # The stop of this very generation, confirmed by the model (a generation that ran to its end has none).
    wait_until(
        lambda: (
            any(record.request_id == "leaves-mid-stream" for record in backend.stops)
            and backend.draining == 0
        ),
        what="the generation to stop",
    )
    assert httpx.get(f"{url}/health", timeout=30).json() == {"status": "ok"}


def test_shutdown_ends_an_open_stream_at_once_with_response_failed(
    served: tuple[EngineInfo, TritonServer],
) -> None:
    tiny, triton = served
    settings = ProxySettings.from_engine(MODEL, tiny, triton.grpc_url)
    server = make_server([settings], port=free_port(), log_level="warning")
    body = _long_stream()
    with serve_in_thread(server) as url, httpx.stream("POST", f"{url}/v1/responses", json=body) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data: ") and "output_text.delta" in line)
        server.should_exit = True
        rest = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: ")]
        backend = server.config.app.state.servings[MODEL].backend
    # Ended by the proxy with the Responses API's own terminal event, not cut by uvicorn after its graceful
    # wait (a cut stream has no terminal event), and the generation stopped.
    last = rest[-1]
    assert last["type"] == "response.failed" and [e["type"] for e in rest].count("response.failed") == 1
    assert last["response"]["status"] == "failed"
    assert last["response"]["error"]["message"] == "the server is shutting down"
    assert "message" in [item["type"] for item in last["response"]["output"]]  # the text so far
    numbers = [event["sequence_number"] for event in rest]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    assert backend.stops and backend.draining == 0
