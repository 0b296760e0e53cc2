"""The engine catalogue: what `trtforge build NAME` builds.

Built-in entries are merged with the user's TOML file (`$TRTFORGE_CATALOG`, else `./engines.toml`):

    [engines.my-model]
    model = "nvidia/My-Model-NVFP4"     # or a local checkpoint directory
    quantization = "NVFP4"
    tp_size = 1
    max_batch_size = 8
    max_seq_len = 16384
    max_num_tokens = 8192
    backend = "auto"                    # or "tensorrt" (an engine), "pytorch" (the LLM API), "reference" (CPU)
    gather_generation_logits = true     # optional: engines return generation logits (top log probabilities)

    [engines.my-model.serve]            # optional: how Triton serves it (docs/serving.md)
    kv_cache_free_gpu_mem_fraction = 0.85
    enable_kv_cache_reuse = true

A user entry with a built-in's name overrides that built-in field by field.

`backend = "auto"` (the default) is resolved when an entry is built or planned, against the TensorRT-LLM the
builder's interpreter imports: `tensorrt` where it still has the TensorRT engine backend (1.2.x and older),
`pytorch` (no engine build: the checkpoint served through the LLM API) otherwise (`CatalogEntry.resolved`).
"""

from __future__ import annotations

import fcntl
import os
import re
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomlkit
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from trtforge.atomic import write_text_atomic
from trtforge.constants import TINY_ENGINE_NAME, catalog_path
from trtforge.errors import CatalogError
from trtforge.serve_options import ServeOptions

# `trtllm-bench build --quantization` choices, upper case as the builder wants them.
QUANTIZATION_CHOICES = ("W8A16", "W4A16", "W4A16_AWQ", "W4A8_AWQ", "W4A16_GPTQ", "FP8", "INT8", "NVFP4")
MAX_WORLD_SIZE = 8
BUILTIN_MODEL_PREFIX = "builtin:"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# An engine's name goes into its store directory's name (`<hash>-trtllm-engine-<name>-<version>`) and its link:
# 64 characters keep that far below the 255-byte file-name limit, whatever the builder's version string.
MAX_NAME_LENGTH = 64
# A catalogue is a few kilobytes; anything near this is not one.
CATALOG_LIMIT = 4 << 20

