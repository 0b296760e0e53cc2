"""Reading directories we do not trust (checkpoints): regular files inside only, every read bounded.

A checkpoint comes from the internet. Its files may be symlinks to `/proc/self/environ` or `/etc/shadow`,
FIFOs that block a reader forever, devices that never end, or gigabyte "configs". So:

- a path is used only when it resolves to a regular file inside the checkpoint's root (a symlink is followed
  only when its target stays inside, and the target's content is what gets hashed or copied);
- FIFOs, devices, sockets and links leading outside are refused in one line naming the file;
- files are opened non-blocking and checked with `fstat` on the open descriptor (what is read is what was
  checked), and no more than a stated limit is ever read.

Every function raises the `error` class it is given (default `CheckpointError`), one line naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from trtforge.errors import CheckpointError, TrtforgeError

# config.json, hf_quant_config.json, tokenizer_config.json… are kilobytes; the largest real ones are a few MB.
JSON_CONFIG_LIMIT = 16 << 20
# model.safetensors.index.json maps every tensor to a shard: ~15 MB for the largest MoE checkpoints.
INDEX_LIMIT = 64 << 20
# The safetensors library refuses headers above 100 MB (`MAX_HEADER_SIZE`); so do we.
SAFETENSORS_HEADER_LIMIT = 100_000_000
# Tokenizer files and templates copied beside an engine (tokenizer.json of a 256k vocabulary is ~30 MB).
COPY_LIMIT = 256 << 20
_CHUNK = 4 << 20

ErrorType = type[TrtforgeError]


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


def inside(root: Path, relative: str | Path, *, error: ErrorType = CheckpointError) -> Path | None:
    """The real path of `root/relative` when it is a regular file inside `root`; None when it does not exist.

    `root` must already be resolved. A symlink (anywhere on the path) is followed only when the end result stays
    inside `root`.

    Raises:
        error: the path leads outside `root`, or is a FIFO, device, socket or directory.
    """
    candidate = root / relative
    shown = candidate
    try:
        os.lstat(candidate)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise error(f"{shown}: unreadable: {exc.strerror or exc}") from None
    real = Path(os.path.realpath(candidate))
    if real != root and root not in real.parents:
        raise error(f"{shown}: a link to {real}, outside {root}; refusing to read it")
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        return None  # a dangling link inside the checkpoint: as good as absent
    except OSError as exc:
        raise error(f"{shown}: unreadable: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise error(f"{shown}: {_kind(mode)}, not a regular file; refusing to read it")
    return real


def open_regular(
    path: Path, *, error: ErrorType = CheckpointError, shown: Path | None = None, follow: bool = True
) -> int:
    """A read-only descriptor for `path`, which must be a regular file (checked on the descriptor itself).

    Opened non-blocking, so a FIFO put in place of the file cannot hang the open; `follow=False` refuses a
    symlink as the last path component.
    """
    shown = shown or path
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise error(f"{shown}: file not found") from None
    except OSError as exc:
        if not follow and os.path.islink(path):
            raise error(f"{shown}: a symlink, not a regular file; refusing to read it") from None
        raise error(f"{shown}: unreadable: {exc.strerror or exc}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise error(f"{shown}: {_kind(mode)}, not a regular file; refusing to read it")
    return fd


def read_bounded(
    path: Path, limit: int, *, error: ErrorType = CheckpointError, what: str = "file", follow: bool = True
) -> bytes:
    """The whole content of regular file `path`, refusing files larger than `limit` bytes before reading."""
    fd = open_regular(path, error=error, follow=follow)
    with os.fdopen(fd, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            raise error(f"{path}: {what} of {size:,} bytes is larger than the {limit:,}-byte limit")
        data = handle.read(limit + 1)
    if len(data) > limit:  # grew while we read it
        raise error(f"{path}: {what} is larger than the {limit:,}-byte limit")
    return data


def parse_json_object(raw: bytes, path: Path, *, error: ErrorType = CheckpointError) -> dict[str, Any]:
    """Parse a JSON object from untrusted bytes: invalid, deeply nested or non-object JSON is one line."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: not valid JSON: {exc}") from None
    except RecursionError:
        raise error(f"{path}: not valid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object")
    return data


