"""SSE frames built from a template are byte-for-byte the frames pydantic dumps for the same chunk."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pydantic import BaseModel

from trtforge.proxy.protocol import (
    ChatChunkChoice,
    ChatCompletionChunk,
    CompletionChoice,
    CompletionResponse,
    DeltaMessage,
)
from trtforge.proxy.sse import FrameTemplate, format_event

TEXTS = [
    "",
    " hello",
    'quote " backslash \\ slash /',
    "new\nline\ttab\rcr\bbs\fff",
    "".join(chr(c) for c in range(32)) + "\x7f",
    "café 日本語 🎉 \u2028\u2029",
    FrameTemplate.slot,
    "\ufffd",
]


def _chat(content: str) -> ChatCompletionChunk:
    return ChatCompletionChunk(
        id="chatcmpl-1", created=7, model="m", choices=[ChatChunkChoice(delta=DeltaMessage(content=content))]
    )


def _completion(text: str) -> CompletionResponse:
    return CompletionResponse(id="cmpl-1", created=7, model="m", choices=[CompletionChoice(text=text)])


@pytest.mark.parametrize("exclude", [None, {"usage"}])
@pytest.mark.parametrize("make", [_chat, _completion])
def test_template_frames_equal_pydantic_frames(
    make: Callable[[str], BaseModel], exclude: set[str] | None
) -> None:
    template = FrameTemplate(make(FrameTemplate.slot), exclude=exclude)
    for text in TEXTS:
        assert template.render(text) == format_event(make(text), exclude=exclude)


def test_template_needs_the_slot_once() -> None:
    with pytest.raises(ValueError, match="exactly once"):
        FrameTemplate(_chat("no slot"))
    with pytest.raises(ValueError, match="exactly once"):
        FrameTemplate(
            ChatCompletionChunk(
                id=FrameTemplate.slot,
                created=7,
                model="m",
                choices=[ChatChunkChoice(delta=DeltaMessage(content=FrameTemplate.slot))],
            )
        )