BuilderOption = str | int | float | bool
# What an entry may ask for; "auto" picks tensorrt or pytorch by the installed TensorRT-LLM.
Backend = Literal["auto", "tensorrt", "pytorch", "reference"]
BACKEND_CHOICES: tuple[str, ...] = ("auto", "tensorrt", "pytorch", "reference")
# What a built entry uses (an `EngineInfo.backend`).
ConcreteBackend = Literal["tensorrt", "pytorch", "reference"]
# Flags trtforge itself passes (from the entry's own fields, or as global options before `build`): a second
# copy in builder_options would silently win over the entry (click keeps the last) or be rejected after `build`.
_MANAGED_FLAGS = frozenset(
    {
        "model", "model_path", "workspace", "revision", "quantization", "tp_size", "pp_size",
        "max_batch_size", "max_num_tokens", "max_seq_len", "trust_remote_code",
        "gather_generation_logits",
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
    # MoE expert parallelism (the LLM API's moe_expert_parallel_size); None: TensorRT-LLM chooses. PyTorch only.
    ep_size: int | None = None
    backend: Backend = "auto"
    trust_remote_code: bool = False
    # Engines (tensorrt, reference) keep each step's logits, which top log probabilities need; `trtllm-bench
    # build` has no flag for it, so trtforge sets it in the engine's config.json (docs/serving.md). PyTorch
    # entries compute log probabilities without it and ignore it.
    gather_generation_logits: bool = False
    # Extra `trtllm-bench build` options, passed as `--key value` after the subcommand.
    builder_options: dict[str, BuilderOption] = {}
    # How Triton serves the engine (`[engines.NAME.serve]`); not a build input.
    serve: ServeOptions = ServeOptions()

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        problem = name_problem(value)
        if problem:
            raise ValueError(problem)
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

    @field_validator("tp_size", "pp_size", "max_batch_size", "max_seq_len", "max_num_tokens", "ep_size")
    @classmethod
    def _check_positive(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
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
        if self.backend != "reference" and self.model.startswith(BUILTIN_MODEL_PREFIX):
            raise ValueError(f"built-in '{BUILTIN_MODEL_PREFIX}…' models need backend 'reference'")
        if self.backend == "reference" and self.world_size != 1:
            raise ValueError("backend 'reference' runs on one process: tp_size and pp_size must be 1")
        if self.ep_size is not None and self.backend in ("tensorrt", "reference"):
            raise ValueError(f"ep_size is a setting of the PyTorch backend, not of backend {self.backend!r}")
        if self.builder_options and self.backend == "pytorch":
            raise ValueError(
                "builder_options are `trtllm-bench build` flags, and a pytorch entry is not built: remove them"
            )
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
        """Every field that changes the built engine (the name included: it names the store entry).

        `ep_size` and `gather_generation_logits` are left out while unset, so entries that never had them hash
        as they did before they existed.
        """
        fields = self.model_dump(mode="json", exclude={"serve"})
        if fields["ep_size"] is None:
            del fields["ep_size"]
        if not fields["gather_generation_logits"]:
            del fields["gather_generation_logits"]
        return fields

    def resolved(self, backend: ConcreteBackend) -> CatalogEntry:
        """This entry on `backend` (what "auto" or `--backend` chose), validated again for that backend.

        Raises:
            CatalogError: the entry cannot run on `backend` (e.g. builder_options on pytorch), in one line.
        """
        if backend == self.backend:
            return self
        fields = {**self.model_dump(exclude={"name"}), "backend": backend}
        try:
            return CatalogEntry(name=self.name, **fields)
        except ValidationError as exc:
            error = exc.errors()[0]
            message = error["msg"].removeprefix("Value error, ")
            raise CatalogError(f"[engines.{self.name}] on backend {backend!r}: {message}") from None


def name_problem(name: str) -> str | None:
    """Why `name` cannot name an engine (catalogue entry, link, store entry), or None. The one name rule."""
    if len(name) > MAX_NAME_LENGTH:
        return f"is {len(name)} characters long, at most {MAX_NAME_LENGTH} are allowed"
    if not _NAME_RE.match(name):
        return "must start with a letter or digit and use only letters, digits, '.', '_', '-'"
    return None


def check_name(name: str) -> str:
    """`name` when it follows the name rule (`name_problem`); else a one-line `CatalogError`."""
    problem = name_problem(name)
    if problem:
        shown = name if len(name) <= 80 else f"{name[:80]}…"
        raise CatalogError(f"engine name {shown!r} {problem}")
    return name


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
            # `make demo` shows the whole sampling surface, top_logprobs included.
            "gather_generation_logits": True,
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


def _read_text(path: Path) -> str | None:
    """The catalogue's text (None when there is no file): a regular UTF-8 file, bounded in size."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read catalogue: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise CatalogError(f"{path}: not a regular file")
    if info.st_size > CATALOG_LIMIT:
        raise CatalogError(f"{path}: {info.st_size:,} bytes is too large for a catalogue")
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read catalogue: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def _read_user_entries(path: Path) -> dict[str, dict[str, Any]]:
    text = _read_text(path)
    return {} if text is None else _parse_user_entries(text, path)


def _parse_user_entries(text: str, path: Path) -> dict[str, dict[str, Any]]:
    try:
        document = tomlkit.parse(text).unwrap()
    except tomlkit.exceptions.TOMLKitError as exc:
        raise CatalogError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(document) - {"engines", "cache"})  # [cache]: binary caches (trtforge.cache.config)
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
    """Validate an entry and write it into the catalogue file, keeping the user's comments, layout and style.

    `fields` are the other `CatalogEntry` fields; None values are left out (the defaults apply). The file is
    edited under a lock beside it (concurrent adds all land), through a symlink (the link stays), keeping its
    mode; `[engines.NAME]` tables, an `engines = {…}` inline table and `engines.NAME.key = …` dotted keys are
    each extended in their own style, and any edit that would change what the rest of the file means is refused.

    Raises:
        CatalogError: the entry is invalid, the name is taken in that file or is a built-in's and `replace`
            is false, or the file cannot be read, locked or written.
    """
    check_name(name)
    path = Path(path) if path is not None else catalog_path()
    given = {key: value for key, value in fields.items() if value is not None}
    local = Path(model).expanduser()
    if local.is_dir():
        model = str(local.resolve())
    entry = _validate(name, {"model": model, **given}, path)
    if name in builtin_entries() and not replace:
        raise CatalogError(
            f"{name!r} is a built-in engine; use --replace to override it in {path} (every build of "
            f"{name!r} will then use your entry)"
        )
    target = Path(os.path.realpath(path))  # edit the file a symlink points to, keep the link
    with _catalog_lock(target):
        text = _read_text(target)
        before = {} if text is None else _parse_user_entries(text, path)
        if name in before and not replace:
            raise CatalogError(f"{path}: [engines.{name}] already exists (use --replace to overwrite it)")
        values = entry.model_dump(exclude={"name"}, exclude_defaults=True)
        values["model"] = entry.model  # always written, even if it ever got a default
        # The file's fields merge over a built-in's: write every field that would otherwise keep its value.
        dumped = entry.model_dump()
        for key, value in builtin_entries().get(name, {}).items():
            if key not in values and dumped[key] != value:
                values[key] = dumped[key]
        document = tomlkit.parse(text) if text is not None else tomlkit.document()
        _insert_entry(document, name, values, path)
        new_text = tomlkit.dumps(document)
        if _parse_user_entries(new_text, path) != {**before, name: values}:
            raise CatalogError(
                f"{path}: adding [engines.{name}] would change other entries in this file's layout; "
                "add it by hand"
            )
        mode = stat.S_IMODE(os.stat(target).st_mode) if text is not None else None
        try:
            write_text_atomic(target, new_text, mode=mode)
        except OSError as exc:
            raise CatalogError(f"{path}: cannot write the catalogue: {exc.strerror or exc}") from None
    return entry


@contextmanager
def _catalog_lock(target: Path) -> Iterator[None]:
    """An exclusive lock on the catalogue's directory, so concurrent `add`s serialise instead of losing entries.

    The directory, not the file: every edit replaces the file (a new inode), and a lock file would be litter
    beside the user's catalogue.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise CatalogError(f"{target}: cannot lock the catalogue: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _insert_entry(document: tomlkit.TOMLDocument, name: str, values: dict[str, Any], path: Path) -> None:
    """Put `values` into `engines.NAME` in the style the file already uses."""
    engines = document.get("engines")
    if engines is None:
        engines = tomlkit.table(is_super_table=True)
        document["engines"] = engines
    if isinstance(engines, tomlkit.items.InlineTable):
        inline = tomlkit.inline_table()
        inline.update(values)
        engines[name] = inline
    elif isinstance(engines, tomlkit.items.Table):
        table = tomlkit.table()
        table.update(values)
        engines[name] = table
    else:  # `engines.NAME.key = value` dotted keys at the top level
        if name in engines:
            raise CatalogError(f"{path}: engines.{name} is written with dotted keys; replace it by hand")
        for key, value in values.items():
            document.add(tomlkit.key(["engines", name, key]), value)