def read_json_object(
    path: Path, *, limit: int = JSON_CONFIG_LIMIT, error: ErrorType = CheckpointError
) -> dict[str, Any]:
    """`read_bounded` + `parse_json_object`."""
    return parse_json_object(read_bounded(path, limit, error=error, what="JSON file"), path, error=error)


def copy_bounded(
    source: Path, dest: Path, *, limit: int = COPY_LIMIT, error: ErrorType = CheckpointError
) -> None:
    """Copy regular file `source` to a new file `dest` (mode 0644 from the umask, never the source's)."""
    data = read_bounded(source, limit, error=error)
    dest.write_bytes(data)


def checkpoint_root(directory: Path) -> Path:
    """The directory a checkpoint's links may point into: the checkpoint itself, or for a Hugging Face cache
    snapshot (`models--org--name/snapshots/<sha>/`, whose files are links to `../../blobs/`) its repository
    folder. `directory` must be resolved."""
    parent = directory.parent
    if parent.name == "snapshots" and parent.parent.name.startswith("models--"):
        return parent.parent
    return directory


def walk_files(
    root: Path, *, error: ErrorType = CheckpointError, confine: Path | None = None
) -> Iterator[tuple[str, Path]]:
    """Every file of the tree at `root` (resolved) as (relative path, real path), sorted by relative path.

    Symlinks are followed only when they stay inside `confine` (default `root`); a link to a directory is not
    descended (inside, the files it shows are listed under their real path).

    Raises:
        error: a FIFO, device or socket, or a link leading outside `root`.
    """
    confine = confine or root
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        names = sorted(filenames + [d for d in dirnames if os.path.islink(base / d)])
        dirnames[:] = [d for d in dirnames if not os.path.islink(base / d)]
        for name in names:
            path = base / name
            relative = path.relative_to(root).as_posix()
            real = Path(os.path.realpath(path))
            if real != confine and confine not in real.parents:
                raise error(f"{path}: a link to {real}, outside {confine}; refusing to read it")
            try:
                mode = os.stat(real).st_mode
            except OSError:
                continue  # dangling link: nothing to read
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise error(f"{path}: {_kind(mode)}, not a regular file; refusing to read it")
            yield relative, real


def sha256_regular(
    path: Path, *, error: ErrorType = CheckpointError, shown: Path | None = None, follow: bool = True
) -> str:
    """The sha256 of regular file `path`, read through a descriptor checked to be a regular file."""
    with os.fdopen(open_regular(path, error=error, shown=shown, follow=follow), "rb") as handle:
        return sha256_handle(handle)


def sha256_handle(handle: BinaryIO) -> str:
    """The sha256 of what is left to read from an open file."""
    digest = hashlib.sha256()
    while chunk := handle.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


# (real path, path to show in errors) -> sha256 of the file's content.
FileHasher = Callable[[Path, Path], str]


def hash_tree(
    root: Path, *, error: ErrorType = CheckpointError, file_sha256: FileHasher | None = None
) -> str:
    """A content hash of the tree at `root`: relative paths and the content of every file (links by target).

    `file_sha256` hashes one file (default: `sha256_regular`); a cache can answer without reading it.
    """
    root = Path(os.path.realpath(root))

    def read_and_hash(real: Path, shown: Path) -> str:
        return sha256_regular(real, error=error, shown=shown)

    hasher = file_sha256 or read_and_hash
    digest = hashlib.sha256()
    for relative, real in walk_files(root, error=error, confine=checkpoint_root(root)):
        digest.update(f"{relative}\0{hasher(real, root / relative)}\n".encode())
    return digest.hexdigest()
