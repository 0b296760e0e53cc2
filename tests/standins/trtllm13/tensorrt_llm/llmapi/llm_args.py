"""`TorchLlmArgs` and its nested configs: pydantic models with extra="forbid", as the real ones (an unknown
argument is a ValidationError, which is a ValueError). Defaults from TensorRT-LLM main's llm_args.py."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class StrictBaseModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KvCacheConfig(StrictBaseModel):
    free_gpu_memory_fraction: float | None = Field(default=0.9, ge=0.0, le=1.0)
    enable_block_reuse: bool = True
    dtype: str = "auto"
    max_tokens: int | None = None
    tokens_per_block: int = 32
    host_cache_size: int | None = None
    enable_partial_reuse: bool = True


class CudaGraphConfig(StrictBaseModel):
    batch_sizes: list[int] | None = None
    max_batch_size: int = 0
    enable_padding: bool = False


class TorchLlmArgs(StrictBaseModel):
    model: str
    tokenizer: str | None = None
    tokenizer_mode: Literal["auto", "slow"] = "auto"
    tokenizer_revision: str | None = None
    skip_tokenizer_init: bool = False
    trust_remote_code: bool = False
    revision: str | None = None
    dtype: str = "auto"
    tensor_parallel_size: int = Field(default=1, ge=1)
    pipeline_parallel_size: int = Field(default=1, ge=1)
    context_parallel_size: int = 1
    moe_expert_parallel_size: int | None = None
    moe_tensor_parallel_size: int | None = None
    gpus_per_node: int | None = None
    max_batch_size: int = Field(default=2048, ge=1)
    max_num_tokens: int = Field(default=8192, ge=1)
    max_seq_len: int | None = None
    max_input_len: int = 1024
    max_beam_width: int = 1
    kv_cache_config: KvCacheConfig = Field(default_factory=KvCacheConfig)
    cuda_graph_config: CudaGraphConfig | None = Field(default_factory=CudaGraphConfig)
    enable_chunked_prefill: bool = False
    guided_decoding_backend: Literal["xgrammar", "llguidance"] | None = None
    gather_generation_logits: bool = False
    enable_autotuner: bool = True
    torch_compile_config: dict[str, Any] | None = None
    disable_overlap_scheduler: bool = False
    stream_interval: int = Field(default=1, ge=1)
    num_postprocess_workers: int = 0
    postprocess_tokenizer_dir: str | None = None
    orchestrator_type: Literal["rpc", "ray"] | None = None
    enable_iter_perf_stats: bool = False
    return_perf_metrics: bool = False
    print_iter_log: bool = False
    attn_backend: str = "TRTLLM"
    moe_config: dict[str, Any] | None = None
    speculative_config: dict[str, Any] | None = None
    backend: Literal["pytorch"] | None = None
    sampler_type: str = "auto"

    @field_validator("backend", mode="before")
    @classmethod
    def _only_pytorch(cls, value: Any) -> Any:
        if value in ("tensorrt", "trt"):
            raise ValueError(
                "backend='tensorrt' is no longer supported: the TensorRT backend was removed; "
                "PyTorch is the only backend (see docs/source/legacy/tensorrt-backend-removal.md)"
            )
        return value

    @field_validator("sampler_type")
    @classmethod
    def _no_trtllm_sampler(cls, value: str) -> str:
        if value == "TRTLLMSampler":
            raise ValueError("sampler_type 'TRTLLMSampler' has been removed")
        return value
