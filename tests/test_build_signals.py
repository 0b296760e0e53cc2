"""Signals to `trtforge build`: the builder's whole session ends with it, or with the next build or gc."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from checkpoints import write_nvfp4_checkpoint
from trtforge.builder.pipeline import ensure_engine
from trtforge.catalog import add_entry
from trtforge.processes import start_time
from trtforge.store.entries import EngineStore

STANDINS = Path(__file__).parent / "standins"


@pytest.fixture
def builder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The stand-in builder for entry `small`; returns the file it records its pids in."""
    monkeypatch.setenv("PYTHONPATH", str(STANDINS))
    monkeypatch.setenv("TRTFORGE_GPU_ARCH", "sm100")
    pidfile = tmp_path / "builder.pids"
    monkeypatch.setenv("TRTFORGE_STANDIN_PIDFILE", str(pidfile))
    ckpt = write_nvfp4_checkpoint(tmp_path / "ckpt", tiny=True)
    add_entry("small", model=str(ckpt), quantization="NVFP4", max_seq_len=2048, max_num_tokens=2048)
    return pidfile


def _start_hung_build(pidfile: Path) -> tuple[subprocess.Popen[str], list[int]]:
    """`trtforge build small` whose builder hangs with a child that ignores SIGTERM; waits for both pids."""
    fifo = pidfile.with_suffix(".fifo")
    os.mkfifo(fifo)
    env = {**os.environ, "TRTFORGE_STANDIN_MODE": "hung-child", "TRTFORGE_STANDIN_PIDFILE": str(fifo)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "trtforge", "build", "small"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    pids: list[int] = []
    while len(pids) < 2:  # the stand-in writes its pid, then its child's: each open of the FIFO is an event
        with open(fifo) as handle:
            pids += [int(line) for line in handle.read().split()]
    return proc, pids


def _alive(pid: int) -> bool:
    return start_time(pid) is not None


def _kill_survivors(pids: list[int]) -> None:
    """Whatever the outcome, leave no stand-in running (the pids are the stand-ins' own, just recorded)."""
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_term_or_hup_ends_the_builder_session(builder: Path, sig: signal.Signals) -> None:
    proc, pids = _start_hung_build(builder)
    try:
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + sig
        assert f"interrupted by {sig.name}" in err
        assert "Traceback" not in err
        assert [pid for pid in pids if _alive(pid)] == []
        tmp = EngineStore().root / "tmp"
        assert not tmp.exists() or list(tmp.iterdir()) == []
    finally:
        _kill_survivors(pids)


def _kill_build(pidfile: Path) -> list[int]:
    proc, pids = _start_hung_build(pidfile)
    proc.kill()
    proc.communicate(timeout=60)  # reaps it and closes its stderr pipe
    assert all(_alive(pid) for pid in pids), "SIGKILL cannot be caught: the builder is orphaned"
    return pids


def test_the_next_build_ends_a_sigkilled_builds_builder(
    builder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    orphans = _kill_build(builder)
    try:
        result = ensure_engine("small", stall_timeout_s=60)
        assert not result.cached
        assert [pid for pid in orphans if _alive(pid)] == []
    finally:
        _kill_survivors(orphans)


def test_gc_ends_a_sigkilled_builds_builder(builder: Path) -> None:
    orphans = _kill_build(builder)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "trtforge", "gc"], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert "ended the orphaned builder session" in result.stderr
        assert [pid for pid in orphans if _alive(pid)] == []
        tmp = EngineStore().root / "tmp"
        assert not tmp.exists() or list(tmp.iterdir()) == []
    finally:
        _kill_survivors(orphans)
