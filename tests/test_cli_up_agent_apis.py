"""The agent APIs through `trtforge up tiny` as a user runs it (a real process, real Triton, the official SDKs).

Responses (`openai`), with the store bounded by its flags: `--responses-store-max 1` keeps only the newest stored
response. Whole and streamed (`client.responses.stream(...)`'s accumulator) give the same Response; a
conversation goes on by `previous_response_id`; a function call's result comes back in a second turn; the
evicted response is a 404 on every route that reads the store.

Messages (`anthropic`): plain text, thinking and a tool call with its `tool_result`, each whole and through
`messages.stream(...)`'s accumulator, the same Message.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from conftest import free_port, triton_port_args
from proxy_fixtures import FAILURE_BOUND_S, STARTUP_FAILURE_BOUND_S, OutputLines, wait_while_running
from tool_schemas import MESSAGES_WEATHER_TOOL, RESPONSES_WEATHER_TOOL
from trtforge.reference.tiny import THINK_ANSWER, THINK_PROMPT, THINK_REASONING, WEATHER_CALL, WEATHER_PROMPT

pytestmark = [pytest.mark.triton, pytest.mark.timeout(STARTUP_FAILURE_BOUND_S + 600)]

MODEL = "tiny"
WEATHER_TOOL = RESPONSES_WEATHER_TOOL
CLAUDE_WEATHER_TOOL = MESSAGES_WEATHER_TOOL


def _listening(client: openai.OpenAI) -> bool:
    try:
        return [model.id for model in client.models.list()] == [MODEL]
    except openai.APIConnectionError:
        return False


@pytest.fixture(scope="module")
def up_port() -> Iterator[int]:
    """`trtforge up tiny` keeping one stored response, on a free port; Ctrl-C at the end."""
    port = free_port()
    argv = [sys.executable, "-m", "trtforge", "up", MODEL, "--port", str(port), *triton_port_args()]
    argv += ["--responses-store-max", "1", "--responses-store-bytes", "1MiB", "--responses-store-ttl", "1h"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    stderr = OutputLines(process.stderr)
    sdk = openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=FAILURE_BOUND_S
    )
    try:
        wait_while_running(
            process,
            lambda: _listening(sdk),
            what="up's proxy",
            output=stderr.all_text,
            failure_bound_s=STARTUP_FAILURE_BOUND_S,
        )
        yield port
    finally:
        sdk.close()
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=FAILURE_BOUND_S)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        finally:
            stderr.join()
            process.communicate()
    assert process.returncode in (0, 130), stderr.text()
    assert "Traceback" not in stderr.text()


@pytest.fixture(scope="module")
def client(up_port: int) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"http://127.0.0.1:{up_port}/v1", api_key="unused", max_retries=0, timeout=FAILURE_BOUND_S
    ) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def claude(up_port: int) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=f"http://127.0.0.1:{up_port}", api_key="unused", max_retries=0, timeout=FAILURE_BOUND_S
    ) as sdk:
        yield sdk


def _create(client: openai.OpenAI, **kwargs: Any) -> Any:
    return client.responses.create(model=MODEL, temperature=0, **kwargs)


def _shape(response: Any) -> dict[str, Any]:
    """What a Response says, ids and times aside (they differ from request to request)."""
    data = response.model_dump(mode="json", exclude_none=True)
    for key in ("id", "created_at", "completed_at"):
        data.pop(key, None)
    for item in data["output"]:
        for key in ("id", "call_id", "parsed_arguments"):
            item.pop(key, None)
        for part in item.get("content", []):
            part.pop("parsed", None)
    return data


def _streamed(client: openai.OpenAI, **kwargs: Any) -> Any:
    """The Response the SDK's stream accumulator rebuilds from the events of one streamed request."""
    with client.responses.stream(model=MODEL, temperature=0, **kwargs) as stream:
        return stream.get_final_response()


def test_plain_text_whole_and_streamed(client: openai.OpenAI) -> None:
    whole = _create(client, input="Hello", max_output_tokens=16, store=False)
    assert whole.id.startswith("resp_") and whole.object == "response"
    assert whole.status in ("completed", "incomplete")
    [message] = whole.output
    assert message.type == "message" and whole.output_text
    raw = list(_create(client, input="Hello", max_output_tokens=16, store=False, stream=True))
    assert [event.sequence_number for event in raw] == list(range(len(raw)))
    assert raw[0].type == "response.created" and raw[-1].type == f"response.{whole.status}"
    assert _shape(raw[-1].response) == _shape(whole)


def test_the_stream_helper_rebuilds_the_whole_response(client: openai.OpenAI) -> None:
    whole = _create(client, input=THINK_PROMPT, store=False)
    assert whole.status == "completed"
    reasoning, message = whole.output
    assert reasoning.type == "reasoning" and [part.text for part in reasoning.content] == [THINK_REASONING]
    assert message.type == "message" and whole.output_text == THINK_ANSWER
    final = _streamed(client, input=THINK_PROMPT, store=False)
    assert _shape(final) == _shape(whole)
    assert final.output_text == whole.output_text


def test_a_conversation_continues_by_previous_response_id(client: openai.OpenAI) -> None:
    first = _create(client, input=THINK_PROMPT)
    second = _create(client, previous_response_id=first.id, input="Hello", max_output_tokens=8)
    assert second.previous_response_id == first.id
    assert second.status in ("completed", "incomplete") and second.output_text
    # The stored conversation (the first prompt and its answer) is in the second turn's prompt.
    alone = _create(client, input="Hello", max_output_tokens=8, store=False)
    assert second.usage.input_tokens > max(alone.usage.input_tokens, first.usage.input_tokens)


