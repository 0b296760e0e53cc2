"""A binary cache's objects, over obstore: `s3://bucket/prefix` (any S3-compatible service) and `file:///path`.

Layout under the URL (one folder per store hash; the manifest is written last, so a half-pushed entry is
invisible to pullers):

    <hash>/files/<relative path>     every file of the entry, byte for byte
    <hash>/signatures.json           ed25519 signatures over the manifest (optional)
    <hash>/trtforge.json             the entry's manifest (sizes + sha256 of every file)
"""

from __future__ import annotations

import configparser
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import obstore
from obstore.store import LocalStore, S3Store

from trtforge.constants import aws_config_file, aws_profile, aws_shared_credentials_file, aws_variables
from trtforge.errors import CacheError, UsageError

PART_SIZE = 8 << 20  # smallest multipart part (and local read size): upload memory is parts × concurrency
UPLOAD_CONCURRENCY = 8
MAX_PARTS = 9000  # S3 allows 10,000 parts per object; keep a margin
MANIFEST_OBJECT = "trtforge.json"
SIGNATURES_OBJECT = "signatures.json"
FILES_PREFIX = "files"
DOWNLOAD_CHUNK = 8 << 20
READ_AHEAD = 4
_END = object()
MAX_SMALL_OBJECT = 16 << 20  # manifests and signatures are read whole: refuse anything larger
# A 20 GB file takes minutes: no limit on the whole request, but a connection silent this long is dead.
WHOLE_REQUEST_TIMEOUT = "7d"
STALL_TIMEOUT = "120s"


@dataclass
class ObjectCache:
    """One cache URL and the obstore store behind it."""

    url: str
    store: Any  # obstore's S3Store or LocalStore

    @staticmethod
    def open(url: str) -> ObjectCache:
        """An `ObjectCache` for `s3://bucket/prefix` or `file:///path` (raises UsageError for anything else)."""
        parsed = urlparse(url)
        if parsed.scheme == "s3":
            if not parsed.netloc:
                raise UsageError(f"{url}: an S3 cache URL is s3://bucket/prefix")
            prefix = parsed.path.strip("/") or None
            config = s3_config()
            client: dict[str, Any] = {"timeout": WHOLE_REQUEST_TIMEOUT, "read_timeout": STALL_TIMEOUT}
            if config.get("endpoint", "").startswith("http://"):
                client["allow_http"] = True  # a cluster-local SeaweedFS or MinIO
            store = S3Store(parsed.netloc, prefix=prefix, config=config, client_options=client)  # type: ignore[arg-type]
            return ObjectCache(url, store)
        if parsed.scheme == "file":
            if parsed.netloc not in ("", "localhost"):
                raise UsageError(f"{url}: a file cache URL is file:///absolute/path")
            root = Path(unquote(parsed.path))
            if not root.is_absolute():
                raise UsageError(f"{url}: a file cache URL is file:///absolute/path")
            root.mkdir(parents=True, exist_ok=True)
            return ObjectCache(url, LocalStore(root))
        raise UsageError(f"{url}: a cache URL is s3://bucket/prefix or file:///path")

    # small objects

    def read_small(self, key: str) -> bytes | None:
        """A manifest-sized object, or None when it does not exist."""
        try:
            result = obstore.get(self.store, key)
            if result.meta["size"] > MAX_SMALL_OBJECT:
                raise CacheError(f"{self.url}/{key}: {result.meta['size']} bytes, too large for a manifest")
            return bytes(result.bytes())
        except FileNotFoundError:
            return None
        except (CacheError, UsageError):
            raise
        except Exception as exc:
            raise self._error("read", key, exc) from None

    def write_small(self, key: str, data: bytes) -> None:
        try:
            obstore.put(self.store, key, data)
        except Exception as exc:
            raise self._error("write", key, exc) from None

    def size(self, key: str) -> int | None:
        try:
            return int(obstore.head(self.store, key)["size"])
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise self._error("look up", key, exc) from None

    def delete(self, key: str) -> None:
        try:
            obstore.delete(self.store, key)
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise self._error("delete", key, exc) from None

    # large objects

    def upload(self, key: str, chunks: Iterable[bytes], size: int) -> None:
        """Stream `chunks` (`size` bytes in all) into `key`: parallel multipart parts, a single PUT when small."""
        try:
            obstore.put(
                self.store, key, chunks, chunk_size=part_size(size), max_concurrency=UPLOAD_CONCURRENCY
            )
        except CacheError:
            raise
        except Exception as exc:
            raise self._error("upload", key, exc) from None

    def download(self, key: str, offset: int = 0) -> Iterator[memoryview]:
        """The bytes of `key` from `offset` on, in chunks of `DOWNLOAD_CHUNK` bytes or so.

        A background thread receives up to `READ_AHEAD` chunks ahead, so the network keeps flowing while the
        caller hashes and writes (both release the GIL): memory stays bounded at READ_AHEAD + 1 chunks.
        """
        chunks: queue.Queue[object] = queue.Queue(maxsize=READ_AHEAD)
        stop = threading.Event()

        def hand_over(item: object) -> bool:
            while not stop.is_set():
                try:
                    chunks.put(item, timeout=0.5)
                    return True
                except queue.Full:
                    continue
            return False

        def receive() -> None:
            options: dict[str, Any] = {"range": {"offset": offset}} if offset else {}
            try:
                result = obstore.get(self.store, key, options=options)  # type: ignore[arg-type]
                for chunk in result.stream(min_chunk_size=DOWNLOAD_CHUNK):
                    if not hand_over(chunk):
                        return
            except BaseException as exc:
                hand_over(exc)
                return
            hand_over(_END)

        thread = threading.Thread(target=receive, name=f"trtforge-download {key}", daemon=True)
        thread.start()
        try:
            while (item := chunks.get()) is not _END:
                if isinstance(item, FileNotFoundError):
                    raise CacheError(f"{self.url}/{key}: missing from the cache (a partial push?)")
                if isinstance(item, BaseException):
                    raise self._error("download", key, item)
                yield memoryview(item)  # type: ignore[arg-type]
        finally:
            stop.set()  # the receiver ends at its next chunk (or its stall timeout); never waited on here

    def _error(self, what: str, key: str, exc: BaseException) -> CacheError:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        if len(detail) > 600:  # keep the request and the cause at the end (the server's answer)
            detail = f"{detail[:250]} … {detail[-350:]}"
        return CacheError(f"{self.url}: cannot {what} {key}: {detail}")


