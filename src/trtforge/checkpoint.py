"""Know a checkpoint before building it: read its configs and safetensors headers, never its weights.

A safetensors file starts with an 8-byte little-endian header length and a JSON header naming every tensor's
dtype, shape and byte range, so a 20 GB checkpoint is described by a few hundred kilobytes read from disk (or by
HTTP range requests for a hub id, through `huggingface_hub.get_safetensors_metadata`).

What a ModelOpt NVFP4 export looks like:

    <checkpoint>/
        config.json                    architecture, dimensions, maybe `quantization_config`
        hf_quant_config.json           {"quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": "FP8", ...}}
        model.safetensors.index.json   tensor name → shard file
        model-0000X-of-0000N.safetensors
    per quantized Linear: weight U8 [N, K/2], weight_scale F8_E4M3 [N, K/16], weight_scale_2 F32 [], input_scale F32 []

`inspect_checkpoint` returns a `CheckpointInfo`; `check_checkpoint` lists what would build into a broken engine
and `validate_checkpoint` raises the first of those as one `CheckpointError` line naming the tensor or file.
"""

from __future__ import annotations

import math
import os
import re
import socket
import struct
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from trtforge.constants import hf_hub_offline
from trtforge.errors import CheckpointError
from trtforge.untrusted import (
    INDEX_LIMIT,
    SAFETENSORS_HEADER_LIMIT,
    checkpoint_root,
    inside,
    open_regular,
    parse_json_object,
    read_json_object,
)

CONFIG_FILE = "config.json"
HF_QUANT_CONFIG_FILE = "hf_quant_config.json"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# No real tensor has more dimensions than this (convolutions have 5); more is a hostile header.
MAX_TENSOR_RANK = 8
# A config dimension beyond this is not a model (and would overflow the planner's arithmetic into nonsense).
MAX_DIMENSION = 1 << 40

# Bits per element of every safetensors dtype (F4 and the F6s are packed, hence bits, not bytes).
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E4M3": 8,
    "F8_E5M2": 8,
    "F8_E8M0": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "I64": 64,
    "U64": 64,
    "F64": 64,
}
TORCH_DTYPE_NAMES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32", "half": "F16", "float": "F32"}

# Architectures the TensorRT-engine flow (`trtllm-bench build`, `tensorrt_llm._tensorrt_engine.LLM`) can build
# from a Hugging Face checkpoint. Qwen3 dense joined around July 2025; Qwen3-MoE did not.
SUPPORTED_ARCHITECTURES: frozenset[str] = frozenset(
    {
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "MixtralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "GemmaForCausalLM",
        "Gemma2ForCausalLM",
        "Gemma3ForCausalLM",
        "Phi3ForCausalLM",
        "NemotronForCausalLM",
        "DeciLMForCausalLM",
        "FalconForCausalLM",
        "GPT2LMHeadModel",
    }
)
UNSUPPORTED_HINTS: dict[str, str] = {
    "Qwen3MoeForCausalLM": "Qwen3-MoE runs only on the PyTorch backend, not the TensorRT engine flow",
    "DeepseekV3ForCausalLM": "DeepSeek-V3 runs only on the PyTorch backend, not the TensorRT engine flow",
}

# What each tensor is, for parameter counting and the memory planner.
TensorRole = Literal[
    "nvfp4_weight", "block_scale", "global_scale", "embedding", "lm_head", "norm", "linear", "other"
]
_GLOBAL_SCALE_SUFFIXES = (".weight_scale_2", ".input_scale", ".k_scale", ".v_scale", ".output_scale")


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as its safetensors header describes it."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def params(self, role: TensorRole) -> int:
        """Model parameters this tensor holds: NVFP4-packed U8 weights hold two a byte; scales hold none."""
        if role in ("block_scale", "global_scale"):
            return 0
        return self.numel * 2 if role == "nvfp4_weight" and self.dtype == "U8" else self.numel

    @property
    def nbytes(self) -> int:
        return (self.numel * DTYPE_BITS.get(self.dtype, 8) + 7) // 8


@dataclass(frozen=True)
class QuantizationInfo:
    """The quantization a checkpoint declares, and in which file."""

    quant_algo: str | None
    kv_cache_quant_algo: str | None
    group_size: int | None
    exclude_modules: tuple[str, ...]
    source: str

    def to_json(self) -> dict[str, Any]:
        return {
            "quant_algo": self.quant_algo,
            "kv_cache_quant_algo": self.kv_cache_quant_algo,
            "group_size": self.group_size,
            "exclude_modules": list(self.exclude_modules),
            "source": self.source,
        }


