"""The stored Responses of several proxy workers: one store in a private directory that every worker reads.

With `--workers N` the kernel spreads connections over the workers, so a `previous_response_id`, a `GET`,
`DELETE` or `/input_items` can reach another worker than the one that stored the response: they all use one
directory (created by the supervisor, `proxy.workers`, mode 0700; its path in `SHARED_STORE_DIR_ENV` of the
workers' environment; removed once they have stopped, so a restart loses every stored response, as with one).

Same interface, bounds and owner scope as `ResponseStore` (in memory, for one process):

- One file per response, named by the digest of its id (an id a client sends never becomes a path), written to
  a temporary file and renamed into place.
- An index (`index.json`: digest, owner, stored at, size; oldest first) is what counts: every operation takes
  the directory's lock (`flock` on `lock`), reads the index (unless it kept the current one: the generation in
  the lock file says), drops what has expired, and writes it back when it changed, so the count and byte bounds
  hold across all the workers (oldest evicted first).
- Files are read bounded (the index's size for an entry, a cap for the index): ours, but a size is never
  trusted. An index that cannot be read starts the store over, empty.
- Ages come from `time.monotonic`, which on Linux is one clock for every process of the host.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import stat
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from trtforge.proxy.response_store import ResponseStoreLimits, StoredResponse, decode, encode

logger = logging.getLogger(__name__)

SHARED_STORE_DIR_ENV = "TRTFORGE_PROXY_RESPONSES_DIR"  # set by the workers' supervisor for its workers only

_INDEX = "index.json"
_LOCK = "lock"
_BLOB = re.compile(r"[0-9a-f]{64}\.json")
_INDEX_ENTRY_BYTES = 256  # one index entry's JSON is ~170 bytes: two digests, a time, a size
_OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class _Meta:
    owner: str
    stored_at: float
    size: int


_Index = OrderedDict[str, _Meta]  # digest of the id → its entry, oldest first


def _key(response_id: str) -> str:
    return hashlib.sha256(response_id.encode()).hexdigest()


def _read_bounded(path: Path, limit: int) -> bytes | None:
    """The file's bytes, or None when it is missing, not a plain file of its own, or longer than `limit`."""
    try:
        fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return None
        data = handle.read(limit + 1)
    return None if len(data) > limit else data