def test_a_function_call_round_trip(client: openai.OpenAI) -> None:
    first = _create(client, input=WEATHER_PROMPT, tools=[WEATHER_TOOL])
    assert first.status == "completed"
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == WEATHER_CALL["name"] and json.loads(call.arguments) == WEATHER_CALL["arguments"]
    assert call.call_id.startswith("call_")
    result = [{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 °C."}]
    # `store: false` on the second turn: with one response kept, storing it would evict the first.
    turn = {"previous_response_id": first.id, "input": result, "tools": [WEATHER_TOOL], "store": False}
    whole = _create(client, **turn, max_output_tokens=24)
    assert whole.previous_response_id == first.id
    assert whole.status in ("completed", "incomplete")
    assert whole.usage.input_tokens > first.usage.input_tokens  # the call and its result are in the prompt
    raw = list(_create(client, **turn, max_output_tokens=24, stream=True))
    assert _shape(raw[-1].response) == _shape(whole)
    if whole.status == "completed":
        assert _shape(_streamed(client, **turn, max_output_tokens=24)) == _shape(whole)


def test_one_stored_response_kept_the_older_is_a_404_everywhere(client: openai.OpenAI) -> None:
    older = _create(client, input="Hello", max_output_tokens=2)
    newer = _create(client, input="Hello", max_output_tokens=2)
    assert client.responses.retrieve(newer.id).id == newer.id
    for read in (
        lambda: client.responses.retrieve(older.id),
        lambda: client.responses.input_items.list(older.id),
        lambda: client.responses.delete(older.id),
    ):
        with pytest.raises(openai.NotFoundError) as caught:
            read()
        assert caught.value.body["message"] == f"Response with id '{older.id}' not found."  # type: ignore[index]
    with pytest.raises(openai.NotFoundError) as caught:
        _create(client, previous_response_id=older.id, input="Hello", max_output_tokens=2)
    assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]
    # A streamed request is refused before its stream begins, the same way.
    with pytest.raises(openai.NotFoundError):
        list(_create(client, previous_response_id=older.id, input="Hello", max_output_tokens=2, stream=True))
    assert [item.type for item in client.responses.input_items.list(newer.id).data] == ["message"]


# ------------------------------------------------------------------------------------------ Messages (anthropic)


def _message_shape(message: Any) -> dict[str, Any]:
    """What a Message says, ids aside."""
    data = message.model_dump(mode="json", exclude_none=True)
    data.pop("id")
    for block in data["content"]:
        block.pop("id", None)
    return data


def _message(claude: anthropic.Anthropic, **kwargs: Any) -> Any:
    """The whole Message, checked equal to the one `messages.stream(...)`'s accumulator rebuilds."""
    kwargs.setdefault("max_tokens", 64)
    whole = claude.messages.create(model=MODEL, extra_body={"temperature": 0}, **kwargs)
    with claude.messages.stream(model=MODEL, extra_body={"temperature": 0}, **kwargs) as stream:
        final = stream.get_final_message()
    assert whole.id.startswith("msg_") and final.id.startswith("msg_")
    assert _message_shape(final) == _message_shape(whole)
    return whole


def test_messages_plain_text_whole_and_streamed(claude: anthropic.Anthropic) -> None:
    whole = _message(claude, messages=[{"role": "user", "content": "Hello"}], max_tokens=16)
    assert whole.type == "message" and whole.role == "assistant" and whole.model == MODEL
    assert whole.stop_reason in ("end_turn", "max_tokens")
    assert [block.type for block in whole.content] == ["text"] and whole.content[0].text
    assert whole.usage.output_tokens <= 16


def test_messages_thinking_is_a_thinking_block(claude: anthropic.Anthropic) -> None:
    thinking = {"type": "enabled", "budget_tokens": 64}
    whole = _message(
        claude, messages=[{"role": "user", "content": THINK_PROMPT}], thinking=thinking, max_tokens=96
    )
    assert [block.type for block in whole.content] == ["thinking", "text"]
    assert whole.content[0].thinking == THINK_REASONING and whole.content[1].text == THINK_ANSWER
    off = _message(claude, messages=[{"role": "user", "content": THINK_PROMPT}], max_tokens=96)
    assert [block.type for block in off.content] == ["text"] and off.content[0].text == THINK_ANSWER


def test_messages_tool_use_and_its_result(claude: anthropic.Anthropic) -> None:
    prompt = [{"role": "user", "content": WEATHER_PROMPT}]
    first = _message(claude, messages=prompt, tools=[CLAUDE_WEATHER_TOOL])
    assert first.stop_reason == "tool_use"
    [call] = [block for block in first.content if block.type == "tool_use"]
    assert call.id.startswith("toolu_") and call.name == WEATHER_CALL["name"]
    assert call.input == WEATHER_CALL["arguments"]
    history = [
        *prompt,
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 21 °C."}],
        },
    ]
    second = _message(claude, messages=history, tools=[CLAUDE_WEATHER_TOOL], max_tokens=24)
    assert second.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert second.usage.input_tokens > first.usage.input_tokens  # the call and its result are in the prompt
