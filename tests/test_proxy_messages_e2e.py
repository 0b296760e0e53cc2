"""The Anthropic Messages API end to end: the official `anthropic` SDK (`messages.create`, `messages.stream`,
`messages.count_tokens`) against the proxy over a real tritonserver serving the tiny model on each backend.

Tiny learned a thinking block before a greeting and a `get_weather` call (see `trtforge.reference.tiny`); its
replies show how the chat core's parsers become content blocks. Every generating case is run whole and
streamed, and the stream accumulator's final Message must equal the whole one (ids aside).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest

from conftest import free_port
from proxy_fixtures import BACKENDS, serve_in_thread, serving_tiny, wait_until
from tool_schemas import FORECAST_SCHEMA, MESSAGES_MOOD_TOOL, MESSAGES_WEATHER_TOOL
from trtforge.engine import EngineInfo
from trtforge.proxy import ProxySettings, make_server
from trtforge.proxy.backend import TritonBackend
from trtforge.reference.tiny import THINK_ANSWER, THINK_PROMPT, THINK_REASONING, WEATHER_CALL, WEATHER_PROMPT
from trtforge.triton.server import TritonServer

pytestmark = pytest.mark.triton

MODEL = "tiny"
KEY = "messages-key"
WEATHER_TOOL = MESSAGES_WEATHER_TOOL
MOOD_TOOL = MESSAGES_MOOD_TOOL
LONG_REPLY = [{"role": "user", "content": "fox " * 60}]  # tiny's reply runs to any max_tokens that fits
GREEDY = {"temperature": 0}  # in the body: the 2.x SDK's create() no longer has sampling arguments


@pytest.fixture(scope="module", params=BACKENDS)
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[EngineInfo, TritonServer]]:
    root = tmp_path_factory.mktemp(f"messages-{request.param}")
    with serving_tiny(request.param, request, root, max_batch_size=4) as running:
        yield running


@pytest.fixture(scope="module")
def proxy(served: tuple[EngineInfo, TritonServer]) -> Iterator[tuple[str, TritonBackend]]:
    tiny, triton = served
    settings = ProxySettings.from_engine(MODEL, tiny, triton.grpc_url)
    server = make_server([settings], port=free_port(), log_level="warning", api_key=KEY)
    with serve_in_thread(server) as url:
        yield url, server.config.app.state.servings[MODEL].backend


@pytest.fixture(scope="module")
def sdk(proxy: tuple[str, TritonBackend]) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy[0], api_key=KEY, max_retries=0, timeout=300)


def _user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def _create(sdk: anthropic.Anthropic, **kwargs: Any) -> Any:
    kwargs.setdefault("max_tokens", 64)
    return sdk.messages.create(model=MODEL, extra_body=GREEDY, **kwargs)


def _shape(message: Any) -> dict[str, Any]:
    """What a Message says, ids aside (they differ from request to request)."""
    data = message.model_dump(mode="json", exclude_none=True)
    data.pop("id")
    for block in data["content"]:
        block.pop("id", None)
    return data


def _events(sdk: anthropic.Anthropic, **kwargs: Any) -> list[Any]:
    kwargs.setdefault("max_tokens", 64)
    return list(sdk.messages.create(model=MODEL, extra_body=GREEDY, stream=True, **kwargs))


def _same_streamed_and_not(sdk: anthropic.Anthropic, **kwargs: Any) -> Any:
    """The whole Message, checked against the SDK's `messages.stream` accumulator (which rebuilds the Message
    from the events) and against the raw event order."""
    kwargs.setdefault("max_tokens", 64)
    whole = _create(sdk, **kwargs)
    with sdk.messages.stream(model=MODEL, extra_body=GREEDY, **kwargs) as stream:
        final = stream.get_final_message()
    assert _shape(final) == _shape(whole)
    assert final.id.startswith("msg_")
    events = _events(sdk, **kwargs)
    kinds = [event.type for event in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    starts = [event.index for event in events if event.type == "content_block_start"]
    stops = [event.index for event in events if event.type == "content_block_stop"]
    assert starts == stops == list(range(len(whole.content)))
    return whole


# ------------------------------------------------------------------------------------------------ plain


def test_plain_text_streamed_and_not(sdk: anthropic.Anthropic) -> None:
    whole = _same_streamed_and_not(sdk, messages=_user("Hello"), max_tokens=24)
    assert whole.id.startswith("msg_") and whole.type == "message" and whole.role == "assistant"
    assert whole.model == MODEL
    [block] = whole.content
    assert block.type == "text" and block.text != ""
    assert whole.stop_reason in ("end_turn", "max_tokens") and whole.stop_sequence is None
    assert 0 < whole.usage.output_tokens <= 24 and whole.usage.input_tokens > 0


def test_max_tokens_is_the_stop_reason_when_reached(sdk: anthropic.Anthropic) -> None:
    whole = _same_streamed_and_not(sdk, messages=_user(THINK_PROMPT), max_tokens=3)
    assert whole.stop_reason == "max_tokens" and whole.usage.output_tokens == 3


def test_a_stop_sequence_is_the_stop_reason(sdk: anthropic.Anthropic) -> None:
    whole = _same_streamed_and_not(sdk, messages=_user(THINK_PROMPT), stop_sequences=["there"])
    assert whole.stop_reason == "stop_sequence" and whole.stop_sequence == "there"
    assert whole.content[0].text == THINK_ANSWER[: THINK_ANSWER.index("there")]


def test_the_system_prompt_is_rendered(sdk: anthropic.Anthropic) -> None:
    plain = sdk.messages.count_tokens(model=MODEL, messages=_user("Hello"))  # type: ignore[arg-type]
    as_text = sdk.messages.count_tokens(model=MODEL, messages=_user("Hello"), system="Answer in one word.")  # type: ignore[arg-type]
    as_blocks = sdk.messages.count_tokens(
        model=MODEL,
        messages=_user("Hello"),  # type: ignore[arg-type]
        system=[{"type": "text", "text": "Answer in one word.", "cache_control": {"type": "ephemeral"}}],
    )
    assert as_text.input_tokens == as_blocks.input_tokens > plain.input_tokens


def test_count_tokens_is_the_prompt_of_a_message(sdk: anthropic.Anthropic) -> None:
    kwargs: dict[str, Any] = {"messages": _user(WEATHER_PROMPT), "tools": [WEATHER_TOOL]}
    counted = sdk.messages.count_tokens(model=MODEL, **kwargs)
    created = _create(sdk, max_tokens=4, **kwargs)
    assert counted.input_tokens == created.usage.input_tokens


# ------------------------------------------------------------------------------------------------ thinking


def test_thinking_enabled_is_a_thinking_block_streamed_and_not(sdk: anthropic.Anthropic) -> None:
    thinking = {"type": "enabled", "budget_tokens": 48}
    whole = _same_streamed_and_not(sdk, messages=_user(THINK_PROMPT), thinking=thinking, max_tokens=96)
    assert [block.type for block in whole.content] == ["thinking", "text"]
    assert whole.content[0].thinking == THINK_REASONING and whole.content[0].signature == ""
    assert whole.content[1].text == THINK_ANSWER
    assert whole.stop_reason == "end_turn"


def test_thinking_is_off_by_default_and_when_disabled(sdk: anthropic.Anthropic) -> None:
    for extra in ({}, {"thinking": {"type": "disabled"}}):
        whole = _same_streamed_and_not(sdk, messages=_user(THINK_PROMPT), **extra)
        assert [block.type for block in whole.content] == ["text"]
        assert whole.content[0].text == THINK_ANSWER


def test_the_thinking_budget_caps_the_thinking_block(sdk: anthropic.Anthropic) -> None:
    free = _create(sdk, messages=_user(THINK_PROMPT), thinking={"type": "enabled", "budget_tokens": 48})
    capped = _same_streamed_and_not(
        sdk, messages=_user(THINK_PROMPT), thinking={"type": "enabled", "budget_tokens": 6}, max_tokens=48
    )
    assert capped.content[0].type == "thinking"
    cut = capped.content[0].thinking
    assert cut and THINK_REASONING.startswith(cut) and len(cut) < len(THINK_REASONING)
    # The model answers after the closed block, within what is left of max_tokens.
    assert [block.type for block in capped.content] == ["thinking", "text"]
    assert capped.usage.output_tokens < free.usage.output_tokens + 8
    assert capped.usage.output_tokens <= 48


# ----------------------------------------------------------------------------------------------- tool calls


def test_a_tool_call_is_a_tool_use_block_streamed_and_not(sdk: anthropic.Anthropic) -> None:
    whole = _same_streamed_and_not(sdk, messages=_user(WEATHER_PROMPT), tools=[WEATHER_TOOL])
    assert whole.stop_reason == "tool_use"
    [call] = [block for block in whole.content if block.type == "tool_use"]
    assert whole.content[-1] == call
    assert call.id.startswith("toolu_") and call.name == WEATHER_CALL["name"]
    assert call.input == WEATHER_CALL["arguments"]


def test_the_stream_helper_sees_the_input_json_arrive(sdk: anthropic.Anthropic) -> None:
    with sdk.messages.stream(
        model=MODEL, max_tokens=64, messages=_user(WEATHER_PROMPT), tools=[WEATHER_TOOL], extra_body=GREEDY
    ) as stream:
        deltas = [e.delta.type for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert "input_json_delta" in deltas
    assert final.content[-1].type == "tool_use" and final.content[-1].input == {"city": "Paris"}


def test_a_tool_result_continues_the_conversation(sdk: anthropic.Anthropic) -> None:
    first = _create(sdk, messages=_user(WEATHER_PROMPT), tools=[WEATHER_TOOL])
    [call] = [block for block in first.content if block.type == "tool_use"]
    history = [
        {"role": "user", "content": WEATHER_PROMPT},
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 21 °C."}],
        },
    ]
    second = _same_streamed_and_not(sdk, messages=history, tools=[WEATHER_TOOL], max_tokens=24)
    assert second.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert second.usage.input_tokens > first.usage.input_tokens
    # The result is in the prompt: a different result is a different prompt.
    history[2]["content"] = [
        {"type": "tool_result", "tool_use_id": call.id, "content": [{"type": "text", "text": "Rain."}]}
    ]
    other = sdk.messages.count_tokens(model=MODEL, messages=history, tools=[WEATHER_TOOL])  # type: ignore[arg-type]
    assert other.input_tokens != second.usage.input_tokens


def test_tool_choice_none_offers_no_tools(sdk: anthropic.Anthropic) -> None:
    whole = _same_streamed_and_not(
        sdk, messages=_user(WEATHER_PROMPT), tools=[WEATHER_TOOL], tool_choice={"type": "none"}, max_tokens=32
    )
    assert all(block.type == "text" for block in whole.content)
    assert "<tool_call>" not in whole.content[0].text


def test_tool_choice_tool_is_enforced(sdk: anthropic.Anthropic) -> None:
    whole = _same_streamed_and_not(
        sdk,
        messages=_user(THINK_PROMPT),
        tools=[WEATHER_TOOL, MOOD_TOOL],
        tool_choice={"type": "tool", "name": "set_mood"},
    )
    [call] = whole.content
    assert call.type == "tool_use" and call.name == "set_mood"
    jsonschema.validate(call.input, MOOD_TOOL["input_schema"])
    assert whole.stop_reason == "tool_use"


def test_tool_choice_any_is_enforced(sdk: anthropic.Anthropic) -> None:
    whole = _same_streamed_and_not(
        sdk, messages=_user(THINK_PROMPT), tools=[MOOD_TOOL], tool_choice={"type": "any"}, max_tokens=96
    )
    [call] = whole.content
    assert call.type == "tool_use" and call.name == "set_mood"
    jsonschema.validate(call.input, MOOD_TOOL["input_schema"])


# ---------------------------------------------------------------------------------------- structured output


def test_output_config_json_schema_validates(sdk: anthropic.Anthropic) -> None:
    output_config = {"format": {"type": "json_schema", "schema": FORECAST_SCHEMA}}
    whole = _same_streamed_and_not(sdk, messages=_user(WEATHER_PROMPT), output_config=output_config)
    assert whole.stop_reason == "end_turn"
    jsonschema.validate(json.loads(whole.content[0].text), FORECAST_SCHEMA)


# ------------------------------------------------------------------------------------------- wire details


def test_ignored_fields_and_headers_are_accepted(proxy: tuple[str, TritonBackend]) -> None:
    url = proxy[0]
    body = {
        "model": MODEL,
        "max_tokens": 2,
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hello", "cache_control": {"type": "ephemeral"}}],
            }
        ],
        "metadata": {"user_id": "someone"},
        "service_tier": "auto",
        "top_k": 1,
        "top_p": 0.5,
    }
    headers = {
        "x-api-key": KEY,
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "anything-2099-01-01",
        "x-request-id": "messages-rid-1",
    }
    response = httpx.post(f"{url}/v1/messages?beta=true", json=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "messages-rid-1"
    assert response.json()["usage"]["output_tokens"] == 2


def test_stream_frames_carry_their_event_names(proxy: tuple[str, TritonBackend]) -> None:
    url = proxy[0]
    body = {"model": MODEL, "max_tokens": 4, "stream": True, "messages": _user("Hello")}
    headers = {"authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", f"{url}/v1/messages", json=body, headers=headers, timeout=60) as response:
        frames = response.read().decode().strip().split("\n\n")
    names = []
    for frame in frames:
        event, data = frame.split("\n")
        name = event.removeprefix("event: ")
        assert json.loads(data.removeprefix("data: "))["type"] == name
        names.append(name)
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]


# ------------------------------------------------------------------------------------------------- refusals


def _raw_error(url: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    response = httpx.post(
        f"{url}/v1/messages",
        json=body,
        headers={"x-api-key": KEY} if headers is None else headers,
        timeout=60,
    )
    assert set(response.json()) == {"type", "error"} and response.json()["type"] == "error"
    assert set(response.json()["error"]) == {"type", "message"}
    return response


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"temperature": 1.5}, "temperature"),
        (
            {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
            "server tool `web_search_20250305`",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
            "content block type",
        ),
        ({"tool_choice": {"type": "any"}}, "tool_choice `any` needs tools"),
        ({"thinking": {"type": "enabled"}}, "needs `budget_tokens`"),
        ({"thinking": {"type": "enabled", "budget_tokens": 64}}, "must be less than max_tokens"),
        ({"max_tokens": 100000}, "max_tokens 100000"),
        (
            {"output_config": {"format": {"type": "json_schema", "schema": {"type": "foo"}}}},
            "output_config.format",
        ),
    ],
)
def test_bad_requests_are_invalid_request_errors(
    proxy: tuple[str, TritonBackend], fields: dict[str, Any], says: str
) -> None:
    body = {"model": MODEL, "max_tokens": 8, "messages": _user("Hello"), **fields}
    body = {key: value for key, value in body.items() if value is not None}
    response = _raw_error(proxy[0], body)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert says in response.json()["error"]["message"]


def test_the_sdk_raises_a_bad_request_error(sdk: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        sdk.messages.create(model=MODEL, max_tokens=8, messages=_user("Hello"), extra_body={"top_p": 0})  # type: ignore[arg-type]
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "top_p" in caught.value.body["error"]["message"]  # type: ignore[index]


def test_an_unknown_model_is_a_not_found_error(sdk: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        sdk.messages.create(model="nope", max_tokens=8, messages=_user("Hello"))  # type: ignore[arg-type]
    assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    assert "`nope`" in caught.value.body["error"]["message"]  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError):
        sdk.messages.count_tokens(model="nope", messages=_user("Hello"))  # type: ignore[arg-type]


def test_a_wrong_key_is_an_authentication_error(proxy: tuple[str, TritonBackend]) -> None:
    for client in (
        anthropic.Anthropic(base_url=proxy[0], api_key="wrong", max_retries=0),
        anthropic.Anthropic(base_url=proxy[0], auth_token="wrong", max_retries=0),
    ):
        with pytest.raises(anthropic.AuthenticationError) as caught:
            client.messages.create(model=MODEL, max_tokens=8, messages=_user("Hello"))  # type: ignore[arg-type]
        assert caught.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    response = _raw_error(proxy[0], {"model": MODEL}, headers={})
    assert response.status_code == 401
    # The OpenAI routes keep OpenAI's envelope.
    openai_shape = httpx.get(f"{proxy[0]}/v1/models", timeout=30).json()
    assert set(openai_shape) == {"error"}
    keyed = httpx.get(f"{proxy[0]}/v1/models", headers={"x-api-key": KEY}, timeout=30)
    assert keyed.status_code == 200


def test_an_unknown_messages_route_is_a_not_found_error(proxy: tuple[str, TritonBackend]) -> None:
    response = httpx.post(f"{proxy[0]}/v1/messages/batches", json={}, headers={"x-api-key": KEY}, timeout=30)
    assert response.status_code == 404
    assert response.json() == {"type": "error", "error": {"type": "not_found_error", "message": "Not Found"}}


# ---------------------------------------------------------------------------------------------- disconnects


def test_a_client_that_leaves_a_stream_stops_its_generation(proxy: tuple[str, TritonBackend]) -> None:
    url, backend = proxy
    host, port = url.removeprefix("http://").split(":")
    # Tiny babbles on after a run of foxes: longer than the test runs (800 tokens on either backend).
    fields = {"model": MODEL, "messages": LONG_REPLY, "max_tokens": 800, "stream": True}
    body = json.dumps(fields).encode()
    before = len(backend.stops)
    request = (
        f"POST /v1/messages HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"x-api-key: {KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection((host, int(port)), timeout=300) as conn:
        conn.sendall(request)
        received = b""
        while b"text_delta" not in received:
            chunk = conn.recv(4096)
            assert chunk, "the stream ended before its first text delta"
            received += chunk
    wait_until(lambda: len(backend.stops) > before and backend.draining == 0, what="the generation to stop")
    assert httpx.get(f"{url}/health", timeout=30).json() == {"status": "ok"}


def test_shutdown_ends_an_open_stream_with_an_error_event(served: tuple[EngineInfo, TritonServer]) -> None:
    tiny, triton = served
    server = make_server(
        [ProxySettings.from_engine(MODEL, tiny, triton.grpc_url)], port=free_port(), log_level="warning"
    )
    with serve_in_thread(server) as url:
        client = anthropic.Anthropic(base_url=url, api_key="x", max_retries=0, timeout=300)
        stream = client.messages.create(
            model=MODEL,
            max_tokens=800,
            messages=LONG_REPLY,  # type: ignore[arg-type]
            stream=True,
        )
        kinds = []
        with pytest.raises(anthropic.APIStatusError) as caught:
            for event in stream:
                kinds.append(event.type)
                if event.type == "content_block_delta":
                    server.should_exit = True
    assert kinds[0] == "message_start" and "message_stop" not in kinds
    assert caught.value.body["error"] == {  # type: ignore[index]
        "type": "overloaded_error",
        "message": "the server is shutting down",
    }


def test_messages_are_counted_per_api(sdk: anthropic.Anthropic, proxy: tuple[str, TritonBackend]) -> None:
    def count() -> float:
        text = httpx.get(f"{proxy[0]}/metrics", timeout=30).text
        line = next(
            (
                line
                for line in text.splitlines()
                if line.startswith("trtforge:requests_total{") and 'api="messages"' in line
            ),
            None,
        )
        return float(line.rsplit(" ", 1)[1]) if line else 0.0

    before = count()
    _create(sdk, messages=_user("Hello"), max_tokens=1)
    assert count() == before + 1