@dataclass(frozen=True)
class CheckpointInfo:
    """Everything trtforge knows about a checkpoint without loading a weight."""

    source: str
    path: Path | None
    revision: str | None
    config: Mapping[str, Any]
    hf_quant: QuantizationInfo | None
    config_quant: QuantizationInfo | None
    tensors: tuple[TensorInfo, ...]
    files: tuple[str, ...]
    missing_files: tuple[str, ...] = ()

    # -- model -------------------------------------------------------------------------------------------
    @property
    def text_config(self) -> Mapping[str, Any]:
        """Multimodal configs nest the language model's dimensions under `text_config`."""
        nested = self.config.get("text_config")
        return nested if isinstance(nested, Mapping) else self.config

    @property
    def architecture(self) -> str:
        architectures = self.config.get("architectures") or []
        if not isinstance(architectures, list) or not architectures or not isinstance(architectures[0], str):
            return "unknown"
        return architectures[0]

    @property
    def dtype(self) -> str:
        """The unquantized dtype (config's `torch_dtype`/`dtype`), as a safetensors dtype name."""
        raw = str(
            self.config.get("torch_dtype")
            or self.text_config.get("torch_dtype")
            or self.config.get("dtype")
            or "bfloat16"
        )
        return TORCH_DTYPE_NAMES.get(raw.removeprefix("torch."), raw.upper())

    def dim(self, key: str) -> int:
        """A positive integer dimension of the model's config (one-line `CheckpointError` otherwise)."""
        value = self.optional_dim(key)
        if value is None:
            raise CheckpointError(f"{self.source}: {CONFIG_FILE} has no {key!r}")
        return value

    def optional_dim(self, key: str) -> int | None:
        """`dim`, or None when the config does not set it (null counts as unset)."""
        value = self.text_config.get(key)
        problem = _dimension_problem(key, value)
        if problem:
            raise CheckpointError(f"{self.source}: {problem}")
        return value if isinstance(value, int) else None

    @property
    def num_layers(self) -> int:
        return self.dim("num_hidden_layers")

    @property
    def num_attention_heads(self) -> int:
        return self.dim("num_attention_heads")

    @property
    def num_kv_heads(self) -> int:
        value = self.optional_dim("num_key_value_heads")
        return value if value is not None else self.num_attention_heads

    @property
    def head_dim(self) -> int:
        value = self.optional_dim("head_dim")
        if value is not None:
            return value
        head_dim = self.dim("hidden_size") // self.num_attention_heads
        if head_dim < 1:
            raise CheckpointError(
                f"{self.source}: {CONFIG_FILE} hidden_size is smaller than num_attention_heads"
            )
        return head_dim

    # -- quantization ------------------------------------------------------------------------------------
    @property
    def quantization(self) -> QuantizationInfo | None:
        """hf_quant_config.json wins (the LLM API reads it); config.json's quantization_config otherwise."""
        return self.hf_quant or self.config_quant

    @property
    def quant_algo(self) -> str | None:
        quant = self.quantization
        return quant.quant_algo if quant else None

    @property
    def kv_cache_dtype(self) -> str:
        """The KV-cache dtype the engine will use: FP8/INT8 when the checkpoint says so, else the model dtype."""
        quant = self.quantization
        kv = (quant.kv_cache_quant_algo or "").upper() if quant else ""
        if kv in ("FP8", "INT8"):
            return kv
        return self.dtype

    # -- tensors -----------------------------------------------------------------------------------------
    def roles(self) -> dict[str, TensorRole]:
        return classify_tensors(self.tensors)

    @property
    def params_total(self) -> int:
        """Model parameters (`TensorInfo.params` summed over the tensors)."""
        roles = self.roles()
        return sum(tensor.params(roles[tensor.name]) for tensor in self.tensors)

    @property
    def weights_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def dtype_histogram(self) -> dict[str, dict[str, int]]:
        counts: Counter[str] = Counter()
        sizes: Counter[str] = Counter()
        for tensor in self.tensors:
            counts[tensor.dtype] += 1
            sizes[tensor.dtype] += tensor.nbytes
        return {dtype: {"tensors": counts[dtype], "bytes": sizes[dtype]} for dtype in sorted(counts)}

    def to_json(self) -> dict[str, Any]:
        quant = self.quantization
        return {
            "source": self.source,
            "path": str(self.path) if self.path else None,
            "revision": self.revision,
            "architecture": self.architecture,
            "model_type": self.config.get("model_type"),
            "dtype": self.dtype,
            "num_hidden_layers": self.text_config.get("num_hidden_layers"),
            "hidden_size": self.text_config.get("hidden_size"),
            "num_attention_heads": self.text_config.get("num_attention_heads"),
            "num_key_value_heads": self.text_config.get("num_key_value_heads"),
            "head_dim": self.text_config.get("head_dim"),
            "vocab_size": self.text_config.get("vocab_size"),
            "params_total": self.params_total,
            "weights_bytes": self.weights_bytes,
            "quant_algo": self.quant_algo,
            "kv_cache_dtype": self.kv_cache_dtype,
            "exclude_modules": list(quant.exclude_modules) if quant else [],
            "hf_quant_config": self.hf_quant.to_json() if self.hf_quant else None,
            "quantization_config": self.config_quant.to_json() if self.config_quant else None,
            "tensor_count": len(self.tensors),
            "dtype_histogram": self.dtype_histogram(),
            "files": list(self.files),
            "problems": check_checkpoint(self),
        }


