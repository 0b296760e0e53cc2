"""The store never lies: a cache hit, `find` and `verify` trust a directory only when its manifest describes it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from checkpoints import write_nvfp4_checkpoint
from trtforge.builder.pipeline import plan_build, run_build
from trtforge.catalog import add_entry, load_catalog
from trtforge.manifest import BuildInputs, write_manifest
from trtforge.store.entries import EngineStore

STANDINS = Path(__file__).parent / "standins"


def _entry(store: EngineStore, name: str, *, payload: str = "weights") -> Path:
    """A small published entry, written the way the build pipeline writes one."""
    spec = {"name": name, "model": "builtin:tiny"}
    inputs = BuildInputs(spec, "rev-" + name, "1.0", "cpu")
    digest = inputs.digest()
    work = store.new_incomplete(digest)
    (work / "config.json").write_text(json.dumps({"name": name}))
    (work / "rank0.engine").write_text(payload)
    write_manifest(work, name=name, digest=digest, backend="reference", inputs=inputs, timings={})
    return store.publish(work, store.entry_path(digest, name, "1.0"))


@pytest.fixture
def store() -> EngineStore:
    return EngineStore()


def _problems(store: EngineStore, path: Path) -> str:
    return "\n".join(store.verify(path).problems)


def test_a_well_formed_entry_verifies_and_is_found(store: EngineStore) -> None:
    path = _entry(store, "aaa")
    assert store.verify(path).ok
    assert store.find(path.name[:32]) == path


def test_an_empty_directory_with_the_hash_is_not_a_cache_hit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(STANDINS))
    monkeypatch.setenv("TRTFORGE_GPU_ARCH", "sm100")
    ckpt = write_nvfp4_checkpoint(tmp_path / "ckpt", tiny=True)
    add_entry("small", model=str(ckpt), quantization="NVFP4", max_seq_len=2048, max_num_tokens=2048)
    plan = plan_build(load_catalog().get("small"))
    impostor = plan.store.root / f"{plan.hash}-trtllm-engine-zzz-0"
    impostor.mkdir(parents=True)
    empty_at_final = plan.final_path
    empty_at_final.mkdir()
    assert plan.store.find(plan.hash) is None
    result = run_build(plan)
    assert not result.cached
    assert result.path == plan.final_path
    assert plan.store.verify(result.path).ok
    assert os.path.realpath(result.link or "") == str(result.path)


def test_an_entry_renamed_to_another_hash_is_not_served_and_verify_says_so(store: EngineStore) -> None:
    real = _entry(store, "aaa")
    other = _entry(store, "bbb")
    other_hash = other.name[:32]
    shutil.rmtree(other)
    renamed = other.with_name(other_hash + real.name[32:])
    os.replace(real, renamed)
    assert store.find(other_hash) is None
    assert f"describes {real.name}" in _problems(store, renamed)


def test_a_manifest_with_a_forged_hash_is_caught(store: EngineStore) -> None:
    real = _entry(store, "aaa")
    forged_hash = "f" * 32
    manifest = json.loads((real / "trtforge.json").read_text())
    manifest["hash"] = forged_hash
    (real / "trtforge.json").write_text(json.dumps(manifest))
    forged = real.with_name(forged_hash + real.name[32:])
    os.replace(real, forged)
    assert store.find(forged_hash) is None
    assert "its inputs hash to" in _problems(store, forged)


def test_a_manifest_for_another_name_is_caught(store: EngineStore) -> None:
    real = _entry(store, "aaa")
    manifest = json.loads((real / "trtforge.json").read_text())
    manifest["inputs"]["spec"]["name"] = "evil"
    manifest["hash"] = BuildInputs(**manifest["inputs"]).digest()
    (real / "trtforge.json").write_text(json.dumps(manifest))
    moved = real.with_name(manifest["hash"] + real.name[32:])
    os.replace(real, moved)
    assert "inputs are for 'evil', not 'aaa'" in _problems(store, moved)


@pytest.mark.parametrize("bad", ["../../../etc/hostname", "/etc/hostname", "a/./b", "a//b", "./config.json"])
def test_manifest_paths_must_be_relative_normalised_and_inside(store: EngineStore, bad: str) -> None:
    real = _entry(store, "aaa")
    manifest = json.loads((real / "trtforge.json").read_text())
    manifest["files"][bad] = manifest["files"].pop("config.json")
    (real / "trtforge.json").write_text(json.dumps(manifest))
    report = store.verify(real)
    assert not report.ok
    assert "not a normalised relative path inside the entry" in "\n".join(report.problems)
    assert store.find(real.name[:32]) is None


def test_verify_does_not_follow_a_file_swapped_for_dev_zero(store: EngineStore) -> None:
    real = _entry(store, "aaa")
    (real / "rank0.engine").unlink()
    (real / "rank0.engine").symlink_to("/dev/zero")
    assert "rank0.engine: swapped for a symlink (to /dev/zero)" in _problems(store, real)
    assert store.find(real.name[:32]) is None


def test_verify_reports_added_symlinks_and_special_files(store: EngineStore) -> None:
    real = _entry(store, "aaa")
    (real / "extra").symlink_to("/etc/hostname")
    (real / "subdir").symlink_to("/etc")
    os.mkfifo(real / "pipe")
    problems = _problems(store, real)
    assert "extra: added symlink (to /etc/hostname)" in problems
    assert "subdir: added symlink (to /etc)" in problems
    assert "pipe: not a regular file" in problems


def test_a_listed_file_behind_a_symlinked_directory_is_reported(store: EngineStore, tmp_path: Path) -> None:
    spec = {"name": "ddd", "model": "builtin:tiny"}
    inputs = BuildInputs(spec, "rev", "1.0", "cpu")
    work = store.new_incomplete(inputs.digest())
    (work / "sub").mkdir()
    (work / "sub" / "a.bin").write_text("a")
    write_manifest(work, name="ddd", digest=inputs.digest(), backend="reference", inputs=inputs, timings={})
    path = store.publish(work, store.entry_path(inputs.digest(), "ddd", "1.0"))
    outside = tmp_path / "outside"
    shutil.move(path / "sub", outside)
    (path / "sub").symlink_to(outside)
    problems = _problems(store, path)
    assert "sub/a.bin: reached through a symlinked directory" in problems


def test_a_manifest_that_is_a_symlink_is_not_read(store: EngineStore, tmp_path: Path) -> None:
    real = _entry(store, "aaa")
    copy = tmp_path / "manifest.json"
    shutil.copyfile(real / "trtforge.json", copy)
    (real / "trtforge.json").unlink()
    (real / "trtforge.json").symlink_to(copy)
    assert "a symlink, not a regular file" in _problems(store, real)