def _write_whole(path: Path, data: bytes) -> None:
    """`path` holds `data`, whole or not at all (a temporary file beside it, renamed into place)."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


class SharedResponseStore:
    """Stored responses by id in `directory`, shared by every process that opens it.

    Args:
        directory: a directory of this user's, private (mode 0700), made for the store.
        limits: the count, bytes and age bounds (every worker has the same).
        clock: seconds, monotonic and one for all the processes (tests pass their own).

    Raises:
        ValueError: `directory` is not a private directory of this user's.
    """

    def __init__(
        self,
        directory: str | Path,
        limits: ResponseStoreLimits | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = Path(directory)
        self.limits = limits or ResponseStoreLimits()
        self._clock = clock
        self._cached: tuple[int, _Index] | None = None  # (generation, index) as this store last saw them
        self._changed = False
        info = os.lstat(self.directory)
        private = stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077
        if not private:
            raise ValueError(f"the shared response store needs a private directory: {self.directory}")

    def __len__(self) -> int:
        with self._index() as index:
            return len(index)

    @property
    def bytes(self) -> int:
        with self._index() as index:
            return sum(meta.size for meta in index.values())

    def put(self, owner: str, response_id: str, stored: StoredResponse) -> bool:
        """Store (or replace) a response; False when it is not kept (store off, or larger than the limit)."""
        blob = encode(stored)
        key = _key(response_id)
        with self._index() as index:
            self._remove(index, key)
            if self.limits.max_responses == 0 or len(blob) > self.limits.max_bytes:
                return False
            _write_whole(self._blob(key), blob)
            index[key] = _Meta(owner, self._clock(), len(blob))
            self._changed = True
            total = sum(meta.size for meta in index.values())
            while len(index) > self.limits.max_responses or total > self.limits.max_bytes:
                oldest = next(iter(index))
                total -= index[oldest].size
                self._remove(index, oldest)
            return True

    def get(self, owner: str, response_id: str) -> StoredResponse | None:
        """The response stored under `response_id` by `owner`, or None (never stored, evicted, expired,
        deleted, another owner's, or its file unreadable)."""
        key = _key(response_id)
        with self._index() as index:
            meta = index.get(key)
            if meta is None or meta.owner != owner or meta.size > self.limits.max_bytes:
                return None
            blob = _read_bounded(self._blob(key), meta.size)
        if blob is None or len(blob) != meta.size:
            return None
        try:
            return decode(blob)
        except (ValueError, TypeError):
            return None

    def delete(self, owner: str, response_id: str) -> bool:
        """Remove `owner`'s response; False when there is none to remove."""
        key = _key(response_id)
        with self._index() as index:
            meta = index.get(key)
            if meta is None or meta.owner != owner:
                return False
            self._remove(index, key)
            return True

    # ------------------------------------------------------------------------------------------ the index

    @contextlib.contextmanager
    def _index(self) -> Iterator[_Index]:
        """The index under the directory's lock, expired entries dropped; written back if it changed.

        The lock file holds the index's generation, bumped by every change: a store that saw the current one
        uses the index it kept instead of reading and parsing the file again (most requests read, few write).
        """
        fd = os.open(self.directory / _LOCK, os.O_RDWR | os.O_CREAT | _OPEN_FLAGS, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # one open per use: also excludes threads of one process
            generation = int.from_bytes(os.pread(fd, 8, 0).ljust(8, b"\0"), "big")
            cached, self._cached = self._cached, None  # dropped if anything below fails
            self._changed = False
            index = cached[1] if cached is not None and cached[0] == generation else self._read_index()
            self._expire(index)
            yield index
            if self._changed:
                # The generation first: whoever reads it next reads the index file, whatever happens after.
                generation = (generation + 1) % (1 << 64)
                os.pwrite(fd, generation.to_bytes(8, "big"), 0)
                self._write_index(index)
            self._cached = (generation, index)
        finally:
            os.close(fd)  # releases the lock

    def _read_index(self) -> _Index:
        limit = _INDEX_ENTRY_BYTES * (self.limits.max_responses + 1) + 4096
        path = self.directory / _INDEX
        data = _read_bounded(path, limit)
        if data is None and not path.exists():
            return _Index()
        try:
            if data is None:
                raise ValueError("unreadable or too large")
            return _parse_index(data)
        except (ValueError, TypeError) as exc:
            logger.warning("the shared response store's index is unreadable (%s): starting it over", exc)
            for child in self.directory.iterdir():
                if _BLOB.fullmatch(child.name):
                    child.unlink(missing_ok=True)
            self._changed = True  # an empty index written back: said once, not on every use
            return _Index()

    def _write_index(self, index: _Index) -> None:
        entries = [[key, m.owner, m.stored_at, m.size] for key, m in index.items()]
        _write_whole(self.directory / _INDEX, json.dumps(entries, separators=(",", ":")).encode())

    def _expire(self, index: _Index) -> None:
        horizon = self._clock() - self.limits.max_age_s
        while index:
            oldest_key, oldest = next(iter(index.items()))
            if oldest.stored_at > horizon:
                return
            self._remove(index, oldest_key)

    def _remove(self, index: _Index, key: str) -> None:
        if index.pop(key, None) is not None:
            self._blob(key).unlink(missing_ok=True)
            self._changed = True

    def _blob(self, key: str) -> Path:
        return self.directory / f"{key}.json"


def _parse_index(data: bytes) -> _Index:
    index = _Index()
    for key, owner, stored_at, size in json.loads(data):
        valid = isinstance(key, str) and _BLOB.fullmatch(f"{key}.json") and isinstance(owner, str)
        if not valid or not isinstance(stored_at, int | float) or not isinstance(size, int) or size < 0:
            raise ValueError("an entry of an unexpected shape")
        index[key] = _Meta(owner, float(stored_at), size)
    return index
