"""What a TensorRT build hands the builder: the checkpoint at the revision asked for, and an environment of ours.

Hub models come from a Hugging Face cache laid out as huggingface_hub writes it (`models--org--name/blobs/`,
`snapshots/<commit>/` links into the blobs, `refs/<revision>`), read with `HF_HUB_OFFLINE=1` through the real
huggingface_hub; the builder is the stand-in `trtllm-bench` (tests/standins), which ignores `--revision` as the
real `build` does and reads only `--model_path`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from checkpoints import write_nvfp4_checkpoint
from trtforge.builder.command import build_command
from trtforge.builder.pipeline import ensure_engine
from trtforge.builder.watchdog import Outcome, WatchResult
from trtforge.catalog import CatalogEntry, add_entry
from trtforge.errors import BuildFailedError
from trtforge.store.entries import EngineStore

STANDINS = Path(__file__).parent / "standins"
REPO = "nvidia/Small-NVFP4"
COMMITS = {"v1": "1" * 40, "v2": "2" * 40}
LIMITS = {"max_seq_len": 2048, "max_num_tokens": 2048}


@pytest.fixture
def builder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The 1.0 stand-in on the builder's PYTHONPATH and a target arch; returns the stand-in's pidfile."""
    monkeypatch.setenv("PYTHONPATH", str(STANDINS))
    monkeypatch.setenv("TRTFORGE_GPU_ARCH", "sm100")
    pidfile = tmp_path / "builder.pids"
    monkeypatch.setenv("TRTFORGE_STANDIN_PIDFILE", str(pidfile))
    return pidfile


def _hf_cache(root: Path, scratch: Path) -> Path:
    """A hub cache holding REPO at two revisions whose checkpoints differ (max_position_embeddings 4096 / 8192);
    returns the repository folder."""
    repo = root / "hub" / ("models--" + REPO.replace("/", "--"))
    for revision, commit in COMMITS.items():
        files = write_nvfp4_checkpoint(
            scratch / revision, tiny=True, config={"max_position_embeddings": 4096 * int(revision[1])}
        )
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        for path in sorted(files.iterdir()):
            blob = repo / "blobs" / f"{revision}-{path.name}"
            blob.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), blob)
            (snapshot / path.name).symlink_to(Path("../../blobs") / blob.name)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / revision).write_text(commit)
    return repo


