"""Token log probabilities: from the backend's tensors to OpenAI's chat and completions `logprobs` objects.

The chosen token's log probability is `output_log_probs` (what TensorRT-LLM's sampler computed). Alternatives
come from `generation_logits` (the raw logits, only from engines built with `gather_generation_logits`): a log
softmax over the vocabulary, then the k largest. A token's text is its own decode (a byte-level piece of a
multi-byte character decodes to U+FFFD; `bytes` is that text's UTF-8).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from trtforge.proxy.detokenizer import TokenDecoder
from trtforge.proxy.protocol import (
    ChatLogprobs,
    ChatTokenLogprob,
    CompletionLogprobs,
    TopLogprob,
)

# JSON has no -inf; vLLM sends this floor for tokens the sampler ruled out.
MIN_LOGPROB = -9999.0


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its log probability and the top alternatives (id, log probability), best first."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def top_alternatives(logits: npt.NDArray[np.float32], k: int) -> list[tuple[tuple[int, float], ...]]:
    """For each row of `logits` [tokens, vocab], the k most likely ids with their log probabilities."""
    if k <= 0:
        return [() for _ in range(logits.shape[0])]
    rows = logits.astype(np.float64)
    shifted = rows - rows.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    k = min(k, log_probs.shape[-1])
    best = np.argpartition(-log_probs, k - 1, axis=-1)[:, :k]
    result = []
    for row, ids in zip(log_probs, best, strict=True):
        ordered = sorted(((int(i), float(row[i])) for i in ids), key=lambda pair: (-pair[1], pair[0]))
        result.append(tuple(ordered))
    return result


def _finite(value: float) -> float:
    return value if math.isfinite(value) else MIN_LOGPROB


class TokenText:
    """Token ids to the strings and bytes OpenAI shows, cached per id."""

    def __init__(self, decoder: TokenDecoder) -> None:
        self._decoder = decoder
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self._decoder.decode([token_id], skip_special_tokens=False)
            self._cache[token_id] = text
        return text

    def top(self, token_id: int, logprob: float) -> TopLogprob:
        text = self(token_id)
        return TopLogprob(token=text, logprob=_finite(logprob), bytes=list(text.encode()))


def chat_logprobs(tokens: Sequence[TokenLogprob], text: TokenText) -> ChatLogprobs:
    content = [
        ChatTokenLogprob(
            **text.top(t.token_id, t.logprob).model_dump(),
            top_logprobs=[text.top(i, lp) for i, lp in t.top],
        )
        for t in tokens
    ]
    return ChatLogprobs(content=content)


def completion_logprobs(
    tokens: Sequence[TokenLogprob], text: TokenText, *, offset: int, with_top: bool
) -> CompletionLogprobs:
    """The legacy completions form; `offset` is where the first token's text starts in the choice's text."""
    strings = [text(t.token_id) for t in tokens]
    offsets = []
    for string in strings:
        offsets.append(offset)
        offset += len(string)
    top: list[dict[str, float]] | None = None
    if with_top:
        # The chosen token is always listed (as vLLM does), so a dict may hold k + 1 entries.
        top = [
            {text(i): _finite(lp) for i, lp in (*t.top, (t.token_id, t.logprob))}
            if t.top
            else {text(t.token_id): _finite(t.logprob)}
            for t in tokens
        ]
    return CompletionLogprobs(
        tokens=strings,
        token_logprobs=[_finite(t.logprob) for t in tokens],
        top_logprobs=top,
        text_offset=offsets,
    )
