"""Qwen3 reasoning: `<think>…</think>` before the answer.

Hybrid Qwen3 writes the whole block itself; when thinking is off its template pre-fills an empty block in the
prompt. Thinking-only variants pre-fill `<think>` in the prompt, so the output holds only `…</think>`. The
newlines just inside the tags, and those between the block and the answer, are layout, not text.
"""

from __future__ import annotations

import enum

from trtforge.proxy.parsers.base import ReasoningDelta, ReasoningParser, partial_tag_length

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


class _State(enum.Enum):
    START = "start"  # not yet known whether the output opens a thinking block
    THINKING = "thinking"
    AFTER = "after"  # the block closed; layout whitespace before the answer is dropped
    ANSWER = "answer"


class Qwen3ReasoningParser(ReasoningParser):
    name = "qwen3"

    def __init__(self, *, prompt_text: str = "") -> None:
        super().__init__(prompt_text=prompt_text)
        tail = prompt_text.rstrip()
        if tail.endswith(THINK_OPEN):
            self._state, self._lead = _State.THINKING, True
        elif tail.endswith(THINK_CLOSE):
            self._state, self._lead = _State.ANSWER, False  # thinking off: the template closed the block
        else:
            self._state, self._lead = _State.START, False
        self._held = ""

    def feed(self, text: str) -> ReasoningDelta:
        self._held += text
        reasoning: list[str] = []
        content: list[str] = []
        while self._held:
            if self._state is _State.START:
                start = self._held.lstrip()
                if start.startswith(THINK_OPEN):
                    self._held = start[len(THINK_OPEN) :]
                    self._state, self._lead = _State.THINKING, True
                elif THINK_OPEN.startswith(start):
                    break  # still possibly the opening tag (or only whitespace so far)
                else:
                    self._state = _State.ANSWER
            elif self._state is _State.THINKING:
                if self._lead:
                    self._held = self._held.lstrip("\n")
                    if not self._held:
                        break
                    self._lead = False
                end = self._held.find(THINK_CLOSE)
                if end >= 0:
                    reasoning.append(self._held[:end].rstrip("\n"))
                    self._held = self._held[end + len(THINK_CLOSE) :]
                    self._state = _State.AFTER
                    continue
                keep = partial_tag_length(self._held, THINK_CLOSE)
                body = self._held[: len(self._held) - keep]
                # Trailing newlines may be the layout before `</think>`: hold them until more text shows.
                shown = body.rstrip("\n")
                reasoning.append(shown)
                self._held = self._held[len(shown) :]
                break
            elif self._state is _State.AFTER:
                self._held = self._held.lstrip()
                if self._held:
                    self._state = _State.ANSWER
            else:
                content.append(self._held)
                self._held = ""
        return ReasoningDelta(reasoning="".join(reasoning), content="".join(content))

    def finish(self) -> ReasoningDelta:
        held, self._held = self._held, ""
        if self._state is _State.THINKING:
            return ReasoningDelta(reasoning=held.rstrip("\n") if not self._lead else "")
        if self._state is _State.AFTER:
            return ReasoningDelta()
        return ReasoningDelta(content=held)
