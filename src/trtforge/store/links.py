"""Name links: `<link dir>/<name> -> store/<entry>` in the directories `constants.engine_link_dirs()` names
(`$TRTLLM_ENGINE_PATH`, else `~/.cache/trtllm-engines`): writing one, resolving a name (or a path) to an engine
directory, and verifying an engine by name."""

from __future__ import annotations

import os
from pathlib import Path

from trtforge.atomic import temporary_sibling
from trtforge.catalog import check_name
from trtforge.constants import engine_link_dirs
from trtforge.engine import is_engine_dir
from trtforge.errors import EngineNotFoundError, StoreError, VerifyError
from trtforge.store.entries import EngineStore, VerifyReport


def link_engine(name: str, target: Path, *, store: EngineStore | None = None) -> Path:
    """Point `<first link dir>/<name>` at `target`, replacing any old link atomically.

    The link directory is recorded as a gc root of `store` (default: the default store) first.
    """
    check_name(name)
    directory = engine_link_dirs()[0]
    (store or EngineStore()).record_link_dir(directory)
    link = directory / name
    tmp = temporary_sibling(link)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(link) and not link.is_symlink():
            raise StoreError(f"{link}: exists and is not a symlink; refusing to replace it")
        os.symlink(Path(target).resolve(), tmp)
        os.replace(tmp, link)
    except OSError as exc:
        if isinstance(exc, StoreError):
            raise
        raise StoreError(f"{directory}: cannot write the link {name!r}: {exc.strerror or exc}") from None
    finally:
        if tmp.is_symlink():
            tmp.unlink()
    return link


def resolve_engine(name_or_path: str | Path) -> Path:
    """The engine directory for a link name or a path.

    Args:
        name_or_path: a name linked in `constants.engine_link_dirs()`, or a path to an engine directory.

    Returns:
        The resolved engine directory (symlinks followed).

    Raises:
        EngineNotFoundError: no such link, a dangling link, or a path that is not an engine directory.
    """
    text = str(name_or_path)
    candidate = Path(text).expanduser()
    looks_like_path = "/" in text or text.startswith(".") or candidate.is_dir()
    if not looks_like_path:
        check_name(text)
        for directory in engine_link_dirs():
            link = directory / text
            if link.is_symlink() or link.exists():
                target = Path(os.path.realpath(link))
                if not is_engine_dir(target):
                    raise EngineNotFoundError(f"{link} points to {target}, which is not an engine directory")
                return target
        searched = ", ".join(str(d) for d in engine_link_dirs())
        raise EngineNotFoundError(
            f"no engine named {text!r} (looked in {searched}); build it with `trtforge build {text}`"
        )
    if not candidate.is_dir():
        raise EngineNotFoundError(f"{candidate}: no such directory")
    if not is_engine_dir(candidate):
        raise EngineNotFoundError(
            f"{candidate}: not an engine directory (no engine config.json, no PyTorch entry facts)"
        )
    return candidate.resolve()


def verify_engine(name_or_path: str | Path) -> VerifyReport:
    """Verify a linked or given engine; raises `VerifyError` listing the problems."""
    path = resolve_engine(name_or_path)
    report = EngineStore().verify(path)
    if report.problems:
        raise VerifyError(f"{path}: {len(report.problems)} problem(s): {'; '.join(report.problems)}")
    return report
