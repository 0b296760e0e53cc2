"""The store, links, verify and gc, with the `tiny` reference engine built through the same pipeline."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trtforge.builder.pipeline import ensure_engine
from trtforge.cli import app
from trtforge.engine import read_engine
from trtforge.errors import EngineNotFoundError, VerifyError
from trtforge.store.entries import EngineStore
from trtforge.store.links import link_engine, resolve_engine, verify_engine


@pytest.fixture(scope="session")
def tiny_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TRTFORGE_HOME holding the `tiny` engine, built once per session through `ensure_engine`."""
    home = tmp_path_factory.mktemp("tiny-home")
    saved = {key: os.environ.get(key) for key in ("TRTFORGE_HOME", "TRTLLM_ENGINE_PATH")}
    os.environ["TRTFORGE_HOME"] = str(home / "home")
    os.environ["TRTLLM_ENGINE_PATH"] = str(home / "links")
    try:
        result = ensure_engine("tiny")
        assert not result.cached
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return home / "home"


@pytest.fixture
def tiny(tiny_home: Path, isolated_home: Path) -> Path:
    """This test's store holds a copy of the tiny entry, linked as `tiny`; returns the entry path."""
    shutil.copytree(tiny_home / "store", isolated_home / "store", symlinks=True)
    (entry,) = EngineStore().scan().entries
    link_engine("tiny", entry.path)
    return entry.path


def test_tiny_goes_through_the_store(tiny: Path) -> None:
    assert tiny.name.split("-trtllm-engine-")[1].startswith("tiny-")
    info = read_engine(tiny)
    assert info.backend == "reference"
    assert (info.max_batch_size, info.max_seq_len, info.max_num_tokens) == (8, 1024, 1024)
    manifest = json.loads((tiny / "trtforge.json").read_text())
    assert manifest["backend"] == "reference"
    assert manifest["inputs"]["gpu_arch"] == "cpu"
    assert "hf_model/model.safetensors" in manifest["files"]
    assert "build.log" in manifest["files"]
    verify_engine("tiny")
    again = ensure_engine("tiny")
    assert again.cached and again.path == tiny
    assert resolve_engine("tiny") == tiny


@pytest.mark.parametrize(
    ("damage", "word"),
    [
        (lambda p: (p / "hf_model" / "model.safetensors").unlink(), "missing"),
        (lambda p: os.truncate(p / "tokenizer.json", 10), "truncated"),
        (
            lambda p: (p / "config.json").write_text((p / "config.json").read_text().replace("1024", "2048")),
            "changed",
        ),
    ],
)
def test_verify_reports_missing_truncated_changed(tiny: Path, damage, word: str) -> None:
    damage(tiny)
    with pytest.raises(VerifyError, match=word):
        verify_engine("tiny")
    result = CliRunner().invoke(app, ["verify", str(tiny)])
    assert result.exit_code != 0


