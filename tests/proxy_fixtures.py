"""Helpers for the proxy tests: a real byte-level BPE tokenizer trained locally (no hub), a proxy in a thread."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import uvicorn
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# ChatML, as Qwen writes it (the proxy adds the generation prompt).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog. Hello world, hello there!",
    "Streaming text must keep its spaces: one two three four five six seven.",
    "Numbers 12345 and punctuation; (parentheses) [brackets] {braces}.",
    "日本語のテキストと中文文本。",
    "Emoji: 🎉🚀 and accents: café naïve résumé.",
] * 20


def train_byte_level_tokenizer(vocab_size: int = 400) -> Tokenizer:
    """A small byte-level BPE: too small a vocabulary to hold whole CJK characters or emoji, so they split."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    return tokenizer


def write_tokenizer_dir(dest: Path, *, chat_template: str | None = CHAT_TEMPLATE) -> Path:
    """Save the tokenizer the way an engine directory holds it (tokenizer.json + tokenizer_config.json)."""
    dest.mkdir(parents=True, exist_ok=True)
    train_byte_level_tokenizer().save(str(dest / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
    }
    (dest / "tokenizer_config.json").write_text(json.dumps(config))
    if chat_template is not None:
        (dest / "chat_template.jinja").write_text(chat_template)
    return dest


@contextlib.contextmanager
def serve_in_thread(server: uvicorn.Server, *, timeout_s: float = 30.0) -> Iterator[str]:
    """Run a uvicorn server in a thread; yield its base URL; stop it on exit."""
    thread = threading.Thread(target=server.run, name="proxy-under-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the proxy did not start")
        time.sleep(0.02)
    config = server.config
    try:
        yield f"http://{config.host}:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def wait_until(condition: Callable[[], bool], *, timeout_s: float, poll_s: float = 0.05) -> None:
    """Wait for an event; `timeout_s` only bounds a failure (it is never what a test asserts)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s:g} s")
        time.sleep(poll_s)
