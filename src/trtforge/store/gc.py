"""`gc`: plan what no link pins (unlinked entries, abandoned build directories, old logs, idle locks), then
execute the plan, looking at each entry's links again under its lock."""

from __future__ import annotations

import contextlib
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock, Timeout

from trtforge.constants import logs_dir

if TYPE_CHECKING:  # the store imports this module for `EngineStore.plan_gc`
    from trtforge.store.entries import EngineRecord, EngineStore

# gc deletes failed builds' logs after a week, and lock files nobody has opened for an hour (opening one with
# filelock truncates it, which sets its mtime, so a build waiting on a lock keeps it young).
LOG_KEEP_S = 7 * 24 * 3600.0
LOCK_IDLE_S = 3600.0


def plan_gc(store: EngineStore) -> GcPlan:
    """Entries that no link points to, and abandoned build directories (whose lock is free)."""
    from trtforge.store.entries import LOCKS_DIR, tree_size  # here: entries imports this module

    scan = store.scan()
    doomed = tuple(entry for entry in scan.entries if not entry.links)
    abandoned = tuple(path for path in scan.incomplete if not store.is_locked(path.name.split(".")[0]))
    old_logs = tuple(_older_than(logs_dir(), "*.log", LOG_KEEP_S))
    idle_locks = tuple(_older_than(store.root / LOCKS_DIR, "*.lock", LOCK_IDLE_S))
    freed = sum(entry.size_bytes for entry in doomed) + sum(tree_size(path) for path in abandoned)
    freed += sum(log.stat().st_size for log in old_logs)
    return GcPlan(store, doomed, abandoned, freed, scan.warnings, old_logs, idle_locks)


@dataclass(frozen=True)
class GcPlan:
    """What `gc` would delete; `execute()` does it. Built by `plan_gc`."""

    store: EngineStore
    entries: tuple[EngineRecord, ...]
    incomplete: tuple[Path, ...]
    expected_freed_bytes: int
    warnings: tuple[str, ...] = field(default=())
    old_logs: tuple[Path, ...] = field(default=())
    idle_locks: tuple[Path, ...] = field(default=())

    def execute(self) -> int:
        """Delete the planned paths (skipping any that are now linked or being built); returns bytes freed.

        Each entry's links are looked at again under its lock: a build links its entry while holding that lock,
        so an entry linked at any moment before gc takes the lock is kept.
        """
        freed = 0
        for entry in self.entries:
            freed += self.store.remove_entry(entry.path, entry.hash, unless_linked=True)
        for path in self.incomplete:
            freed += self.store.remove_entry(path, path.name.split(".")[0])
        for log in self.old_logs:
            with contextlib.suppress(OSError):
                size = log.lstat().st_size
                log.unlink()
                freed += size
        for lock in self.idle_locks:
            _remove_idle_lock(lock)
        return freed


def _remove_idle_lock(lock_path: Path) -> None:
    """Delete a lock file nobody holds (unlinked while we hold it, so no build can be inside it)."""
    try:
        with FileLock(str(lock_path), timeout=0):
            lock_path.unlink(missing_ok=True)
    except (Timeout, OSError):
        pass


def _older_than(directory: Path, pattern: str, age_s: float) -> list[Path]:
    """Regular files in `directory` matching `pattern` not modified for `age_s` seconds."""
    cutoff = time.time() - age_s
    found = []
    for path in sorted(directory.glob(pattern)) if directory.is_dir() else []:
        with contextlib.suppress(OSError):
            info = path.lstat()
            if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                found.append(path)
    return found
