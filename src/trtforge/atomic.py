"""Atomic writes: fill a hidden temporary beside the target, then rename it into place.

A reader sees the old file or the new one, never half of either; a crash leaves at most a `.*.tmp` file (or a
`.*.incomplete` / `.*.old` directory). Files: `write_text_atomic`. Directories: `staged_directory`, or
`rename_into_place` for a directory staged elsewhere on the same filesystem (the store's builds).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


def unique_name(stem: str, suffix: str) -> str:
    """`<stem>.<uuid8>.<suffix>`: a name no concurrent writer picks, whose stem and suffix say what it is."""
    return f"{stem}.{uuid.uuid4().hex[:8]}.{suffix}"


def temporary_sibling(path: Path, suffix: str = "tmp") -> Path:
    """A fresh hidden name in `path`'s directory: `.<name>.<uuid8>.<suffix>`."""
    return path.with_name(unique_name(f".{path.name}", suffix))


def write_text_atomic(path: Path, text: str, *, mode: int | None = None) -> None:
    """Replace `path` with `text` atomically, creating its directory if needed; `mode` sets its permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def rename_into_place(staging: Path, dest: Path, *, aside: Path | None = None) -> None:
    """Rename the directory `staging` to `dest` (same filesystem).

    An existing `dest` is renamed to `aside` first (default: a hidden sibling `.<name>.<uuid8>.old`) and renamed
    back when the second rename fails, so `dest` is never lost. A default `aside` is deleted afterwards; a given
    one is left where it is, for its owner to remove (the store leaves it to gc). Between the two renames `dest`
    is briefly absent: a reader sees the old directory, nothing, or the new one, never a mix.

    Raises:
        OSError: a rename failed; `dest` is as it was and `staging` untouched.
    """
    if not os.path.lexists(dest):
        os.rename(staging, dest)
        return
    old = aside if aside is not None else temporary_sibling(dest, "old")
    os.rename(dest, old)
    try:
        os.rename(staging, dest)
    except OSError:
        os.rename(old, dest)
        raise
    if aside is None:
        _remove(old)


@contextlib.contextmanager
def staged_directory(dest: Path) -> Iterator[Path]:
    """A fresh, empty hidden sibling of `dest` (`.<name>.<uuid8>.incomplete`) to fill; it becomes `dest`.

    When the block ends without an error the staging is renamed into place by `rename_into_place` (an existing
    `dest` is replaced, and restored if the rename fails). On any error the staging is removed and `dest` is
    left as it was. `dest`'s parent is created if needed.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_sibling(dest, "incomplete")
    staging.mkdir()
    try:
        yield staging
        rename_into_place(staging, dest)
    finally:
        _remove(staging)


def _remove(path: Path) -> None:
    """Delete a directory tree, a file or a link at `path` if anything is there (best effort)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)
