"""The content hash of a local checkpoint, with each file's sha256 cached by (path, size, mtime, inode).

A local checkpoint enters a build's hash as the hash of its whole tree (`untrusted.hash_tree`): 20 GB read for
every `trtforge build`, cached or not. Here a file whose real path, device, inode, size and mtime are what they
were when it was hashed is not read again. What is compared is the `fstat` of the descriptor that would be read.

A file modified less than `RACY_NS` before it was hashed could change again within the same mtime tick without
its stat changing, so its hash is used but not kept (git's "racy clean" rule).

The cache is one JSON file in `$TRTFORGE_HOME`, replaced atomically; a missing, damaged or foreign one is an
empty cache. Two builds writing it at once lose at most each other's new records (those files are hashed again).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from trtforge.atomic import write_text_atomic
from trtforge.constants import trtforge_home
from trtforge.errors import CheckpointError, TrtforgeError
from trtforge.untrusted import hash_tree, open_regular, read_bounded, sha256_handle

CACHE_FILE = "checkpoint-hashes.json"
CACHE_LIMIT = 64 << 20  # ~300 bytes a file: room for hundreds of thousands of checkpoint files
RACY_NS = 2_000_000_000


class FileStamp(BaseModel):
    """What identifies one version of a file without reading it, and the sha256 of that version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dev: int
    ino: int
    size: int
    mtime_ns: int
    sha256: str

    def matches(self, st: os.stat_result) -> bool:
        return (self.dev, self.ino, self.size, self.mtime_ns) == (
            st.st_dev,
            st.st_ino,
            st.st_size,
            st.st_mtime_ns,
        )


class HashCache(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: int = 1
    files: dict[str, FileStamp] = {}  # real path -> stamp


def cache_path() -> Path:
    return trtforge_home() / CACHE_FILE


def hash_checkpoint(root: Path) -> str:
    """`untrusted.hash_tree(root)`, reading only the files the cache does not know in their current version.

    Raises:
        CheckpointError: as `hash_tree` (a file leading outside `root`, a FIFO, an unreadable file...).
    """
    cache = _load()
    started_ns = time.time_ns()
    seen: dict[str, FileStamp] = {}

    def file_sha256(real: Path, shown: Path) -> str:
        with os.fdopen(open_regular(real, shown=shown), "rb") as handle:
            st = os.fstat(handle.fileno())
            known = cache.files.get(str(real))
            sha256 = known.sha256 if known is not None and known.matches(st) else sha256_handle(handle)
        if st.st_mtime_ns < started_ns - RACY_NS:
            seen[str(real)] = FileStamp(
                dev=st.st_dev, ino=st.st_ino, size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=sha256
            )
        return sha256

    digest = hash_tree(root, file_sha256=file_sha256)
    if any(cache.files.get(path) != stamp for path, stamp in seen.items()):
        _save(cache, seen)
    return digest


def _load() -> HashCache:
    try:
        return HashCache.model_validate_json(read_bounded(cache_path(), CACHE_LIMIT, error=CheckpointError))
    except (TrtforgeError, ValidationError, ValueError):
        return HashCache()


def _save(cache: HashCache, seen: dict[str, FileStamp]) -> None:
    """Write the cache with this run's records, dropping records of files that are gone."""
    files = {path: stamp for path, stamp in cache.files.items() if os.path.lexists(path)}
    files.update(seen)
    with contextlib.suppress(OSError):  # a cache that cannot be written only costs the next build a re-read
        write_text_atomic(cache_path(), HashCache(files=files).model_dump_json() + "\n")
