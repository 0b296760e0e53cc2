"""A thinking budget: a cap on the tokens of a reply's thinking block (Anthropic's `thinking.budget_tokens`).

The generation runs in two legs. The first may write at most `budget` tokens; when it ends by itself (EOS, a
stop string) it is the whole reply. When it is cut at the budget:

- inside the thinking block (opened, not yet closed), the block is closed for the model: the closing tag is
  added to the reply's text, and a second leg, prompted with the prompt, the text so far and the tag, writes
  the answer in what is left of `max_tokens`;
- after the block (the answer had begun), the second leg carries on from the text so far.

The second leg's deltas follow the first's with the token counts added up, so the message parsers read one
reply whose thinking block is at most `budget` tokens long (the tags included). Each leg has an exact token
limit, so the cut falls at the same place streamed or whole. A guided generation (JSON from its first token)
has no thinking block: it runs in one leg.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace

from trtforge.proxy.generation import TextDelta
from trtforge.proxy.parsers.qwen3 import THINK_CLOSE, THINK_OPEN
from trtforge.proxy.prepare import Prepared

Starter = Callable[[Prepared], Awaitable[AsyncIterator[TextDelta]]]  # `OpenAIServing.start_stream`
Encoder = Callable[[str], Awaitable[list[int]]]  # rendered text → ids (off the event loop)

# What closes a thinking block the model did not close itself: Qwen3's layout around the tag.
CLOSING = f"\n{THINK_CLOSE}\n\n"


@dataclass(frozen=True)
class ThinkingBudget:
    """The two legs of one capped generation.

    Args:
        prepared: the request as prepared (one generation; its `max_tokens` is the reply's limit).
        budget: the most tokens the thinking block may take.
        max_seq_len: the engine's context (the second leg's prompt grows by the first leg's text).
        max_input_len: the engine's longest prompt.
    """

    prepared: Prepared
    budget: int
    max_seq_len: int
    max_input_len: int

    @classmethod
    def plan(
        cls, prepared: Prepared, budget: int | None, *, max_seq_len: int, max_input_len: int
    ) -> ThinkingBudget | None:
        """The budget of `prepared`, or None where it cannot bind (no budget, guided, not below max_tokens)."""
        if budget is None or len(prepared.generations) != 1:
            return None
        gen = prepared.generations[0].gen
        if gen.guide is not None or budget >= gen.max_tokens:
            return None
        return cls(prepared, budget, max_seq_len, max_input_len)

    @property
    def first_leg(self) -> Prepared:
        """The request with its token limit cut to the budget."""
        return self._with(self.prepared.generations[0].gen.prompt_ids, self.budget, "")

    def _with(self, prompt_ids: tuple[int, ...], max_tokens: int, suffix: str) -> Prepared:
        generation = self.prepared.generations[0]
        gen = replace(
            generation.gen,
            prompt_ids=prompt_ids,
            max_tokens=max_tokens,
            request_id=generation.gen.request_id + suffix,
        )
        return replace(self.prepared, generations=(replace(generation, gen=gen),))

    def _thinking_open(self, text: str) -> bool:
        opened, closed = text.rfind(THINK_OPEN), text.rfind(THINK_CLOSE)
        if opened >= 0:
            return opened > closed
        # Thinking-only templates open the block in the prompt.
        return closed < 0 and self.prepared.chat.prompt_tail.rstrip().endswith(THINK_OPEN)

    async def deltas(
        self, first: AsyncIterator[TextDelta], start: Starter, encode: Encoder
    ) -> AsyncIterator[TextDelta]:
        """The reply's deltas: the first leg's (`first`, from `first_leg`), then the second leg's if it runs."""
        limit = self.prepared.generations[0].gen.max_tokens
        texts: list[str] = []
        try:
            async for delta in first:
                texts.append(delta.text)
                if delta.finish_reason != "length":
                    yield delta
                    continue
                used = delta.completion_tokens
                text = "".join(texts)
                closing = CLOSING if self._thinking_open(text) else ""
                prompt = (*self.first_leg.generations[0].gen.prompt_ids, *await encode(text + closing))
                room = min(limit - used, self.max_seq_len - len(prompt))
                if room < 1 or len(prompt) > self.max_input_len:
                    yield replace(delta, text=delta.text + closing)
                    return
                yield replace(delta, text=delta.text + closing, finish_reason=None)
                rest = await start(self._with(prompt, room, "-answer"))
                try:
                    async for more in rest:
                        yield replace(more, completion_tokens=more.completion_tokens + used)
                finally:
                    await rest.aclose()  # type: ignore[attr-defined]
                return
        finally:
            await first.aclose()  # type: ignore[attr-defined]
