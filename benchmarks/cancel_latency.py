"""Benchmark: from a client's disconnect to the model seeing its generation's `stop`, under load.

One embedded tritonserver serving the built-in tiny engine on the reference backend, the proxy in this process
(as `trtforge up` runs it) and a load generator in a child process (its own CPU and GIL, like real clients).
For each `--streams N`, N workers send streamed completions back to back (`ignore_eos`, `--max-tokens`), so N
generations are active at once; each request is left, with probability `--leave-fraction`, after 1 to
`--leave-after` chunks (seeded), by closing its socket. The child records the CLOCK_MONOTONIC time of each close
(`time.monotonic()` is system-wide on Linux) under the request's `X-Request-Id`, and stops after `--samples`
departures (letting the requests in flight finish). Three moments are matched with each departure:

- the proxy gives the generation up (`TritonBackend.stops`: `abandoned_at`) and sends the model its `stop`;
- the model ends the generation: the reference model's log line "request ID stopped after N tokens" in
  tritonserver's log (written before its next decoding step, timestamped to the microsecond by tritonserver as
  it logs it): the cancel latency, target <= 200 ms;
- the proxy has the model's answer to the stop (`stopped_at`): the above plus the way back.

Figures per concurrency: median, p95 and max of each, from the client's disconnect.

    .venv/bin/python benchmarks/cancel_latency.py [--streams 64,256] [--samples 64] [--max-tokens 24]
        [--engine TINY_DIR] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtforge.engine import EngineInfo, read_engine
from trtforge.proxy import ProxySettings, make_server
from trtforge.proxy.backend import StopRecord, TritonBackend
from trtforge.reference.tiny import TINY_DEFAULTS, corpus_text, write_tiny_engine
from trtforge.triton.repository import write_model_repository
from trtforge.triton.server import TritonServer

MODEL = "tiny"
PROMPT_CHARS = 48
TARGET_MS = 200.0
# The reference model's log line when a stop ends a generation (glog: local date and time to the microsecond).
_APPLIED = re.compile(r'^I(\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d+) .*"request (\S+) stopped after ')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------------------------------- the load (child)


@dataclass
class _Load:
    url: str
    samples: int
    max_tokens: int
    leave_fraction: float
    leave_after: int
    departures: list[tuple[str, float]]

    @property
    def enough(self) -> bool:
        return len(self.departures) >= self.samples


def _request_bytes(host: str, port: int, prompt: str, max_tokens: int, request_id: str) -> bytes:
    body = json.dumps(
        {
            "model": MODEL,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
        }
    ).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"X-Request-Id: {request_id}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


async def _worker(load: _Load, index: int, prompts: list[str], seed: int) -> None:
    """Requests back to back until the load has its samples; some leave after a few chunks."""
    rng = random.Random(seed * 100_003 + index)
    host, port = load.url.removeprefix("http://").split(":")
    count = 0
    while not load.enough:
        count += 1
        request_id = f"w{index}-{count}"
        leave_after = rng.randint(1, load.leave_after) if rng.random() < load.leave_fraction else 0
        prompt = prompts[rng.randrange(len(prompts))]
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(_request_bytes(host, int(port), prompt, load.max_tokens, request_id))
        frames = 0
        try:
            while chunk := await reader.read(65536):
                frames += chunk.count(b"data: ")
                if leave_after and frames >= leave_after and b"[DONE]" not in chunk and not load.enough:
                    load.departures.append((request_id, time.monotonic()))
                    break
        finally:
            writer.close()


async def _run_load(load: _Load, streams: int, seed: int) -> None:
    prompts = _prompts(256)
    await asyncio.gather(*(_worker(load, i, prompts, seed) for i in range(streams)))


def load_main(args: argparse.Namespace) -> None:
    """The child: run the load, print the departures as JSON."""
    load = _Load(args.load, args.samples, args.max_tokens, args.leave_fraction, args.leave_after, [])
    asyncio.run(_run_load(load, args.streams[0], args.seed))
    print(json.dumps(load.departures))


def _prompts(count: int) -> list[str]:
    text = corpus_text()
    step = (len(text) - PROMPT_CHARS) // count
    return [text[i * step : i * step + PROMPT_CHARS] for i in range(count)]


# ------------------------------------------------------------------------------------------- the stack (parent)


def _engine(root: Path, max_batch_size: int, source: Path | None) -> EngineInfo:
    """The tiny engine, built for `max_batch_size` (or a copy of an existing one, to skip its training)."""
    dest = root / "engine"
    if source is None:
        dest.mkdir()
        write_tiny_engine(dest, **{**TINY_DEFAULTS, "max_batch_size": max_batch_size})
    else:
        shutil.copytree(source, dest)
        config = json.loads((dest / "config.json").read_text())
        config["build_config"]["max_batch_size"] = max_batch_size
        (dest / "config.json").write_text(json.dumps(config))
    return read_engine(dest)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] if ordered else math.nan


def _summary(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    if not ms:
        return {"p50_ms": math.nan, "p95_ms": math.nan, "max_ms": math.nan}
    return {
        "p50_ms": round(statistics.median(ms), 1),
        "p95_ms": round(_percentile(ms, 0.95), 1),
        "max_ms": round(max(ms), 1),
    }


def _wait(condition: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stops_applied(log_path: Path) -> dict[str, float]:
    """When the model ended each stopped generation (time.monotonic() values), from tritonserver's log."""
    offset = time.time() - time.monotonic()
    year = datetime.date.today().year
    applied: dict[str, float] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        if (m := _APPLIED.match(line)) is None:
            continue
        month, day, hour, minute, second = (int(g) for g in m.groups()[:5])
        micros = int(m.group(6).ljust(6, "0")[:6])
        wall = datetime.datetime(year, month, day, hour, minute, second, micros).timestamp()  # local time
        applied[m.group(7)] = wall - offset
    return applied


