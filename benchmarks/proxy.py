"""Benchmark: what the OpenAI proxy costs per streamed token, next to a direct gRPC client of the same Triton.

One embedded tritonserver whose `tensorrt_llm` model is `benchmarks/emitter_model.py` (the tensor contract,
tokens of real text as fast as the CPU allows, or at `--pace-ms` per token per stream), and the proxy
(`trtforge proxy`, a separate process whose CPU time is read from /proc). For each concurrency, the clients
run one after another, in a rotating order, `--repeats` times:

- `direct`: a `grpc.aio` client of Triton's `ModelStreamInfer` (what the proxy itself does, without HTTP);
- `httpx`: `httpx.AsyncClient` streaming `/v1/chat/completions` through the proxy;
- `raw`: a minimal asyncio-socket HTTP client through the proxy (the client's own cost is small).

Each of N streams sends requests back to back (closed loop), `--max-tokens` tokens each; the prompts are the
same chat messages (the direct client sends the ids the proxy's chat template makes). Figures:
tokens/s and its ratio to the direct client in the same repeat, proxy CPU µs per token, client CPU µs per
token, time to first token (TTFT) p50/p90: at one stream over all requests, under load over every request
but each stream's first (those start together).

`--workers 1,2` runs one proxy per worker count side by side (clients `raw@w1`, `raw@w2`, ...);
`--baseline-src DIR` adds the proxy of another checkout's `src/` (clients `raw@base`, ...), so before and
after are measured in the same run; `--stream-interval 1,4` runs one proxy per interval (`raw@si1`, ...);
`--together` runs those proxies' clients at the same time (same background load; `direct` still runs alone).

`--trace` runs each proxy under `benchmarks/proxy_trace.py` and reports, for the raw client, the p50/p90/p99 of
each stage of a request's admission (connect, HTTP parse, tokenizer queue, template, tokenize, Triton write,
Triton first response, first SSE byte) and the proxy's event-loop lag; `--profile` adds cProfile of each
proxy's event loop (top entries by own and cumulative time); `--py-spy DIR` samples every thread of each proxy
and reports the shares by kind of work (gRPC receive, send, event loop, trtforge's own code).

    .venv/bin/python benchmarks/proxy.py [--streams 1,16,64] [--repeats 3] [--max-tokens 256]
        [--tokens-per-run 16384] [--pace-ms 0] [--workers 1] [--stream-interval 1] [--baseline-src DIR]
        [--clients direct,httpx,raw] [--together] [--trace] [--profile] [--py-spy DIR] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import itertools
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
from tritonclient.grpc import service_pb2_grpc

from trtforge.engine import read_engine
from trtforge.proxy.backend import GenerationRequest, build_infer_request, is_final
from trtforge.proxy.tokenizer import ProxyTokenizer
from trtforge.proxy.workers import auto_workers, usable_cores
from trtforge.reference.tiny import corpus_text, make_tokenizer
from trtforge.triton import TritonServer, write_model_repository

HERE = Path(__file__).resolve().parent
CLIENTS = ("direct", "httpx", "raw")
CLK_TCK = os.sysconf("SC_CLK_TCK")
MESSAGES = [
    {"role": "user", "content": "Tell me a long story about the sea, the wind and the old lighthouse."}
]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------------------------------------ /proc


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` and its live descendants (all their threads)."""
    tree = _children()
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(tree.get(current, []))
        try:
            with open(f"/proc/{current}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, ValueError, IndexError):
            continue
    return total


# ------------------------------------------------------------------------------------------------ the stack


def write_engine(dest: Path) -> Path:
    """A reference-layout engine directory: config.json, an empty hf_model/, the tiny tokenizer + template."""
    dest.mkdir(parents=True)
    (dest / "hf_model").mkdir()
    config = {
        "version": "bench",
        "pretrained_config": {
            "architecture": "Qwen3ForCausalLM",
            "mapping": {"world_size": 1, "tp_size": 1, "pp_size": 1},
            "quantization": {"quant_algo": "NVFP4"},
        },
        "build_config": {
            "max_batch_size": 256,
            "max_seq_len": 8192,
            "max_input_len": 4096,
            "max_num_tokens": 8192,
            "max_beam_width": 1,
        },
    }
    (dest / "config.json").write_text(json.dumps(config))
    tokenizer = make_tokenizer(8192)
    tokenizer.save_pretrained(str(dest))
    (dest / "chat_template.jinja").write_text(tokenizer.chat_template)
    return dest


def write_repository(engine_dir: Path, dest: Path, pace_s: float) -> Path:
    """The generated repository with only `tensorrt_llm`, its model.py replaced by the emitter."""
    write_model_repository({"tiny": read_engine(engine_dir)}, dest)
    for name in ("preprocessing", "postprocessing", "ensemble"):
        shutil.rmtree(dest / name)
    version = dest / "tensorrt_llm" / "1"
    shutil.copyfile(HERE / "emitter_model.py", version / "model.py")
    tokenizer = ProxyTokenizer.load(engine_dir)
    ids = tokenizer.encode(corpus_text())[:4096]
    (version / "emitter.json").write_text(json.dumps({"ids": ids, "pace_s": pace_s}))
    return dest


@dataclass(frozen=True)
class Variant:
    """One proxy under test: `workers` processes, running this checkout's code or the one in `src`."""

    label: str
    workers: int = 1
    src: Path | None = None  # another checkout's `src/`: a baseline proxy
    trace: Path | None = None  # run under `proxy_trace.py`, its stage timestamps (and profile) written here
    profile: bool = False
    py_spy: Path | None = None  # sample the proxy (every thread) with py-spy into here
    stream_interval: int = 1  # the proxy's --stream-interval (this checkout's proxy only)


@dataclass
class Proxy:
    variant: Variant
    process: subprocess.Popen[bytes]
    url: str


@dataclass
class Stack:
    engine_dir: Path
    triton: TritonServer
    proxies: dict[str, Proxy]
    grpc_url: str
    repository: Path

    @property
    def cancel_log(self) -> Path:
        return self.repository / "tensorrt_llm" / "1" / "cancelled.log"


def start_proxy(work: Path, engine_dir: Path, grpc_port: int, variant: Variant) -> Proxy:
    port = free_port()
    command = [sys.executable, "-m", "trtforge"]
    if variant.trace is not None:
        tracer = [str(HERE / "proxy_trace.py"), str(variant.trace), variant.label or "main"]
        command = [sys.executable, *tracer, "1" if variant.profile else "0", "--"]
    if variant.py_spy is not None:
        # py-spy starts the proxy (attaching to a running process needs ptrace rights it may not have) and
        # writes the samples when the proxy exits; `stop_process` then stops the proxy, not py-spy.
        output = variant.py_spy / f"pyspy-{variant.label or 'main'}.txt"
        sampler = [str(Path(sys.executable).with_name("py-spy")), "record", "--format", "raw", "--threads"]
        command = [
            *sampler,
            "--nonblocking",  # pausing the proxy per sample would cost more than what is measured
            "--subprocesses",
            "--rate",
            "100",
            "--output",
            str(output),
            "--",
            *command,
        ]
    command += ["proxy", str(engine_dir), "--port", str(port)]
    command += ["--triton-grpc-port", str(grpc_port)]
    if variant.workers != 1 or variant.src is None:  # this checkout's default is `auto`; a baseline's was 1
        command += ["--workers", str(variant.workers)]
    if variant.stream_interval != 1:
        command += ["--stream-interval", str(variant.stream_interval)]
    env = {**os.environ, "TRTFORGE_HOME": str(work / "home")}
    if variant.src is not None:
        env["PYTHONPATH"] = str(variant.src)
        project = variant.src.parent / "pyproject.toml"
        if project.exists() and "httptools" not in project.read_text():
            # A baseline from before the httptools dependency: hide it so uvicorn picks h11, as it did then.
            shadow = work / f"shadow-{variant.label}" / "httptools"
            shadow.mkdir(parents=True)
            (shadow / "__init__.py").write_text('raise ImportError("hidden for the baseline proxy")\n')
            env["PYTHONPATH"] += f"{os.pathsep}{shadow.parent}"
    log = work / f"proxy-{variant.label or 'main'}.log"
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, log)
    except BaseException:
        stop_process(process)
        raise
    return Proxy(variant, process, url)


