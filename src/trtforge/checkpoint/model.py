"""What a checkpoint is, as trtforge describes it without loading a weight: `CheckpointInfo` (config,
declared quantization, every tensor's dtype and shape), `TensorInfo`, `QuantizationInfo`, tensor roles, and the
parsing of the quantization a config declares. Reading files is `headers` and `locate`; checks are `validate`."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from trtforge.errors import CheckpointError

CONFIG_FILE = "config.json"
HF_QUANT_CONFIG_FILE = "hf_quant_config.json"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
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
        problem = dimension_problem(key, value)
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
        from trtforge.checkpoint.validate import check_checkpoint  # here: validation reads this model

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


def dimension_problem(key: str, value: Any) -> str | None:
    """Why a config dimension is unusable (None when it is a positive integer or unset)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DIMENSION:
        return f"{CONFIG_FILE} {key} is {short_repr(value)}, expected a positive integer"
    return None


def is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 63


def short_repr(value: Any, limit: int = 60) -> str:
    """A value quoted for an error line, cut so a hostile file cannot flood the terminal."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}…"


def quant_from_hf_quant_config(data: Mapping[str, Any]) -> QuantizationInfo:
    nested = data.get("quantization")
    quant: Mapping[str, Any] = nested if isinstance(nested, Mapping) else data
    return _quant_info(quant, HF_QUANT_CONFIG_FILE)


def quant_from_config(config: Mapping[str, Any]) -> QuantizationInfo | None:
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
            raise CheckpointError(f"{source}: {key} is {short_repr(value)}, expected a string")
    if group is not None and not (is_count(group) and group > 0):
        raise CheckpointError(f"{source}: group_size is {short_repr(group)}, expected a positive integer")
    if not isinstance(excluded, list) or not all(isinstance(m, str) for m in excluded):
        raise CheckpointError(
            f"{source}: exclude_modules is {short_repr(excluded)}, expected a list of names"
        )
    return QuantizationInfo(
        quant_algo=algo.upper() if algo else None,
        kv_cache_quant_algo=kv.upper() if kv else None,
        group_size=group or None,
        exclude_modules=tuple(excluded),
        source=source,
    )
