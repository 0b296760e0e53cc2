"""The engine catalogue: what `trtforge build NAME` builds (the seed's `mkEngine`).

Built-in entries are merged with the user's TOML file (`$TRTFORGE_CATALOG`, else `./engines.toml`):

    [engines.my-model]
    model = "nvidia/My-Model-NVFP4"     # or a local checkpoint directory
    quantization = "NVFP4"
    tp_size = 1
    max_batch_size = 8
    max_seq_len = 16384
    max_num_tokens = 8192

    [engines.my-model.serve]            # optional: how Triton serves it (docs/serving.md)
    kv_cache_free_gpu_mem_fraction = 0.85
    enable_kv_cache_reuse = true

A user entry with a built-in's name overrides that built-in field by field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomlkit
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from trtforge.atomic import write_text_atomic
from trtforge.constants import TINY_ENGINE_NAME, catalog_path
from trtforge.errors import CatalogError
from trtforge.serve_options import ServeOptions

# `trtllm-bench build --quantization` choices (reference §1), upper case as the builder wants them.
QUANTIZATION_CHOICES = ("W8A16", "W4A16", "W4A16_AWQ", "W4A8_AWQ", "W4A16_GPTQ", "FP8", "INT8", "NVFP4")
MAX_WORLD_SIZE = 8
BUILTIN_MODEL_PREFIX = "builtin:"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

BuilderOption = str | int | float | bool
# Flags trtforge itself passes (from the entry's own fields, or as global options before `build`): a second
# copy in builder_options would silently win over the entry (click keeps the last) or be rejected after `build`.
_MANAGED_FLAGS = frozenset(
    {
        "model", "model_path", "workspace", "revision", "quantization", "tp_size", "pp_size",
        "max_batch_size", "max_num_tokens", "max_seq_len", "trust_remote_code",
    }
)  # fmt: skip


class CatalogEntry(BaseModel):
    """One buildable engine: a checkpoint plus the settings it is built with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    model: str
    revision: str | None = None
    quantization: str | None = None
    tp_size: int = 1
    pp_size: int = 1
    max_batch_size: int = 8
    max_seq_len: int = 16384
    max_num_tokens: int = 8192
    backend: Literal["tensorrt", "reference"] = "tensorrt"
    trust_remote_code: bool = False
    # Extra `trtllm-bench build` options, passed as `--key value` after the subcommand.
    builder_options: dict[str, BuilderOption] = {}
    # How Triton serves the engine (`[engines.NAME.serve]`); not a build input.
    serve: ServeOptions = ServeOptions()

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError("must start with a letter or digit and use only letters, digits, '.', '_', '-'")
        return value

    @field_validator("quantization")
    @classmethod
    def _check_quantization(cls, value: str | None) -> str | None:
        if value is None:
            return None
        upper = value.upper()
        if upper not in QUANTIZATION_CHOICES:
            raise ValueError(f"{value!r} is not one of {', '.join(QUANTIZATION_CHOICES)}")
        return upper

    @field_validator("tp_size", "pp_size", "max_batch_size", "max_seq_len", "max_num_tokens")
    @classmethod
    def _check_positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        return value

    @field_validator("builder_options")
    @classmethod
    def _check_options(cls, value: dict[str, BuilderOption]) -> dict[str, BuilderOption]:
        for key in value:
            if not re.match(r"^[a-z][a-z0-9_]*$", key):
                raise ValueError(
                    f"option {key!r} must be a builder flag name without dashes, e.g. 'max_beam_width'"
                )
            if key in _MANAGED_FLAGS:
                raise ValueError(f"option {key!r} is set by trtforge: use the entry's own field instead")
        return value

    @model_validator(mode="after")
    def _check_world(self) -> CatalogEntry:
        if self.tp_size * self.pp_size > MAX_WORLD_SIZE:
            raise ValueError(f"tp_size × pp_size must be at most {MAX_WORLD_SIZE}")
        if self.backend == "reference" and not self.model.startswith(BUILTIN_MODEL_PREFIX):
            raise ValueError(f"backend 'reference' needs a '{BUILTIN_MODEL_PREFIX}…' model")
        return self

    @property
    def world_size(self) -> int:
        return self.tp_size * self.pp_size

    @property
    def local_model_dir(self) -> Path | None:
        """The checkpoint directory when `model` names one on disk (else it is a hub id or built-in)."""
        if self.model.startswith(BUILTIN_MODEL_PREFIX):
            return None
        path = Path(self.model).expanduser()
        if path.is_absolute() or self.model.startswith((".", "~")) or path.is_dir():
            return path.resolve()
        return None

    def build_fields(self) -> dict[str, Any]:
        """Every field that changes the built engine (the name included: it names the store entry)."""
        return self.model_dump(mode="json", exclude={"serve"})


