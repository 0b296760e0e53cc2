"""Ed25519 signatures over cached store entries, in the style of Nix's signed store paths.

A key is named: the secret file holds `NAME:<base64 32-byte seed>`, the public key is `NAME:<base64 32 bytes>`.
A signature covers the entry's hash and the sha256 of its manifest bytes exactly as stored in the cache, and
the manifest lists the size and sha256 of every file: one signature vouches for every byte of the entry.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import BaseModel, ConfigDict

from trtforge.errors import CacheTrustError, UsageError

KEY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_DOMAIN = b"trtforge-cache-signature-v1\0"
_MAX_KEY_FILE = 4096


@dataclass(frozen=True)
class PublicKey:
    name: str
    key: Ed25519PublicKey

    def __str__(self) -> str:
        return f"{self.name}:{base64.b64encode(_public_bytes(self.key)).decode()}"


@dataclass(frozen=True)
class SecretKey:
    name: str
    key: Ed25519PrivateKey

    @property
    def public(self) -> PublicKey:
        return PublicKey(self.name, self.key.public_key())


class Signature(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    sig: str


class Signatures(BaseModel):
    """The `<hash>/signatures.json` object next to a cached manifest."""

    model_config = ConfigDict(extra="ignore")

    signatures: list[Signature] = []


def _public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _message(digest: str, manifest_bytes: bytes) -> bytes:
    return _DOMAIN + digest.encode() + b"\0" + hashlib.sha256(manifest_bytes).hexdigest().encode()


def _split(text: str, what: str) -> tuple[str, bytes]:
    name, sep, encoded = text.strip().partition(":")
    if not sep or not KEY_NAME_RE.match(name):
        raise UsageError(f"{what}: expected NAME:<base64>, got {text.strip()[:40]!r}")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise UsageError(f"{what}: {name}: not valid base64") from None
    if len(raw) != 32:
        raise UsageError(f"{what}: {name}: an ed25519 key is 32 bytes, this one is {len(raw)}")
    return name, raw


def parse_public_key(text: str) -> PublicKey:
    """`NAME:<base64>` as printed by `trtforge key generate` (raises UsageError in one line)."""
    name, raw = _split(text, "trusted public key")
    return PublicKey(name, Ed25519PublicKey.from_public_bytes(raw))


def parse_public_keys(texts: list[str]) -> list[PublicKey]:
    return [parse_public_key(text) for text in texts if text.strip()]


def generate_key(name: str, directory: Path) -> tuple[Path, Path, SecretKey]:
    """Write `NAME.secret` (mode 0600) and `NAME.public` into `directory`; refuses to overwrite either."""
    if not KEY_NAME_RE.match(name):
        raise UsageError(
            f"{name!r}: a key name uses letters, digits, '.', '_', '-' (e.g. cache.example.org-1)"
        )
    secret_path, public_path = directory / f"{name}.secret", directory / f"{name}.public"
    for path in (secret_path, public_path):
        if path.exists():
            raise UsageError(f"{path}: exists; refusing to overwrite a key")
    secret = SecretKey(name, Ed25519PrivateKey.generate())
    seed = secret.key.private_bytes_raw()
    fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{name}:{base64.b64encode(seed).decode()}\n")
    public_path.write_text(f"{secret.public}\n")
    return secret_path, public_path, secret


def load_secret_key(path: Path) -> SecretKey:
    try:
        with open(path) as handle:
            text = handle.read(_MAX_KEY_FILE)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read signing key: {exc.strerror or exc}") from None
    name, raw = _split(text, f"signing key {path}")
    return SecretKey(name, Ed25519PrivateKey.from_private_bytes(raw))


def sign(secret: SecretKey, digest: str, manifest_bytes: bytes) -> Signature:
    raw = secret.key.sign(_message(digest, manifest_bytes))
    return Signature(key=secret.name, sig=base64.b64encode(raw).decode())


def check_trusted(
    digest: str, manifest_bytes: bytes, signatures: Signatures | None, trusted: list[PublicKey]
) -> str:
    """The name of a trusted key that signed this manifest, else CacheTrustError saying why not."""
    if signatures is None or not signatures.signatures:
        raise CacheTrustError(f"{digest}: the cached entry is unsigned (pass --allow-unsigned to accept it)")
    if not trusted:
        names = ", ".join(sorted({s.key for s in signatures.signatures}))
        raise CacheTrustError(
            f"{digest}: signed by {names}, but no trusted_public_keys are configured "
            "([cache] in engines.toml or $TRTFORGE_TRUSTED_KEYS)"
        )
    message = _message(digest, manifest_bytes)
    by_name = {key.name: key for key in trusted}
    for signature in signatures.signatures:
        key = by_name.get(signature.key)
        if key is None:
            continue
        try:
            key.key.verify(base64.b64decode(signature.sig, validate=True), message)
        except (InvalidSignature, binascii.Error, ValueError):
            raise CacheTrustError(
                f"{digest}: the signature by {signature.key} does not match the manifest (tampered or wrong key)"
            ) from None
        return key.name
    names = ", ".join(sorted({s.key for s in signatures.signatures}))
    raise CacheTrustError(f"{digest}: signed only by keys that are not trusted ({names})")