def _cli_build(name: str, hf_home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "COLUMNS": "300"}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run(
        [sys.executable, "-m", "trtforge", "build", name, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def _built(name: str, hf_home: Path) -> dict[str, object]:
    done = _cli_build(name, hf_home)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert isinstance(result, dict)
    return result


def test_a_hub_entry_is_built_from_the_revision_it_pins(builder: Path, tmp_path: Path) -> None:
    hf_home = tmp_path / "hf"
    repo = _hf_cache(hf_home, tmp_path / "scratch")
    add_entry("hubby", model=REPO, revision="v1", quantization="NVFP4", **LIMITS)
    first = _built("hubby", hf_home)
    add_entry("hubby", model=REPO, revision="v2", quantization="NVFP4", replace=True, **LIMITS)
    second = _built("hubby", hf_home)
    assert first["hash"] != second["hash"] and not first["cached"] and not second["cached"]
    for built, revision in ((first, "v1"), (second, "v2")):
        path = Path(str(built["path"]))
        engine = json.loads((path / "config.json").read_text())
        # What the builder read: the checkpoint of that commit, not the other one (nor the default branch).
        assert engine["pretrained_config"]["max_position_embeddings"] == 4096 * int(revision[1])
        manifest = json.loads((path / "trtforge.json").read_text())
        commit = COMMITS[revision]
        assert manifest["inputs"]["model_revision"] == commit
        assert manifest["inputs"]["spec"]["snapshot_content"].startswith("dir:")
        argv = manifest["command"]
        assert argv[argv.index("--model_path") + 1] == str(repo.resolve() / "snapshots" / commit)
        assert "--revision" not in argv  # `build` would ignore it: the snapshot is the revision
    # The hash covers the snapshot's content, as a local checkpoint's: a changed file (the same commit) is
    # another build; the unchanged snapshot is the cached one.
    assert _built("hubby", hf_home)["cached"] is True
    blob = repo / "blobs" / "v2-tokenizer_config.json"
    config = json.loads(blob.read_text())
    blob.write_text(json.dumps({**config, "model_max_length": 1234}))
    third = _built("hubby", hf_home)
    assert third["hash"] not in (first["hash"], second["hash"]) and not third["cached"]


def test_hub_download_failures_are_one_line(builder: Path, tmp_path: Path) -> None:
    hf_home = tmp_path / "hf"
    _hf_cache(hf_home, tmp_path / "scratch")
    add_entry("unknown-rev", model=REPO, revision="v9", **LIMITS)
    add_entry("unknown-commit", model=REPO, revision="9" * 40, **LIMITS)
    add_entry("uncached", model="nvidia/Not-Cached", revision="v1", **LIMITS)
    expected = {
        "unknown-rev": "cannot resolve revision 'v9'",
        "unknown-commit": "HF_HUB_OFFLINE is set",
        "uncached": "cannot resolve revision 'v1'",
    }
    for name, text in expected.items():
        done = _cli_build(name, hf_home)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode != 0 and lines, done.stderr
        assert lines[-1].startswith("error:") and text in lines[-1], done.stderr
        assert sum(line.startswith("error:") for line in lines) == 1 and "Traceback" not in done.stderr
    assert not builder.exists()  # no builder was started for any of them
    assert EngineStore().scan().entries == ()


def test_the_build_cache_variables_never_reach_the_builder(tmp_path: Path) -> None:
    entry = CatalogEntry(name="c", model=str(tmp_path))
    caller = {
        "TLLM_LLMAPI_BUILD_CACHE": "1",
        "TLLM_LLMAPI_BUILD_CACHE_ROOT": str(tmp_path / "cache"),
        "KEEP_ME": "yes",
    }
    command = build_command(
        entry,
        python="/py",
        launcher="none",
        workspace=tmp_path / "ws",
        model_path=tmp_path,
        revision=None,
        base_env=caller,
    )
    assert "TLLM_LLMAPI_BUILD_CACHE" not in command.env
    assert "TLLM_LLMAPI_BUILD_CACHE_ROOT" not in command.env
    assert command.env["KEEP_ME"] == "yes"


def _record_watch_results(monkeypatch: pytest.MonkeyPatch) -> list[WatchResult]:
    from trtforge.builder.watchdog import BuildWatchdog

    results: list[WatchResult] = []
    run = BuildWatchdog.run

    def recording_run(self: BuildWatchdog) -> WatchResult:
        results.append(run(self))
        return results[-1]

    monkeypatch.setattr(BuildWatchdog, "run", recording_run)
    return results


def test_a_build_cache_in_the_callers_shell_changes_nothing(
    builder: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The stand-in honours TLLM_LLMAPI_BUILD_CACHE as the LLM API does (the engine built in the cache, the
    # workspace's tmp.engine never written): were it passed on, the watchdog would have no source to compare the
    # saved engine with, and a half-copied engine that stops growing would pass for a whole one.
    cache = tmp_path / "llmapi-cache"
    monkeypatch.setenv("TLLM_LLMAPI_BUILD_CACHE", "1")
    monkeypatch.setenv("TLLM_LLMAPI_BUILD_CACHE_ROOT", str(cache))
    checkpoint = write_nvfp4_checkpoint(tmp_path / "ckpt", tiny=True)
    add_entry("small", model=str(checkpoint), quantization="NVFP4", **LIMITS)
    monkeypatch.setenv("TRTFORGE_STANDIN_MODE", "partial")
    with pytest.raises(BuildFailedError, match="no log output and no file growth") as info:
        ensure_engine("small", stall_timeout_s=3)
    assert info.value.cause == "stalled" and EngineStore().scan().entries == ()
    # A healthy build that hangs in shutdown is reaped the moment its engine is whole, against its tmp.engine.
    monkeypatch.setenv("TRTFORGE_STANDIN_MODE", "hang-after-save")
    watched = _record_watch_results(monkeypatch)
    ensure_engine("small", stall_timeout_s=60)
    [watch] = watched
    assert watch.outcome is Outcome.COMPLETE and watch.engine_complete_at is not None
    assert not cache.exists()


def _on(
    version_root: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`trtforge ARGS` with the `tensorrt_llm` at `version_root` installed (the builder's and the server's)."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(version_root), "COLUMNS": "300"}
    return subprocess.run(
        [sys.executable, "-m", "trtforge", *args], capture_output=True, text=True, env=env, timeout=300
    )


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [
        line for line in done.stderr.splitlines() if line.strip() and not line.startswith("[TensorRT-LLM]")
    ]
    errors = [line for line in lines if line.startswith("error:")]
    assert done.returncode != 0 and len(errors) == 1 and lines[-1] == errors[0], done.stderr
    assert "Traceback" not in done.stderr
    return errors[0]


def test_engine_entries_on_13_are_refused_by_build_up_and_serve_before_anything_starts(
    builder: Path, tmp_path: Path
) -> None:
    from conftest import triton_port_args

    checkpoint = write_nvfp4_checkpoint(tmp_path / "ckpt", tiny=True)
    add_entry("engine", model=str(checkpoint), backend="tensorrt", quantization="NVFP4", **LIMITS)
    on_13 = STANDINS / "trtllm13"
    for args in (
        ["build", "engine"],
        ["up", "engine", *triton_port_args()],
        ["serve", "engine", *triton_port_args()],
    ):
        line = _one_error_line(_on(on_13, *args))
        assert "TensorRT-LLM 1.3.0 has no TensorRT backend" in line, (args, line)
        assert 'backend = "pytorch"' in line and "--backend pytorch" in line, (args, line)
    assert not builder.exists()  # no builder started (the stand-in records every one it starts)
    assert EngineStore().scan().entries == ()
    assert not (EngineStore().root / "tmp" / "repositories").exists()
    # The last 1.3 pre-release that still had the TensorRT backend is not refused: its builder is started.
    rc21 = _on(on_13, "build", "engine", env={"TRTFORGE_STANDIN_TRTLLM_VERSION": "1.3.0rc21"})
    assert "has no TensorRT backend" not in rc21.stderr and "No such command 'build'" in rc21.stderr


def test_verify_on_13_keeps_the_files_verdict_and_says_the_engine_cannot_be_served_here(
    builder: Path, tmp_path: Path
) -> None:
    checkpoint = write_nvfp4_checkpoint(tmp_path / "ckpt", tiny=True)
    add_entry("small", model=str(checkpoint), quantization="NVFP4", **LIMITS)
    ensure_engine("small", stall_timeout_s=60)  # built with the 1.0 stand-in
    here = _on(STANDINS, "verify", "small")
    assert here.returncode == 0 and "ok" in here.stderr and "warning:" not in here.stderr, here.stderr
    on_13 = _on(STANDINS / "trtllm13", "verify", "small")
    assert on_13.returncode == 0, on_13.stderr
    [warning] = [line for line in on_13.stderr.splitlines() if line.startswith("warning:")]
    assert "TensorRT-LLM 1.3.0 has no TensorRT backend" in warning and 'backend = "pytorch"' in warning


def test_a_hub_entry_is_downloaded_at_its_revision_from_the_hub(builder: Path, tmp_path: Path) -> None:
    # A real HTTP server on a loopback port speaking the hub's API (tests/hub_mirror.py) behind HF_ENDPOINT:
    # revision resolution, preflight's header reads (range requests) and snapshot_download all go through it.
    from hub_mirror import HubMirror, MirrorRepo

    repo = MirrorRepo()
    for revision, commit in COMMITS.items():
        files = write_nvfp4_checkpoint(
            tmp_path / revision, tiny=True, config={"max_position_embeddings": 4096 * int(revision[1])}
        )
        repo.commits[commit] = MirrorRepo.files_of(files)
        repo.refs[revision] = commit
    repo.refs["main"] = COMMITS["v2"]
    add_entry("hubby", model=REPO, revision="v1", quantization="NVFP4", **LIMITS)
    add_entry("bad-rev", model=REPO, revision="v9", **LIMITS)
    with HubMirror({REPO: repo}) as hub:
        env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url}
        for key in ("HF_HUB_CACHE", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            env.pop(key, None)
        argv = [sys.executable, "-m", "trtforge", "build"]
        done = subprocess.run(
            [*argv, "hubby", "--json"], capture_output=True, text=True, env=env, timeout=300
        )
        assert done.returncode == 0, done.stderr
        bad = subprocess.run(
            [*argv, "bad-rev"], capture_output=True, text=True, env={**env, "COLUMNS": "300"}
        )
    path = Path(json.loads(done.stdout)["path"])
    engine = json.loads((path / "config.json").read_text())
    assert engine["pretrained_config"]["max_position_embeddings"] == 4096  # v1's, not main's (v2)
    snapshot = tmp_path / "hf" / "hub" / "models--nvidia--Small-NVFP4" / "snapshots" / COMMITS["v1"]
    argv_built = json.loads((path / "trtforge.json").read_text())["command"]
    assert argv_built[argv_built.index("--model_path") + 1] == str(snapshot.resolve())
    downloaded = {p for method, p in hub.requests if method == "GET" and "/resolve/" in p}
    shards = {name for name in repo.commits[COMMITS["v1"]] if name.endswith(".safetensors")}
    assert shards and {f"/{REPO}/resolve/{COMMITS['v1']}/{name}" for name in shards} <= downloaded
    assert all((snapshot / name).read_bytes() == repo.commits[COMMITS["v1"]][name] for name in shards)
    assert not any(COMMITS["v2"] in p for p in downloaded)  # nothing of the other revision was fetched
    assert "downloading nvidia/Small-NVFP4@111111111111 from the hub" in done.stderr
    assert _one_error_line(bad).endswith("nvidia/Small-NVFP4: revision 'v9' not found on the hub")
