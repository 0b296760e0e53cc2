"""Benchmark: start → ready, and model-side CPU per streamed token, of the LLM API `tensorrt_llm` model next to the
reference model and the emitter.

Four tritonservers (the embedded one, one at a time), each with a repository holding only its `tensorrt_llm`:

- **llmapi**: `triton/models/tensorrt_llm_llmapi` over the TensorRT-LLM 1.3 stand-in (tests/standins/trtllm13 on
  PYTHONPATH), serving the tiny model as a plain float checkpoint. The stand-in generates in a worker process of
  its own (as the real executor does), with transformers on one CPU thread.
- **reference**: the reference backend serving the tiny engine (the same weights, transformers on one thread, in
  the model's stub process).
- **emitter**: `benchmarks/emitter_model.py`, which cycles through token ids as fast as it can: no generation at
  all, so its cost per token is what a python-backend model and Triton cost to stream one token at full speed.
- **emitter-paced**: the same at `--emitter-pace-ms` per token per stream, about the generators' pace here (what
  Triton costs per token depends on the rate: fewer tokens per wake-up at a lower one).

Each repetition runs the decoding alone once (see below), then starts each server in a rotating order and times
`TritonServer.start()` → `wait_ready()` (the model loaded and ready, polled every 0.2 s as `trtforge up` does;
for llmapi split by the stand-in worker's log into its start, its model's load and the rest), the first token of
one request and of a second one, the tree's CPU while idle for `--idle-s`, then a fixed workload: `--streams`
concurrent gRPC streams (`ModelStreamInfer`, as the proxy's client), each sending `--requests` requests of
`--max-tokens` tokens back to back (the fast emitter: `--emitter-requests`, so its run is long enough to time).
CPU time (user + system, all threads, /proc/<pid>/stat) of tritonserver and of each descendant — the model's
python-backend stub and, for llmapi, the stand-in's worker — is read before and after the workload and divided by
the tokens streamed. "generation alone" is the same decoding (prefill, then one token per sequence in turn,
greedy, a log-softmax per token) run bare in a subprocess on one thread, so "added" (the tree's CPU per token
minus it) is what the Triton model, the stand-in's Python glue and Triton add over the generation itself (and
any slowdown of the generation from sharing the cores with them). Ratios are taken within a repetition, then
the median.

With the stand-in these say what the Triton model and the Python glue cost, not what TensorRT-LLM on a GPU costs.

    .venv/bin/python benchmarks/llmapi_model.py [--repeats 3] [--streams 8] [--max-tokens 64] [--requests 8]
        [--emitter-requests 32] [--emitter-pace-ms 16] [--idle-s 2] [--engine TINY_DIR] [--models ...] [--json]

Prints two markdown tables (progress on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the LLM API stand-in and its repository helper

from proxy import DirectClient, free_port  # noqa: E402
from proxy import write_repository as write_emitter_repository  # noqa: E402

from llmapi_helpers import (  # noqa: E402
    TRTLLM13_STANDIN,
    WORKER_MODULE,
    prepare_pytorch_entry,
    standin_environment,
)
from trtforge.engine import read_engine  # noqa: E402
from trtforge.proxy.tokenizer import ProxyTokenizer  # noqa: E402
from trtforge.reference.tiny import TINY_DEFAULTS, write_tiny_engine  # noqa: E402
from trtforge.triton import TritonServer, write_model_repository  # noqa: E402
from trtforge.triton.repository import TENSORRT_LLM  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
MODELS = ("llmapi", "reference", "emitter", "emitter-paced")
GENERATING = ("llmapi", "reference")
PROMPT = "Tell me a long story about the sea, the wind and the old lighthouse."
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
ROLES = ("tritonserver", "stub", "worker", "other")


# ------------------------------------------------------------------------------------------------ /proc


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _role(pid: int, root: int) -> str:
    if pid == root:
        return "tritonserver"
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "other"
    if WORKER_MODULE in cmdline:
        return "worker"
    return "stub" if "triton_python_backend_stub" in cmdline else "other"


def tree_cpu(root: int) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system, every thread) of `root` and each live descendant, with its role."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found: dict[int, tuple[str, float]] = {}
    pending = [root]
    while pending:
        pid = pending.pop()
        fields = _stat(pid)
        if fields is None or fields[0] == "Z" or pid in found:
            continue
        found[pid] = (_role(pid, root), (int(fields[11]) + int(fields[12])) / CLK_TCK)
        pending.extend(children.get(pid, []))
    return found


def cpu_by_role(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds each role used between two snapshots (a process started in between counts whole)."""
    used = dict.fromkeys(ROLES, 0.0)
    for pid, (role, cpu) in after.items():
        used[role] += cpu - before.get(pid, (role, 0.0))[1]
    return used