@contextlib.contextmanager
def running_stack(work: Path, *, pace_s: float, variants: list[Variant]) -> Iterator[Stack]:
    engine_dir = write_engine(work / "engine")
    repository = write_repository(engine_dir, work / "repository", pace_s)
    ports = [free_port() for _ in range(3)]
    triton = TritonServer(
        repository,
        http_port=ports[0],
        grpc_port=ports[1],
        metrics_port=ports[2],
        log_path=work / "triton.log",
    )
    triton.start()
    proxies: dict[str, Proxy] = {}
    try:
        triton.wait_ready(timeout_s=300)
        for variant in variants:
            proxies[variant.label] = start_proxy(work, engine_dir, ports[1], variant)
        yield Stack(engine_dir, triton, proxies, f"127.0.0.1:{ports[1]}", repository)
    finally:
        for proxy in proxies.values():
            stop_process(proxy.process, sampled=proxy.variant.py_spy is not None)
        triton.stop()


def wait_healthy(url: str, proxy: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proxy.poll() is not None:
            raise SystemExit(f"the proxy exited ({proxy.returncode}):\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("the proxy did not become healthy in 120 s")


def stop_process(process: subprocess.Popen[bytes], *, sampled: bool = False) -> None:
    """SIGTERM the process group (`sampled`: only the processes py-spy started, so that it writes its
    samples once they are gone), SIGKILL what is left after 10 s."""
    with contextlib.suppress(ProcessLookupError):
        if sampled:
            for child in _children().get(process.pid, []):
                os.kill(child, signal.SIGTERM)
        else:
            os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60 if sampled else 10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


# ------------------------------------------------------------------------------------------------ clients


@dataclass
class Outcome:
    """One request: completion tokens received and seconds to the first one."""

    tokens: int
    ttft_s: float
    # The raw client's: its X-Request-Id, and when (time.monotonic()) it connected and saw the first token.
    request_id: str = ""
    sent_at: float = 0.0
    first_at: float = 0.0


class DirectClient:
    """`grpc.aio` straight to Triton: the floor the proxy is compared with."""

    def __init__(self, grpc_url: str, prompt_ids: list[int], max_tokens: int) -> None:
        self.channel = grpc.aio.insecure_channel(grpc_url)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.prompt_ids = tuple(prompt_ids)
        self.max_tokens = max_tokens
        self.count = 0

    async def request(self) -> Outcome:
        self.count += 1
        gen = GenerationRequest(
            request_id=f"direct-{self.count}",
            prompt_ids=self.prompt_ids,
            max_tokens=self.max_tokens,
            end_id=None,
            pad_id=0,
        )
        message = build_infer_request("tensorrt_llm", gen)
        done = asyncio.Event()

        async def requests() -> AsyncIterator[Any]:
            yield message
            await done.wait()

        started = time.perf_counter()
        first = 0.0
        tokens = 0
        call = self.stub.ModelStreamInfer(requests())
        try:
            async for reply in call:
                if reply.error_message:
                    raise RuntimeError(reply.error_message)
                response = reply.infer_response
                raw = response.raw_output_contents
                new = len(raw[0]) // 4 if raw else 0
                if new and not tokens:
                    first = time.perf_counter() - started
                tokens += new
                if is_final(response):
                    break
        finally:
            done.set()
            call.cancel()
        return Outcome(tokens, first)

    async def close(self) -> None:
        await self.channel.close()


def chat_body(model: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": MESSAGES,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }


_USAGE = re.compile(rb'"completion_tokens":(\d+)')
_CONTENT = re.compile(rb'"content":"[^"]')


class HttpxClient:
    def __init__(self, url: str, model: str, max_tokens: int, concurrency: int) -> None:
        limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8)
        self.client = httpx.AsyncClient(base_url=url, limits=limits, timeout=None)
        self.body = chat_body(model, max_tokens)

    async def request(self) -> Outcome:
        started = time.perf_counter()
        first = 0.0
        last = ""
        async with self.client.stream("POST", "/v1/chat/completions", json=self.body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
                if not first and '"content":"' in data and '"content":""' not in data:
                    first = time.perf_counter() - started
                last = data
        usage = json.loads(last)["usage"]
        return Outcome(int(usage["completion_tokens"]), first)

    async def close(self) -> None:
        await self.client.aclose()


class RawClient:
    """HTTP/1.1 over an asyncio socket, one connection per request, no parsing beyond what it counts."""

    def __init__(self, url: str, model: str, max_tokens: int, id_prefix: str = "raw") -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.body = json.dumps(chat_body(model, max_tokens)).encode()
        self.id_prefix = id_prefix
        self.count = 0

    def head(self, request_id: str) -> bytes:
        return (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nX-Request-Id: {request_id}\r\n"
            f"Content-Length: {len(self.body)}\r\nConnection: close\r\n\r\n"
        ).encode() + self.body

    async def request(self) -> Outcome:
        self.count += 1
        request_id = f"{self.id_prefix}-{self.count}"
        started = time.perf_counter()
        sent_at = time.monotonic()
        reader, writer = await asyncio.open_connection(self.host, self.port)
        writer.write(self.head(request_id))
        first = first_at = 0.0
        parts: list[bytes] = []
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                if not first and _CONTENT.search(chunk):
                    first = time.perf_counter() - started
                    first_at = time.monotonic()
                parts.append(chunk)
        finally:
            writer.close()
        data = b"".join(parts)
        if b"[DONE]" not in data:
            raise RuntimeError(f"stream without [DONE]: {data[:200]!r}")
        usage = _USAGE.findall(data)
        return Outcome(int(usage[-1]) if usage else 0, first, request_id, sent_at, first_at)

    async def close(self) -> None:
        return None


# ------------------------------------------------------------------------------------------------ cancel


async def _cancel_seen_after(stack: Stack, before: int, disconnected: float) -> float:
    """Seconds from `disconnected` to the emitter's next logged cancellation (waits for it, up to 10 s)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = stack.cancel_log.read_text().split() if stack.cancel_log.exists() else []
        if len(lines) > before:
            return float(lines[before]) - disconnected
        await asyncio.sleep(0.002)
    raise RuntimeError("the backend never saw the cancellation")


async def cancel_latency(stack: Stack, client_name: str, prompt_ids: list[int], trials: int) -> list[float]:
    """Client disconnect (or gRPC cancel) after a few tokens → the backend sees the request cancelled.

    One request at a time. The emitter checks for cancellation every 50 ms (as TensorRT-LLM does every
    `cancellation_check_period_ms`), so the floor is that period; what the proxy adds is the rest.
    """
    kind, _, label = client_name.partition("@")
    seen: list[float] = []
    for _ in range(trials):
        before = len(stack.cancel_log.read_text().split()) if stack.cancel_log.exists() else 0
        if kind == "direct":
            direct = DirectClient(stack.grpc_url, prompt_ids, 8000)
            gen = GenerationRequest(
                request_id=f"cancel-{len(seen)}",
                prompt_ids=direct.prompt_ids,
                max_tokens=8000,
                end_id=None,
                pad_id=0,
            )
            call = direct.stub.ModelStreamInfer()
            await call.write(build_infer_request("tensorrt_llm", gen))
            for _ in range(3):
                await call.read()
            disconnected = time.monotonic()
            call.cancel()
            await direct.close()
        else:
            url = stack.proxies[label].url
            host, port = url.removeprefix("http://").split(":")
            body = json.dumps({**chat_body(str(stack.engine_dir), 8000)}).encode()
            head = (
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(head + body)
            received = b""
            while len(_CONTENT.findall(received)) < 3:
                chunk = await reader.read(65536)
                if not chunk:
                    raise RuntimeError(f"the stream ended early: {received[:300]!r}")
                received += chunk
            disconnected = time.monotonic()
            writer.close()
        seen.append(await _cancel_seen_after(stack, before, disconnected))
    return seen


# ------------------------------------------------------------------------------------------------ runs


@dataclass
class Run:
    client: str
    streams: int
    tokens: int
    wall_s: float
    proxy_cpu_s: float
    client_cpu_s: float
    triton_cpu_s: float
    ttft_all: list[float] = field(default_factory=list)
    ttft_later: list[float] = field(default_factory=list)
    later: list[Outcome] = field(default_factory=list)  # the requests `ttft_later` is taken from

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s

    def per_token_us(self, seconds: float) -> float:
        return seconds / max(self.tokens, 1) * 1e6


_RUN_IDS = itertools.count()


async def run_client(
    stack: Stack, client_name: str, streams: int, per_stream: int, max_tokens: int, prompt_ids: list[int]
) -> Run:
    client: DirectClient | HttpxClient | RawClient
    kind, _, label = client_name.partition("@")
    proxy = stack.proxies[label] if kind != "direct" else None
    if proxy is None:
        client = DirectClient(stack.grpc_url, prompt_ids, max_tokens)
    elif kind == "httpx":
        client = HttpxClient(proxy.url, str(stack.engine_dir), max_tokens, streams)
    else:
        client = RawClient(proxy.url, str(stack.engine_dir), max_tokens, f"s{streams}-{next(_RUN_IDS)}")
    proxy_pid = proxy.process.pid if proxy is not None else 0
    await client.request()  # warm the connection and the path
    results: list[list[Outcome]] = [[] for _ in range(streams)]

    async def worker(index: int) -> None:
        for _ in range(per_stream):
            results[index].append(await client.request())

    proxy_cpu = tree_cpu_s(proxy_pid) if proxy_pid else 0.0
    triton_cpu = tree_cpu_s(stack.triton.pid or 0)
    client_cpu = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(streams)))
    wall = time.perf_counter() - started
    client_cpu = time.process_time() - client_cpu
    proxy_cpu = tree_cpu_s(proxy_pid) - proxy_cpu if proxy_pid else 0.0
    triton_cpu = tree_cpu_s(stack.triton.pid or 0) - triton_cpu
    await client.close()
    outcomes = [o for per in results for o in per]
    tokens = sum(o.tokens for o in outcomes)
    if tokens != len(outcomes) * max_tokens:
        raise RuntimeError(f"{client_name}: {tokens} tokens, expected {len(outcomes) * max_tokens}")
    return Run(
        client=client_name,
        streams=streams,
        tokens=tokens,
        wall_s=wall,
        proxy_cpu_s=proxy_cpu,
        client_cpu_s=client_cpu,
        triton_cpu_s=triton_cpu,
        ttft_all=[o.ttft_s for o in outcomes],
        ttft_later=[o.ttft_s for per in results for o in per[1:]],
        later=[o for per in results for o in (per if streams == 1 else per[1:])],
    )


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarise(runs: list[Run], clients: list[str], streams: list[int]) -> dict[str, Any]:
    """Medians over repeats; ratios are taken within a repeat, then the median of those."""
    summary: dict[str, Any] = {}
    for n in streams:
        per_client = {c: [r for r in runs if r.client == c and r.streams == n] for c in clients}
        direct = per_client.get("direct", [])
        row: dict[str, Any] = {}
        for c, mine in per_client.items():
            if not mine:
                continue
            ttft = [t for r in mine for t in (r.ttft_all if n == 1 else r.ttft_later)]
            entry = {
                "tokens_per_s": statistics.median(r.tokens_per_s for r in mine),
                "proxy_cpu_us_per_token": statistics.median(r.per_token_us(r.proxy_cpu_s) for r in mine),
                "client_cpu_us_per_token": statistics.median(r.per_token_us(r.client_cpu_s) for r in mine),
                "triton_cpu_us_per_token": statistics.median(r.per_token_us(r.triton_cpu_s) for r in mine),
                "ttft_p50_ms": percentile(ttft, 0.5) * 1e3,
                "ttft_p90_ms": percentile(ttft, 0.9) * 1e3,
                "ttft_p99_ms": percentile(ttft, 0.99) * 1e3,
            }
            if direct and c != "direct":
                ratios = [m.tokens_per_s / d.tokens_per_s for m, d in zip(mine, direct, strict=False)]
                entry["ratio_to_direct"] = statistics.median(ratios)
            row[c] = entry
        if "direct" in row:
            for c in row:
                if c != "direct":
                    row[c]["ttft_p50_added_ms"] = row[c]["ttft_p50_ms"] - row["direct"]["ttft_p50_ms"]
                    row[c]["ttft_p50_x_direct"] = row[c]["ttft_p50_ms"] / row["direct"]["ttft_p50_ms"]
        summary[str(n)] = row
    return summary


def print_table(summary: dict[str, Any]) -> None:
    header = (
        f"{'streams':>7} {'client':>10} {'tok/s':>8} {'÷direct':>7} {'proxy µs/tok':>12} {'client µs/tok':>13} "
        f"{'triton µs/tok':>13} {'TTFT p50 ms':>11} {'p90 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} {'×direct':>7}"
    )
    print(header)
    for n, row in summary.items():
        if n in ("cancel", "stages"):
            continue
        for c, e in row.items():
            ratio = f"{e['ratio_to_direct']:.2f}" if "ratio_to_direct" in e else "-"
            added = f"{e['ttft_p50_added_ms']:+.1f}" if "ttft_p50_added_ms" in e else "-"
            times = f"{e['ttft_p50_x_direct']:.1f}" if "ttft_p50_x_direct" in e else "-"
            proxy = f"{e['proxy_cpu_us_per_token']:.0f}" if c != "direct" else "-"
            print(
                f"{n:>7} {c:>10} {e['tokens_per_s']:>8.0f} {ratio:>7} {proxy:>12} "
                f"{e['client_cpu_us_per_token']:>13.0f} {e['triton_cpu_us_per_token']:>13.0f} "
                f"{e['ttft_p50_ms']:>11.1f} {e['ttft_p90_ms']:>8.1f} {e['ttft_p99_ms']:>8.1f} {added:>8} {times:>7}"
            )
    for c, e in summary.get("cancel", {}).items():
        print(
            f"cancel {c:>10}: disconnect → backend sees it p50 {e['p50_ms']:.1f} ms, max {e['max_ms']:.1f} ms"
        )


# (stage, what the time before it is): the order of a request's admission, as `proxy_trace.py` stamps it.
STAGES = (
    ("connected", "TCP connect"),
    ("received", "request bytes read"),
    ("accept", "HTTP parse → ASGI"),
    ("submit", "body validated"),
    ("prep_start", "tokenizer queue"),
    ("template", "chat template"),
    ("tokenize", "tokenize"),
    ("prep_end", "build generations"),
    ("stream", "back on the loop"),
    ("written", "Triton request write"),
    ("first_read", "Triton first response"),
    ("first_byte", "first delta → SSE"),
)


def stage_report(runs: list[Run], traces: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per client and concurrency, the p50/p90/p99 (ms) of the time each stage of admission took."""
    report: dict[str, Any] = {}
    for run in runs:
        kind, _, label = run.client.partition("@")
        trace = traces.get(label or "main")
        if kind != "raw" or trace is None:
            continue
        spans: dict[str, list[float]] = {}
        for outcome in run.later:
            events = trace["events"].get(outcome.request_id, {})
            before = outcome.sent_at
            for stage, name in (*STAGES, ("client", "SSE → client")):
                at = outcome.first_at if stage == "client" else events.get(stage)
                if at is None:
                    continue
                spans.setdefault(name, []).append(at - before)
                before = at
            spans.setdefault("TTFT (client)", []).append(outcome.first_at - outcome.sent_at)
        row = report.setdefault(run.client, {}).setdefault(str(run.streams), {})
        for name, values in spans.items():
            row.setdefault(name, []).extend(values)
    for client, rows in report.items():
        for streams, row in rows.items():
            rows[streams] = {
                name: [round(percentile(v, q) * 1e3, 2) for q in (0.5, 0.9, 0.99)] for name, v in row.items()
            }
        lag = traces[client.partition("@")[2] or "main"]["lag_s"]
        rows["loop lag"] = [round(percentile(lag, q) * 1e3, 2) for q in (0.5, 0.9, 0.99)]
    return report


def print_stages(report: dict[str, Any]) -> None:
    for client, rows in report.items():
        for streams, row in rows.items():
            if streams == "loop lag":
                print(f"{client}: event-loop lag (5 ms probe) p50/p90/p99 ms {row}")
                continue
            print(f"{client} at {streams} streams, admission stages p50/p90/p99 ms:")
            for name, values in row.items():
                print(f"    {name:>24} {values[0]:>9.2f} {values[1]:>9.2f} {values[2]:>9.2f}")


def print_profile(path: Path, top: int = 30) -> None:
    import pstats

    stats = pstats.Stats(str(path), stream=sys.stdout)
    print(f"cProfile of the proxy's event-loop thread ({path.stem}), top {top} by own time:")
    stats.sort_stats("tottime").print_stats(top)
    print(f"... and top {top} by cumulative time:")
    stats.sort_stats("cumulative").print_stats(top)


# Where a sampled stack's time goes: grpc's poller thread by its thread, the rest by the innermost frame (first
# match wins); startup is left out of the shares.
_STARTUP = ("importlib._bootstrap", "from_pretrained", "ProxyTokenizer.load", "import_utils")
_POLLER = ("_poll_wrapper", "grpc's poller thread")
_KINDS = (
    ("grpc.aio receive (its Cython, on the loop)", ("grpc/aio/_call.py", "grpc/_common.py")),
    ("socket send (transport.write)", ("selector_events.py", "httptools_impl.py", "h11_impl.py")),
    ("event loop (select, callbacks)", ("selectors.py", "asyncio/events.py", "base_events.py", "runners.py")),
    ("trtforge (own time)", ("trtforge/",)),
    ("starlette, uvicorn, fastapi", ("starlette/", "uvicorn/", "fastapi/")),
    ("prometheus-client", ("prometheus_client/",)),
)


def _kind(thread: str, leaf: str) -> str:
    if _POLLER[0] in thread:
        return _POLLER[1]
    return next((kind for kind, markers in _KINDS if any(m in leaf for m in markers)), "other")


def print_py_spy(path: Path, top: int = 12) -> None:
    """py-spy's samples (`--format raw --threads`: one `[process;]thread;outer;...;leaf count` line per
    stack): the share of each kind of work once started, each thread's share, and per thread the frames
    with the most samples of their own."""
    threads: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    kinds: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        n = int(count)
        # With --subprocesses the stack starts with the process, then the thread.
        skip = 2 if frames[0].startswith("process ") and len(frames) > 1 else 1
        thread = f"{frames[0].split(':', 1)[0]} {frames[skip - 1]}" if skip == 2 else frames[0]
        if any(marker in frame for frame in frames for marker in _STARTUP):
            continue
        threads[thread][frames[-1]] += n
        kinds[_kind(thread, frames[-1])] += n
        total += n
    if not total:
        print(f"py-spy ({path.stem}): no samples")
        return
    print(f"py-spy ({path.stem}): {total} samples of running threads after startup, by kind:")
    for kind, n in kinds.most_common():
        print(f"  {100 * n / total:5.1f} %  {kind}")
    ranked = sorted(threads.items(), key=lambda item: -sum(item[1].values()))
    for thread, own in ranked[:6]:
        print(f"  {100 * sum(own.values()) / total:5.1f} %  {thread}; top frames by own samples:")
        for frame, n in own.most_common(top):
            print(f"      {100 * n / total:5.1f} %  {frame}")


async def bench(args: argparse.Namespace, stack: Stack) -> tuple[list[Run], dict[str, list[float]]]:
    tokenizer = ProxyTokenizer.load(stack.engine_dir)
    prompt_ids = tokenizer.render_chat(MESSAGES)
    clients = args.client_names
    runs: list[Run] = []
    for repeat in range(args.repeats):
        for n in args.streams:
            per_stream = max(2 if n > 1 else 1, math.ceil(args.tokens_per_run / (n * args.max_tokens)))
            order = clients[repeat % len(clients) :] + clients[: repeat % len(clients)]
            groups = [[c] for c in order]
            if args.together:  # the proxies' clients at the same time, under the same load
                groups = [[c] for c in order if c == "direct"] + [[c for c in order if c != "direct"]]
            for group in groups:
                ran = await asyncio.gather(
                    *(run_client(stack, c, n, per_stream, args.max_tokens, prompt_ids) for c in group)
                )
                runs.extend(ran)
            for run in runs[-len(clients) :]:
                c = run.client
                print(
                    f"repeat {repeat + 1} streams {n:>3} {c:>10}: {run.tokens_per_s:8.0f} tok/s, proxy "
                    f"{run.per_token_us(run.proxy_cpu_s):5.0f} µs/tok, client {run.per_token_us(run.client_cpu_s):5.0f}"
                    f" µs/tok, TTFT p50 {percentile(run.ttft_later or run.ttft_all, 0.5) * 1e3:7.1f} ms",
                    file=sys.stderr,
                    flush=True,
                )
    cancels: dict[str, list[float]] = {}
    for c in clients:
        if args.cancel_trials and not c.startswith("httpx"):
            cancels[c] = await cancel_latency(stack, c, prompt_ids, args.cancel_trials)
            print(
                f"cancel {c:>10}: {[round(t * 1e3, 1) for t in cancels[c]]} ms", file=sys.stderr, flush=True
            )
    return runs, cancels


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", default="1,16,64", help="concurrencies, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--tokens-per-run", type=int, default=16384, help="tokens per client per concurrency")
    parser.add_argument("--pace-ms", type=float, default=0.0, help="ms between two tokens of one stream")
    parser.add_argument(
        "--workers",
        default="1",
        help="proxy worker processes (a number or `auto`, the proxy's default here); several (e.g. 1,2,auto) "
        "run a proxy each, side by side",
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="also run the proxy of another checkout's src/ (e.g. the code before)",
    )
    parser.add_argument("--clients", default=",".join(CLIENTS), help="client kinds: direct, httpx, raw")
    parser.add_argument("--cancel-trials", type=int, default=10, help="disconnects measured per client")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--together",
        action="store_true",
        help="run the proxies' clients at the same time (each with N streams), direct alone: on a shared "
        "machine, before and after then see the same background load",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="run each proxy under benchmarks/proxy_trace.py and report where a raw request's TTFT goes",
    )
    parser.add_argument(
        "--profile", action="store_true", help="cProfile each proxy's event loop (implies --trace)"
    )
    parser.add_argument(
        "--stream-interval",
        default="1",
        help="the proxy's --stream-interval; several (e.g. 1,4) run a proxy each, side by side",
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="sample each proxy with py-spy (every thread of every worker; raw stacks kept in DIR) and report "
        "where its CPU goes (the proxy CPU figures then include py-spy's own)",
    )
    args = parser.parse_args()
    args.streams = [int(s) for s in args.streams.split(",")]
    counts = [auto_workers(usable_cores()) if w == "auto" else int(w) for w in args.workers.split(",")]
    variants = [Variant(f"w{w}" if len(counts) > 1 else "", workers=w) for w in counts]
    intervals = [int(n) for n in args.stream_interval.split(",")]
    if intervals != [1]:  # each worker count with each interval, side by side
        variants = [
            dataclasses.replace(v, label=f"{v.label}si{n}", stream_interval=n)
            for v in variants
            for n in intervals
        ]
    if args.baseline_src is not None:
        variants.append(Variant("base", src=args.baseline_src.resolve()))
    if len(variants) > 1 and not variants[0].label:
        variants[0] = Variant("new", workers=counts[0])
    tmp = tempfile.TemporaryDirectory(prefix="trtforge-bench-proxy-")
    trace_dir = Path(tmp.name) / "trace"
    if args.trace or args.profile:
        trace_dir.mkdir()
        variants = [Variant(v.label, v.workers, v.src, trace_dir, args.profile) for v in variants]
    spy_dir = args.py_spy.resolve() if args.py_spy else Path(tmp.name) / "py-spy"
    if args.py_spy:
        spy_dir.mkdir(parents=True, exist_ok=True)
        variants = [dataclasses.replace(v, py_spy=spy_dir) for v in variants]
    kinds = args.clients.split(",")
    args.client_names = [k for k in kinds if k == "direct"] + [
        f"{k}@{v.label}" if v.label else k for v in variants for k in kinds if k != "direct"
    ]
    with running_stack(Path(tmp.name), pace_s=args.pace_ms / 1000, variants=variants) as stack:
        pids = {label or "proxy": p.process.pid for label, p in stack.proxies.items()}
        print(f"proxy pids {pids}, triton pid {stack.triton.pid}", file=sys.stderr, flush=True)
        runs, cancels = asyncio.run(bench(args, stack))
    # The proxies are stopped: their traces are written (the directory is removed at the end).
    traces = {
        p.stem.removeprefix("trace-"): json.loads(p.read_text()) for p in trace_dir.glob("trace-*.json")
    }
    profiles = sorted(trace_dir.glob("profile-*.prof"))
    summary = summarise(runs, args.client_names, args.streams)
    if traces:
        summary["stages"] = stage_report(runs, traces)
    summary["cancel"] = {
        c: {"p50_ms": percentile(t, 0.5) * 1e3, "max_ms": max(t) * 1e3} for c, t in cancels.items()
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_table(summary)
        print_stages(summary.get("stages", {}))
    for profile in profiles:
        print_profile(profile)
    for samples in sorted(spy_dir.glob("pyspy-*.txt")):
        print_py_spy(samples)
    tmp.cleanup()


if __name__ == "__main__":
    main()
