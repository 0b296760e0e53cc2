"""Benchmark: seconds from `stop()` to every process of a command gone, and the processes left behind.

Compares `OwnedProcess.stop()` with the plain process-group end (`Popen(start_new_session=True)`, `killpg`
TERM, wait for the leader up to the grace, `killpg` KILL) on small real process trees (python -c):

- obeys-term: a leader and 4 children in its group, all ending on SIGTERM;
- setsid-ignores-term: the leader's child leaves the session (setsid) and ignores SIGTERM (an MPI-worker-like
  process, a python-backend stub);
- double-fork: a grandchild that left the session and whose parent exited (re-parented to init) before the
  stop, and before any scan could record it: the owner's known limit (a recorded one is ended: see the tests).

"Left behind" counts the tree's processes still running 1 s after the method returned.

Every process of interest writes its pid to a FIFO before the stop, so each run starts from the same state.

    .venv/bin/python benchmarks/process_end.py [--runs 5] [--grace 0.2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from trtforge.processes import OwnedProcess, start_time  # noqa: E402

TREE = textwrap.dedent(
    """
    import os, signal, sys, time

    fifo, shape = sys.argv[1], sys.argv[2]

    def say():
        with open(fifo, "w") as handle:
            handle.write(f"{os.getpid()}\\n")

    def stay():
        while True:
            time.sleep(3600)

    if shape == "obeys-term":
        for _ in range(4):
            if os.fork() == 0:
                say()
                stay()
    elif shape == "setsid-ignores-term":
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.setsid()
            say()
            stay()
    elif shape == "double-fork":
        child = os.fork()
        if child == 0:
            os.setsid()
            if os.fork() == 0:
                say()
                stay()
            os._exit(0)
        os.waitpid(child, 0)
    say()
    stay()
    """
)
SETTLE_S = 1.0
SHAPES = {"obeys-term": 5, "setsid-ignores-term": 2, "double-fork": 2}  # shape -> pids it reports


def _read_pids(fifo: Path, count: int) -> list[int]:
    pids: list[int] = []
    while len(pids) < count:
        with open(fifo) as handle:
            pids += [int(word) for word in handle.read().split()]
    return pids


def _alive(pids: list[int], starts: dict[int, str | None]) -> list[int]:
    return [pid for pid in pids if starts[pid] is not None and start_time(pid) == starts[pid]]


def _killpg_end(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """The usual end of a process group: TERM, wait for the leader up to the grace, KILL the group."""
    os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):  # the group is gone (its members that left it are not)
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_once(shape: str, method: str, grace_s: float, work: Path) -> tuple[float, int]:
    fifo = work / f"{shape}-{method}.fifo"
    os.mkfifo(fifo)
    argv = [sys.executable, "-c", TREE, str(fifo), shape]
    try:
        if method == "OwnedProcess":
            with OwnedProcess(argv, grace_s=grace_s) as owned:
                pids = _read_pids(fifo, SHAPES[shape])
                starts = {pid: start_time(pid) for pid in pids}
                owned.track()  # the double-fork grandchild is recorded while it is ours (as the tracker does)
                began = time.monotonic()
                owned.stop()
                elapsed = time.monotonic() - began
        else:
            proc = subprocess.Popen(argv, start_new_session=True)
            pids = _read_pids(fifo, SHAPES[shape])
            starts = {pid: start_time(pid) for pid in pids}
            began = time.monotonic()
            _killpg_end(proc, grace_s)
            elapsed = time.monotonic() - began
        time.sleep(SETTLE_S)  # what still runs after this is orphaned, not merely still dying
        left = _alive(pids, starts)
        for pid in left:  # the benchmark cleans up what the method left
            os.kill(pid, signal.SIGKILL)
        return elapsed, len(left)
    finally:
        fifo.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--grace", type=float, default=0.2)
    args = parser.parse_args()
    print("| tree | method | stop returned (s), median (max) | processes left behind |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="process-end-") as tmp:
        for shape in SHAPES:
            for method in ("OwnedProcess", "killpg"):
                results = [run_once(shape, method, args.grace, Path(tmp)) for _ in range(args.runs)]
                times = [elapsed for elapsed, _ in results]
                left = max(count for _, count in results)
                print(
                    f"| {shape} | {method} | {statistics.median(times):.3f} ({max(times):.3f}) | {left} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