# ------------------------------------------------------------------------------------------------ repositories


def tiny_engine(work: Path, source: Path | None) -> Path:
    dest = work / "engine"
    if source is not None:
        shutil.copytree(source, dest)
    else:
        dest.mkdir()
        print("writing the tiny engine once ...", file=sys.stderr, flush=True)
        write_tiny_engine(dest, **TINY_DEFAULTS)
    return dest


def float_checkpoint(engine_dir: Path, dest: Path) -> Path:
    """The tiny engine's model as a plain Hugging Face checkpoint with its tokenizer (what tests use)."""
    shutil.copytree(engine_dir / "hf_model", dest)
    for name in TOKENIZER_FILES:
        shutil.copyfile(engine_dir / name, dest / name)
    return dest


def only_tensorrt_llm(repository: Path) -> Path:
    """Drop every model but `tensorrt_llm`: the three repositories differ only in that model."""
    for path in repository.iterdir():
        if path.is_dir() and path.name != TENSORRT_LLM:
            shutil.rmtree(path)
    return repository


def repositories(work: Path, engine_dir: Path, streams: int, pace_ms: float) -> dict[str, Path]:
    # The LLM API model serves a PyTorch entry prepared by `trtforge build` (catalogue entry, store), through the
    # real repository writer, as `trtforge up` does.
    with standin_environment(work / "prepare.log"):
        engine = prepare_pytorch_entry(
            "tiny-llmapi",
            float_checkpoint(engine_dir, work / "checkpoint"),
            max_batch_size=max(8, streams),
            max_num_tokens=1024,
            max_seq_len=1024,
        )
    llmapi = write_model_repository({"tiny-llmapi": engine}, work / "llmapi" / "repository")
    reference = write_model_repository({"tiny": read_engine(engine_dir)}, work / "reference" / "repository")
    emitter = write_emitter_repository(engine_dir, work / "emitter" / "repository", pace_s=0.0)
    paced = write_emitter_repository(engine_dir, work / "paced" / "repository", pace_s=pace_ms / 1000)
    return {
        "llmapi": only_tensorrt_llm(llmapi),
        "reference": only_tensorrt_llm(reference),
        "emitter": only_tensorrt_llm(emitter),
        "emitter-paced": only_tensorrt_llm(paced),
    }


@contextlib.contextmanager
def environment(model: str, worker_log: Path) -> Iterator[None]:
    """For the LLM API model's server: the stand-in on PYTHONPATH (the model puts it on its sys.path), and the
    log its worker writes its start and ready times to."""
    names = ("PYTHONPATH", "TRTFORGE_STANDIN_WORKER_LOG")
    saved = {name: os.environ.get(name) for name in names}
    if model == "llmapi":
        os.environ["PYTHONPATH"] = str(TRTLLM13_STANDIN)
        os.environ["TRTFORGE_STANDIN_WORKER_LOG"] = str(worker_log)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def worker_times(worker_log: Path) -> tuple[float, float] | None:
    """time.time() of the stand-in worker's start and of its model being ready, from its log."""
    events = {}
    with contextlib.suppress(OSError):
        for line in worker_log.read_text().splitlines():
            stamp, _pid, event = line.split(" ", 2)
            events.setdefault(event, float(stamp))
    started, ready = events.get("rank 0 started"), events.get("rank 0 ready")
    return (started, ready) if started is not None and ready is not None else None


