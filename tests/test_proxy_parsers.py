"""Reasoning and tool-call parsers: the split they make, and the key property that the streamed deltas,
joined, equal the non-streamed message for every way of cutting the text into pieces."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trtforge.proxy.parsers import (
    MessageDelta,
    MessageParser,
    NamedToolParser,
    ParsedMessage,
    RequiredToolParser,
    UnknownParserError,
    default_parsers,
    make_reasoning_parser,
    make_tool_parser,
)
from trtforge.proxy.parsers.base import partial_tag_length

THINKING_ON = "<|im_start|>assistant\n"
THINKING_OFF = "<|im_start|>assistant\n<think>\n\n</think>\n\n"
THINKING_PREFILLED = "<|im_start|>assistant\n<think>\n"

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def _parser(prompt: str = THINKING_ON, *, reasoning: str = "qwen3", tools: str = "hermes") -> MessageParser:
    return MessageParser(make_reasoning_parser(reasoning, prompt_text=prompt), make_tool_parser(tools))


def _run(parser: MessageParser, pieces: list[str]) -> tuple[ParsedMessage, list[MessageDelta]]:
    message = ParsedMessage()
    deltas = [parser.feed(piece) for piece in pieces] + [parser.finish()]
    for delta in deltas:
        message.add(delta)
    return message, deltas


def _whole(message: ParsedMessage) -> tuple[str, str, list[tuple[str, str]]]:
    calls = [(c["name"], c["arguments"]) for c in message.tool_calls]
    return "".join(message.reasoning), "".join(message.content), calls


def parse(text: str, prompt: str = THINKING_ON, **kwargs: str) -> tuple[str, str, list[tuple[str, str]]]:
    return _whole(_run(_parser(prompt, **kwargs), [text])[0])


def test_partial_tag_length() -> None:
    assert partial_tag_length("abc</th", "</think>") == 4
    assert partial_tag_length("abc<", "</think>") == 1
    assert partial_tag_length("abc", "</think>") == 0
    assert partial_tag_length("</think>", "</think>") == 0  # a whole tag is found, not held


def test_qwen3_reasoning_then_answer() -> None:
    assert parse("<think>\nLet me think.\n</think>\n\nHello!") == ("Let me think.", "Hello!", [])


def test_qwen3_without_thinking_block_is_all_content() -> None:
    assert parse("Hello! I am fine.") == ("", "Hello! I am fine.", [])
    assert parse("  leading space kept") == ("", "  leading space kept", [])


def test_qwen3_thinking_off_in_the_prompt_gives_content_only() -> None:
    # The template closed the block; a stray tag in the answer is text, not reasoning.
    assert parse("Hello <think>x</think>", THINKING_OFF) == ("", "Hello <think>x</think>", [])


def test_qwen3_prompt_that_opens_the_block() -> None:
    assert parse("Thinking hard.\n</think>\n\nHi.", THINKING_PREFILLED) == ("Thinking hard.", "Hi.", [])


def test_qwen3_cut_off_while_thinking_is_all_reasoning() -> None:
    assert parse("<think>\nstill going") == ("still going", "", [])
    assert parse("<think>\nstill </thi") == ("still </thi", "", [])


def test_hermes_tool_call_and_text_around_it() -> None:
    reasoning, content, calls = parse(f"<think>\nweather\n</think>\n\nLet me check.\n{CALL}")
    assert reasoning == "weather"
    assert content == "Let me check.\n"
    assert calls == [("get_weather", '{"city": "Paris"}')]
    assert json.loads(calls[0][1]) == {"city": "Paris"}


def test_hermes_several_calls_and_layout_between_them() -> None:
    second = CALL.replace("Paris", "Rome")
    _, content, calls = parse(f"{CALL}\n{second}\n", reasoning="none")
    assert content == ""
    assert calls == [("get_weather", '{"city": "Paris"}'), ("get_weather", '{"city": "Rome"}')]


def test_hermes_arguments_key_first_is_parsed_whole() -> None:
    text = '<tool_call>{"arguments": {"city": "Oslo"}, "name": "get_weather"}</tool_call>'
    assert parse(text, reasoning="none") == ("", "", [("get_weather", '{"city": "Oslo"}')])


def test_hermes_block_that_is_not_a_call_stays_content() -> None:
    text = "see <tool_call>not json</tool_call> here"
    assert parse(text, reasoning="none") == ("", text, [])


def test_hermes_ids_are_unique_and_calls_are_counted() -> None:
    parser = _parser(reasoning="none")
    message, _ = _run(parser, [CALL + CALL])
    ids = [c["id"] for c in message.tool_calls]
    assert len(set(ids)) == 2 and all(i.startswith("call_") for i in ids)
    assert parser.called_tools


def test_hermes_whitespace_before_the_arguments_is_not_part_of_them() -> None:
    parser = _parser(reasoning="none")
    pieces = ['<tool_call>\n{"name": "get_weather", "arguments":', " ", '{"city": "Paris"}}\n</tool_call>']
    message, _ = _run(parser, pieces)
    assert _whole(message) == ("", "", [("get_weather", '{"city": "Paris"}')])


def test_hermes_streams_arguments_before_the_block_ends() -> None:
    parser = _parser(reasoning="none")
    first = parser.feed('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa')
    assert first.tool_calls[0].name == "get_weather"
    assert "".join(c.arguments for c in first.tool_calls) == '{"city": "Pa'
    rest = parser.feed('ris"}}\n</tool_call>')
    assert "".join(c.arguments for c in rest.tool_calls) == 'ris"}'


def test_no_parsers_pass_text_through() -> None:
    assert parse("<think>x</think>" + CALL, reasoning="none", tools="none") == (
        "",
        "<think>x</think>" + CALL,
        [],
    )


def test_named_and_required_tool_parsers() -> None:
    message, _ = _run(MessageParser(None, NamedToolParser("get_weather")), ['{"city":', ' "Paris"}'])
    assert _whole(message) == ("", "", [("get_weather", '{"city": "Paris"}')])
    text = '{"name": "a", "parameters": {"x": 1}}'
    message, _ = _run(MessageParser(None, RequiredToolParser()), [text[:10], text[10:]])
    assert _whole(message) == ("", "", [("a", '{"x": 1}')])
    text = '[{"name": "a", "parameters": {"x": 1}}, {"name": "b", "parameters": {}}]'
    message, _ = _run(MessageParser(None, RequiredToolParser()), [text])
    assert _whole(message) == ("", "", [("a", '{"x": 1}'), ("b", "{}")])
    message, _ = _run(MessageParser(None, RequiredToolParser()), ['[{"name": "a", "para'])
    assert _whole(message) == ("", '[{"name": "a", "para', [])


def test_registry_defaults_and_unknown_names() -> None:
    assert default_parsers("Qwen3ForCausalLM") == ("qwen3", "hermes")
    assert default_parsers("LlamaForCausalLM") == ("none", "none")
    with pytest.raises(
        UnknownParserError, match=r"unknown reasoning parser `nope`; choose one of: none, qwen3"
    ):
        make_reasoning_parser("nope", prompt_text="")
    with pytest.raises(UnknownParserError, match=r"choose one of: hermes, none"):
        make_tool_parser("nope")


# ------------------------------------------------------------------------------ joined deltas == the whole

_PIECES = [
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "\n",
    "\n\n",
    " ",
    "Hello",
    "hmm, ",
    "<",
    "</",
    "}",
    '{"name": "get_weather", "arguments": ',
    '{"city": "Paris"}',
    "}",
    '{"arguments": {"q": 1}, "name": "f"}',
    "not json",
    "é🎉",
]
PROMPTS = [THINKING_ON, THINKING_OFF, THINKING_PREFILLED]


def _cut(text: str, cuts: list[int]) -> list[str]:
    points = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    return [text[a:b] for a, b in itertools.pairwise(points)]


@settings(max_examples=400, deadline=None)
@given(
    text=st.lists(st.sampled_from(_PIECES), max_size=14).map("".join),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=20),
    prompt=st.sampled_from(PROMPTS),
    reasoning=st.sampled_from(["qwen3", "none"]),
    tools=st.sampled_from(["hermes", "none"]),
)
def test_joined_stream_deltas_equal_the_whole_message(
    text: str, cuts: list[int], prompt: str, reasoning: str, tools: str
) -> None:
    whole = parse(text, prompt, reasoning=reasoning, tools=tools)
    streamed, deltas = _run(_parser(prompt, reasoning=reasoning, tools=tools), _cut(text, cuts))
    assert _whole(streamed) == whole
    # One character at a time: every boundary at once (a token can be a single character).
    by_character, _ = _run(_parser(prompt, reasoning=reasoning, tools=tools), list(text))
    assert _whole(by_character) == whole
    # Each call's first delta announces it (id and name); the rest only add arguments.
    announced = [c.index for d in deltas for c in d.tool_calls if c.id is not None]
    assert announced == list(range(len(announced)))
    # Nothing is lost or invented: every character is reasoning, content, a call, or markup / layout.
    if reasoning == "none" and tools == "none":
        assert whole == ("", text, [])


def test_up_refuses_an_unknown_parser_in_one_line_before_starting_anything() -> None:
    import subprocess
    import sys

    argv = [
        sys.executable,
        "-m",
        "trtforge",
        "up",
        "tiny",
        "--no-build",
        "--option",
        "reasoning_parser=bogus",
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "unknown reasoning parser `bogus`; choose one of: none, qwen3" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