def classify_tensors(tensors: tuple[TensorInfo, ...] | list[TensorInfo]) -> dict[str, TensorRole]:
    """Give every tensor a role. A `.weight` with a sibling `.weight_scale` is an NVFP4 (packed) weight."""
    names = {t.name for t in tensors}
    roles: dict[str, TensorRole] = {}
    for tensor in tensors:
        name = tensor.name
        role: TensorRole
        if name.endswith(".weight_scale"):
            role = "block_scale"
        elif name.endswith(_GLOBAL_SCALE_SUFFIXES):
            role = "global_scale"
        elif name.endswith(".weight") and f"{name}_scale" in names:
            role = "nvfp4_weight"
        elif re.search(r"(embed_tokens|wte|word_embeddings)\.weight$", name):
            role = "embedding"
        elif re.search(r"(^|\.)(lm_head|output)\.weight$", name):
            role = "lm_head"
        elif re.search(r"norm[^.]*\.(weight|bias)$", name):
            role = "norm"
        elif name.endswith(".weight") and len(tensor.shape) == 2:
            role = "linear"
        else:
            role = "other"
        roles[name] = role
    return roles


# -- reading ----------------------------------------------------------------------------------------------


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (8-byte little-endian length, then JSON), without the data.

    Only a regular file is read (a FIFO or device is refused, never waited on), and at most
    `SAFETENSORS_HEADER_LIMIT` bytes of header. Every tensor entry is checked (see `_check_header_entry`).

    Raises:
        CheckpointError: the file is missing, truncated, not safetensors or malformed — naming the file.
    """
    with os.fdopen(open_regular(path), "rb") as f:
        try:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (length,) = struct.unpack("<Q", head)
            if length > SAFETENSORS_HEADER_LIMIT:
                raise CheckpointError(
                    f"{path}: not a safetensors file (header length {length:,} is above the "
                    f"{SAFETENSORS_HEADER_LIMIT:,}-byte limit)"
                )
            size = os.fstat(f.fileno()).st_size
            if size < 8 + length:
                raise CheckpointError(f"{path}: truncated safetensors header ({size - 8} of {length} bytes)")
            raw = f.read(length)
        except OSError as exc:
            raise CheckpointError(f"{path}: unreadable: {exc.strerror or exc}") from None
    if len(raw) < length:
        raise CheckpointError(f"{path}: truncated safetensors header ({len(raw)} of {length} bytes)")
    try:
        header = parse_json_object(raw, path)
    except CheckpointError as exc:
        raise CheckpointError(str(exc).replace("not valid JSON", "corrupt safetensors header", 1)) from None
    data_end = 0
    for name, meta in header.items():
        if name != "__metadata__":
            data_end = max(data_end, _check_header_entry(path, name, meta))
    if size < 8 + length + data_end:
        raise CheckpointError(
            f"{path}: truncated: {size} bytes on disk, the header describes {8 + length + data_end}"
        )
    return header


def _check_header_entry(path: Path, name: str, meta: Any) -> int:
    """Refuse a tensor entry that is not {dtype: str, shape: [int ≥ 0…], data_offsets: [begin ≤ end]}.

    Returns the entry's end offset.
    """
    where = f"{path}: tensor {_short(name)}"
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where}: header entry is {type(meta).__name__}, not an object")
    dtype, shape, offsets = meta.get("dtype"), meta.get("shape"), meta.get("data_offsets")
    if not isinstance(dtype, str):
        raise CheckpointError(f"{where}: dtype is {_short(dtype)}, not a dtype name")
    if not isinstance(shape, list) or len(shape) > MAX_TENSOR_RANK or not all(_is_count(d) for d in shape):
        raise CheckpointError(
            f"{where}: shape is {_short(shape)}, expected at most {MAX_TENSOR_RANK} non-negative integers"
        )
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise CheckpointError(f"{where}: data_offsets is {_short(offsets)}, expected [begin, end]")
    begin, end = offsets
    if begin > end:
        raise CheckpointError(f"{where}: data_offsets {offsets} end before they begin")
    return int(end)


# The config dimensions the planner and the engine build read.
DIMENSION_KEYS = (
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_size",
    "intermediate_size",
    "vocab_size",
)


def _dimension_problem(key: str, value: Any) -> str | None:
    """Why a config dimension is unusable (None when it is a positive integer or unset)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DIMENSION:
        return f"{CONFIG_FILE} {key} is {_short(value)}, expected a positive integer"
    return None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 63