# ------------------------------------------------------------------------------------------------ one run


@dataclass
class Sample:
    model: str
    repeat: int
    ready_s: float
    startup_cpu_s: float  # the whole tree's, when ready
    first_ttft_ms: float  # the first request after ready
    warm_ttft_ms: float  # a second one, alone
    idle_cpu_ms_per_s: float  # the tree's CPU while nothing runs
    tokens: int
    wall_s: float
    cpu_s: dict[str, float] = field(default_factory=dict)  # by role, during the workload
    bare_cpu_s: float = 0.0  # generation alone, same sizes (0 for the emitters)
    phases_s: dict[str, float] = field(default_factory=dict)  # llmapi: where start → ready went

    def per_token_us(self, role: str) -> float:
        return self.cpu_s[role] / self.tokens * 1e6

    @property
    def total_us(self) -> float:
        return sum(self.cpu_s.values()) / self.tokens * 1e6

    @property
    def bare_us(self) -> float:
        return self.bare_cpu_s / self.tokens * 1e6

    @property
    def added_us(self) -> float:
        return self.total_us - self.bare_us


async def _workload(grpc_url: str, prompt: list[int], streams: int, requests: int, max_tokens: int) -> int:
    client = DirectClient(grpc_url, prompt, max_tokens)

    async def stream() -> int:
        return sum([(await client.request()).tokens for _ in range(requests)])

    try:
        return sum(await asyncio.gather(*(stream() for _ in range(streams))))
    finally:
        await client.close()


async def _ttfts_s(grpc_url: str, prompt: list[int], max_tokens: int) -> tuple[float, float]:
    """Time to first token of the first request after ready, then of a second one (one channel, kept)."""
    client = DirectClient(grpc_url, prompt, max_tokens)
    try:
        first = (await client.request()).ttft_s
        return first, (await client.request()).ttft_s
    finally:
        await client.close()


def requests_for(model: str, args: argparse.Namespace) -> int:
    return args.emitter_requests if model == "emitter" else args.requests


def serve_once(
    model: str, repository: Path, work: Path, repeat: int, prompt: list[int], args: argparse.Namespace
) -> Sample:
    ports = [free_port() for _ in range(3)]
    log = work / f"{model}-{repeat}.log"
    worker_log = work / f"{model}-{repeat}-worker.log"
    server = TritonServer(
        repository, http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2], log_path=log
    )
    with environment(model, worker_log):
        started, started_wall = time.monotonic(), time.time()
        server.start()
    try:
        server.wait_ready(timeout_s=600)
        ready_s, ready_wall = time.monotonic() - started, time.time()
        root = server.pid
        assert root is not None
        startup_cpu_s = sum(cpu for _, cpu in tree_cpu(root).values())
        first_s, warm_s = asyncio.run(_ttfts_s(server.grpc_url, prompt, args.max_tokens))
        idle_before = tree_cpu(root)
        time.sleep(args.idle_s)
        idle = sum(cpu_by_role(idle_before, tree_cpu(root)).values()) / args.idle_s
        requests = requests_for(model, args)
        before = tree_cpu(root)
        begun = time.monotonic()
        tokens = asyncio.run(_workload(server.grpc_url, prompt, args.streams, requests, args.max_tokens))
        wall_s = time.monotonic() - begun
        after = tree_cpu(root)
    finally:
        server.stop()
    expected = args.streams * requests * args.max_tokens
    if tokens != expected:
        raise SystemExit(f"{model}: {tokens} tokens streamed, {expected} expected (see {log})")
    phases = {}
    if (times := worker_times(worker_log)) is not None:
        phases = {
            "to worker start": times[0] - started_wall,
            "worker start to its model loaded": times[1] - times[0],
            "then to ready": ready_wall - times[1],
        }
    return Sample(
        model,
        repeat,
        ready_s,
        startup_cpu_s,
        first_s * 1000,
        warm_s * 1000,
        idle * 1000,
        tokens,
        wall_s,
        cpu_by_role(before, after),
        phases_s=phases,
    )


