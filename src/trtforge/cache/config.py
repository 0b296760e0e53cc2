"""Which binary caches to use and which keys to trust: the catalogue's `[cache]` table and the environment.

    [cache]
    substituters = ["s3://engines/prod", "file:///mnt/shared/engines"]   # tried in order
    trusted_public_keys = ["build-1:3Y0m…="]
    push_to = "s3://engines/prod"                                          # optional: `build` uploads here

`$TRTFORGE_SUBSTITUTERS` and `$TRTFORGE_TRUSTED_KEYS` (space-separated) replace the table's lists when set.
"""

from __future__ import annotations

from pathlib import Path

import tomlkit
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from trtforge.cache.signing import SecretKey, load_secret_key
from trtforge.constants import (
    catalog_path,
    signing_key_file_override,
    substituters_override,
    trusted_keys_override,
)
from trtforge.errors import CatalogError

_MAX_CATALOG_BYTES = 4 << 20


class CacheConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    substituters: list[str] = []
    trusted_public_keys: list[str] = []
    push_to: str | None = None

    @field_validator("substituters")
    @classmethod
    def _check_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("s3://", "file://")):
                raise ValueError(f"{url!r}: a substituter is an s3://bucket/prefix or file:///path URL")
        return value


def load_cache_config(path: Path | None = None) -> CacheConfig:
    """The `[cache]` table of the catalogue file, overridden by the environment (missing file = empty).

    Raises:
        CatalogError: the table is malformed (one line naming the file and field).
    """
    path = Path(path) if path is not None else catalog_path()
    table = _read_table(path)
    try:
        config = CacheConfig.model_validate(table)
    except ValidationError as exc:
        error = exc.errors()[0]
        location = ".".join(str(part) for part in error["loc"]) or "table"
        raise CatalogError(
            f"{path}: [cache] {location}: {error['msg'].removeprefix('Value error, ')}"
        ) from None
    updates: dict[str, list[str]] = {}
    if (urls := substituters_override()) is not None:
        try:
            updates["substituters"] = CacheConfig(substituters=urls).substituters
        except ValidationError as exc:
            message = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise CatalogError(f"$TRTFORGE_SUBSTITUTERS: {message}") from None
    if (keys := trusted_keys_override()) is not None:
        updates["trusted_public_keys"] = keys
    return config.model_copy(update=updates) if updates else config


def _read_table(path: Path) -> dict[str, object]:
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_CATALOG_BYTES + 1)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read catalogue: {exc.strerror or exc}") from None
    if len(data) > _MAX_CATALOG_BYTES:
        raise CatalogError(f"{path}: catalogue larger than {_MAX_CATALOG_BYTES} bytes")
    try:
        document = tomlkit.parse(data.decode()).unwrap()
    except (tomlkit.exceptions.ParseError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{path}: not valid TOML: {exc}") from None
    table = document.get("cache", {})
    if not isinstance(table, dict):
        raise CatalogError(f"{path}: 'cache' must be a table ([cache])")
    return table


def load_signing_key(explicit: Path | None) -> SecretKey | None:
    """The key of `--key-file`, else of `$TRTFORGE_SIGNING_KEY_FILE`, else None (push unsigned)."""
    path = explicit if explicit is not None else signing_key_file_override()
    return load_secret_key(path) if path is not None else None
