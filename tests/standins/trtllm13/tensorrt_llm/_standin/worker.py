"""The stand-in's executor worker process: `python -m tensorrt_llm._standin.worker READ_FD WRITE_FD RANK WORLD`.

The LLM talks to it over two pipes carrying pickled messages (multiprocessing.connection): `start` (the model
directory and limits) → `ready` or `failed`; then `generate`, `abort` and `shutdown` in; `update` and `error` out.
Rank 0 generates; the other ranks (TP×PP > 1) only wait for shutdown, as idle MPI workers would. The worker ends
when told to or when its pipe closes (its LLM's process is gone), so it never outlives its owner for long.

Decoding interleaves the active requests one token each in turn (each sequence with its own KV cache), and reads
new messages between steps, so an abort takes effect at the next step. `TRTFORGE_STANDIN_WORKER_LOG` names a file
each worker appends its events to (start, each request's end, abort, SIGTERM, exit), for tests.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch

from tensorrt_llm._standin.model import CausalLM


def log(event: str) -> None:
    path = os.environ.get("TRTFORGE_STANDIN_WORKER_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{time.time():.3f} pid={os.getpid()} {event}\n")


@dataclass
class Sequence:
    index: int
    cache: Any
    logits: torch.Tensor
    generator: torch.Generator | None
    matcher: Any
    tokens: list[int] = field(default_factory=list)
    logprobs: list[dict[int, tuple[float, int]]] = field(default_factory=list)
    sent: int = 0  # tokens already sent in streaming updates
    finish_reason: str | None = None
    stop_reason: str | int | None = None


@dataclass
class Request:
    request_id: int
    prompt: list[int]
    params: dict[str, Any]
    streaming: bool
    sequences: list[Sequence]
    max_tokens: int

    @property
    def finished(self) -> bool:
        return all(s.finish_reason is not None for s in self.sequences)


class Guides:
    """xgrammar matchers for guided requests (the tokenizer is loaded at the first one)."""

    def __init__(self, tokenizer_dir: str, vocab_size: int) -> None:
        self.tokenizer_dir = tokenizer_dir
        self.vocab_size = vocab_size
        self._compiler: Any = None

    def matcher(self, kind: str, value: Any) -> Any:
        import xgrammar

        if self._compiler is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_dir, local_files_only=True)
            info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=self.vocab_size)
            self._compiler = xgrammar.GrammarCompiler(info)
        if kind == "json_object":
            compiled = self._compiler.compile_builtin_json_grammar()
        elif kind == "json":
            compiled = self._compiler.compile_json_schema(value, any_whitespace=False)
        elif kind == "regex":
            compiled = self._compiler.compile_regex(value)
        elif kind == "grammar":
            compiled = self._compiler.compile_grammar(value)
        else:
            compiled = self._compiler.compile_structural_tag(value)
        return xgrammar.GrammarMatcher(compiled)

    def mask(self, matcher: Any, logits: torch.Tensor) -> None:
        import xgrammar

        bitmask = xgrammar.allocate_token_bitmask(1, self.vocab_size)
        matcher.fill_next_token_bitmask(bitmask)
        xgrammar.apply_token_bitmask_inplace(logits.view(1, -1), bitmask)


class Generator:
    def __init__(self, model: CausalLM, options: dict[str, Any], out: Connection) -> None:
        self.model = model
        self.out = out
        self.max_seq_len = int(options["max_seq_len"])
        tokenizer_dir = options.get("tokenizer_dir")
        self.guides = (
            Guides(tokenizer_dir, model.vocab_size)
            if options.get("guided_decoding_backend") and tokenizer_dir
            else None
        )
        self.active: list[Request] = []
        self.stopping = False

    # --- messages ---------------------------------------------------------------------------------------------

    def handle(self, message: dict[str, Any]) -> None:
        op = message["op"]
        if op == "shutdown":
            self.stopping = True
        elif op == "abort":
            self.abort(int(message["request_id"]))
        elif op == "generate":
            try:
                self.start(message)
            except Exception as exc:  # the request's failure, not the worker's
                log(f"request {message['request_id']} failed: {type(exc).__name__}: {exc}")
                self.out.send({"op": "error", "request_id": message["request_id"], "message": str(exc)})

    def start(self, message: dict[str, Any]) -> None:
        params: dict[str, Any] = message["params"]
        prompt: list[int] = message["prompt"]
        room = self.max_seq_len - len(prompt)
        sequences = []
        for index in range(int(params["n"])):
            matcher = None
            if params["guide"] is not None:
                if self.guides is None:
                    raise ValueError("guided decoding is not enabled: set guided_decoding_backend")
                matcher = self.guides.matcher(*params["guide"])
            cache = self.model.new_cache()
            logits = self.model.forward(prompt, cache)
            seed = params["seed"] if params["seed"] is not None else 0
            generator = None if params["greedy"] else torch.Generator().manual_seed(seed + index)
            sequences.append(Sequence(index, cache, logits, generator, matcher))
        self.active.append(
            Request(
                int(message["request_id"]),
                prompt,
                params,
                bool(message["streaming"]),
                sequences,
                max_tokens=max(0, min(int(params["max_tokens"]), room)),
            )
        )

    def abort(self, request_id: int) -> None:
        for request in self.active:
            if request.request_id == request_id:
                for seq in request.sequences:
                    if seq.finish_reason is None:
                        seq.finish_reason = "cancelled"
                log(
                    f"request {request_id} aborted after {sum(len(s.tokens) for s in request.sequences)} tokens"
                )
                self.finish(request)
                return

    # --- decoding ---------------------------------------------------------------------------------------------

    def step(self, request: Request) -> None:
        """One token for each unfinished sequence of `request`; the update (streaming) or the end."""
        for seq in request.sequences:
            if seq.finish_reason is None:
                self.advance(request, seq)
        if request.finished:
            self.finish(request)
        elif request.streaming:
            self.send_update(request, final=False)

    def advance(self, request: Request, seq: Sequence) -> None:
        params = request.params
        if len(seq.tokens) >= request.max_tokens:
            seq.finish_reason = "length"
            return
        token, entry = self.choose(request, seq)
        end_id = params["end_id"]
        if end_id is not None and token == end_id:
            seq.finish_reason = "stop"  # the end token is not part of the output
            return
        seq.tokens.append(token)
        seq.logprobs.append(entry)
        if seq.matcher is not None and (not seq.matcher.accept_token(token) or seq.matcher.is_terminated()):
            seq.finish_reason = "stop"
            return
        for reason, word in params["stop_words"]:
            if word and seq.tokens[-len(word) :] == word:
                seq.finish_reason, seq.stop_reason = "stop", reason
                return
        if len(seq.tokens) >= request.max_tokens:
            seq.finish_reason = "length"
            return
        seq.logits = self.model.forward([token], seq.cache)

    def choose(self, request: Request, seq: Sequence) -> tuple[int, dict[int, tuple[float, int]]]:
        """The next token and its logprobs entry {id: (logprob, rank)} (chosen + top-k when asked)."""
        params = request.params
        logits = seq.logits.clone()
        self.penalise(logits, request, seq)
        for word in params["bad_words"]:
            if len(word) == 1 or seq.tokens[-(len(word) - 1) :] == word[:-1]:
                logits[word[-1]] = -math.inf
        end_id = params["end_id"]
        if (
            end_id is not None
            and len(seq.tokens) < (params["min_tokens"] or 0)
            and 0 <= end_id < logits.numel()
        ):
            logits[end_id] = -math.inf
        if seq.matcher is not None and self.guides is not None:
            self.guides.mask(seq.matcher, logits)
        if params["greedy"]:
            log_probs = torch.log_softmax(logits, dim=-1)
            token = int(torch.argmax(logits))
        else:
            logits = logits / max(params["temperature"] if params["temperature"] is not None else 1.0, 1e-5)
            top_k = params["top_k"] or 0
            if top_k > 0:
                kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                logits[logits < kth] = -math.inf
            top_p = params["top_p"]
            if top_p is not None and 0.0 < top_p < 1.0:
                sorted_logits, order = torch.sort(logits, descending=True)
                probs = torch.softmax(sorted_logits, dim=-1)
                logits[order[probs.cumsum(dim=-1) - probs > top_p]] = -math.inf
            log_probs = torch.log_softmax(logits, dim=-1)
            token = int(torch.multinomial(log_probs.exp(), 1, generator=seq.generator))
        return token, self.logprobs_entry(log_probs, token, params["logprobs"])

    @staticmethod
    def logprobs_entry(log_probs: torch.Tensor, token: int, k: int | None) -> dict[int, tuple[float, int]]:
        if k is None:
            return {}
        chosen = float(log_probs[token])
        entry = {token: (chosen, 1 + int((log_probs > log_probs[token]).sum()))}
        if k > 0:
            values, ids = torch.topk(log_probs, min(k, log_probs.numel()))
            for rank, (value, token_id) in enumerate(
                zip(values.tolist(), ids.tolist(), strict=True), start=1
            ):
                entry.setdefault(int(token_id), (float(value), rank))
        return entry

    @staticmethod
    def penalise(logits: torch.Tensor, request: Request, seq: Sequence) -> None:
        params = request.params
        repetition = params["repetition_penalty"]
        if repetition is not None and repetition != 1.0:
            seen = torch.tensor(sorted(set(request.prompt) | set(seq.tokens)), dtype=torch.long)
            seen = seen[seen < logits.numel()]
            values = logits[seen]
            logits[seen] = torch.where(values > 0, values / repetition, values * repetition)
        presence, frequency = params["presence_penalty"] or 0.0, params["frequency_penalty"] or 0.0
        if seq.tokens and (presence or frequency):
            counts = torch.bincount(torch.tensor(seq.tokens), minlength=logits.numel())[
                : logits.numel()
            ].float()
            logits -= frequency * counts + presence * (counts > 0).float()

    # --- output -----------------------------------------------------------------------------------------------

    def send_update(self, request: Request, *, final: bool) -> None:
        outputs = []
        for seq in request.sequences:
            start = seq.sent if request.streaming else 0
            outputs.append(
                {
                    "index": seq.index,
                    "tokens": seq.tokens[start:],
                    "logprobs": seq.logprobs[start:],
                    "finish_reason": seq.finish_reason if final else None,
                    "stop_reason": seq.stop_reason if final else None,
                }
            )
            seq.sent = len(seq.tokens)
        self.out.send({"op": "update", "request_id": request.request_id, "outputs": outputs, "final": final})

    def finish(self, request: Request) -> None:
        self.active.remove(request)
        for seq in request.sequences:
            seq.cache = None
        reasons = ",".join(str(s.finish_reason) for s in request.sequences)
        log(f"request {request.request_id} finished ({reasons})")
        self.send_update(request, final=True)


def serve(inbox: Connection, out: Connection, rank: int) -> None:
    start = inbox.recv()
    try:
        model = CausalLM(Path(start["model"])) if rank == 0 else None
    except Exception as exc:
        out.send({"op": "failed", "message": f"{type(exc).__name__}: {exc}"})
        return
    out.send({"op": "ready", "vocab_size": model.vocab_size if model else 0})
    log(f"rank {rank} ready")
    if model is None:
        while inbox.recv()["op"] != "shutdown":
            pass
        return
    generator = Generator(model, start, out)
    while not generator.stopping:
        if inbox.poll(None if not generator.active else 0):
            generator.handle(inbox.recv())
            continue
        for request in list(generator.active):
            generator.step(request)
            if inbox.poll(0):
                break  # an abort takes effect before the next request's step


def _terminated(signum: int, _frame: object) -> None:
    signal.signal(signum, signal.SIG_IGN)  # once: an owner may signal the whole tree again while we leave
    log(f"terminated by signal {signum}")
    sys.exit(128 + signum)


def main() -> None:
    read_fd, write_fd, rank = (int(arg) for arg in sys.argv[1:4])
    signal.signal(signal.SIGTERM, _terminated)  # an owner ending the process tree: leave, and say so
    inbox, out = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    log(f"rank {rank} started")
    try:
        serve(inbox, out, rank)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        log(f"rank {rank}: its LLM is gone")
    finally:
        log(f"rank {rank} exits")


if __name__ == "__main__":
    main()