def bare_generation_cpu_s(
    model_dir: Path, prompt: list[int], streams: int, requests: int, max_tokens: int
) -> float:
    """CPU seconds of the decoding alone, in a fresh process (its own torch threads setting)."""
    command = [sys.executable, __file__, "--bare", str(model_dir), "--prompt", json.dumps(prompt)]
    command += ["--streams", str(streams), "--requests", str(requests), "--max-tokens", str(max_tokens)]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return float(json.loads(result.stdout)["cpu_s"])


def bare_generation(
    model_dir: Path, prompt: list[int], streams: int, requests: int, max_tokens: int
) -> float:
    """Each round: `streams` sequences prefilled, then one token each in turn (as both models schedule them),
    greedy with a log-softmax per token (what both compute for a greedy request); process CPU seconds."""
    import inspect

    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    torch.set_num_threads(1)  # as the stand-in's worker and the reference model use for a model this small
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    # transformers 5.x renamed forward's `past_key_values` to `cache` (both models check the same way).
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    @torch.inference_mode()
    def forward(ids: list[int], cache: Any) -> torch.Tensor:
        out = model(input_ids=torch.tensor([ids]), use_cache=True, logits_to_keep=1, **{cache_arg: cache})
        logits: torch.Tensor = out.logits[0, -1].float()
        return logits

    def choose(logits: torch.Tensor) -> int:
        torch.log_softmax(logits, dim=-1)
        return int(torch.argmax(logits))

    forward(prompt, DynamicCache(config=model.config))  # warm-up, as the served models get one request first
    started = time.process_time()
    for _ in range(requests):
        caches = [DynamicCache(config=model.config) for _ in range(streams)]
        logits = [forward(prompt, cache) for cache in caches]
        for step in range(max_tokens):
            for index, cache in enumerate(caches):
                token = choose(logits[index])
                if step < max_tokens - 1:
                    logits[index] = forward([token], cache)
    return time.process_time() - started


