"""`EngineStore`: the store directory and its entries: paths, locks, build directories, publishing, scanning,
verifying, builder records and the gc roots that remember every link directory (layout: `trtforge.store`)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from trtforge.atomic import rename_into_place, temporary_sibling, unique_name, write_text_atomic
from trtforge.constants import engine_link_dirs, store_dir
from trtforge.engine import ENGINE_CONFIG, MANIFEST, is_engine_dir, read_engine
from trtforge.errors import InvalidEngineError, StoreError
from trtforge.manifest import (
    ENTRY_INFIX,
    HASH_CHARS,
    Manifest,
    entry_dir_name,
    file_problem,
    identity_problems,
    read_manifest,
    unlisted_problems,
)
from trtforge.store.gc import GcPlan, plan_gc
from trtforge.untrusted import read_bounded

TMP_DIR = "tmp"
LOCKS_DIR = ".locks"
ROOTS_DIR = ".gcroots"
BUILDERS_DIR = ".builders"
INCOMPLETE = "incomplete"  # the kind of a build directory in tmp/
INCOMPLETE_SUFFIX = f".{INCOMPLETE}"
BUILD_LOG = "build.log"
_ENTRY_RE = re.compile(rf"^(?P<hash>[0-9a-f]{{{HASH_CHARS}}}){ENTRY_INFIX}(?P<rest>.+)$")


def structure_problems(path: Path) -> list[str]:
    """What makes `path` not a loadable engine directory: config, world size against rank files (or model)."""
    try:
        read_engine(path)
    except InvalidEngineError as exc:
        return [str(exc)]
    return []


def tree_size(path: Path) -> int:
    """Bytes of every file under `path` (links not followed; files that vanish meanwhile count 0)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


# --- records ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkRecord:
    name: str
    link: Path
    target: Path


@dataclass(frozen=True)
class EngineRecord:
    """A published store entry as `EngineStore.scan` sees it."""

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


# --- the store ---------------------------------------------------------------------------------------------


