"""Benchmark: how fast a finished build is over. Two tables:

1. `reap`: seconds from a hung builder's last engine byte to the builder being gone, and the disk it leaves.
   Compares trtforge's watchdog with the seed's method (`timeout 600 trtllm-bench build ...`), both driving the
   stand-in `trtllm-bench` (tests/standins) in its hang modes. The seed's timeout is shortened to `--seed-timeout`
   seconds so the run ends; with the real 600 s its delay is ~600 s minus the build time.
2. `returned`: seconds from the engine being whole (the last byte of its rank files) to `trtforge build`
   returning (its process gone), with the checkpoint work (tokenizer files, template, xgrammar info) done beside
   the builder (`parallel`, the default) and after it (`serial`, `TRTFORGE_BUILD_PREP=serial`: the order trtforge
   used before), side by side. The stand-in builder is slowed to take about `--build-s` seconds for the small
   engine, as a real build takes minutes; `--big-gib N` adds an engine of N GiB written at disk speed.

    .venv/bin/python benchmarks/build_reap.py [--only reap|returned|big] [--engine-mib 64] [--seed-timeout 15]
        [--runs 3] [--build-s 6] [--big-gib 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
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


def cli_build(
    checkpoint: Path, work: Path, *, prep: str, engine_bytes: int, chunk_delay_s: float
) -> dict[str, float]:
    """One `trtforge build` of a fresh store: engine whole → returned, and the manifest's timings."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "tests" / "standins"),
        "TRTFORGE_HOME": str(work / "home"),
        "TRTLLM_ENGINE_PATH": str(work / "links"),
        "TRTFORGE_CATALOG": str(work / "engines.toml"),
        "HF_HUB_OFFLINE": "1",
        "TRTFORGE_GPU_ARCH": "sm100",
        "TRTFORGE_STANDIN_ENGINE_BYTES": str(engine_bytes),
        "TRTFORGE_STANDIN_CHUNK_DELAY_S": f"{chunk_delay_s:g}",
        "TRTFORGE_BUILD_PREP": prep,
    }
    (work / "engines.toml").write_text(
        f'[engines.bench]\nmodel = "{checkpoint}"\nquantization = "NVFP4"\nmax_seq_len = 2048\n'
        "max_num_tokens = 2048\n"
    )
    started = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "trtforge", "build", "bench", "--json"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    returned = time.time()
    entry = Path(json.loads(out[out.index("{") :])["path"])
    whole = last_byte_wall(entry)
    timings: dict[str, float] = json.loads((entry / "trtforge.json").read_text())["timings"]
    shutil.rmtree(work / "home")
    return {**timings, "whole_to_returned_s": returned - whole, "total_s": returned - started}


def returned_table(tmp: Path, checkpoint: Path, args: argparse.Namespace) -> None:
    mib = 1 << 20
    small = 4 * mib
    # The stand-in writes each rank file twice (tmp.engine, then the final copy) in 256 KiB chunks.
    delay = args.build_s / (2 * small / (256 << 10))
    engines = [(f"{small // mib} MiB, builder ≈ {args.build_s:g} s", small, delay, args.runs)]
    if args.only == "big":
        engines = []
    if args.big_gib or args.only == "big":
        engines.append(
            (
                f"{args.big_gib or 2:g} GiB, builder at disk speed",
                int((args.big_gib or 2) * (1 << 30)),
                0.0,
                1,
            )
        )
    print("| engine | checkpoint work | engine whole → `build` returned (s) | builder (s) | "
          "checkpoint work (s) | waited for it after the reap (s) | rank files moved and hashed (s) | "
          "whole build (s) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    rows: dict[tuple[str, str], list[dict[str, float]]] = {}
    for label, size, chunk_delay, runs in engines:
        for run in range(runs):
            for prep in ("serial", "parallel"):  # interleaved: both see the same machine load
                work = tmp / f"returned-{prep}-{run}"
                work.mkdir()
                result = cli_build(checkpoint, work, prep=prep, engine_bytes=size, chunk_delay_s=chunk_delay)
                shutil.rmtree(work)
                rows.setdefault((label, prep), []).append(result)
        for prep in ("serial", "parallel"):
            results = rows[(label, prep)]

            def med(key: str, results: list[dict[str, float]] = results) -> str:
                values = [r[key] for r in results]
                spread = f" ({min(values):.2f}–{max(values):.2f})" if len(values) > 1 else ""
                return f"{statistics.median(values):.2f}{spread}"

            what = "beside the builder" if prep == "parallel" else "after the reap (before)"
            print(f"| {label} | {what} | {med('whole_to_returned_s')} | {med('build_s')} | {med('prep_s')} | "
                  f"{med('prep_wait_s')} | {med('engine_hash_s')} | {med('total_s')} |")  # fmt: skip


def reap_table(tmp_path: Path, checkpoint: Path, args: argparse.Namespace) -> None:
    entry = CatalogEntry(name="bench", model=str(checkpoint), quantization="NVFP4", max_seq_len=2048)
    base = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "tests" / "standins"),
        "TRTFORGE_STANDIN_ENGINE_BYTES": str(args.engine_mib << 20),
        "TRTFORGE_STANDIN_CHUNK_DELAY_S": "0",
    }
    mib = 1 << 20
    print(f"engine: 1 rank × {args.engine_mib} MiB; seed timeout shortened to {args.seed_timeout:g} s\n")
    print("| builder hang | method | last byte → reaped (s) | disk left behind (MiB) | orphan processes |")
    print("|---|---|---|---|---|")
    for mode in MODES:
        ours, seed = [], []
        for run in range(args.runs):
            work = tmp_path / f"{mode}-{run}"
            work.mkdir()
            env = {**base, "TRTFORGE_STANDIN_MODE": mode, "TRTFORGE_STANDIN_PIDFILE": str(work / "ours.pids")}
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        choices=("reap", "returned", "big"),
        help="one table (default: both); big: its big engine only",
    )
    parser.add_argument("--engine-mib", type=int, default=64, help="rank file size of the reap table")
    parser.add_argument("--seed-timeout", type=float, default=15.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--build-s", type=float, default=6.0, help="the small build's builder time")
    parser.add_argument("--big-gib", type=float, default=0, help="also a build of an engine this large")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="trtforge-bench-") as tmp:
        tmp_path = Path(tmp)
        checkpoint = write_nvfp4_checkpoint(tmp_path / "ckpt", tiny=True)
        if args.only in (None, "reap"):
            reap_table(tmp_path, checkpoint, args)
        if args.only is None:
            print()
        if args.only in (None, "returned", "big"):
            returned_table(tmp_path, checkpoint, args)


if __name__ == "__main__":
    main()
