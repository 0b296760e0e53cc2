"""TensorRT builds end to end, driving the real watchdog against the stand-in `trtllm-bench` (tests/standins)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from checkpoints import write_nvfp4_checkpoint
from trtforge.builder.command import build_command
from trtforge.builder.pipeline import ensure_engine, plan_build
from trtforge.builder.watchdog import DEFAULT_GRACE_S, FINISHED_GRACE_S, BuildWatchdog, Outcome, WatchResult
from trtforge.catalog import add_entry, load_catalog
from trtforge.errors import BuildFailedError, CheckpointError, GpuError, InvalidEngineError
from trtforge.processes import session_members
from trtforge.store.entries import EngineStore
from trtforge.store.links import resolve_engine, verify_engine

STANDINS = Path(__file__).parent / "standins"


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_nvfp4_checkpoint(tmp_path_factory.mktemp("ckpt") / "small-nvfp4", tiny=True)


@pytest.fixture
def builder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, checkpoint: Path) -> Path:
    """The stand-in on the builder's PYTHONPATH, a target arch, a catalogue entry `small`; returns the pidfile."""
    monkeypatch.setenv("PYTHONPATH", str(STANDINS))
    monkeypatch.setenv("TRTFORGE_GPU_ARCH", "sm100")
    pidfile = tmp_path / "builder.pids"
    monkeypatch.setenv("TRTFORGE_STANDIN_PIDFILE", str(pidfile))
    add_entry("small", model=str(checkpoint), quantization="NVFP4", max_seq_len=2048, max_num_tokens=2048)
    return pidfile


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _assert_nothing_left(pidfile: Path) -> None:
    pids = [int(line) for line in pidfile.read_text().split()] if pidfile.exists() else []
    assert pids, "the stand-in recorded no pids"
    assert [pid for pid in pids if _alive(pid)] == []
    assert [pid for pid in pids if session_members(pid)] == []  # nor anything unrecorded in their sessions
    tmp = EngineStore().root / "tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []


def test_healthy_build_is_published_linked_and_cached(builder: Path, checkpoint: Path) -> None:
    result = ensure_engine("small", stall_timeout_s=30)
    assert not result.cached
    assert result.path.parent == EngineStore().root
    assert result.path.name == f"{result.hash}-trtllm-engine-small-1.0.0"
    assert resolve_engine("small") == result.path
    files = {p.name for p in result.path.iterdir()}
    assert {"config.json", "rank0.engine", "tokenizer.json", "chat_template.jinja", "build.log"} <= files
    assert (result.path / "chat_template.jinja").read_text() == (
        checkpoint / "chat_template.jinja"
    ).read_text()
    manifest = json.loads((result.path / "trtforge.json").read_text())
    assert manifest["inputs"]["gpu_arch"] == "sm100"
    assert manifest["inputs"]["builder_version"] == "1.0.0"
    assert manifest["inputs"]["model_revision"].startswith("dir:")
    assert manifest["files"]["rank0.engine"]["size"] == 2 * 1024 * 1024
    assert "xgrammar_tokenizer_info.json" in manifest["files"]  # guided decoding's tokenizer info, hashed too
    assert "ENGINE SAVED" in (result.path / "build.log").read_text()
    verify_engine("small")
    _assert_nothing_left(builder)

    # Same inputs: no rebuild, even if the builder would now fail.
    os.environ["TRTFORGE_STANDIN_MODE"] = "crash-oom"
    try:
        again = ensure_engine("small")
    finally:
        del os.environ["TRTFORGE_STANDIN_MODE"]
    assert again.cached and again.path == result.path


def test_hash_changes_with_every_input(builder: Path, checkpoint: Path) -> None:
    entry = load_catalog().get("small")
    base = plan_build(entry).hash
    assert plan_build(entry, gpu_arch="sm120").hash != base
    assert plan_build(entry.model_copy(update={"max_seq_len": 4096})).hash != base
    assert plan_build(entry).hash == base


