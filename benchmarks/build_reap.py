"""Benchmark: seconds from a hung builder's last engine byte to the builder being gone, and the disk it leaves.

Compares trtforge's watchdog with the seed's method (`timeout 600 trtllm-bench build ...`), both driving the
stand-in `trtllm-bench` (tests/standins) in its hang modes. The seed's timeout is shortened to `--seed-timeout`
seconds so the run ends; with the real 600 s its delay is ~600 s minus the build time.

    .venv/bin/python benchmarks/build_reap.py [--engine-mib 64] [--seed-timeout 15] [--runs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from checkpoints import write_nvfp4_checkpoint  # noqa: E402
from trtforge.builder.command import build_command  # noqa: E402
from trtforge.builder.watchdog import BuildWatchdog  # noqa: E402
from trtforge.catalog import CatalogEntry  # noqa: E402
from trtforge.processes import session_members  # noqa: E402

MODES = ("hang-after-save", "hang-ignore-term", "hung-child")
MONO_TO_WALL = time.time() - time.monotonic()


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def last_byte_wall(engine_dir: Path) -> float:
    return max(p.stat().st_mtime for p in engine_dir.iterdir() if p.name.startswith("rank"))


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def run_ours(
    entry: CatalogEntry, checkpoint: Path, work: Path, env: dict[str, str]
) -> tuple[float, int, int]:
    """(seconds last byte → reaped, bytes the builder left outside the engine, bytes left after cleanup)."""
    workspace = work / "workspace"
    command = build_command(
        entry, python=sys.executable, launcher="none", workspace=workspace, model_path=checkpoint,
        revision=None, base_env=env,
    )  # fmt: skip
    result = BuildWatchdog(
        command.argv, env=command.env, workspace=workspace, engine_dir=command.engine_dir,
        world_size=entry.world_size, log_path=work / "build.log", stall_timeout_s=900,
    ).run()  # fmt: skip
    assert result.engine_complete_at is not None, "no engine"
    delay = result.reaped_at + MONO_TO_WALL - last_byte_wall(command.engine_dir)
    left = tree_bytes(workspace) - tree_bytes(command.engine_dir)
    # What the pipeline then does: move the engine into the store entry, remove the workspace.
    shutil.rmtree(workspace)
    return delay, left, tree_bytes(workspace)


def run_seed(
    entry: CatalogEntry, checkpoint: Path, work: Path, env: dict[str, str], timeout_s: float, pidfile: Path
) -> tuple[float | None, int, int]:
    """(seconds last byte → `timeout` returned, or None if it never did; bytes left; orphaned processes)."""
    workspace = work / "workspace"
    command = build_command(
        entry, python=sys.executable, launcher="none", workspace=workspace, model_path=checkpoint,
        revision=None, base_env=env,
    )  # fmt: skip
    env = dict(command.env)
    env.pop("TLLM_WORKER_USE_SINGLE_PROCESS", None)  # the seed did not set it
    proc = subprocess.Popen(
        ["timeout", f"{timeout_s:g}", *command.argv], env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        proc.wait(timeout=timeout_s + 10)
        delay: float | None = time.time() - last_byte_wall(command.engine_dir)
    except subprocess.TimeoutExpired:
        delay = None  # `timeout` sent SIGTERM, the builder ignored it: the seed's build never returns
    pids = [int(x) for x in pidfile.read_text().split()] if pidfile.exists() else []
    orphans = sum(alive(pid) for pid in pids)
    left = tree_bytes(workspace)  # the seed keeps the engine in the workspace and copies it: all of it stays
    # Clean up what we started (the session, and any orphan the seed's method left behind).
    for pid in [*session_members(proc.pid), *pids]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    return delay, left, orphans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine-mib", type=int, default=64)
    parser.add_argument("--seed-timeout", type=float, default=15.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="trtforge-bench-") as tmp:
        tmp_path = Path(tmp)
        checkpoint = write_nvfp4_checkpoint(tmp_path / "ckpt", tiny=True)
        entry = CatalogEntry(name="bench", model=str(checkpoint), quantization="NVFP4", max_seq_len=2048)
        base = {
            **os.environ,
            "PYTHONPATH": str(ROOT / "tests" / "standins"),
            "TRTFORGE_STANDIN_ENGINE_BYTES": str(args.engine_mib << 20),
            "TRTFORGE_STANDIN_CHUNK_DELAY_S": "0",
        }
        mib = 1 << 20
        print(f"engine: 1 rank × {args.engine_mib} MiB; seed timeout shortened to {args.seed_timeout:g} s\n")
        print(
            "| builder hang | method | last byte → reaped (s) | disk left behind (MiB) | orphan processes |"
        )
        print("|---|---|---|---|---|")
        for mode in MODES:
            ours, seed = [], []
            for run in range(args.runs):
                work = tmp_path / f"{mode}-{run}"
                work.mkdir()
                env = {
                    **base,
                    "TRTFORGE_STANDIN_MODE": mode,
                    "TRTFORGE_STANDIN_PIDFILE": str(work / "ours.pids"),
                }
                ours.append(run_ours(entry, checkpoint, work / "ours", env))
                pidfile = work / "seed.pids"
                env = {**env, "TRTFORGE_STANDIN_PIDFILE": str(pidfile)}
                seed.append(run_seed(entry, checkpoint, work / "seed", env, args.seed_timeout, pidfile))
                shutil.rmtree(work)
            delay = statistics.median(d for d, _, _ in ours)
            print(
                f"| {mode} | trtforge watchdog | {delay:.2f} (max {max(d for d, _, _ in ours):.2f}) | "
                f"{ours[0][1] / mib:.0f} written, {ours[0][2] / mib:.0f} after cleanup | 0 |"
            )
            delays = [d for d, _, _ in seed]
            text = "never (SIGTERM ignored)" if None in delays else f"{statistics.median(delays):.2f}"
            print(
                f"| {mode} | seed `timeout {args.seed_timeout:g}` | {text} | {seed[0][1] / mib:.0f} | {seed[0][2]} |"
            )


if __name__ == "__main__":
    main()
