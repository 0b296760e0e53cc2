"""Atomic file writes: write a hidden temporary beside the target, then `os.replace` it into place.

A reader sees the old file or the new one, never half of either; a crash leaves at most a `.*.tmp` file.
"""

from __future__ import annotations

import os
import uuid
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
