"""The manifest format (`trtforge.json`): what went into a store entry, what came out, and checks against it.

Every published entry carries one. `BuildInputs` are what determines an engine's bytes; their digest is the
entry's hash and names its directory (`entry_dir_name`). The manifest lists every file (size + sha256) so an
entry can be verified, pushed and pulled file by file. The store (`trtforge.store`), the binary caches
(`trtforge.cache`) and the compatibility gate (`trtforge.triton.compat`) read it here, so none of them needs
another for the format.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from trtforge.atomic import write_text_atomic
from trtforge.engine import MANIFEST, EngineBackend
from trtforge.errors import StoreError
from trtforge.untrusted import read_bounded, sha256_regular

MANIFEST_FORMAT = 1
HASH_CHARS = 32
ENTRY_INFIX = "-trtllm-engine-"
_CHUNK = 4 << 20
# A manifest lists a few files per rank; even a TP×PP = 8 engine's is a few kilobytes.
MANIFEST_LIMIT = 16 << 20


def entry_dir_name(digest: str, name: str, version: str) -> str:
    """`<hash>-trtllm-engine-<name>-<version>`: the directory name of the entry a manifest describes."""
    safe_version = re.sub(r"[^A-Za-z0-9._+-]", "_", version)[:64]  # bounded, like names
    return f"{digest}{ENTRY_INFIX}{name}-{safe_version}"


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


# --- the format --------------------------------------------------------------------------------------------


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

    @field_validator("files")
    @classmethod
    def _check_paths(cls, files: dict[str, FileRecord]) -> dict[str, FileRecord]:
        for relative in files:
            if not is_clean_relative(relative) or relative == MANIFEST:
                raise ValueError(f"file path {relative!r} is not a normalised relative path inside the entry")
        return files


def is_clean_relative(relative: str) -> bool:
    """`a/b.c`, never `/a`, `a/../b`, `./a`, `a//b` or a backslash: a path that can only name a file inside."""
    parts = relative.split("/")
    return (
        all(part not in ("", ".", "..") for part in parts) and "\\" not in relative and "\0" not in relative
    )


FileIdentity = tuple[int, int, int, int, int]


def file_identity(path: Path) -> FileIdentity:
    """(device, inode, size, mtime ns, ctime ns) of `path` itself: any write, truncation, rename onto it or
    replacement changes at least one of them."""
    info = os.lstat(path)
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


@dataclass(frozen=True)
class HashedFile:
    """A file hashed before its manifest is written (e.g. while it was moved into the entry), and its identity
    when it was: `record_files` uses the record only if the file is still that file, unchanged."""

    record: FileRecord
    identity: FileIdentity


def record_files(root: Path, *, known: Mapping[str, HashedFile] | None = None) -> dict[str, FileRecord]:
    """Size and sha256 of every file under `root` but the manifest; a file in `known` (by relative path) whose
    identity is unchanged is not read again."""
    records: dict[str, FileRecord] = {}
    for path in iter_files(root, exclude=[MANIFEST]):
        relative = path.relative_to(root).as_posix()
        hashed = (known or {}).get(relative)
        if hashed is not None and file_identity(path) == hashed.identity:
            records[relative] = hashed.record
        else:
            records[relative] = FileRecord(size=path.stat().st_size, sha256=sha256_file(path))
    return records


def write_manifest(
    entry_dir: Path,
    *,
    name: str,
    digest: str,
    backend: EngineBackend,
    inputs: BuildInputs,
    timings: dict[str, float],
    command: list[str] | None = None,
    known: Mapping[str, HashedFile] | None = None,
) -> Manifest:
    """Write `trtforge.json` listing every file of `entry_dir` (`known`: files already hashed, see `record_files`)."""
    manifest = Manifest(
        name=name,
        hash=digest,
        backend=backend,
        builder_version=inputs.builder_version,
        inputs=inputs.to_json(),
        files=record_files(entry_dir, known=known),
        timings={key: round(value, 3) for key, value in timings.items()},
        command=command or [],
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    write_text_atomic(entry_dir / MANIFEST, manifest.model_dump_json(indent=2) + "\n")
    return manifest


def read_manifest(entry_dir: Path) -> Manifest:
    """The entry's manifest: a regular file (not a link), bounded in size, every file path inside the entry."""
    path = entry_dir / MANIFEST
    if not os.path.lexists(path):
        raise StoreError(f"{entry_dir}: no {MANIFEST}")
    raw = read_bounded(path, MANIFEST_LIMIT, error=StoreError, what="manifest", follow=False)
    try:
        return Manifest.model_validate_json(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        raise StoreError(f"{path}: unreadable manifest: {where}: {message}") from None
    except ValueError as exc:
        raise StoreError(f"{path}: unreadable manifest: {str(exc).splitlines()[0]}") from None


# --- a directory against its manifest ----------------------------------------------------------------------


def identity_problems(entry_dir: Path, manifest: Manifest) -> list[str]:
    """Why the manifest does not describe this directory: its name, recorded hash and inputs must agree.

    The directory name is `<hash>-trtllm-engine-<name>-<version>` of the manifest's own fields, and the hash is
    recomputed from the recorded inputs: a directory renamed to another hash, or a manifest copied from another
    entry, is caught.
    """
    problems: list[str] = []
    expected = entry_dir_name(manifest.hash, manifest.name, manifest.builder_version)
    if entry_dir.name != expected:
        problems.append(f"{MANIFEST}: describes {expected}, not {entry_dir.name}")
    inputs = manifest.inputs
    try:
        digest = BuildInputs(
            spec=dict(inputs["spec"]),
            model_revision=str(inputs["model_revision"]),
            builder_version=str(inputs["builder_version"]),
            gpu_arch=str(inputs["gpu_arch"]),
        ).digest()
    except (KeyError, TypeError, ValueError):
        return [*problems, f"{MANIFEST}: inputs are incomplete"]
    if digest != manifest.hash:
        problems.append(f"{MANIFEST}: its inputs hash to {digest}, not to the recorded {manifest.hash}")
    if inputs["spec"].get("name") != manifest.name:
        problems.append(
            f"{MANIFEST}: its inputs are for {inputs['spec'].get('name')!r}, not {manifest.name!r}"
        )
    return problems


def file_problem(root: Path, relative: str, record: FileRecord, *, content: bool) -> str | None:
    """What is wrong with one listed file of an entry (`root` resolved), reading only a regular file.

    `content=False` checks type and size only (cheap: the cache-hit check); True also compares the sha256.
    """
    file = root / relative
    if os.path.islink(file):
        return f"{relative}: swapped for a symlink (to {os.readlink(file)})"
    if os.path.realpath(file) != str(file):
        return f"{relative}: reached through a symlinked directory"
    try:
        info = os.lstat(file)
    except FileNotFoundError:
        return f"{relative}: missing"
    except OSError as exc:
        return f"{relative}: unreadable: {exc.strerror or exc}"
    if not stat.S_ISREG(info.st_mode):
        return f"{relative}: not a regular file"
    if info.st_size != record.size:
        kind = "truncated" if info.st_size < record.size else "grown"
        return f"{relative}: {kind} ({info.st_size} bytes, expected {record.size})"
    if content:
        try:
            if sha256_regular(file, error=StoreError, follow=False) != record.sha256:
                return f"{relative}: changed (sha256 differs)"
        except StoreError as exc:
            return f"{relative}: {str(exc).split(': ', 1)[-1]}"
    return None


def unlisted_problems(root: Path, manifest: Manifest) -> list[str]:
    """Files, links and special files in the entry that its manifest does not list (nothing is followed)."""
    problems: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in sorted([*filenames, *(d for d in dirnames if os.path.islink(base / d))]):
            path = base / name
            relative = path.relative_to(root).as_posix()
            if relative == MANIFEST or relative in manifest.files:
                continue
            if os.path.islink(path):
                problems.append(f"{relative}: added symlink (to {os.readlink(path)})")
            elif not stat.S_ISREG(os.lstat(path).st_mode):
                problems.append(f"{relative}: not a regular file, not in the manifest")
            else:
                problems.append(f"{relative}: not in the manifest")
    return problems