def _short(value: Any, limit: int = 60) -> str:
    """A value quoted for an error line, cut so a hostile file cannot flood the terminal."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}…"


def _tensors_from_header(header: Mapping[str, Any], file_name: str) -> list[TensorInfo]:
    """Tensors of a header `read_safetensors_header` has checked."""
    return [
        TensorInfo(name, meta["dtype"], tuple(meta["shape"]), file_name)
        for name, meta in header.items()
        if name != "__metadata__"
    ]


def _read_json(path: Path, *, limit: int | None = None) -> dict[str, Any]:
    """A JSON object from a config file, bounded in size and nesting (one-line `CheckpointError`)."""
    return read_json_object(path) if limit is None else read_json_object(path, limit=limit)


def read_hf_quant_config(model_dir: Path) -> QuantizationInfo | None:
    """The quantization a ModelOpt checkpoint directory declares in `hf_quant_config.json`; None without one.

    Raises:
        CheckpointError: the file is unreadable, leads outside the directory, or has fields of the wrong type.
    """
    directory = Path(model_dir).resolve()
    return _hf_quant_in(checkpoint_root(directory), directory)


def _hf_quant_in(root: Path, path: Path) -> QuantizationInfo | None:
    file = _inside(root, path / HF_QUANT_CONFIG_FILE)
    return _quant_from_hf_quant_config(_read_json(file)) if file else None


def _quant_from_hf_quant_config(data: Mapping[str, Any]) -> QuantizationInfo:
    nested = data.get("quantization")
    quant: Mapping[str, Any] = nested if isinstance(nested, Mapping) else data
    return _quant_info(quant, HF_QUANT_CONFIG_FILE)


def _quant_from_config(config: Mapping[str, Any]) -> QuantizationInfo | None:
    quant = config.get("quantization_config")
    if not isinstance(quant, Mapping):
        return None
    return _quant_info(quant, f"{CONFIG_FILE} quantization_config")


def _quant_info(quant: Mapping[str, Any], source: str) -> QuantizationInfo:
    algo = quant.get("quant_algo")
    kv = quant.get("kv_cache_quant_algo")
    group = quant.get("group_size")
    excluded = quant.get("exclude_modules") or quant.get("ignore") or []
    for key, value in (("quant_algo", algo), ("kv_cache_quant_algo", kv)):
        if value is not None and not isinstance(value, str):
            raise CheckpointError(f"{source}: {key} is {_short(value)}, expected a string")
    if group is not None and not (_is_count(group) and group > 0):
        raise CheckpointError(f"{source}: group_size is {_short(group)}, expected a positive integer")
    if not isinstance(excluded, list) or not all(isinstance(m, str) for m in excluded):
        raise CheckpointError(f"{source}: exclude_modules is {_short(excluded)}, expected a list of names")
    return QuantizationInfo(
        quant_algo=algo.upper() if algo else None,
        kv_cache_quant_algo=kv.upper() if kv else None,
        group_size=group or None,
        exclude_modules=tuple(excluded),
        source=source,
    )


def inspect_checkpoint(model: str | Path, *, revision: str | None = None) -> CheckpointInfo:
    """Describe a checkpoint directory or Hugging Face hub id from its configs and safetensors headers.

    Args:
        model: a local directory, or a hub id (`org/name`) read through `huggingface_hub`
            (honours `HF_TOKEN`, `HF_HOME`, `HF_HUB_OFFLINE`).
        revision: hub revision (ignored for directories).

    Raises:
        CheckpointError: missing directory/config, unreadable headers, hub unreachable — one line.
    """
    text = str(model)
    path = Path(text).expanduser()
    if path.is_dir():
        resolved = path.resolve()
        return _inspect_dir(resolved, source=text, revision=None, root=checkpoint_root(resolved))
    if path.exists():
        raise CheckpointError(f"{text}: not a directory (pass the checkpoint directory)")
    if _looks_like_repo_id(text):
        return _inspect_hub(text, revision=revision)
    raise CheckpointError(f"{text}: no such checkpoint directory, and not a hub id (org/name)")


def _looks_like_repo_id(text: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text)) and not text.startswith((".", "/", "~"))


def _inspect_dir(
    path: Path, *, source: str, revision: str | None, root: Path | None = None
) -> CheckpointInfo:
    """Read a checkpoint directory; only regular files inside `root` (default: the directory) are read."""
    root = root or path
    config_path = _inside(root, path / CONFIG_FILE)
    if config_path is None:
        raise CheckpointError(f"{path}: no {CONFIG_FILE}: not a Hugging Face checkpoint directory")
    config = _read_json(config_path)
    hf_quant = _hf_quant_in(root, path)

    shards, missing = _local_shards(path, root)
    tensors: list[TensorInfo] = []
    for name, shard in shards:
        tensors.extend(_tensors_from_header(read_safetensors_header(shard), name))
    return CheckpointInfo(
        source=source,
        path=path,
        revision=revision,
        config=config,
        hf_quant=hf_quant,
        config_quant=_quant_from_config(config),
        tensors=tuple(tensors),
        files=tuple(sorted(p.name for p in path.iterdir())),
        missing_files=tuple(missing),
    )


def _inside(root: Path, path: Path) -> Path | None:
    """`untrusted.inside` for a path already under `root`."""
    return inside(root, path.relative_to(root))


def _local_shards(path: Path, root: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """(name, real path) of the shards to read (from the index when there is one) and the names it lacks."""
    index_path = _inside(root, path / INDEX_FILE)
    if index_path is not None:
        weight_map = _read_json(index_path, limit=INDEX_LIMIT).get("weight_map")
        if not isinstance(weight_map, Mapping) or not weight_map:
            raise CheckpointError(f"{path / INDEX_FILE}: no weight_map")
        names = sorted(set(map(str, weight_map.values())))
        present: list[tuple[str, Path]] = []
        missing: list[str] = []
        for name in names:
            if "/" in name or "\\" in name or name in ("", ".", ".."):
                raise CheckpointError(f"{path / INDEX_FILE}: shard name {_short(name)} is not a file name")
            real = _inside(root, path / name)
            if real is None:
                missing.append(name)
            else:
                present.append((name, real))
        return present, missing
    shards = [(p.name, _inside(root, p)) for p in sorted(path.glob("*.safetensors"))]
    found = [(name, real) for name, real in shards if real is not None]
    if not found:
        raise CheckpointError(f"{path}: no *.safetensors files and no {INDEX_FILE}")
    return found, []


def _inspect_hub(repo_id: str, *, revision: str | None) -> CheckpointInfo:
    """Read a hub repository's configs and headers (range requests), or its cached snapshot when offline."""
    if hf_hub_offline():
        return _inspect_cached_snapshot(repo_id, revision=revision)
    _probe_hub(repo_id)

    from huggingface_hub import get_safetensors_metadata, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        config = _read_json(Path(hf_hub_download(repo_id, CONFIG_FILE, revision=revision)))
        try:
            hf_quant_file = hf_hub_download(repo_id, HF_QUANT_CONFIG_FILE, revision=revision)
            hf_quant = _quant_from_hf_quant_config(_read_json(Path(hf_quant_file)))
        except EntryNotFoundError:
            hf_quant = None
        metadata = get_safetensors_metadata(repo_id, revision=revision)
    except CheckpointError:
        raise
    except Exception as exc:
        raise _hub_error(repo_id, exc) from None

    tensors = [
        TensorInfo(name, str(meta.dtype), tuple(int(d) for d in meta.shape), file_name)
        for file_name, file_meta in sorted(metadata.files_metadata.items())
        for name, meta in file_meta.tensors.items()
    ]
    files = {CONFIG_FILE, *metadata.files_metadata}
    if hf_quant is not None:
        files.add(HF_QUANT_CONFIG_FILE)
    return CheckpointInfo(
        source=repo_id,
        path=None,
        revision=revision,
        config=config,
        hf_quant=hf_quant,
        config_quant=_quant_from_config(config),
        tensors=tuple(tensors),
        files=tuple(sorted(files)),
    )