# ------------------------------------------------------------------------------------------------ report


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _spread(values: list[float], digits: int = 1) -> str:
    return f"{_median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def report(samples: list[Sample], args: argparse.Namespace) -> str:
    by_model = {model: [s for s in samples if s.model == model] for model in MODELS}
    by_model = {model: mine for model, mine in by_model.items() if mine}
    repeats = sorted({s.repeat for s in samples})

    def ratios(model: str, value: Callable[[Sample], float], base: str) -> str:
        """The median of `value(model) / value(base)` over the repetitions (each ratio within one)."""
        out = []
        for repeat in repeats:
            mine = [s for s in by_model.get(model, []) if s.repeat == repeat]
            other = [s for s in by_model.get(base, []) if s.repeat == repeat]
            if mine and other and value(other[0]):
                out.append(value(mine[0]) / value(other[0]))
        return f"{statistics.median(out):.2f}" if out else "–"

    lines = [
        "Start → ready (`TritonServer.start()` → `wait_ready()`), time to first token of the first request after",
        "ready and of a second one; median (min–max) over the repetitions:",
        "",
        "| model | start → ready s | × reference | CPU s to ready (whole tree) | first request TTFT ms |"
        " second request TTFT ms |",
        "|---|---|---|---|---|---|",
    ]
    for model, mine in by_model.items():
        lines.append(
            f"| {model} | {_spread([s.ready_s for s in mine], 2)} | "
            f"{ratios(model, lambda s: s.ready_s, 'reference')} | "
            f"{_spread([s.startup_cpu_s for s in mine])} | {_spread([s.first_ttft_ms for s in mine])} | "
            f"{_spread([s.warm_ttft_ms for s in mine])} |"
        )
    phases = [s.phases_s for s in by_model.get("llmapi", []) if s.phases_s]
    if phases:
        parts = ", ".join(f"{name} {_median([p[name] for p in phases]):.2f} s" for name in phases[0])
        lines += ["", f"llmapi's start → ready (medians, from the stand-in worker's log): {parts}."]
    lines += [
        "",
        f"CPU per streamed token: {args.streams} streams × {args.requests} requests × {args.max_tokens} tokens"
        f" (the fast emitter: × {args.emitter_requests} requests; the paced one emits a token per stream every"
        f" {args.emitter_pace_ms:g} ms); µs of CPU per token, medians over the repetitions:",
        "",
        "| model | tokens/run | tok/s | tritonserver | stub (the model) | stand-in worker | whole tree |"
        " generation alone | **added** (tree − generation) | added × paced emitter | idle tree CPU ms/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, mine in by_model.items():
        worker = f"{_median([s.per_token_us('worker') for s in mine]):.0f}" if model == "llmapi" else "–"
        lines.append(
            f"| {model} | {mine[0].tokens} | {_median([s.tokens / s.wall_s for s in mine]):.0f} | "
            f"{_median([s.per_token_us('tritonserver') for s in mine]):.0f} | "
            f"{_median([s.per_token_us('stub') for s in mine]):.0f} | {worker} | "
            f"{_median([s.total_us for s in mine]):.0f} | {_median([s.bare_us for s in mine]):.0f} | "
            f"**{_median([s.added_us for s in mine]):.0f}** | "
            f"{ratios(model, lambda s: s.added_us, 'emitter-paced')} | "
            f"{_median([s.idle_cpu_ms_per_s for s in mine]):.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--requests", type=int, default=8, help="requests per stream")
    parser.add_argument(
        "--emitter-requests", type=int, default=32, help="requests per stream for the fast emitter"
    )
    parser.add_argument(
        "--emitter-pace-ms",
        type=float,
        default=16.0,
        help="the paced emitter's ms between two tokens of a stream (≈ the generators' pace here)",
    )
    parser.add_argument("--idle-s", type=float, default=2.0, help="seconds the idle CPU is read over")
    parser.add_argument("--engine", type=Path, help="a tiny engine directory to copy instead of training one")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--json", action="store_true", help="also print every sample as JSON")
    parser.add_argument("--bare", type=Path, help=argparse.SUPPRESS)  # internal: generation alone
    parser.add_argument("--prompt", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare is not None:
        cpu_s = bare_generation(
            args.bare, json.loads(args.prompt), args.streams, args.requests, args.max_tokens
        )
        print(json.dumps({"cpu_s": cpu_s}))
        return
    models = [name.strip() for name in args.models.split(",")]
    if unknown := set(models) - set(MODELS):
        raise SystemExit(f"unknown models: {', '.join(sorted(unknown))}")

    with tempfile.TemporaryDirectory(prefix="llmapi-bench-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ["TRTFORGE_HOME"] = str(work / "home")
        engine_dir = tiny_engine(work, args.engine)
        prompt = ProxyTokenizer.load(engine_dir).encode(PROMPT)
        repos = repositories(work, engine_dir, args.streams, args.emitter_pace_ms)
        samples: list[Sample] = []
        for repeat in range(args.repeats):
            # The decoding alone, once per repetition: both generating models run the same one.
            bare_s = bare_generation_cpu_s(
                engine_dir / "hf_model", prompt, args.streams, args.requests, args.max_tokens
            )
            rotated = models[repeat % len(models) :] + models[: repeat % len(models)]
            for model in rotated:
                sample = serve_once(model, repos[model], work, repeat, prompt, args)
                if model in GENERATING:
                    sample.bare_cpu_s = bare_s
                samples.append(sample)
                print(
                    f"repeat {repeat} {model}: ready {sample.ready_s:.2f} s, {sample.tokens} tokens in "
                    f"{sample.wall_s:.2f} s, {sample.total_us:.0f} µs/token (generation alone "
                    f"{sample.bare_us:.0f}), load average {os.getloadavg()[0]:.1f}",
                    file=sys.stderr,
                    flush=True,
                )
    print(report(samples, args))
    if args.json:
        print(json.dumps([asdict(s) for s in samples], indent=1))


if __name__ == "__main__":
    main()
