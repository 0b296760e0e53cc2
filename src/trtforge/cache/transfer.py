"""Moving store entries to and from binary caches: `push_entry`, `pull_entry`, `substitute`.

A pull trusts nothing it downloads: the signature is checked over the manifest bytes (unless unsigned entries
are allowed), the manifest must hash to the requested store hash, every relative path must stay inside the
entry, and every file's size and sha256 are checked while it streams. The files land in
`store/tmp/<hash>.pull.incomplete/` under the hash's lock and are published by the store's own atomic rename,
so a failed pull publishes nothing. That directory is kept when a pull is interrupted: the next pull re-hashes
what is already there (local disk, no network) and downloads only the rest.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from trtforge.cache.config import CacheConfig
from trtforge.cache.objects import (
    MANIFEST_OBJECT,
    PART_SIZE,
    SIGNATURES_OBJECT,
    ObjectCache,
    entry_key,
    file_key,
)
from trtforge.cache.signing import (
    SecretKey,
    Signatures,
    check_trusted,
    parse_public_keys,
    sign,
)
from trtforge.engine import MANIFEST
from trtforge.errors import CacheError, CacheIntegrityError, CacheTrustError, StoreError
from trtforge.manifest import (
    HASH_CHARS,
    MANIFEST_LIMIT,
    Manifest,
    entry_dir_name,
    identity_problems,
    read_manifest,
    unlisted_problems,
)
from trtforge.progress import NullProgress, TransferProgress
from trtforge.store.entries import EngineStore
from trtforge.store.links import link_engine
from trtforge.untrusted import read_bounded


@dataclass(frozen=True)
class TransferResult:
    """What a push or pull did (`--json`)."""

    name: str
    hash: str
    url: str
    files: int
    total_bytes: int
    transferred_bytes: int  # bytes sent or received over the network this time (0: nothing to do)
    path: Path | None = None  # the local store entry
    link: Path | None = None
    signed_by: str | None = None
    already_present: bool = False  # pull: already in the local store; push: already in the cache

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "hash": self.hash,
            "url": self.url,
            "path": None if self.path is None else str(self.path),
            "link": None if self.link is None else str(self.link),
            "files": self.files,
            "total_bytes": self.total_bytes,
            "transferred_bytes": self.transferred_bytes,
            "signed_by": self.signed_by,
            "already_present": self.already_present,
        }


# --- push --------------------------------------------------------------------------------------------------


def push_entry(
    entry_path: Path,
    url: str,
    *,
    secret: SecretKey | None = None,
    progress: TransferProgress | None = None,
) -> TransferResult:
    """Upload a published store entry (every file, then its signatures, then its manifest) to `url`.

    Each file is hashed as it is read for the upload; a file that no longer matches the manifest is deleted
    from the cache again and the manifest is never written, so pullers never see the entry.

    Raises:
        StoreError: not a store entry, or its manifest does not match its store hash.
        CacheIntegrityError: a local file changed since the entry was built (run `trtforge verify`).
        CacheError: the cache cannot be written.
    """
    progress = progress or NullProgress()
    problems = EngineStore(entry_path.parent).entry_problems(entry_path)
    if problems:
        raise StoreError(f"{entry_path}: not a sound store entry, not pushed: {'; '.join(problems[:3])}")
    manifest_bytes = read_bounded(
        entry_path / MANIFEST, MANIFEST_LIMIT, error=StoreError, what="manifest", follow=False
    )
    manifest = read_manifest(entry_path)
    digest = manifest.hash
    cache = ObjectCache.open(url)
    total = sum(record.size for record in manifest.files.values())
    signatures = _merged_signatures(cache, digest, manifest_bytes, secret)
    already = cache.read_small(entry_key(digest, MANIFEST_OBJECT)) == manifest_bytes
    sent = 0
    if not already:
        progress.start(f"push {manifest.name}", total)
        for relative, record in sorted(manifest.files.items()):
            key = file_key(digest, relative)
            hasher = _UploadHasher(entry_path / relative, progress)
            if record.size <= PART_SIZE:  # one PUT: no multipart round trips for the many small files
                cache.write_small(key, b"".join(hasher.chunks()))
            else:
                cache.upload(key, hasher.chunks(), record.size)
            sent += hasher.size
            if hasher.size != record.size or hasher.sha256 != record.sha256:
                cache.delete(key)
                raise CacheIntegrityError(
                    f"{entry_path / relative}: does not match the entry's manifest (changed since it was built); "
                    "nothing was published to the cache — run `trtforge verify`"
                )
    if signatures is not None:
        cache.write_small(entry_key(digest, SIGNATURES_OBJECT), signatures.model_dump_json().encode())
    if not already:
        cache.write_small(entry_key(digest, MANIFEST_OBJECT), manifest_bytes)
    return TransferResult(
        name=manifest.name,
        hash=digest,
        url=url,
        files=len(manifest.files),
        total_bytes=total,
        transferred_bytes=sent,
        path=entry_path,
        signed_by=secret.name if secret else None,
        already_present=already,
    )


class _UploadHasher:
    """A file as upload chunks, hashed and counted on the way out."""

    def __init__(self, path: Path, progress: TransferProgress) -> None:
        self.path = path
        self.progress = progress
        self.size = 0
        self._digest = hashlib.sha256()

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def chunks(self) -> Iterator[bytes]:
        # A missing or unreadable file surfaces as OSError through the upload; the caller reports it.
        with open(self.path, "rb") as handle:
            while chunk := handle.read(PART_SIZE):
                self._digest.update(chunk)
                self.size += len(chunk)
                self.progress.advance(len(chunk))
                yield chunk


def _merged_signatures(
    cache: ObjectCache, digest: str, manifest_bytes: bytes, secret: SecretKey | None
) -> Signatures | None:
    """The cache's signatures for this manifest plus ours (None: nothing to write)."""
    if secret is None:
        return None
    existing = Signatures()
    raw = cache.read_small(entry_key(digest, SIGNATURES_OBJECT))
    current = cache.read_small(entry_key(digest, MANIFEST_OBJECT))
    if raw is not None and current == manifest_bytes:  # signatures of another manifest are not kept
        try:
            existing = Signatures.model_validate_json(raw)
        except ValidationError:
            existing = Signatures()
    mine = sign(secret, digest, manifest_bytes)
    kept = [s for s in existing.signatures if s.key != secret.name]
    return Signatures(signatures=[*kept, mine])


