"""Hostile checkpoints: only regular files inside are read, hashed or copied, and every read is bounded."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from checkpoints import write_nvfp4_checkpoint
from trtforge.builder.pipeline import ensure_engine, plan_build
from trtforge.catalog import add_entry, load_catalog
from trtforge.checkpoint.locate import inspect_checkpoint
from trtforge.errors import CheckpointError
from trtforge.store.entries import EngineStore

STANDINS = Path(__file__).parent / "standins"


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    return write_nvfp4_checkpoint(tmp_path / "ckpt", tiny=True)


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(STANDINS))
    monkeypatch.setenv("TRTFORGE_GPU_ARCH", "sm100")


def _add(name: str, model: Path) -> None:
    add_entry(name, model=str(model), quantization="NVFP4", max_seq_len=2048, max_num_tokens=2048)


def _store_is_empty() -> bool:
    root = EngineStore().root
    return not root.exists() or [p.name for p in root.iterdir() if p.name not in ("tmp", ".locks")] == []


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("special_tokens_map.json", "/proc/self/environ"),
        ("merges.txt", "/etc/passwd"),
        ("generation_config.json", "/etc/hostname"),
    ],
)
def test_a_tokenizer_file_linked_outside_is_refused_and_nothing_is_published(
    ckpt: Path, standin: None, name: str, target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-do-not-copy")
    (ckpt / name).unlink(missing_ok=True)
    (ckpt / name).symlink_to(target)
    _add("small", ckpt)
    with pytest.raises(CheckpointError, match=f"{name}: a link to .*outside") as caught:
        ensure_engine("small", stall_timeout_s=60)
    assert "\n" not in str(caught.value)
    assert _store_is_empty()
    for path in EngineStore().root.rglob("*"):
        assert not path.is_file() or b"s3cr3t-do-not-copy" not in path.read_bytes()


def test_links_inside_are_hashed_by_content_so_repointing_them_misses_the_cache(
    tmp_path: Path, standin: None
) -> None:
    # Laid out like a hub cache snapshot: every file a link into a blobs/ folder inside the checkpoint.
    model_a = write_nvfp4_checkpoint(tmp_path / "a", tiny=True)
    model_b = write_nvfp4_checkpoint(tmp_path / "b", tiny=True, config={"rms_norm_eps": 1e-5})
    ckpt = tmp_path / "linked"
    for label, source in (("a", model_a), ("b", model_b)):
        shutil.copytree(source, ckpt / "blobs" / label)
    for item in model_a.iterdir():
        (ckpt / item.name).symlink_to(Path("blobs") / "a" / item.name)
    _add("small", ckpt)
    first = plan_build(load_catalog().get("small"))
    assert first.inputs.model_revision != "dir:" + "e3b0c442" * 8  # not the hash of nothing
    (ckpt / "config.json").unlink()
    (ckpt / "config.json").symlink_to(Path("blobs") / "b" / "config.json")
    second = plan_build(load_catalog().get("small"))
    assert second.hash != first.hash


def test_a_checkpoint_linked_to_another_model_outside_is_refused(tmp_path: Path, standin: None) -> None:
    other = write_nvfp4_checkpoint(tmp_path / "other", tiny=True)
    ckpt = tmp_path / "linked"
    ckpt.mkdir()
    for item in other.iterdir():
        (ckpt / item.name).symlink_to(item)
    _add("small", ckpt)
    with pytest.raises(CheckpointError, match="outside"):
        plan_build(load_catalog().get("small"))


def test_a_fifo_shard_is_refused_not_waited_on(ckpt: Path) -> None:
    (ckpt / "model.safetensors.index.json").unlink()
    for shard in ckpt.glob("*.safetensors"):
        shard.unlink()
    os.mkfifo(ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: a FIFO, not a regular file"):
        inspect_checkpoint(ckpt)


def test_a_fifo_is_refused_when_hashing(ckpt: Path, standin: None) -> None:
    os.mkfifo(ckpt / "notes.txt")
    _add("small", ckpt)
    with pytest.raises(CheckpointError, match=r"notes\.txt: a FIFO"):
        plan_build(load_catalog().get("small"))


@pytest.mark.parametrize("name", ["config.json", "model-00001-of-00001.safetensors"])
def test_a_file_linked_to_a_device_is_refused(ckpt: Path, name: str) -> None:
    (ckpt / name).unlink(missing_ok=True)
    (ckpt / name).symlink_to("/dev/zero")
    with pytest.raises(CheckpointError, match=f"{name}: a link to /dev/zero, outside"):
        inspect_checkpoint(ckpt)


def _sparse(path: Path, size: int, head: bytes = b"") -> None:
    with open(path, "wb") as handle:
        handle.write(head)
        handle.truncate(size)


def test_a_huge_safetensors_header_is_refused_before_reading_it(ckpt: Path) -> None:
    (ckpt / "model.safetensors.index.json").unlink()
    for shard in ckpt.glob("*.safetensors"):
        shard.unlink()
    length = 100_000_001
    _sparse(ckpt / "model.safetensors", 8 + length, struct.pack("<Q", length))
    with pytest.raises(CheckpointError, match="above the 100,000,000-byte limit"):
        inspect_checkpoint(ckpt)


def test_a_huge_config_json_is_refused_before_reading_it(ckpt: Path) -> None:
    config = (ckpt / "config.json").read_bytes()
    _sparse(ckpt / "config.json", 1 << 30, config)
    with pytest.raises(CheckpointError, match=r"config\.json: JSON file of 1,073,741,824 bytes is larger"):
        inspect_checkpoint(ckpt)


def test_a_directory_without_config_json_is_refused_before_hashing(
    tmp_path: Path, standin: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Like `model = "/usr"`: the cheap check must come before reading gigabytes.
    not_a_model = tmp_path / "usr"
    (not_a_model / "lib").mkdir(parents=True)
    (not_a_model / "lib" / "big.bin").write_bytes(b"x" * 1024)

    def no_hashing(root: Path, **_: object) -> str:
        raise AssertionError(f"hashed {root} before checking for config.json")

    monkeypatch.setattr("trtforge.builder.pipeline.hash_checkpoint", no_hashing)
    _add("small", not_a_model)
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        plan_build(load_catalog().get("small"))


def _hub_cache_snapshot(tmp_path: Path) -> Path:
    """A checkpoint laid out like the Hugging Face cache: snapshot files are links to ../../blobs/<name>."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--nvidia--Small-NVFP4"
    source = write_nvfp4_checkpoint(tmp_path / "src", tiny=True)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for item in source.iterdir():
        blob = repo / "blobs" / f"blob-{item.name}"
        shutil.copyfile(item, blob)
        (snapshot / item.name).symlink_to(Path("../../blobs") / blob.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_a_hub_cache_snapshot_reads_through_its_blob_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Snapshots in the Hugging Face cache are links to ../../blobs/<sha>: inside the repository folder, allowed.
    snapshot = _hub_cache_snapshot(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    info = inspect_checkpoint("nvidia/Small-NVFP4")
    assert info.architecture == "Qwen3ForCausalLM"
    assert info.tensors
    assert json.loads((snapshot / "config.json").read_text())["num_hidden_layers"] == info.num_layers


def test_a_snapshot_directory_builds_as_a_local_model(tmp_path: Path, standin: None) -> None:
    snapshot = _hub_cache_snapshot(tmp_path)
    _add("small", snapshot)
    result = ensure_engine("small", stall_timeout_s=60)
    assert (result.path / "tokenizer.json").is_file() and not (result.path / "tokenizer.json").is_symlink()
    assert EngineStore().verify(result.path).ok