def measure(
    args: argparse.Namespace, url: str, backend: TritonBackend, log_path: Path, streams: int
) -> dict[str, Any]:
    """One load run at `streams`: the departures the child made, matched with the proxy's stop records."""
    command = [
        sys.executable,
        __file__,
        "--load",
        url,
        "--streams",
        str(streams),
        "--samples",
        str(args.samples),
    ]
    command += ["--max-tokens", str(args.max_tokens), "--leave-fraction", str(args.leave_fraction)]
    command += ["--leave-after", str(args.leave_after), "--seed", str(args.seed)]
    started = time.monotonic()
    child = subprocess.run(command, capture_output=True, text=True, check=True)
    wall_s = time.monotonic() - started
    departures: dict[str, float] = dict(json.loads(child.stdout))
    # Every abandoned generation has drained once `draining` is 0 (the child has ended all its requests).
    _wait(lambda: backend.draining == 0, timeout_s=300)
    records: dict[str, StopRecord] = {
        r.request_id: r for r in list(backend.stops) if r.request_id in departures
    }
    noticed = [records[r].abandoned_at - t for r, t in departures.items() if r in records]
    stopped = [records[r].stopped_at - t for r, t in departures.items() if r in records]
    log_applied = stops_applied(log_path)
    applied = [log_applied[r] - t for r, t in departures.items() if r in records and r in log_applied]
    return {
        "streams": streams,
        "departures": len(departures),
        "stopped": len(records),  # the others had finished before their client left
        "load_s": round(wall_s, 1),
        "disconnect_to_proxy": _summary(noticed),
        "disconnect_to_model": _summary(applied),
        "disconnect_to_stop": _summary(stopped),
        "over_target": sum(s * 1000 > TARGET_MS for s in applied),
    }


def _print_table(rows: list[dict[str, Any]]) -> None:
    print(
        "| streams | departures (stopped) | → proxy gives up | → model ends the generation "
        "| → proxy has the model's answer | model over 200 ms |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        cells = [
            f"{f['p50_ms']} / {f['p95_ms']} / {f['max_ms']}"
            for f in (row["disconnect_to_proxy"], row["disconnect_to_model"], row["disconnect_to_stop"])
        ]
        print(
            f"| {row['streams']} | {row['departures']} ({row['stopped']}) | {' | '.join(cells)} "
            f"| {row['over_target']} |"
        )
    print("\n(milliseconds from the client's disconnect: median / p95 / max)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", default="64,256", help="concurrencies, comma-separated")
    parser.add_argument("--samples", type=int, default=64, help="departures measured per concurrency")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--leave-fraction", type=float, default=0.25, help="share of requests that leave")
    parser.add_argument("--leave-after", type=int, default=8, help="leave after 1 to this many chunks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--engine", type=Path, help="a tiny engine directory to copy instead of training one")
    parser.add_argument("--load", help=argparse.SUPPRESS)  # internal: run as the load generator for this URL
    args = parser.parse_args()
    args.streams = [int(s) for s in args.streams.split(",")]
    if args.load:
        load_main(args)
        return

    root = Path(tempfile.mkdtemp(prefix="trtforge-cancel-bench-"))
    try:
        engine = _engine(root, max(args.streams), args.engine)
        server = TritonServer(
            write_model_repository({MODEL: engine}, root / "repository"),
            http_port=_free_port(),
            grpc_port=_free_port(),
            metrics_port=_free_port(),
            log_path=root / "tritonserver.log",
        )
        with server:
            proxy = make_server(
                [ProxySettings.from_engine(MODEL, engine, server.grpc_url)],
                port=_free_port(),
                log_level="warning",
            )
            thread = threading.Thread(target=proxy.run, daemon=True)
            thread.start()
            if not _wait(lambda: proxy.started or not thread.is_alive(), timeout_s=120) or not proxy.started:
                raise SystemExit("the proxy did not start")
            url = f"http://127.0.0.1:{proxy.config.port}"
            backend: TritonBackend = proxy.config.app.state.servings[MODEL].backend
            warm = json.dumps({"model": MODEL, "prompt": "Hello", "max_tokens": 4}).encode()
            request = urllib.request.Request(
                f"{url}/v1/completions", data=warm, headers={"Content-Type": "application/json"}
            )
            urllib.request.urlopen(request, timeout=300).read()  # the model's first step is slow
            rows = []
            for streams in args.streams:
                assert server.log_path is not None
                rows.append(measure(args, url, backend, server.log_path, streams))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            proxy.should_exit = True
            thread.join(timeout=15)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_table(rows)


if __name__ == "__main__":
    main()