def _probe_hub(repo_id: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, not after huggingface_hub's ~25 s of retries, when the endpoint cannot be reached.

    Skipped behind an HTTP(S) proxy, where a direct connection says nothing about reachability.
    """
    from urllib.parse import urlsplit
    from urllib.request import getproxies

    from huggingface_hub import constants as hf_constants

    if getproxies().get("https") or getproxies().get("http"):
        return
    url = urlsplit(hf_constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=timeout_s).close()
    except OSError as exc:
        raise CheckpointError(
            f"{repo_id}: cannot reach the Hugging Face hub at {hf_constants.ENDPOINT} "
            f"({exc.strerror or type(exc).__name__}); check the network, set HF_HUB_OFFLINE=1 to use the cache, "
            "or pass a local checkpoint directory"
        ) from None


def _inspect_cached_snapshot(repo_id: str, *, revision: str | None) -> CheckpointInfo:
    from huggingface_hub import constants as hf_constants
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:
        raise CheckpointError(
            f"{repo_id}: not in the Hugging Face cache ({hf_constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set: "
            "unset HF_HUB_OFFLINE to read it from the hub, or pass a local checkpoint directory"
        ) from None
    # Hub cache snapshots are links into the repository's blobs/: confine reads to the repository folder.
    snapshot = snapshot.resolve()
    return _inspect_dir(snapshot, source=repo_id, revision=revision, root=checkpoint_root(snapshot))


def _hub_error(repo_id: str, exc: Exception) -> CheckpointError:
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        NotASafetensorsRepoError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, GatedRepoError):
        return CheckpointError(f"{repo_id}: gated repository: accept its terms on the hub and set HF_TOKEN")
    if isinstance(exc, RepositoryNotFoundError):
        return CheckpointError(f"{repo_id}: repository not found on the hub (or private: set HF_TOKEN)")
    if isinstance(exc, RevisionNotFoundError):
        return CheckpointError(f"{repo_id}: revision not found on the hub")
    if isinstance(exc, NotASafetensorsRepoError):
        return CheckpointError(f"{repo_id}: no safetensors weights in the repository")
    if isinstance(exc, (OfflineModeIsEnabled, LocalEntryNotFoundError, OSError)):
        return CheckpointError(
            f"{repo_id}: cannot reach the Hugging Face hub ({type(exc).__name__}); "
            "check the network, or set HF_HUB_OFFLINE=1 to use the cache, or pass a local checkpoint directory"
        )
    return CheckpointError(
        f"{repo_id}: reading from the Hugging Face hub failed: {type(exc).__name__}: {exc}"
    )


# -- validation -------------------------------------------------------------------------------------------


def check_checkpoint(info: CheckpointInfo, *, quantization: str | None = None) -> list[str]:
    """Every reason the checkpoint would build into a broken engine, one line each (empty when fine).

    Args:
        quantization: the quantization the build asks for (`--quantization`), checked against the checkpoint.
    """
    problems: list[str] = []
    problems += [f"{INDEX_FILE}: shard {name} is missing" for name in info.missing_files]
    problems += _check_dimensions(info)
    problems += _check_architecture(info)
    problems += _check_quant_declarations(info, quantization)
    problems += _check_nvfp4_layout(info)
    return problems


def validate_checkpoint(info: CheckpointInfo, *, quantization: str | None = None) -> None:
    """Raise the first problem `check_checkpoint` finds, as one line (with how many more there are)."""
    problems = check_checkpoint(info, quantization=quantization)
    if problems:
        more = f" (+{len(problems) - 1} more; see `trtforge inspect`)" if len(problems) > 1 else ""
        raise CheckpointError(f"{info.source}: {problems[0]}{more}")


def _check_dimensions(info: CheckpointInfo) -> list[str]:
    problems = [_dimension_problem(key, info.text_config.get(key)) for key in DIMENSION_KEYS]
    return [problem for problem in problems if problem]


def _check_architecture(info: CheckpointInfo) -> list[str]:
    arch = info.architecture
    if arch in SUPPORTED_ARCHITECTURES:
        return []
    hint = UNSUPPORTED_HINTS.get(arch, "not supported by the TensorRT-LLM engine flow")
    return [f"{CONFIG_FILE}: architecture {arch}: {hint}"]


def _check_quant_declarations(info: CheckpointInfo, requested: str | None) -> list[str]:
    problems: list[str] = []
    roles = info.roles()
    packed = [t.name for t in info.tensors if roles[t.name] == "nvfp4_weight"]
    if packed and info.hf_quant is None:
        problems.append(
            f"{HF_QUANT_CONFIG_FILE} is missing, but {packed[0]} is NVFP4-packed: "
            "TensorRT-LLM would pad it into BF16 and the engine would produce garbage"
        )
    hf, cfg = info.hf_quant, info.config_quant
    if hf and cfg:
        if cfg.quant_algo and hf.quant_algo and cfg.quant_algo != hf.quant_algo:
            problems.append(
                f"{CONFIG_FILE} quantization_config.quant_algo {cfg.quant_algo} contradicts "
                f"{HF_QUANT_CONFIG_FILE} quant_algo {hf.quant_algo}"
            )
        if cfg.kv_cache_quant_algo != hf.kv_cache_quant_algo and cfg.kv_cache_quant_algo is not None:
            problems.append(
                f"{CONFIG_FILE} quantization_config.kv_cache_quant_algo {cfg.kv_cache_quant_algo} contradicts "
                f"{HF_QUANT_CONFIG_FILE} kv_cache_quant_algo {hf.kv_cache_quant_algo}"
            )
    declared = info.quantization
    if declared and declared.quant_algo == "NVFP4" and not packed:
        problems.append(f"{declared.source} says NVFP4 but no tensor has a weight_scale: not an NVFP4 export")
    if requested and declared and declared.quant_algo and requested.upper() != declared.quant_algo:
        problems.append(
            f"requested quantization {requested.upper()} contradicts the checkpoint's "
            f"{declared.quant_algo} ({declared.source})"
        )
    return problems


def _check_nvfp4_layout(info: CheckpointInfo) -> list[str]:
    """Each quantized Linear: weight U8 [N, K/2], weight_scale F8_E4M3 [N, K/16], weight_scale_2 F32 scalar."""
    by_name = {t.name: t for t in info.tensors}
    problems: list[str] = []
    for scale in info.tensors:
        if not scale.name.endswith(".weight_scale"):
            continue
        module = scale.name.removesuffix(".weight_scale")
        weight = by_name.get(f"{module}.weight")
        if weight is None:
            problems.append(f"{module}.weight is missing but {scale.name} exists ({scale.file})")
            continue
        if weight.dtype != "U8" or len(weight.shape) != 2:
            problems.append(
                f"{weight.name} is {weight.dtype} {list(weight.shape)}, NVFP4 needs U8 [N, K/2] ({weight.file})"
            )
            continue
        n, half_k = weight.shape
        expected = (n, half_k // 8)  # K/16 with K = 2 × half_k
        if scale.dtype != "F8_E4M3":
            problems.append(
                f"{scale.name} is {scale.dtype}, NVFP4 block scales must be F8_E4M3 ({scale.file})"
            )
        elif scale.shape != expected:
            problems.append(
                f"{scale.name} has shape {list(scale.shape)}, expected {list(expected)} for "
                f"{weight.name} {list(weight.shape)} ({scale.file})"
            )
        global_scale = by_name.get(f"{module}.weight_scale_2")
        if global_scale is None:
            problems.append(f"{module}.weight_scale_2 is missing (NVFP4 needs an F32 global scale)")
        elif global_scale.dtype != "F32" or global_scale.numel != 1:
            problems.append(
                f"{global_scale.name} is {global_scale.dtype} {list(global_scale.shape)}, "
                f"NVFP4 needs an F32 scalar ({global_scale.file})"
            )
    return problems