def part_size(size: int) -> int:
    """`PART_SIZE`, grown in whole MiB for files so large that S3's 10,000-part limit would be reached."""
    needed = -(-size // MAX_PARTS)
    return max(PART_SIZE, -(-needed // (1 << 20)) * (1 << 20))


def entry_key(digest: str, name: str) -> str:
    return f"{digest}/{name}"


def file_key(digest: str, relative: str) -> str:
    return f"{digest}/{FILES_PREFIX}/{relative}"


# --- S3 configuration: the usual AWS variables, then ~/.aws/config and ~/.aws/credentials ---------------


_ENV_KEYS = {
    "AWS_ENDPOINT_URL_S3": "endpoint",
    "AWS_ENDPOINT_URL": "endpoint",
    "AWS_ACCESS_KEY_ID": "access_key_id",
    "AWS_SECRET_ACCESS_KEY": "secret_access_key",
    "AWS_SESSION_TOKEN": "token",
    "AWS_REGION": "region",
    "AWS_DEFAULT_REGION": "region",
}
_FILE_KEYS = {
    "endpoint_url": "endpoint",
    "aws_access_key_id": "access_key_id",
    "aws_secret_access_key": "secret_access_key",
    "aws_session_token": "token",
    "region": "region",
}


def s3_config() -> dict[str, str]:
    """obstore's S3 options from the environment, falling back to the AWS profile files.

    The default region is us-east-1.
    """
    config: dict[str, str] = {}
    values = aws_variables(_ENV_KEYS)
    for variable, option in _ENV_KEYS.items():
        value = values.get(variable)
        if value and option not in config:
            config[option] = value
    for option, value in _profile_options().items():
        config.setdefault(option, value)
    config.setdefault("region", "us-east-1")
    if "endpoint" in config:
        # S3-compatible services other than AWS address buckets by path, not by virtual host.
        config.setdefault("virtual_hosted_style_request", "false")
    return config


def _profile_options() -> dict[str, str]:
    profile = aws_profile()
    files = [
        (aws_shared_credentials_file(), profile),
        (aws_config_file(), profile if profile == "default" else f"profile {profile}"),
    ]
    found: dict[str, str] = {}
    for path, section in files:
        parser = configparser.ConfigParser()
        try:
            parser.read(path)
        except (OSError, configparser.Error):
            continue
        if parser.has_section(section):
            for key, option in _FILE_KEYS.items():
                value = parser.get(section, key, fallback=None)
                if value:
                    found.setdefault(option, value)
    return found
