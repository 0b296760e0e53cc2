"""Rank files are hashed as the engine is moved into its entry, and the manifest uses those hashes only while the
file is unchanged (`builder.engine_move`, `manifest.record_files`)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from trtforge.builder.engine_move import move_engine
from trtforge.manifest import FileRecord, HashedFile, file_identity, record_files

SHM = Path("/dev/shm")


def _engine(source: Path, ranks: int = 2) -> dict[str, bytes]:
    source.mkdir(parents=True)
    contents = {f"rank{rank}.engine": os.urandom(1 << 20) + bytes([rank]) * 4097 for rank in range(ranks)}
    contents["config.json"] = b'{"pretrained_config": {}}'
    for name, data in contents.items():
        (source / name).write_bytes(data)
    return contents


def _check_moved(source: Path, dest: Path, contents: dict[str, bytes], hashed: dict[str, HashedFile]) -> None:
    assert list(source.iterdir()) == []
    assert {path.name: path.read_bytes() for path in dest.iterdir()} == contents
    assert set(hashed) == {
        "rank0.engine",
        "rank1.engine",
    }  # the rank files; the small ones the manifest hashes
    for name, entry in hashed.items():
        assert entry.record == FileRecord(
            size=len(contents[name]), sha256=hashlib.sha256(contents[name]).hexdigest()
        )
        assert entry.identity == file_identity(dest / name)
    assert record_files(dest, known=hashed) == record_files(dest)


def test_a_move_on_one_filesystem_hashes_the_ranks(tmp_path: Path) -> None:
    contents = _engine(tmp_path / "workspace" / "engine")
    (tmp_path / "entry").mkdir()
    inode = os.stat(tmp_path / "workspace" / "engine" / "rank0.engine").st_ino
    hashed = move_engine(tmp_path / "workspace" / "engine", tmp_path / "entry")
    assert os.stat(tmp_path / "entry" / "rank0.engine").st_ino == inode  # renamed, not copied
    _check_moved(tmp_path / "workspace" / "engine", tmp_path / "entry", contents, hashed)


def test_a_move_across_filesystems_hashes_while_copying(tmp_path: Path) -> None:
    if not SHM.is_dir() or os.stat(SHM).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the temporary directory")
    source = SHM / f"trtforge-test-{os.getpid()}-{tmp_path.name}"
    try:
        contents = _engine(source)
        (tmp_path / "entry").mkdir()
        hashed = move_engine(source, tmp_path / "entry")
        _check_moved(source, tmp_path / "entry", contents, hashed)
    finally:
        for path in source.glob("*"):
            path.unlink()
        source.rmdir()


def test_the_manifest_reads_a_file_again_once_it_changed(tmp_path: Path) -> None:
    rank = tmp_path / "rank0.engine"
    rank.write_bytes(b"engine bytes")
    # A record the manifest must take as is while the file is the one it describes (no second read)...
    sentinel = FileRecord(size=12, sha256="0" * 64)
    known = {"rank0.engine": HashedFile(sentinel, file_identity(rank))}
    assert record_files(tmp_path, known=known)["rank0.engine"] == sentinel
    # ...and never once it was written to, or replaced by another file.
    with open(rank, "ab") as handle:
        handle.write(b"!")
    fresh = FileRecord(size=13, sha256=hashlib.sha256(b"engine bytes!").hexdigest())
    assert record_files(tmp_path, known=known)["rank0.engine"] == fresh
    known = {"rank0.engine": HashedFile(sentinel, file_identity(rank))}
    replacement = tmp_path / "other"
    replacement.write_bytes(b"engine bytes!")
    os.replace(replacement, rank)
    assert record_files(tmp_path, known=known)["rank0.engine"] == fresh
