"""Benchmark: seconds from SIGINT/SIGTERM to `trtforge up tiny` having exited with every process it started.

Each run starts `python -m trtforge up tiny` on free ports, waits for `/v1/models`, opens one long streaming
completion and reads its first frame, notes the process tree (tritonserver and its python-backend stubs), sends
the signal and times, from the signal: tritonserver gone, the `up` process exited, and the whole tree gone.
Variants run in a rotating order within one invocation:

- **after**: the `src/` next to this file (first on PYTHONPATH, whatever is installed);
- **before**: `src/` of `--before REF` (a git revision of the repository in the working directory, extracted
  with `git archive` into a temporary directory), when given;
- **no fast exit**: this checkout's `src/` through `typer`'s app directly (`trtforge.cli.app()`), i.e. without
  the console script's `os._exit` after a clean stop: the stack's stop as now plus the interpreter's teardown.

    .venv/bin/python benchmarks/up_stop.py [--runs 3] [--before REF] [--signals INT,TERM]

Prints a markdown table (median and max over the runs).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_NO_FAST_EXIT = "import sys; from trtforge.cli import app; sys.argv[0] = 'trtforge'; app()"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_time(pid: int) -> str | None:
    """The process's start time, or None when it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def descendants(root: int) -> dict[int, str]:
    """Live descendants of `root` as pid -> start time (tritonserver has its own session, still our child)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found: dict[int, str] = {}
    pending = list(children.get(root, []))
    while pending:
        pid = pending.pop()
        start = start_time(pid)
        if start is not None and pid not in found:
            found[pid] = start
            pending.extend(children.get(pid, []))
    return found


def wait_for_models(port: int, process: subprocess.Popen[bytes], timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"trtforge up exited with {process.returncode} before serving")
        try:
            with _NO_PROXY.open(f"http://127.0.0.1:{port}/v1/models", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError("the proxy did not come up")


def open_stream(port: int) -> http.client.HTTPConnection:
    """A long streaming completion, read up to its first frame; the connection stays open."""
    body = {"model": "tiny", "prompt": "fox", "max_tokens": 900, "ignore_eos": True, "stream": True}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    connection.request(
        "POST", "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    response = connection.getresponse()
    assert response.status == 200, response.status
    while not response.readline().startswith(b"data: "):
        pass
    threading.Thread(target=response.read, daemon=True).start()  # drain the rest until the server ends it
    return connection


@dataclass
class Run:
    variant: str
    signal_name: str
    triton_gone_s: float
    exited_s: float
    all_gone_s: float
    status: int


class StartFailed(RuntimeError):
    """`up` did not come up (on a busy machine: e.g. a port taken by another process meanwhile)."""


def one_run(variant: str, argv: list[str], env: dict[str, str], sig: signal.Signals, log: Path) -> Run:
    port, http_port, grpc_port, metrics_port = (free_port() for _ in range(4))
    argv = [
        *argv, "up", "tiny", "--no-build", "--port", str(port), "--triton-http-port", str(http_port),
        "--triton-grpc-port", str(grpc_port), "--triton-metrics-port", str(metrics_port),
    ]  # fmt: skip
    with open(log, "wb") as stderr:
        process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        try:
            wait_for_models(port, process)
        except RuntimeError as exc:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise StartFailed(f"{exc}: {' | '.join(tail)}") from None
        connection = open_stream(port)
        tree = descendants(process.pid)
        tritonserver = [pid for pid in tree if "tritonserver" in Path(f"/proc/{pid}/comm").read_text()]
        assert tritonserver, "no tritonserver among up's children"
        sent = time.monotonic()
        process.send_signal(sig)
        triton_gone = exited = None
        while True:  # poll finely: each event's time is the first poll that sees it
            now = time.monotonic()
            if triton_gone is None and all(start_time(pid) is None for pid in tritonserver):
                triton_gone = now
            if exited is None and process.poll() is not None:
                exited = now
            if exited is not None and all(start_time(pid) != start for pid, start in tree.items()):
                all_gone = now
                break
            time.sleep(0.005)
        connection.close()
        assert triton_gone is not None
        return Run(
            variant, sig.name, triton_gone - sent, exited - sent, all_gone - sent, int(process.returncode)
        )
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def extract(revision: str, dest: Path) -> Path:
    """`src/` of `revision` under `dest`."""
    archive = subprocess.run(["git", "archive", revision, "src"], check=True, capture_output=True).stdout
    dest.mkdir(parents=True)
    tar_path = dest / "src.tar"
    tar_path.write_bytes(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(dest, filter="data")
    return dest / "src"


def summary(runs: list[Run]) -> str:
    rows = [
        "| variant | signal | runs | tritonserver gone (s) | process exited (s) | every child gone (s) | exit status |",
        "|---|---|---|---|---|---|---|",
    ]
    keys = dict.fromkeys((run.variant, run.signal_name) for run in runs)
    for variant, sig in keys:
        mine = [run for run in runs if (run.variant, run.signal_name) == (variant, sig)]

        def cell(values: list[float]) -> str:
            return f"{statistics.median(values):.2f} (max {max(values):.2f})"

        statuses = ", ".join(sorted({str(run.status) for run in mine}))
        rows.append(
            f"| {variant} | SIG{sig.removeprefix('SIG')} | {len(mine)} | "
            f"{cell([r.triton_gone_s for r in mine])} | {cell([r.exited_s for r in mine])} | "
            f"{cell([r.all_gone_s for r in mine])} | {statuses} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--before", metavar="REF", help="also run src/ of this git revision")
    parser.add_argument("--signals", default="INT,TERM", help="comma-separated: INT, TERM")
    args = parser.parse_args()
    signals = [signal.Signals[f"SIG{name.strip().upper()}"] for name in args.signals.split(",")]

    with tempfile.TemporaryDirectory(prefix="up-stop-") as tmp:
        work = Path(tmp)
        env = {
            **os.environ,
            "TRTFORGE_HOME": str(work / "home"),
            "TRTLLM_ENGINE_PATH": str(work / "links"),
            "TRTFORGE_CATALOG": str(work / "engines.toml"),
            "HF_HUB_OFFLINE": "1",
        }
        env["PYTHONPATH"] = str(ROOT / "src")  # this file's checkout, whatever is installed
        print("building the tiny engine once ...", file=sys.stderr, flush=True)
        build = [sys.executable, "-m", "trtforge", "build", "tiny"]
        subprocess.run(build, env=env, check=True, stdout=subprocess.DEVNULL)  # stdout: the table only
        variants: list[tuple[str, list[str], dict[str, str]]] = [
            ("after", [sys.executable, "-m", "trtforge"], env),
            ("no fast exit", [sys.executable, "-c", _NO_FAST_EXIT], env),
        ]
        if args.before:
            before_src = extract(args.before, work / "before")
            variants.append(
                (
                    f"before ({args.before})",
                    [sys.executable, "-m", "trtforge"],
                    {**env, "PYTHONPATH": str(before_src)},
                )
            )
        runs: list[Run] = []
        for index in range(args.runs):
            for sig in signals:
                rotated = variants[index % len(variants) :] + variants[: index % len(variants)]
                for name, argv, variant_env in rotated:
                    try:
                        run = one_run(name, argv, variant_env, sig, work / "up.log")
                    except StartFailed as exc:  # not a stop measurement: reported and left out
                        print(f"{name} {sig.name}: skipped, {exc}", file=sys.stderr, flush=True)
                        continue
                    print(
                        f"{run.variant} {run.signal_name}: tritonserver gone {run.triton_gone_s:.2f} s, exited "
                        f"{run.exited_s:.2f} s, all gone {run.all_gone_s:.2f} s, status {run.status}",
                        file=sys.stderr,
                        flush=True,
                    )
                    runs.append(run)
    print(summary(runs))


if __name__ == "__main__":
    main()
