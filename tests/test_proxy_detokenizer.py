"""Incremental detokenization with a real byte-level BPE tokenizer: no broken characters, no lost spaces."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from proxy_fixtures import train_byte_level_tokenizer
from trtforge.proxy.detokenizer import REPLACEMENT_CHAR, IncrementalDetokenizer

TEXTS = [
    "Hello world, hello there! one two  three",
    "日本語のテキストと中文文本。",
    "Emoji 🎉🚀 in the middle 🤖 and at the end 🧪",
    "café naïve résumé — ünïcödé ∑∫ 𝔘𝔫𝔦",
    "  leading and trailing spaces  ",
    "mixed 中文 and English 😀 words",
]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_byte_level_tokenizer()


def _stream(tokenizer: Tokenizer, ids: list[int], step: int, prompt: list[int] | None = None) -> list[str]:
    detok = IncrementalDetokenizer(tokenizer, prompt or [])
    deltas = [detok.add(ids[i : i + step]) for i in range(0, len(ids), step)]
    deltas.append(detok.flush())
    return deltas


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("step", [1, 2, 3])
def test_deltas_concatenate_to_the_full_decode(tokenizer: Tokenizer, text: str, step: int) -> None:
    ids = tokenizer.encode(text).ids
    deltas = _stream(tokenizer, ids, step)
    assert "".join(deltas) == tokenizer.decode(ids) == text


@pytest.mark.parametrize("text", TEXTS)
def test_no_delta_carries_a_broken_character(tokenizer: Tokenizer, text: str) -> None:
    ids = tokenizer.encode(text).ids
    # The fixture really splits characters: some single tokens do not decode to whole characters.
    if any(ord(c) > 127 for c in text):
        assert any(REPLACEMENT_CHAR in tokenizer.decode([i]) for i in ids)
    for delta in _stream(tokenizer, ids, 1):
        assert REPLACEMENT_CHAR not in delta


def test_spaces_between_tokens_are_kept(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("one two three four").ids
    deltas = [d for d in _stream(tokenizer, ids, 1) if d]
    assert "".join(deltas) == "one two three four"
    assert any(d.startswith(" ") for d in deltas[1:])


def test_prompt_context_does_not_leak_into_the_output(tokenizer: Tokenizer) -> None:
    prompt = tokenizer.encode("The quick brown fox").ids
    generated = tokenizer.encode(" jumps over 🎉 the lazy dog").ids
    assert "".join(_stream(tokenizer, generated, 1, prompt)) == " jumps over 🎉 the lazy dog"


def test_invalid_bytes_at_the_end_are_flushed(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("ok 🎉").ids
    cut = ids[:-1]  # the emoji's last byte never arrives
    detok = IncrementalDetokenizer(tokenizer)
    streamed = "".join(detok.add([i]) for i in cut)
    tail = detok.flush()
    assert REPLACEMENT_CHAR not in streamed
    assert streamed + tail == tokenizer.decode(cut)


class _CountingDecoder:
    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.decoded_ids = 0

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        self.decoded_ids += len(ids)
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def test_work_is_linear_in_the_stream_length(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(" ".join(TEXTS) * 20).ids
    counter = _CountingDecoder(tokenizer)
    detok = IncrementalDetokenizer(counter)
    for i in ids:
        detok.add([i])
    detok.flush()
    # Each step decodes a window of a few ids; a full re-decode per step would be ~len(ids)²/2.
    assert counter.decoded_ids < 10 * len(ids)


def test_special_tokens_are_skipped_or_kept_on_request(tokenizer: Tokenizer) -> None:
    ids = [*tokenizer.encode("hi").ids, tokenizer.token_to_id("<|im_end|>"), *tokenizer.encode(" there").ids]
    for skip, expected in ((True, "hi there"), (False, "hi<|im_end|> there")):
        detok = IncrementalDetokenizer(tokenizer, skip_special_tokens=skip)
        assert "".join(detok.add([i]) for i in ids) + detok.flush() == expected


@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("step", [1, 3])
def test_rust_decode_stream_and_python_window_give_the_same_deltas(
    tokenizer: Tokenizer, step: int, skip: bool
) -> None:
    """A `tokenizers.Tokenizer` takes the `DecodeStream` path; any other decoder the Python window path."""
    special = tokenizer.token_to_id("<|im_end|>")
    prompt = tokenizer.encode("The quick brown").ids
    for text in TEXTS:
        ids = [*tokenizer.encode(text).ids, special, *tokenizer.encode(" 🎉 end").ids][:-1]  # a cut emoji
        fast = IncrementalDetokenizer(tokenizer, prompt, skip_special_tokens=skip)
        plain = IncrementalDetokenizer(_CountingDecoder(tokenizer), prompt, skip_special_tokens=skip)
        fast_deltas, plain_deltas = [], []
        for i in range(0, len(ids), step):
            fast_deltas.append(fast.add(ids[i : i + step]))
            plain_deltas.append(plain.add(ids[i : i + step]))
        assert REPLACEMENT_CHAR not in "".join(fast_deltas)
        fast_deltas.append(fast.flush())
        plain_deltas.append(plain.flush())
        if step == 1:  # one id per call: both emit at the same ids
            assert fast_deltas == plain_deltas
        assert "".join(fast_deltas) == "".join(plain_deltas)