@dataclass(frozen=True)
class Catalog:
    """Named entries, with where each came from (None = built in)."""

    entries: Mapping[str, CatalogEntry]
    sources: Mapping[str, Path | None] = field(default_factory=dict)
    path: Path | None = None

    def names(self) -> list[str]:
        return sorted(self.entries)

    def get(self, name: str) -> CatalogEntry:
        try:
            return self.entries[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise CatalogError(
                f"no engine named {name!r} in the catalogue (known: {known}); add one with `trtforge add`"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self.entries


def builtin_entries() -> dict[str, dict[str, Any]]:
    """The built-in entries as raw fields (so user files can override them field by field)."""
    # Imported lazily: the reference backend pulls in torch-sized modules only when used.
    from trtforge.reference.tiny import TINY_DEFAULTS

    tiny = _as_mapping(TINY_DEFAULTS)
    return {
        "qwen3-32b-nvfp4": {
            "model": "nvidia/Qwen3-32B-NVFP4",
            "quantization": "NVFP4",
            "tp_size": 1,
            "pp_size": 1,
            "max_batch_size": 8,
            "max_seq_len": 16384,
            "max_num_tokens": 8192,
        },
        TINY_ENGINE_NAME: {
            "model": f"{BUILTIN_MODEL_PREFIX}{TINY_ENGINE_NAME}",
            "backend": "reference",
            "max_batch_size": int(tiny["max_batch_size"]),
            "max_seq_len": int(tiny["max_seq_len"]),
            "max_num_tokens": int(tiny["max_num_tokens"]),
        },
    }


def _as_mapping(value: Any) -> Mapping[str, Any]:
    if isinstance(value, Mapping):
        return value
    return {key: getattr(value, key) for key in ("max_batch_size", "max_seq_len", "max_num_tokens")}


def load_catalog(path: Path | None = None) -> Catalog:
    """Built-in entries merged with the user's catalogue file (missing file = built-ins only).

    Raises:
        CatalogError: the file does not parse, or an entry is invalid (names the file, entry and field).
    """
    path = Path(path) if path is not None else catalog_path()
    raw: dict[str, dict[str, Any]] = builtin_entries()
    sources: dict[str, Path | None] = dict.fromkeys(raw)
    for name, fields in _read_user_entries(path).items():
        raw[name] = {**raw.get(name, {}), **fields}
        sources[name] = path
    entries = {name: _validate(name, fields, sources[name]) for name, fields in raw.items()}
    return Catalog(entries=entries, sources=sources, path=path)


def _read_user_entries(path: Path) -> dict[str, dict[str, Any]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read catalogue: {exc.strerror or exc}") from None
    try:
        document = tomlkit.parse(text).unwrap()
    except tomlkit.exceptions.ParseError as exc:
        raise CatalogError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(document) - {"engines"})
    if unknown:
        raise CatalogError(f"{path}: unknown top-level key {unknown[0]!r} (entries go under [engines.NAME])")
    engines = document.get("engines", {})
    if not isinstance(engines, dict):
        raise CatalogError(f"{path}: 'engines' must be a table of [engines.NAME] entries")
    for name, fields in engines.items():
        if not isinstance(fields, dict):
            raise CatalogError(f"{path}: [engines.{name}] must be a table")
        if "name" in fields:
            raise CatalogError(f"{path}: [engines.{name}] name: set by the table name, remove the field")
    return engines


def _validate(name: str, fields: Mapping[str, Any], source: Path | None) -> CatalogEntry:
    try:
        return CatalogEntry(name=name, **fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        location = ".".join(str(part) for part in error["loc"]) or "entry"
        where = str(source) if source is not None else "built-in catalogue"
        message = error["msg"].removeprefix("Value error, ")
        raise CatalogError(f"{where}: [engines.{name}] {location}: {message}") from None


def add_entry(
    name: str,
    *,
    model: str,
    path: Path | None = None,
    replace: bool = False,
    **fields: Any,
) -> CatalogEntry:
    """Validate an entry and write it into the catalogue file, keeping the user's comments and layout.

    `fields` are the other `CatalogEntry` fields; None values are left out (the defaults apply).

    Raises:
        CatalogError: the entry is invalid, or the name is taken in that file and `replace` is false.
    """
    path = Path(path) if path is not None else catalog_path()
    given = {key: value for key, value in fields.items() if value is not None}
    local = Path(model).expanduser()
    if local.is_dir():
        model = str(local.resolve())
    entry = _validate(name, {"model": model, **given}, path)

    _read_user_entries(path)  # a broken file is reported in one line, not overwritten or tracebacked
    document = tomlkit.parse(path.read_text()) if path.exists() else tomlkit.document()
    engines = document.get("engines")
    if engines is None:
        engines = tomlkit.table(is_super_table=True)
        document["engines"] = engines
    if name in engines and not replace:
        raise CatalogError(f"{path}: [engines.{name}] already exists (use --replace to overwrite it)")

    table = tomlkit.table()
    for key, value in entry.model_dump(exclude={"name"}, exclude_defaults=True).items():
        table[key] = value
    table["model"] = entry.model  # always written, even if it ever got a default
    engines[name] = table
    write_text_atomic(path, tomlkit.dumps(document))
    return entry