def test_verify_without_a_manifest_checks_structure_only(tiny: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "engine"  # an engine built outside trtforge: no manifest to check files against
    shutil.copytree(tiny, elsewhere)
    (elsewhere / "trtforge.json").unlink()
    (elsewhere / "build.log").write_text("not what was built")
    result = CliRunner().invoke(app, ["verify", str(elsewhere)])
    assert result.exit_code == 0, result.output
    assert "structure only" in result.output
    shutil.rmtree(elsewhere / "hf_model")  # neither rank files nor a reference model: not an engine
    assert CliRunner().invoke(app, ["verify", str(elsewhere)]).exit_code != 0
    # In the store a manifest is part of every entry: without one the entry is not trusted.
    (tiny / "trtforge.json").unlink()
    with pytest.raises(VerifyError, match=r"trtforge\.json"):
        verify_engine(tiny)


def test_resolve_engine_names_paths_and_errors(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert resolve_engine(str(tiny)) == tiny
    with pytest.raises(EngineNotFoundError, match="trtforge build nope"):
        resolve_engine("nope")
    with pytest.raises(EngineNotFoundError, match="not an engine directory"):
        resolve_engine(str(tmp_path))
    # Several link directories: the first one with the name wins; links are written into the first.
    other = tmp_path / "other-links"
    other.mkdir()
    (other / "elsewhere").symlink_to(tiny)
    first = Path(os.environ["TRTLLM_ENGINE_PATH"])
    monkeypatch.setenv("TRTLLM_ENGINE_PATH", f"{first}{os.pathsep}{other}")
    assert resolve_engine("elsewhere") == tiny
    dangling = first / "gone"
    dangling.symlink_to(tmp_path / "missing")
    with pytest.raises(EngineNotFoundError, match="not an engine directory"):
        resolve_engine("gone")


def test_link_is_replaced_atomically(tiny: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny, copy)
    link = link_engine("tiny", copy)
    assert os.readlink(link) == str(copy)
    assert [p.name for p in link.parent.iterdir()] == ["tiny"]
    result = CliRunner().invoke(app, ["link", "tiny", str(tiny)])
    assert result.exit_code == 0, result.output
    assert resolve_engine("tiny") == tiny


def test_scan_tolerates_corrupt_entries(tiny: Path) -> None:
    root = EngineStore().root
    broken = root / f"{'0' * 32}-trtllm-engine-broken-1.0"
    broken.mkdir()
    (broken / "trtforge.json").write_text("{not json")
    (root / "stray").mkdir()
    scan = EngineStore().scan()
    assert {entry.path for entry in scan.entries} == {tiny, broken}
    assert any("broken" in warning for warning in scan.warnings)
    assert any("stray" in warning for warning in scan.warnings)
    result = CliRunner().invoke(app, ["engines", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert {row["name"] for row in rows} == {"tiny", "broken"}


def test_gc_plans_then_removes_only_unlinked(tiny: Path) -> None:
    store = EngineStore()
    unlinked = store.root / f"{'1' * 32}-trtllm-engine-old-1.0"
    shutil.copytree(tiny, unlinked)
    abandoned = store.new_incomplete("2" * 32)
    (abandoned / "rank0.engine").write_bytes(b"x" * 1000)

    plan = store.plan_gc()
    assert [entry.path for entry in plan.entries] == [unlinked]
    assert plan.incomplete == (abandoned,)
    assert plan.expected_freed_bytes >= 1000 + sum(f.stat().st_size for f in tiny.rglob("*") if f.is_file())

    dry = CliRunner().invoke(app, ["gc", "--dry-run"])
    assert dry.exit_code == 0 and unlinked.exists()

    freed = plan.execute()
    assert freed == plan.expected_freed_bytes
    assert not unlinked.exists() and not abandoned.exists()
    assert tiny.exists()
    verify_engine("tiny")


def test_gc_keeps_an_entry_a_build_links_while_gc_runs(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two unlinked entries; while gc deletes the first, a build of the second finds it cached and links it
    # (holding the entry's lock, as `run_build` does). gc must see that link, not the one from its plan.
    store = EngineStore()
    first = store.root / f"{'5' * 32}-trtllm-engine-old-1.0"
    second = store.root / f"{'6' * 32}-trtllm-engine-reused-1.0"
    shutil.copytree(tiny, first)
    shutil.copytree(tiny, second)
    plan = store.plan_gc()
    assert [entry.path for entry in plan.entries] == [first, second]

    remove_entry = EngineStore.remove_entry
    removals: list[Path] = []

    def build_links_second(self: EngineStore, path: Path, digest: str, **kwargs: bool) -> int:
        if not removals:
            with store.lock("6" * 32):
                link_engine("reused", second)
        removals.append(path)
        return remove_entry(self, path, digest, **kwargs)

    monkeypatch.setattr(EngineStore, "remove_entry", build_links_second)
    plan.execute()
    assert removals == [first, second]
    assert not first.exists()
    assert (second / "config.json").is_file()
    assert resolve_engine("reused") == second


def test_gc_leaves_a_build_in_progress_alone(tiny: Path) -> None:
    store = EngineStore()
    building = store.new_incomplete("3" * 32)
    with store.lock("3" * 32):
        assert store.plan_gc().incomplete == ()
    assert building.exists()


def test_gc_keeps_an_entry_linked_only_from_a_later_link_dir(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `tiny` in the first link dir shadows `tiny` in the second, but the second still points at its entry.
    first, second = tmp_path / "links-a", tmp_path / "links-b"
    other = EngineStore().root / f"{'4' * 32}-trtllm-engine-tiny-0.0"
    shutil.copytree(tiny, other)
    monkeypatch.setenv("TRTLLM_ENGINE_PATH", f"{second}")
    link_engine("tiny", other)
    monkeypatch.setenv("TRTLLM_ENGINE_PATH", f"{first}{os.pathsep}{second}")
    link_engine("tiny", tiny)
    assert resolve_engine("tiny") == tiny
    assert EngineStore().plan_gc().entries == ()