@pytest.mark.parametrize(
    ("arch", "config", "refusal"),
    [
        ("sm90", None, GpuError),  # NVFP4 on a Hopper GPU
        ("sm100", {"architectures": ["Qwen3MoeForCausalLM"]}, CheckpointError),
    ],
)
def test_refusals_come_before_hashing_the_checkpoint(
    builder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    arch: str,
    config: dict[str, object] | None,
    refusal: type[Exception],
) -> None:
    checkpoint = write_nvfp4_checkpoint(tmp_path / "refused", tiny=True, config=config)
    add_entry("refused", model=str(checkpoint), quantization="NVFP4", max_seq_len=2048, max_num_tokens=2048)

    def walk_files(root: Path, **_: object) -> None:
        raise AssertionError(f"hashing {root} before its refusal")

    monkeypatch.setattr("trtforge.untrusted.walk_files", walk_files)  # what hashing a tree starts with
    with pytest.raises(refusal):
        plan_build(load_catalog().get("refused"), gpu_arch=arch)


def _age(root: Path, seconds: float) -> None:
    """Date every file under `root` back (a checkpoint downloaded a while ago)."""
    then = time.time() - seconds
    for path in root.rglob("*"):
        os.utime(path, (then, then))


def _flip_last_byte(path: Path) -> None:
    """Change the content of `path` in place: same size, same inode."""
    with open(path, "r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        last = handle.read(1)
        handle.seek(-1, os.SEEK_END)
        handle.write(b"\x01" if last != b"\x01" else b"\x02")


def test_a_rebuild_does_not_read_an_unchanged_checkpoint_again(builder: Path, tmp_path: Path) -> None:
    checkpoint = write_nvfp4_checkpoint(tmp_path / "cached", tiny=True)
    add_entry("cached", model=str(checkpoint), quantization="NVFP4", max_seq_len=2048, max_num_tokens=2048)
    _age(checkpoint, 3600)
    entry = load_catalog().get("cached")
    first = plan_build(entry).inputs.model_revision

    # Same bytes count, same mtime, same inode: the cache answers, so changed content goes unseen (not re-read).
    shard = sorted(checkpoint.glob("*.safetensors"))[0]
    stamp = shard.stat()
    _flip_last_byte(shard)
    os.utime(shard, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert (shard.stat().st_ino, shard.stat().st_size) == (stamp.st_ino, stamp.st_size)
    assert plan_build(entry).inputs.model_revision == first

    # A new mtime (or inode, or size) is a new version: read again.
    os.utime(shard, ns=(stamp.st_atime_ns, stamp.st_mtime_ns - 10**9))
    changed = plan_build(entry).inputs.model_revision
    assert changed != first
    copy = shard.with_name("copy")
    shutil.copy2(shard, copy)  # same content and mtime, another inode
    copy.replace(shard)
    assert plan_build(entry).inputs.model_revision == changed


def test_files_written_just_before_hashing_are_not_cached(builder: Path, tmp_path: Path) -> None:
    # A file modified in the same instant it is hashed could change again without its stamp changing.
    checkpoint = write_nvfp4_checkpoint(tmp_path / "fresh", tiny=True)
    add_entry("fresh", model=str(checkpoint), quantization="NVFP4", max_seq_len=2048, max_num_tokens=2048)
    entry = load_catalog().get("fresh")
    first = plan_build(entry).inputs.model_revision
    shard = sorted(checkpoint.glob("*.safetensors"))[0]
    stamp = shard.stat()
    _flip_last_byte(shard)
    os.utime(shard, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert plan_build(entry).inputs.model_revision != first


def _record_watch_results(monkeypatch: pytest.MonkeyPatch) -> list[WatchResult]:
    """What each `BuildWatchdog.run` the pipeline makes returns, in order."""
    results: list[WatchResult] = []
    run = BuildWatchdog.run

    def recording_run(self: BuildWatchdog) -> WatchResult:
        results.append(run(self))
        return results[-1]

    monkeypatch.setattr(BuildWatchdog, "run", recording_run)
    return results


@pytest.mark.parametrize(
    ("mode", "killed"),
    [
        ("hang-after-save", False),  # hangs in shutdown, ends on SIGTERM
        ("hang-ignore-term", True),
        ("hung-child", True),  # its MPI-worker-like child ignores SIGTERM
        ("hung-setsid-child", True),  # the same child, outside the builder's session
    ],
)
def test_hung_builder_is_reaped_once_its_engine_is_whole(
    builder: Path, monkeypatch: pytest.MonkeyPatch, mode: str, killed: bool
) -> None:
    # The builder never exits by itself: the build ends because the watchdog saw a whole engine and stopped the
    # builder with the short grace for finished builders — not because it exited, stalled or timed out (the
    # stall timeout is only the failure bound of a watchdog that would wait for the exit).
    monkeypatch.setenv("TRTFORGE_STANDIN_MODE", mode)
    watched = _record_watch_results(monkeypatch)
    result = ensure_engine("small", stall_timeout_s=60)
    [watch] = watched
    assert watch.outcome is Outcome.COMPLETE and watch.exit_code is None
    assert watch.engine_complete_at is not None and watch.engine_complete_at <= watch.reaped_at
    assert watch.stopped and watch.stop_grace_s == FINISHED_GRACE_S
    assert watch.killed is killed
    timings = json.loads((result.path / "trtforge.json").read_text())["timings"]
    # The manifest records how long the reap took (reported, not asserted: it is a wall-clock measure).
    assert timings["reap_s"] == pytest.approx(watch.reaped_at - watch.engine_complete_at, abs=1e-3)
    verify_engine(result.path)
    _assert_nothing_left(builder)


def _watch(mode: str, checkpoint: Path, work: Path, **options: float) -> WatchResult:
    """Run the watchdog on the stand-in builder in `mode`, as the pipeline does."""
    entry = load_catalog().get("small")
    env = {**os.environ, "TRTFORGE_STANDIN_MODE": mode}
    command = build_command(
        entry,
        python=sys.executable,
        launcher="none",
        workspace=work / "workspace",
        model_path=checkpoint,
        revision=None,
        base_env=env,
    )
    return BuildWatchdog(
        command.argv,
        env=command.env,
        workspace=command.workspace,
        engine_dir=command.engine_dir,
        world_size=entry.world_size,
        log_path=work / "build.log",
        **options,
    ).run()


def test_a_finished_builder_ignoring_sigterm_gets_the_short_grace(
    builder: Path, checkpoint: Path, tmp_path: Path
) -> None:
    # Once its engine is whole the builder has nothing left to save: the working builder's grace is not for it.
    result = _watch("hang-ignore-term", checkpoint, tmp_path, stall_timeout_s=60)
    assert result.outcome is Outcome.COMPLETE
    assert result.engine_complete_at is not None and result.engine_complete_at <= result.reaped_at
    assert result.stopped and result.killed  # TERM was ignored: KILL ended it
    assert result.stop_grace_s == result.ending.grace_s == FINISHED_GRACE_S < 1.0 < DEFAULT_GRACE_S
    recorded = [int(line) for line in builder.read_text().split()]
    assert set(recorded) <= set(result.ending.kill_sent) and result.ending.survivors == ()
    _assert_nothing_left(builder)


def test_a_builder_stopped_while_working_gets_the_full_grace(
    builder: Path, checkpoint: Path, tmp_path: Path
) -> None:
    result = _watch("partial", checkpoint, tmp_path, stall_timeout_s=1)
    assert result.outcome is Outcome.STALLED
    assert result.stopped and result.stop_grace_s == result.ending.grace_s == DEFAULT_GRACE_S
    assert not result.killed and result.ending.kill_sent == ()  # it obeyed TERM within the grace


@pytest.mark.parametrize(
    ("mode", "cause"),
    [
        ("crash-oom", "out_of_gpu_memory"),
        ("crash-arch", "arch_unsupported"),
        ("crash-gated", "gated_model"),
        ("crash-disk", "disk_full"),
        ("disk-full", "disk_full"),
        ("partial-exit0", "unknown"),
    ],
)
def test_failures_are_classified_and_leave_nothing(
    builder: Path, monkeypatch: pytest.MonkeyPatch, mode: str, cause: str
) -> None:
    monkeypatch.setenv("TRTFORGE_STANDIN_MODE", mode)
    with pytest.raises(BuildFailedError) as info:
        ensure_engine("small", stall_timeout_s=30)
    error = info.value
    assert error.cause == cause
    assert "\n" not in str(error)
    assert error.log_path is not None and error.log_path.is_file()
    assert str(error.log_path) in str(error)
    assert error.log_tail
    if mode == "partial-exit0":
        assert "without a whole engine" in str(error)
    assert EngineStore().scan().entries == ()
    assert not (Path(os.environ["TRTLLM_ENGINE_PATH"]) / "small").exists()
    _assert_nothing_left(builder)


def test_half_copied_engine_is_never_done_and_a_stall_ends_the_build(
    builder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRTFORGE_STANDIN_MODE", "partial")
    with pytest.raises(BuildFailedError, match=r"no log output and no file growth for 1\.5 s") as info:
        ensure_engine("small", stall_timeout_s=1.5)
    assert info.value.cause == "stalled"
    assert EngineStore().scan().entries == ()
    _assert_nothing_left(builder)


def test_slow_but_healthy_build_is_not_killed(builder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Log lines every 0.5 s for 1.5 s, then silent file growth (16 chunks, 0.1 s apart) per copy: each silent
    # phase lasts at least 1.6 s however fast the machine, longer than the stall timeout.
    stall_timeout_s = 1.2
    monkeypatch.setenv("TRTFORGE_STANDIN_MODE", "slow")
    monkeypatch.setenv("TRTFORGE_STANDIN_ENGINE_BYTES", str(4 * 1024 * 1024))
    monkeypatch.setenv("TRTFORGE_STANDIN_CHUNK_DELAY_S", "0.01")
    result = ensure_engine("small", stall_timeout_s=stall_timeout_s)
    verify_engine(result.path)
    # The builder did reach the end of both silent phases, each longer than the stall timeout: only the
    # growing files told the watchdog it was alive.
    log = (result.path / "build.log").read_text()
    silences = [float(s) for s in re.findall(r": ([0-9.]+) s without a log line", log)]
    assert len(silences) == 2 and min(silences) > stall_timeout_s, log


def test_timeout_ends_the_build(builder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRTFORGE_STANDIN_MODE", "slow")
    with pytest.raises(BuildFailedError, match="--timeout 1 s") as info:
        ensure_engine("small", timeout_s=1)
    assert info.value.cause == "timeout"
    _assert_nothing_left(builder)


def test_engine_with_the_wrong_quantization_is_refused(
    builder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An old builder lets --quantization override the checkpoint: an engine that produces garbage.
    monkeypatch.setenv("TRTFORGE_STANDIN_MODE", "legacy-quant")
    checkpoint = load_catalog().get("small").model
    add_entry("wrong", model=checkpoint, quantization="FP8", max_seq_len=2048, max_num_tokens=2048)
    with pytest.raises(InvalidEngineError, match=r"quant_algo FP8 .* says NVFP4"):
        ensure_engine("wrong", force=True)
    assert EngineStore().scan().entries == ()


def test_without_a_gpu_arch_the_build_stops(builder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRTFORGE_GPU_ARCH")
    with pytest.raises(GpuError, match="--gpu-arch"):
        ensure_engine("small")


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "trtforge", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or dict(os.environ),
    )


def test_cli_build_json_and_concurrent_builds_build_once(builder: Path) -> None:
    first, second = _cli("build", "small", "--json"), _cli("build", "small", "--json")
    results = []
    for proc in (first, second):
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    assert sorted(r["cached"] for r in results) == [False, True]
    assert results[0]["path"] == results[1]["path"]
    assert set(results[0]) == {"name", "backend", "path", "hash", "cached", "substituted_from"}
    assert results[0]["substituted_from"] is None
    assert results[0]["backend"] == "tensorrt"  # "auto" on TensorRT-LLM 1.0: an engine
    plain = _cli("build", "small")
    out, _ = plain.communicate(timeout=60)
    assert out.strip() == results[0]["path"]


def test_cli_build_failure_says_why_then_tail_then_log(builder: Path) -> None:
    proc = _cli("build", "small", env={**os.environ, "TRTFORGE_STANDIN_MODE": "crash-oom", "COLUMNS": "300"})
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    lines = err.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("error:"))
    assert "out of GPU memory" in lines[first]
    assert any("CUDA out of memory" in line for line in lines[first + 1 :])
    assert "full log:" in lines[-1]


def test_hub_build_preflight_reads_the_hub_not_the_config_only_snapshot(
    builder: Path, tmp_path: Path
) -> None:
    # The build caches only a hub model's small files (configs, tokenizer) for its checks; preflight must not
    # take that snapshot for the checkpoint and refuse it for its "missing" weight shards.
    from conftest import free_port

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--nvidia--Small-NVFP4"
    snapshot = write_nvfp4_checkpoint(repo / "snapshots" / commit, tiny=True)
    for shard in snapshot.glob("*.safetensors"):
        shard.unlink()
    add_entry("hubby", model="nvidia/Small-NVFP4", revision=commit, max_seq_len=2048, max_num_tokens=2048)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"
    for key in ("HF_HUB_CACHE", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env.pop(key, None)
    _, err = _cli("build", "hubby", env=env).communicate(timeout=60)
    assert "cannot reach the Hugging Face hub" in err
    assert "is missing" not in err