# --- pull --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CachedEntry:
    """A manifest fetched from a cache and checked: trusted (or allowed unsigned) and matching its hash."""

    cache: ObjectCache
    digest: str
    manifest: Manifest
    manifest_bytes: bytes
    signed_by: str | None

    @property
    def total_bytes(self) -> int:
        return sum(record.size for record in self.manifest.files.values())


def lookup(
    cache: ObjectCache, digest: str, *, trusted: list[str], allow_unsigned: bool
) -> CachedEntry | None:
    """The checked manifest of `digest` in `cache`, or None when the cache does not have it.

    Raises:
        CacheTrustError: unsigned, or not signed by a trusted key (and unsigned entries are not allowed).
        CacheIntegrityError: the manifest is malformed, names another hash, or its inputs hash to another.
    """
    manifest_bytes = cache.read_small(entry_key(digest, MANIFEST_OBJECT))
    if manifest_bytes is None:
        return None
    raw_signatures = cache.read_small(entry_key(digest, SIGNATURES_OBJECT))
    signatures: Signatures | None = None
    if raw_signatures is not None:
        try:
            signatures = Signatures.model_validate_json(raw_signatures)
        except ValidationError:
            if not allow_unsigned:
                raise CacheTrustError(f"{digest}: {cache.url}: malformed {SIGNATURES_OBJECT}") from None
    signed_by: str | None = None
    if not allow_unsigned:
        signed_by = check_trusted(digest, manifest_bytes, signatures, parse_public_keys(trusted))
    try:
        manifest = Manifest.model_validate_json(manifest_bytes)
    except (ValidationError, ValueError) as exc:
        detail = str(exc).splitlines()[-1].strip() if isinstance(exc, ValidationError) else "not JSON"
        raise CacheIntegrityError(
            f"{digest}: {cache.url}: the cached manifest is invalid: {detail}"
        ) from None
    if manifest.hash != digest:
        raise CacheIntegrityError(f"{digest}: {cache.url}: the cached manifest is for hash {manifest.hash}")
    # The store's own identity checks, against the directory this manifest would be published as.
    problems = identity_problems(
        Path(entry_dir_name(digest, manifest.name, manifest.builder_version)), manifest
    )
    if problems:
        raise CacheIntegrityError(f"{digest}: {cache.url}: {'; '.join(problems)}")
    return CachedEntry(cache, digest, manifest, manifest_bytes, signed_by)


def install(store: EngineStore, found: CachedEntry, progress: TransferProgress) -> tuple[Path, int]:
    """Download, verify and publish a checked cached entry; returns (store path, bytes downloaded).

    The caller holds the hash's lock and has checked that the store does not already have the entry.
    """
    staging = store.resumable_incomplete(found.digest, "pull")
    received = 0
    try:
        progress.start(f"pull {found.manifest.name}", found.total_bytes)
        _remove_strays(staging, set(found.manifest.files))
        for relative, record in sorted(found.manifest.files.items()):
            received += _fetch_file(found, relative, record.size, record.sha256, staging / relative, progress)
        (staging / MANIFEST).write_bytes(found.manifest_bytes)
        stray = unlisted_problems(staging, found.manifest)
        if stray:
            raise StoreError(f"{staging}: {'; '.join(stray[:3])}")
        final = store.entry_path(found.digest, found.manifest.name, found.manifest.builder_version)
        published = store.publish(staging, final)
    except (CacheIntegrityError, StoreError):
        shutil.rmtree(staging, ignore_errors=True)  # bad bytes are never resumed
        raise
    return published, received