class EngineStore:
    """The store directory and every operation on it (see the module docstring for the layout)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else store_dir()

    # paths and locks

    @staticmethod
    def entry_dir_name(digest: str, name: str, version: str) -> str:
        return entry_dir_name(digest, name, version)

    def entry_path(self, digest: str, name: str, version: str) -> Path:
        return self.root / self.entry_dir_name(digest, name, version)

    def find(self, digest: str) -> Path | None:
        """The published entry for a hash, if any: one whose manifest matches it (see `entry_problems`).

        A directory that merely has the hash in its name (empty, renamed from another entry, half-deleted) is not
        a cache hit.
        """
        if not self.root.is_dir():
            return None
        for path in sorted(self.root.glob(f"{digest}{ENTRY_INFIX}*")):
            if path.is_dir() and not path.is_symlink() and not self.entry_problems(path):
                return path
        return None

    def entry_problems(self, path: Path) -> list[str]:
        """Cheap checks of a published entry: manifest readable and describing this directory, every listed
        file present as a regular file of the recorded size (contents are `verify`'s job)."""
        try:
            manifest = read_manifest(path)
        except StoreError as exc:
            return [str(exc)]
        root = Path(os.path.realpath(path))
        problems = identity_problems(path, manifest)
        for relative, record in sorted(manifest.files.items()):
            problem = file_problem(root, relative, record, content=False)
            if problem:
                problems.append(problem)
        return problems

    def _directory(self, path: Path) -> Path:
        """Create a store directory, or say in one line why it cannot be (e.g. TRTFORGE_HOME is a file)."""
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{path}: cannot create the store directory: {exc.strerror or exc}") from None
        return path

    def lock(self, digest: str, *, timeout_s: float = -1) -> FileLock:
        locks = self._directory(self.root / LOCKS_DIR)
        lock_path = locks / f"{digest}.lock"
        if os.path.lexists(lock_path) and not os.path.isfile(lock_path):
            raise StoreError(f"{lock_path}: not a regular file; remove it to build this engine")
        return FileLock(str(lock_path), timeout=timeout_s)

    def new_incomplete(self, digest: str) -> Path:
        """A fresh, empty build directory inside the store (same filesystem: publishing is a rename)."""
        tmp = self._directory(self.root / TMP_DIR)
        path = tmp / unique_name(digest, INCOMPLETE)
        path.mkdir()
        return path

    def resumable_incomplete(self, digest: str, kind: str) -> Path:
        """`tmp/<hash>.<kind>.incomplete/`, kept across attempts (a pull resumes from what it holds).

        Only ever used under the hash's lock; gc treats it like any other abandoned build directory.
        """
        path = self._directory(self.root / TMP_DIR) / f"{digest}.{kind}{INCOMPLETE_SUFFIX}"
        if os.path.islink(path):
            path.unlink()
        path.mkdir(exist_ok=True)
        return path

    def new_scratch(self, digest: str, kind: str) -> Path:
        """A scratch directory next to the incomplete ones (e.g. the builder's workspace)."""
        tmp = self._directory(self.root / TMP_DIR)
        path = tmp / unique_name(digest, kind)
        path.mkdir()
        return path

    def publish(self, incomplete: Path, final: Path) -> Path:
        """Rename a checked build directory into place (atomic; the caller holds the hash's lock)."""
        if os.path.lexists(final) and not self.entry_problems(final):
            raise StoreError(f"{final}: already published")
        # Something with the entry's name that is not the entry is moved out of the way (gc removes it).
        aside = self.root / TMP_DIR / unique_name(final.name.split("-")[0], "invalid")
        rename_into_place(incomplete, final, aside=aside)
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
            if path.name in (TMP_DIR, LOCKS_DIR, ROOTS_DIR, BUILDERS_DIR) or not path.is_dir():
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
            if manifest is not None:
                warnings.extend(f"{path}: {problem}" for problem in identity_problems(path, manifest))
            name = manifest.name if manifest else match["rest"].rsplit("-", 1)[0]
            entries.append(
                EngineRecord(
                    path=path,
                    hash=match["hash"],
                    name=name,
                    manifest=manifest,
                    size_bytes=tree_size(path),
                    links=tuple(links_by_target.get(path.resolve(), ())),
                )
            )
        tmp = self.root / TMP_DIR
        incomplete = tuple(sorted(tmp.iterdir())) if tmp.is_dir() else ()
        return StoreScan(tuple(entries), incomplete, tuple(warnings))

    # builder records: a SIGKILLed trtforge cannot end its builder, the next one holding the lock can

    def record_builder(self, digest: str, pid: int, start_time: str | None) -> None:
        """Note the session a build of `digest` runs its builder in (the caller holds the hash's lock)."""
        path = self._directory(self.root / BUILDERS_DIR) / f"{digest}.json"
        write_text_atomic(path, json.dumps({"pid": pid, "start_time": start_time}))

    def forget_builder(self, digest: str) -> None:
        (self.root / BUILDERS_DIR / f"{digest}.json").unlink(missing_ok=True)

    def recorded_builders(self) -> dict[str, tuple[int, str | None]]:
        """hash → (session id, leader start time) of every builder record (left by a build that never ended)."""
        found: dict[str, tuple[int, str | None]] = {}
        directory = self.root / BUILDERS_DIR
        for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
            try:
                data = json.loads(read_bounded(path, 4096, error=StoreError, follow=False))
                pid, start = int(data["pid"]), data.get("start_time")
            except (StoreError, ValueError, KeyError, TypeError):
                continue
            if pid > 1:
                found[path.stem] = (pid, str(start) if start is not None else None)
        return found

    # gc roots

    def record_link_dir(self, directory: Path) -> None:
        """Remember that links live in `directory` (before the first is written), so gc always consults it."""
        roots = self._directory(self.root / ROOTS_DIR)
        root = roots / hashlib.sha256(str(directory).encode()).hexdigest()[:16]
        if os.path.islink(root) and os.readlink(root) == str(directory):
            return
        tmp = temporary_sibling(root)
        try:
            os.symlink(str(directory), tmp)
            os.replace(tmp, root)
        finally:
            if os.path.islink(tmp):
                tmp.unlink()

    def recorded_link_dirs(self) -> list[Path]:
        roots = self.root / ROOTS_DIR
        if not roots.is_dir():
            return []
        return [Path(os.readlink(root)) for root in sorted(roots.iterdir()) if root.is_symlink()]

    def links(self, *, shadowed: bool = False) -> list[LinkRecord]:
        """Every name link in the link directories (the first directory wins for a name).

        `shadowed=True` also returns the links a directory earlier in the path hides, and the links in every
        directory the store has ever linked into (its gc roots), whatever `TRTLLM_ENGINE_PATH` says now: they
        all pin their targets against `gc`.

        Raises:
            StoreError: a link directory exists but cannot be read (gc cannot know what it links).
        """
        found: dict[str | Path, LinkRecord] = {}
        directories = list(engine_link_dirs())
        if shadowed:
            directories += [d for d in self.recorded_link_dirs() if d not in directories]
        for directory in directories:
            try:
                listing = sorted(directory.iterdir())
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                raise StoreError(
                    f"{directory}: cannot read the link directory: {exc.strerror or exc}"
                ) from None
            for link in listing:
                key = link if shadowed else link.name
                if link.name.startswith(".") or key in found or not link.is_symlink():
                    continue
                target = Path(os.path.realpath(link))
                found[key] = LinkRecord(name=link.name, link=link, target=target)
        return list(found.values())

    def holds(self, path: Path) -> bool:
        """Whether `path` is (or would be) a published entry of this store: every entry has a manifest."""
        return Path(os.path.realpath(path)).parent == Path(os.path.realpath(self.root))

    def verify(self, path: Path) -> VerifyReport:
        """Check the manifest describes this directory, then every file against it (type and size first, then
        sha256, reading only regular files and following no link); lists every problem, unlisted files and
        symlinks included."""
        path = Path(path)
        problems: list[str] = []
        if not os.path.lexists(path / MANIFEST) and not self.holds(path):
            # An engine built elsewhere: nothing to check its files against, only its layout.
            return VerifyReport(path, 0, tuple(structure_problems(path)), has_manifest=False)
        try:
            manifest = read_manifest(path)
        except StoreError as exc:
            if not is_engine_dir(path):
                problems.append(f"{ENGINE_CONFIG}: missing or not an engine config")
            return VerifyReport(path, 0, (*problems, str(exc)), has_manifest=False)
        problems.extend(identity_problems(path, manifest))
        root = Path(os.path.realpath(path))
        for relative, record in sorted(manifest.files.items()):
            problem = file_problem(root, relative, record, content=True)
            if problem:
                problems.append(problem)
        problems.extend(unlisted_problems(root, manifest))
        return VerifyReport(path, len(manifest.files), tuple(problems), has_manifest=True)

    # gc: planning and executing live in `trtforge.store.gc`; these are the store operations it uses

    def plan_gc(self) -> GcPlan:
        """Entries that no link points to, and abandoned build directories (whose lock is free)."""
        return plan_gc(self)

    def is_locked(self, digest: str) -> bool:
        """Whether a build of `digest` holds its lock right now."""
        try:
            with self.lock(digest, timeout_s=0):
                return False
        except Timeout:
            return True

    def _is_linked(self, path: Path) -> bool:
        target = path.resolve()
        return any(link.target == target for link in self.links(shadowed=True))

    def remove_entry(self, path: Path, digest: str, *, unless_linked: bool = False) -> int:
        """Delete an entry (or build directory) under its lock; returns the bytes freed (0: left alone).

        Renamed out of sight first (so nothing half-deleted looks like an engine), then deleted.
        `unless_linked`: keep the entry when a link points to it (checked under the lock).
        """
        try:
            with self.lock(digest, timeout_s=0):
                if unless_linked and self._is_linked(path):
                    return 0
                size = tree_size(path)
                trash = self.root / TMP_DIR / unique_name(digest, "deleting")
                trash.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.replace(path, trash)
                except FileNotFoundError:
                    return 0
                shutil.rmtree(trash, ignore_errors=True)
                return size
        except Timeout:
            return 0  # being built right now: leave it
