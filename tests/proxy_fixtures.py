"""Helpers for the proxy tests: a real byte-level BPE tokenizer trained locally (no hub), a proxy in a thread,
and waits that end on events (a condition, a process's output line), bounded only to report a failure."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import uvicorn
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from conftest import copy_engine_with, free_port
from llmapi_helpers import serving_pytorch_entry
from triton_helpers import loopback_triton
from trtforge.engine import EngineInfo, read_engine
from trtforge.proxy import ProxySettings, make_server
from trtforge.proxy.backend import TritonBackend
from trtforge.triton.repository import write_model_repository
from trtforge.triton.server import TritonServer

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


# How long a helper waits for an event before it declares failure: generous, because a test never asserts on
# it — on a fast machine the event comes at once, on two slow and busy cores it still comes well within.
FAILURE_BOUND_S = 300.0
# The same for a whole stack starting (`trtforge up`: the tiny engine written, tritonserver and the proxy up),
# which takes minutes there; tests that wait this long raise their own pytest timeout to match.
STARTUP_FAILURE_BOUND_S = 1200.0


@contextlib.contextmanager
def serve_in_thread(server: uvicorn.Server, *, failure_bound_s: float = FAILURE_BOUND_S) -> Iterator[str]:
    """Run a uvicorn server in a thread; yield its base URL once it listens; stop it (and wait for it) on exit.

    `failure_bound_s` only bounds a failure to start or stop (the wait itself ends on the event).
    """
    thread = threading.Thread(target=server.run, name="proxy-under-test", daemon=True)
    thread.start()
    wait_until(
        lambda: server.started or not thread.is_alive(),
        timeout_s=failure_bound_s,
        what="the proxy to start listening",
    )
    if not server.started:
        raise RuntimeError("the proxy exited before it started listening (its error is logged above)")
    config = server.config
    try:
        yield f"http://{config.host}:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=failure_bound_s)
    if thread.is_alive():
        raise RuntimeError(f"the proxy did not stop within {failure_bound_s:g} s of being asked to")


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout_s: float = FAILURE_BOUND_S,
    what: str = "the condition",
    poll_s: float = 0.05,
) -> None:
    """Wait for an event; `timeout_s` only bounds a failure (it is never what a test asserts)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout_s:g} s for {what} in vain")
        time.sleep(poll_s)


def wait_while_running(
    process: subprocess.Popen[Any],
    condition: Callable[[], bool],
    *,
    what: str,
    output: Callable[[], str] = lambda: "",
    failure_bound_s: float = FAILURE_BOUND_S,
    poll_s: float = 0.1,
) -> None:
    """Wait for an event of a process we started: fail as soon as the process exits without it.

    `failure_bound_s` only bounds a process that neither gets there nor exits.
    """
    deadline = time.monotonic() + failure_bound_s
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {process.returncode} first\n{output()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {failure_bound_s:g} s for {what} in vain\n{output()}")
        time.sleep(poll_s)


class OutputLines:
    """The lines of a process's text stream, read as they come by a thread of its own (the pipe never fills)."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), name="output-lines", daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.lines)

    def first(self, pattern: str) -> re.Match[str] | None:
        """The first line matching `pattern` so far."""
        return next((m for line in list(self.lines) if (m := re.search(pattern, line))), None)

    def join(self, timeout_s: float = FAILURE_BOUND_S) -> None:
        """Wait until the stream has ended (the process closed it, or exited)."""
        self._thread.join(timeout=timeout_s)

    def all_text(self) -> str:
        """The output up to the end of the stream, for a failure message (a stream still open after a few
        seconds is reported as far as it got)."""
        self.join(timeout_s=5)
        return self.text()


@contextlib.contextmanager
def running_triton(engine: EngineInfo, root: Path) -> Iterator[TritonServer]:
    """The embedded tritonserver serving `engine` from a repository written under `root` (its log there too)."""
    with loopback_triton(write_model_repository({"engine": engine}, root / "repository"), root) as server:
        yield server


# The backends the OpenAI-SDK suites run on: the CPU reference model, and TensorRT-LLM's PyTorch backend (the LLM
# API model over the 1.3 stand-in, which generates with the same tiny model).
BACKENDS = ("reference", "pytorch")


@contextlib.contextmanager
def serving_tiny(
    backend: str, request: pytest.FixtureRequest, root: Path, **limits: Any
) -> Iterator[tuple[EngineInfo, TritonServer]]:
    """The built-in tiny model served on `backend` by the embedded tritonserver, its files and log under `root`.

    reference: a copy of the tiny engine with `limits` (`copy_engine_with`'s build settings). pytorch: a PyTorch
    entry prepared by `build` from the tiny's float checkpoint, whose greedy replies are the reference engine's
    (the NVFP4 one's differ slightly), with the same max_batch_size, max_seq_len and max_num_tokens; it always
    returns generation logits.
    """
    tiny = request.getfixturevalue("tiny_engine")
    if backend == "reference":
        engine = read_engine(copy_engine_with(tiny, root / "engine", **limits))
        with running_triton(engine, root) as server:
            yield engine, server
        return
    built = read_engine(tiny)  # the tiny engine's own limits where `limits` does not say
    fields = {
        "max_batch_size": built.max_batch_size,
        "max_seq_len": built.max_seq_len,
        "max_num_tokens": built.max_num_tokens,
        **{key: value for key, value in limits.items() if key != "gather_generation_logits"},
    }
    checkpoint = request.getfixturevalue("tiny_float_checkpoint")
    name = f"tiny-{re.sub(r'[^a-z0-9]+', '-', root.name.lower())}"
    with serving_pytorch_entry(name, checkpoint, root, **fields) as (server, engine):
        yield engine, server


@contextlib.contextmanager
def running_proxy(
    model: str, engine: EngineInfo, triton: TritonServer
) -> Iterator[tuple[str, TritonBackend]]:
    """The proxy serving `engine` as `model` through `triton`, in a thread: its URL and its Triton backend."""
    settings = ProxySettings.from_engine(model, engine, triton.grpc_url)
    server = make_server([settings], port=free_port(), log_level="warning")
    with serve_in_thread(server) as url:
        yield url, server.config.app.state.servings[model].backend


def triton_log_count(triton: TritonServer, text: str) -> int:
    """How many lines of tritonserver's log contain `text`."""
    assert triton.log_path is not None
    return sum(text in line for line in triton.log_path.read_text(errors="replace").splitlines())