def _fetch_file(
    found: CachedEntry, relative: str, size: int, sha256: str, dest: Path, progress: TransferProgress
) -> int:
    """Bring `dest` to `size` bytes from the cache (resuming), checking size and sha256; returns bytes fetched."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    have = 0
    if dest.is_file() and not dest.is_symlink():
        have = dest.stat().st_size
        if have > size:
            dest.unlink()
            have = 0
        else:
            with open(dest, "rb") as handle:  # what an interrupted pull left: re-hash it, do not re-fetch it
                while block := handle.read(PART_SIZE):
                    digest.update(block)
            progress.advance(have)
    received = 0
    if have < size:
        key = file_key(found.digest, relative)
        # Hash each chunk here while a writer thread appends the previous one: both release the GIL, so on a
        # busy machine verification overlaps the disk instead of adding to it (measured: docs/benchmarks.md).
        with open(dest, "ab") as handle, ThreadPoolExecutor(1, thread_name_prefix="trtforge-write") as writer:
            pending: Future[int] | None = None
            for chunk in found.cache.download(key, have):
                if have + len(chunk) > size:
                    raise CacheIntegrityError(
                        f"{found.digest}: {relative}: the cached object is larger than the manifest says "
                        f"({size} bytes); nothing was published"
                    )
                written = writer.submit(handle.write, chunk)
                digest.update(chunk)
                have += len(chunk)
                received += len(chunk)
                progress.advance(len(chunk))
                if pending is not None:
                    pending.result()
                pending = written
            if pending is not None:
                pending.result()
    if have != size:
        raise CacheIntegrityError(
            f"{found.digest}: {relative}: the cached object is truncated ({have} of {size} bytes); "
            "nothing was published"
        )
    if digest.hexdigest() != sha256:
        raise CacheIntegrityError(
            f"{found.digest}: {relative}: sha256 differs from the signed manifest (tampered or corrupt); "
            "nothing was published"
        )
    return received


def _remove_strays(staging: Path, wanted: set[str]) -> None:
    """Files a previous pull of a different manifest (same hash) left behind would not be in this one."""
    for path in sorted(staging.rglob("*"), reverse=True):
        relative = path.relative_to(staging).as_posix()
        if path.is_symlink() or (path.is_file() and relative not in wanted):
            path.unlink()
        elif path.is_dir() and not any(name.startswith(f"{relative}/") for name in wanted):
            shutil.rmtree(path, ignore_errors=True)


def pull_entry(
    name: str,
    digest: str,
    url: str,
    *,
    trusted: list[str],
    allow_unsigned: bool = False,
    link: bool = True,
    store: EngineStore | None = None,
    progress: TransferProgress | None = None,
) -> TransferResult:
    """Fetch store hash `digest` from `url` into the local store (once, under the hash's lock) and link `name`.

    Raises:
        CacheError: the cache does not have it or cannot be read; CacheTrustError / CacheIntegrityError as
            `lookup` and `install` raise them (nothing published either way).
    """
    store = store or EngineStore()
    progress = progress or NullProgress()
    cache = ObjectCache.open(url)
    found = lookup(cache, digest, trusted=trusted, allow_unsigned=allow_unsigned)
    if found is None:
        raise CacheError(f"{url}: has no entry {digest} for {name!r}")
    with store.lock(digest):
        existing = store.find(digest)
        if existing is not None:
            path, received, already = existing, 0, True
        else:
            path, received = install(store, found, progress)
            already = False
    link_path = link_engine(name, path, store=store) if link else None
    return TransferResult(
        name=name,
        hash=digest,
        url=url,
        files=len(found.manifest.files),
        total_bytes=found.total_bytes,
        transferred_bytes=received,
        path=path,
        link=link_path,
        signed_by=found.signed_by,
        already_present=already,
    )


def substitute(
    store: EngineStore,
    digest: str,
    config: CacheConfig,
    *,
    allow_unsigned: bool = False,
    progress: TransferProgress | None = None,
    warn: Any = None,
) -> tuple[Path, str] | None:
    """Try each substituter in order for `digest`; returns (store path, URL) on a hit, else None.

    The caller holds the hash's lock. An unreachable cache is skipped with a warning; an entry that is present
    but untrusted or corrupt stops the build (it is not silently replaced by a local build).
    """
    progress = progress or NullProgress()
    for url in config.substituters:
        try:
            found = lookup(
                ObjectCache.open(url),
                digest,
                trusted=config.trusted_public_keys,
                allow_unsigned=allow_unsigned,
            )
        except (CacheTrustError, CacheIntegrityError):
            raise
        except CacheError as exc:
            if warn is not None:
                warn(f"substituter skipped: {exc}")
            continue
        if found is None:
            continue
        path, _received = install(store, found, progress)
        return path, url
    return None


def is_store_hash(text: str) -> bool:
    return len(text) == HASH_CHARS and all(c in "0123456789abcdef" for c in text)
