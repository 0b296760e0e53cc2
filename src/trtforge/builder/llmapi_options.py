"""The LLM API arguments a PyTorch entry is served with, derived from its catalogue entry.

Written into the entry as `llm_api_options.yaml`: TorchLlmArgs field names, nested configs as mappings, no
`model` (the checkpoint directory is passed beside it). It is exactly the file
`trtllm-serve <entry>/checkpoint --extra_llm_api_options <entry>/llm_api_options.yaml` takes, and what NVIDIA's
llmapi Triton `model.yaml` holds besides `model` and `triton_config`. The arguments enter the entry's hash.

What trtforge sets, and why (docs/serving.md):
    max_batch_size, max_num_tokens, max_seq_len   the entry's limits (TensorRT-LLM's defaults, 2048/8192 and the
                                                  model's context, are sized for no particular GPU)
    tensor/pipeline_parallel_size                 the entry's tp_size/pp_size; moe_expert_parallel_size only when
                                                  the entry sets ep_size (None lets TensorRT-LLM choose)
    kv_cache_config.free_gpu_memory_fraction      the serve table's kv_cache_free_gpu_mem_fraction, else 0.9
    guided_decoding_backend: xgrammar             structured output (json_schema, regex, EBNF) needs a backend set
    cuda_graph_config.batch_sizes                 `cuda_graph_batch_sizes`: graphs only for sizes the entry can
                                                  reach (the default captures 34, up to 128, ~200 MB each)
    trust_remote_code                             only when the entry sets it
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from trtforge.catalog import CatalogEntry
from trtforge.constants import DEFAULT_KV_CACHE_FREE_GPU_MEM_FRACTION
from trtforge.engine import LLM_API_OPTIONS

__all__ = ["CudaGraphConfig", "KvCacheConfig", "LlmApiOptions", "cuda_graph_batch_sizes", "llm_api_options"]

# Every batch size up to this one gets its own graph: small decode batches are the common case, and a batch
# without a graph of its exact size runs eagerly. Above it, powers of two and max_batch_size itself.
EVERY_SIZE_UP_TO = 16


def cuda_graph_batch_sizes(max_batch_size: int) -> list[int]:
    """The decode batch sizes trtforge captures CUDA graphs for: 1…16, then powers of two, then max_batch_size."""
    sizes = set(range(1, min(max_batch_size, EVERY_SIZE_UP_TO) + 1))
    power = EVERY_SIZE_UP_TO * 2
    while power < max_batch_size:
        sizes.add(power)
        power *= 2
    sizes.add(max_batch_size)
    return sorted(sizes)


class KvCacheConfig(BaseModel):
    """`kv_cache_config` (TensorRT-LLM's KvCacheConfig): only what trtforge sets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    free_gpu_memory_fraction: float = Field(gt=0.0, le=1.0)


class CudaGraphConfig(BaseModel):
    """`cuda_graph_config` (TensorRT-LLM's CudaGraphConfig): the captured batch sizes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_sizes: list[int]

    @field_validator("batch_sizes")
    @classmethod
    def _check_sizes(cls, value: list[int]) -> list[int]:
        if not value or any(size < 1 for size in value) or value != sorted(set(value)):
            raise ValueError("must be distinct positive batch sizes in increasing order")
        return value


class LlmApiOptions(BaseModel):
    """The arguments of `tensorrt_llm.LLM(model=<checkpoint>, **options)` a PyTorch entry carries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int = Field(ge=1)
    max_num_tokens: int = Field(ge=1)
    max_seq_len: int = Field(ge=2)
    tensor_parallel_size: int = Field(default=1, ge=1)
    pipeline_parallel_size: int = Field(default=1, ge=1)
    moe_expert_parallel_size: int | None = Field(default=None, ge=1)
    kv_cache_config: KvCacheConfig
    guided_decoding_backend: Literal["xgrammar"] = "xgrammar"
    cuda_graph_config: CudaGraphConfig
    trust_remote_code: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """The YAML's content: unset optional fields left out (TensorRT-LLM's own defaults apply)."""
        return self.model_dump(mode="json", exclude_none=True)

    def to_yaml(self) -> str:
        return str(yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False))

    def write(self, dest: Path) -> Path:
        """Write `llm_api_options.yaml` into the entry being prepared at `dest`."""
        path = dest / LLM_API_OPTIONS
        path.write_text(self.to_yaml(), encoding="utf-8")
        return path


def llm_api_options(entry: CatalogEntry) -> LlmApiOptions:
    """The LLM API arguments for `entry` (its limits, parallelism, serve table's KV share, graphs)."""
    fraction = entry.serve.kv_cache_free_gpu_mem_fraction or DEFAULT_KV_CACHE_FREE_GPU_MEM_FRACTION
    return LlmApiOptions(
        max_batch_size=entry.max_batch_size,
        max_num_tokens=entry.max_num_tokens,
        max_seq_len=entry.max_seq_len,
        tensor_parallel_size=entry.tp_size,
        pipeline_parallel_size=entry.pp_size,
        moe_expert_parallel_size=entry.ep_size,
        kv_cache_config=KvCacheConfig(free_gpu_memory_fraction=fraction),
        cuda_graph_config=CudaGraphConfig(batch_sizes=cuda_graph_batch_sizes(entry.max_batch_size)),
        trust_remote_code=True if entry.trust_remote_code else None,
    )


def read_llm_api_options(path: Path) -> LlmApiOptions:
    """Parse an entry's `llm_api_options.yaml` back (tests and `plan` of a built entry read it)."""
    from trtforge.errors import InvalidEngineError
    from trtforge.untrusted import read_bounded

    raw = read_bounded(path, 1 << 20, error=InvalidEngineError, what="LLM API options")
    try:
        return LlmApiOptions.model_validate(yaml.safe_load(raw))
    except (yaml.YAMLError, ValueError) as exc:
        raise InvalidEngineError(f"{path}: not valid LLM API options: {str(exc).splitlines()[0]}") from None
