"""The content-addressed engine store, the name links that point into it, and their upkeep.

Layout (root = `constants.store_dir()`):

    store/
        <hash>-trtllm-engine-<name>-<version>/     a published engine (never modified after publishing)
            config.json, rank*.engine | hf_model/, tokenizer files, chat_template.jinja
            build.log                               the builder's output
            trtforge.json                           manifest: inputs, files (size + sha256), timings
        tmp/<hash>.<uuid8>.incomplete/              a build in progress (or the wreck of one)
        .locks/<hash>.lock                          one lock per build hash
    <link dir>/<name> -> store/<entry>              name links (`constants.engine_link_dirs()`)

Invariants: an entry appears only by `os.replace` of a checked, complete directory; links are replaced by
`os.replace` of a fresh symlink; locks prevent duplicate builds, correctness never depends on them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from pydantic import BaseModel, ConfigDict, ValidationError

from trtforge.atomic import write_text_atomic
from trtforge.constants import engine_link_dirs, store_dir
from trtforge.engine import ENGINE_CONFIG, MANIFEST, EngineBackend, is_engine_config
from trtforge.errors import EngineNotFoundError, StoreError, VerifyError

ENTRY_INFIX = "-trtllm-engine-"
TMP_DIR = "tmp"
LOCKS_DIR = ".locks"
INCOMPLETE_SUFFIX = ".incomplete"
BUILD_LOG = "build.log"
MANIFEST_FORMAT = 1
HASH_CHARS = 32
_ENTRY_RE = re.compile(rf"^(?P<hash>[0-9a-f]{{{HASH_CHARS}}}){ENTRY_INFIX}(?P<rest>.+)$")
_CHUNK = 4 << 20


# --- hashing -----------------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def iter_files(root: Path, *, exclude: Iterable[str] = ()) -> Iterator[Path]:
    """Every regular file under `root`, sorted by relative path, minus top-level names in `exclude`."""
    skip = set(exclude)
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and path.relative_to(root).parts[0] not in skip:
            yield path


def hash_directory(root: Path) -> str:
    """A content hash of a directory tree: relative paths and file contents (used for local checkpoints)."""
    digest = hashlib.sha256()
    for path in iter_files(root):
        digest.update(f"{path.relative_to(root).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class BuildInputs:
    """Everything that determines an engine's bytes; its digest names the store entry."""

    spec: dict[str, Any]  # the catalogue entry's fields
    model_revision: str  # commit sha (hub), content hash (local directory) or generator digest (built-in)
    builder_version: str  # TensorRT-LLM version, or the reference generator's
    gpu_arch: str  # e.g. "sm100"; "cpu" for reference engines

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "model_revision": self.model_revision,
            "builder_version": self.builder_version,
            "gpu_arch": self.gpu_arch,
        }

    def digest(self) -> str:
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:HASH_CHARS]


# --- manifest ----------------------------------------------------------------------------------------------


