"""Move a built engine from the builder's workspace into its store entry, hashing each rank file on the way.

The rank files are nearly all of an engine's bytes (gigabytes each). Hashing them here, as they are moved, means
the manifest (`manifest.record_files`) does not read them a second time: on the same filesystem (the workspace
is in the store's tmp/) the move is a rename and this hash is the only read; across filesystems each file is
hashed as it is copied, in the same pass. The ranks are hashed in parallel (hashlib releases the GIL), so a
TP × PP engine costs about the time of its largest rank file.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from trtforge.manifest import FileRecord, HashedFile, file_identity

_CHUNK = 4 << 20
RANK_GLOB = "rank*.engine"

__all__ = ["move_engine"]


def move_engine(source: Path, dest: Path) -> dict[str, HashedFile]:
    """Move every entry of directory `source` into directory `dest`; returns the rank files' hashes by name.

    Raises:
        OSError: a file cannot be moved or read.
    """
    to_hash: list[Path] = []
    copied: dict[str, HashedFile] = {}
    for item in sorted(source.iterdir()):
        target = dest / item.name
        is_rank = item.is_file() and not item.is_symlink() and item.match(RANK_GLOB)
        try:
            os.rename(item, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            if not is_rank:
                shutil.move(str(item), target)
                continue
            copied[item.name] = _copy_hashed(item, target)
            item.unlink()
            continue
        if is_rank:
            to_hash.append(target)
    hashed = dict(copied)
    if to_hash:
        with ThreadPoolExecutor(max_workers=min(len(to_hash), os.cpu_count() or 1)) as pool:
            for path, result in zip(to_hash, pool.map(_hash_in_place, to_hash), strict=True):
                hashed[path.name] = result
    return hashed


def _hash_in_place(path: Path) -> HashedFile:
    """The file's hash, with its identity before and after the read (a file changed meanwhile is not recorded
    as hashed: the manifest reads it again)."""
    before = file_identity(path)
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    size = 0
    with open(path, "rb", buffering=0) as handle:
        while n := handle.readinto(buffer):
            digest.update(view[:n])
            size += n
    after = file_identity(path)
    # A change during the read leaves an identity no later stat matches, so the record is never used.
    identity = before if before == after else (-1, -1, -1, -1, -1)
    return HashedFile(FileRecord(size=size, sha256=digest.hexdigest()), identity)


def _copy_hashed(source: Path, target: Path) -> HashedFile:
    """Copy `source` to a new `target`, hashing each chunk as it is written (one read of the source)."""
    digest = hashlib.sha256()
    size = 0
    with open(source, "rb") as src, open(target, "xb") as out:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
    shutil.copystat(source, target)
    return HashedFile(FileRecord(size=size, sha256=digest.hexdigest()), file_identity(target))
