"""gc roots that cannot be lost: every link directory ever written pins its targets, whatever the environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trtforge.errors import StoreError, UsageError
from trtforge.manifest import BuildInputs, write_manifest
from trtforge.store.entries import EngineStore
from trtforge.store.links import link_engine


def _entry(store: EngineStore, name: str) -> Path:
    inputs = BuildInputs({"name": name, "model": "builtin:tiny"}, "rev", "1.0", "cpu")
    work = store.new_incomplete(inputs.digest())
    (work / "config.json").write_text(json.dumps({"pretrained_config": {}, "build_config": {}, "name": name}))
    write_manifest(work, name=name, digest=inputs.digest(), backend="reference", inputs=inputs, timings={})
    return store.publish(work, store.entry_path(inputs.digest(), name, "1.0"))


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trtforge", *args], capture_output=True, text=True, env=env, timeout=120
    )


def assert_one_line_error(stderr: str) -> None:
    """The CLI said why in one `error:` line (after any progress line) and printed no traceback."""
    assert "Traceback" not in stderr, stderr
    assert [line for line in stderr.splitlines() if line.startswith("error:")], stderr
    assert stderr.strip().splitlines()[-1].startswith("error:"), stderr


def test_gc_keeps_what_an_earlier_link_dir_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = EngineStore()
    kept, dropped = _entry(store, "kept"), _entry(store, "dropped")
    monkeypatch.setenv("TRTLLM_ENGINE_PATH", str(tmp_path / "home-links"))
    link_engine("kept", kept)
    monkeypatch.setenv("TRTLLM_ENGINE_PATH", str(tmp_path / "other"))
    plan = store.plan_gc()
    assert [entry.path for entry in plan.entries] == [dropped]
    plan.execute()
    assert kept.is_dir()
    assert not dropped.exists()


@pytest.mark.parametrize("value", [":", "::"])
def test_an_engine_path_naming_no_directory_is_refused_not_taken_as_nothing_linked(
    value: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    store = EngineStore()
    entry = _entry(store, "kept")
    link_engine("kept", entry)
    env = {**os.environ, "TRTLLM_ENGINE_PATH": value}
    result = _cli("gc", env=env)
    assert result.returncode != 0
    assert_one_line_error(result.stderr)
    assert "names no directory" in result.stderr
    assert entry.is_dir()
    built = _cli("build", "tiny", env=env)
    assert built.returncode != 0
    assert_one_line_error(built.stderr)
    assert "names no directory" in built.stderr


def test_a_relative_engine_path_entry_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRTLLM_ENGINE_PATH", "engines")
    with pytest.raises(UsageError, match="relative"):
        EngineStore().plan_gc()


def test_a_link_dir_that_is_a_file_or_in_proc_is_one_line(tmp_path: Path) -> None:
    entry = _entry(EngineStore(), "kept")
    (tmp_path / "a-file").write_text("")
    for directory in (tmp_path / "a-file", Path("/proc/self/fdinfo")):
        env = {**os.environ, "TRTLLM_ENGINE_PATH": str(directory)}
        result = _cli("link", "kept", str(entry), env=env)
        assert result.returncode != 0
        assert_one_line_error(result.stderr)


def test_trtforge_home_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home-file"
    home.write_text("")
    with pytest.raises(StoreError, match="cannot create the store directory"):
        EngineStore(home / "store").lock("0" * 32)
    result = _cli("build", "tiny", env={**os.environ, "TRTFORGE_HOME": str(home)})
    assert result.returncode != 0
    assert_one_line_error(result.stderr)


def test_a_lock_path_that_is_a_directory_is_one_line() -> None:
    store = EngineStore()
    (store.root / ".locks" / f"{'0' * 32}.lock").mkdir(parents=True)
    with pytest.raises(StoreError, match="not a regular file"):
        store.lock("0" * 32)


def test_gc_prunes_old_logs_and_idle_locks_only(tmp_path: Path) -> None:
    store = EngineStore()
    logs = store.root.parent / "logs"
    logs.mkdir(parents=True)
    old_log, new_log = logs / "a-old.log", logs / "b-new.log"
    old_log.write_text("old")
    new_log.write_text("new")
    week_ago = time.time() - 8 * 24 * 3600
    os.utime(old_log, (week_ago, week_ago))
    with store.lock("1" * 32):
        pass
    with store.lock("2" * 32):
        pass
    held = store.lock("3" * 32)
    held.acquire()
    try:
        for digest in ("1", "3"):
            os.utime(store.root / ".locks" / f"{digest * 32}.lock", (week_ago, week_ago))
        plan = store.plan_gc()
        assert plan.old_logs == (old_log,)
        plan.execute()
    finally:
        held.release()
    assert not old_log.exists() and new_log.exists()
    remaining = sorted(p.name[0] for p in (store.root / ".locks").iterdir())
    assert remaining == ["2", "3"]