class FileRecord(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    size: int
    sha256: str


class Manifest(BaseModel):
    """`trtforge.json`: what went into an entry and what came out."""

    model_config = ConfigDict(extra="ignore")

    format: int = MANIFEST_FORMAT
    name: str
    hash: str
    backend: EngineBackend
    builder_version: str
    inputs: dict[str, Any]
    files: dict[str, FileRecord]
    timings: dict[str, float] = {}
    command: list[str] = []
    created_at: str


def record_files(root: Path) -> dict[str, FileRecord]:
    return {
        path.relative_to(root).as_posix(): FileRecord(size=path.stat().st_size, sha256=sha256_file(path))
        for path in iter_files(root, exclude=[MANIFEST])
    }


def write_manifest(
    entry_dir: Path,
    *,
    name: str,
    digest: str,
    backend: EngineBackend,
    inputs: BuildInputs,
    timings: dict[str, float],
    command: list[str] | None = None,
) -> Manifest:
    manifest = Manifest(
        name=name,
        hash=digest,
        backend=backend,
        builder_version=inputs.builder_version,
        inputs=inputs.to_json(),
        files=record_files(entry_dir),
        timings={key: round(value, 3) for key, value in timings.items()},
        command=command or [],
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    write_text_atomic(entry_dir / MANIFEST, manifest.model_dump_json(indent=2) + "\n")
    return manifest


def read_manifest(entry_dir: Path) -> Manifest:
    path = entry_dir / MANIFEST
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise StoreError(f"{entry_dir}: no {MANIFEST}") from None
    except (OSError, ValidationError, ValueError) as exc:
        raise StoreError(f"{path}: unreadable manifest: {str(exc).splitlines()[0]}") from None


# --- records -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkRecord:
    name: str
    link: Path
    target: Path


@dataclass(frozen=True)
class EngineRecord:
    """A published store entry as `scan_store` sees it."""

    path: Path
    hash: str
    name: str
    manifest: Manifest | None
    size_bytes: int
    links: tuple[LinkRecord, ...] = ()

    @property
    def quantization(self) -> str | None:
        spec = self.manifest.inputs.get("spec", {}) if self.manifest else {}
        return spec.get("quantization")

    @property
    def built_at(self) -> str | None:
        return self.manifest.created_at if self.manifest else None


@dataclass(frozen=True)
class StoreScan:
    entries: tuple[EngineRecord, ...]
    incomplete: tuple[Path, ...]
    warnings: tuple[str, ...]

    @property
    def size_bytes(self) -> int:
        return sum(entry.size_bytes for entry in self.entries)


@dataclass(frozen=True)
class VerifyReport:
    path: Path
    checked_files: int
    problems: tuple[str, ...]
    has_manifest: bool

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class GcPlan:
    """What `gc` would delete; `execute()` does it. Built by `EngineStore.plan_gc`."""

    store: EngineStore
    entries: tuple[EngineRecord, ...]
    incomplete: tuple[Path, ...]
    expected_freed_bytes: int
    warnings: tuple[str, ...] = field(default=())

    def execute(self) -> int:
        """Delete the planned paths (skipping any that are now linked or being built); returns bytes freed."""
        freed = 0
        linked = {link.target for link in self.store.links(shadowed=True)}
        for entry in self.entries:
            if entry.path.resolve() in linked:
                continue
            freed += self.store._remove_entry(entry.path, entry.hash)
        for path in self.incomplete:
            freed += self.store._remove_entry(path, path.name.split(".")[0])
        return freed


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


# --- the store ---------------------------------------------------------------------------------------------


class EngineStore:
    """The store directory and every operation on it (see the module docstring for the layout)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else store_dir()

    # paths and locks

    @staticmethod
    def entry_dir_name(digest: str, name: str, version: str) -> str:
        safe_version = re.sub(r"[^A-Za-z0-9._+-]", "_", version)
        return f"{digest}{ENTRY_INFIX}{name}-{safe_version}"

    def entry_path(self, digest: str, name: str, version: str) -> Path:
        return self.root / self.entry_dir_name(digest, name, version)

    def find(self, digest: str) -> Path | None:
        """The published entry for a hash, if any."""
        if not self.root.is_dir():
            return None
        for path in self.root.glob(f"{digest}{ENTRY_INFIX}*"):
            if path.is_dir():
                return path
        return None

    def lock(self, digest: str, *, timeout_s: float = -1) -> FileLock:
        locks = self.root / LOCKS_DIR
        locks.mkdir(parents=True, exist_ok=True)
        return FileLock(str(locks / f"{digest}.lock"), timeout=timeout_s)

    def new_incomplete(self, digest: str) -> Path:
        """A fresh, empty build directory inside the store (same filesystem: publishing is a rename)."""
        tmp = self.root / TMP_DIR
        tmp.mkdir(parents=True, exist_ok=True)
        path = tmp / f"{digest}.{uuid.uuid4().hex[:8]}{INCOMPLETE_SUFFIX}"
        path.mkdir()
        return path

    def new_scratch(self, digest: str, kind: str) -> Path:
        """A scratch directory next to the incomplete ones (e.g. the builder's workspace)."""
        tmp = self.root / TMP_DIR
        tmp.mkdir(parents=True, exist_ok=True)
        path = tmp / f"{digest}.{uuid.uuid4().hex[:8]}.{kind}"
        path.mkdir()
        return path

    def publish(self, incomplete: Path, final: Path) -> Path:
        """Rename a checked build directory into place (atomic; the caller holds the hash's lock)."""
        if final.exists():
            raise StoreError(f"{final}: already published")
        os.replace(incomplete, final)
        return final

    # reading

    def scan(self) -> StoreScan:
        """Every published entry with its links; broken entries become warnings, not errors."""
        entries: list[EngineRecord] = []
        warnings: list[str] = []
        links_by_target: dict[Path, list[LinkRecord]] = {}
        for link in self.links(shadowed=True):
            links_by_target.setdefault(link.target, []).append(link)
        if not self.root.is_dir():
            return StoreScan((), (), ())
        for path in sorted(self.root.iterdir()):
            if path.name in (TMP_DIR, LOCKS_DIR) or not path.is_dir():
                continue
            match = _ENTRY_RE.match(path.name)
            if not match:
                warnings.append(f"{path}: not a store entry (unexpected name)")
                continue
            manifest: Manifest | None
            try:
                manifest = read_manifest(path)
            except StoreError as exc:
                warnings.append(str(exc))
                manifest = None
            name = manifest.name if manifest else match["rest"].rsplit("-", 1)[0]
            entries.append(
                EngineRecord(
                    path=path,
                    hash=match["hash"],
                    name=name,
                    manifest=manifest,
                    size_bytes=_tree_size(path),
                    links=tuple(links_by_target.get(path.resolve(), ())),
                )
            )
        tmp = self.root / TMP_DIR
        incomplete = tuple(sorted(tmp.iterdir())) if tmp.is_dir() else ()
        return StoreScan(tuple(entries), incomplete, tuple(warnings))

    def links(self, *, shadowed: bool = False) -> list[LinkRecord]:
        """Every name link in the link directories (the first directory wins for a name).

        `shadowed=True` also returns the links a directory earlier in the path hides: they still pin their
        targets against `gc`.
        """
        found: dict[str | Path, LinkRecord] = {}
        for directory in engine_link_dirs():
            if not directory.is_dir():
                continue
            for link in sorted(directory.iterdir()):
                key = link if shadowed else link.name
                if link.name.startswith(".") or key in found or not link.is_symlink():
                    continue
                target = Path(os.path.realpath(link))
                found[key] = LinkRecord(name=link.name, link=link, target=target)
        return list(found.values())

    def verify(self, path: Path) -> VerifyReport:
        """Check every file against the manifest (sizes first, then sha256); lists every problem."""
        path = Path(path)
        problems: list[str] = []
        try:
            manifest = read_manifest(path)
        except StoreError as exc:
            config = _read_json(path / ENGINE_CONFIG)
            if not is_engine_config(config):
                problems.append(f"{ENGINE_CONFIG}: missing or not an engine config")
            return VerifyReport(path, 0, (*problems, str(exc)), has_manifest=False)
        for relative, record in sorted(manifest.files.items()):
            file = path / relative
            try:
                size = file.stat().st_size
            except FileNotFoundError:
                problems.append(f"{relative}: missing")
                continue
            if size != record.size:
                kind = "truncated" if size < record.size else "grown"
                problems.append(f"{relative}: {kind} ({size} bytes, expected {record.size})")
            elif sha256_file(file) != record.sha256:
                problems.append(f"{relative}: changed (sha256 differs)")
        extra = sorted(
            p.relative_to(path).as_posix()
            for p in iter_files(path, exclude=[MANIFEST])
            if p.relative_to(path).as_posix() not in manifest.files
        )
        problems.extend(f"{relative}: not in the manifest" for relative in extra)
        return VerifyReport(path, len(manifest.files), tuple(problems), has_manifest=True)

    # gc

    def plan_gc(self) -> GcPlan:
        """Entries that no link points to, and abandoned build directories (whose lock is free)."""
        scan = self.scan()
        doomed = tuple(entry for entry in scan.entries if not entry.links)
        abandoned = tuple(path for path in scan.incomplete if not self._is_locked(path.name.split(".")[0]))
        freed = sum(entry.size_bytes for entry in doomed) + sum(_tree_size(path) for path in abandoned)
        return GcPlan(self, doomed, abandoned, freed, scan.warnings)

    def _is_locked(self, digest: str) -> bool:
        try:
            with self.lock(digest, timeout_s=0):
                return False
        except Timeout:
            return True

    def _remove_entry(self, path: Path, digest: str) -> int:
        """Rename out of sight first (so nothing half-deleted looks like an engine), then delete."""
        try:
            with self.lock(digest, timeout_s=0):
                size = _tree_size(path)
                trash = self.root / TMP_DIR / f"{digest}.{uuid.uuid4().hex[:8]}.deleting"
                trash.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.replace(path, trash)
                except FileNotFoundError:
                    return 0
                shutil.rmtree(trash, ignore_errors=True)
                return size
        except Timeout:
            return 0  # being built right now: leave it


# --- links -------------------------------------------------------------------------------------------------


def link_engine(name: str, target: Path) -> Path:
    """Point `<first link dir>/<name>` at `target`, replacing any old link atomically."""
    if "/" in name or name.startswith("."):
        raise StoreError(f"{name!r}: not a valid link name")
    directory = engine_link_dirs()[0]
    directory.mkdir(parents=True, exist_ok=True)
    link = directory / name
    if link.exists() and not link.is_symlink():
        raise StoreError(f"{link}: exists and is not a symlink; refusing to replace it")
    tmp = directory / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        os.symlink(Path(target).resolve(), tmp)
        os.replace(tmp, link)
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
        for directory in engine_link_dirs():
            link = directory / text
            if link.is_symlink() or link.exists():
                target = Path(os.path.realpath(link))
                if not (target / ENGINE_CONFIG).is_file():
                    raise EngineNotFoundError(f"{link} points to {target}, which is not an engine directory")
                return target
        searched = ", ".join(str(d) for d in engine_link_dirs())
        raise EngineNotFoundError(
            f"no engine named {text!r} (looked in {searched}); build it with `trtforge build {text}`"
        )
    if not candidate.is_dir():
        raise EngineNotFoundError(f"{candidate}: no such directory")
    if not is_engine_config(_read_json(candidate / ENGINE_CONFIG)):
        raise EngineNotFoundError(f"{candidate}: not an engine directory (no engine config.json)")
    return candidate.resolve()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --- module-level conveniences over the default store ------------------------------------------------------


def scan_store() -> StoreScan:
    return EngineStore().scan()


def plan_gc() -> GcPlan:
    return EngineStore().plan_gc()


def verify_engine(name_or_path: str | Path) -> VerifyReport:
    """Verify a linked or given engine; raises `VerifyError` listing the problems."""
    path = resolve_engine(name_or_path)
    report = EngineStore().verify(path)
    if report.problems:
        raise VerifyError(f"{path}: {len(report.problems)} problem(s): {'; '.join(report.problems)}")
    return report
