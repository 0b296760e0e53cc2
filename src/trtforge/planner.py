"""Will the engine fit? A memory plan from the safetensors headers, before a ten-minute build.

The model (docs/planner.md explains and justifies every number):

    engine bytes / rank = Σ parts, each at its checkpoint dtype, split per TP rank:
        NVFP4 linears (U8, 0.5 B/param)        ÷ tp
        FP8 block scales (1 B per 16 weights)  ÷ tp
        F32 global/input/KV scales             whole on every rank
        embedding (BF16)                       whole on every rank (TRT-LLM's use_parallel_embedding=False)
        lm_head (BF16)                         ÷ tp (vocab-parallel, gathered logits)
        norms (BF16)                           whole on every rank
        other unquantized linears              ÷ tp
    KV bytes / token / rank = 2 × layers × ceil(kv_heads / tp) × head_dim × bytes(kv dtype)
    reserve / rank = 1 GiB runtime (CUDA context, cuBLAS/TRT workspaces, decoder buffers)
                   + activations: max_num_tokens × (2 × intermediate / tp + 4 × hidden) × 2 B
                   + logits: max_batch_size × vocab / tp × 4 B
    KV pool / rank = kv_cache_free_gpu_mem_fraction × (GPU memory − engine − reserve)
    kv_tokens_capacity = KV pool ÷ KV bytes per token; max_concurrent_sequences = that ÷ max_seq_len
    fits ⇔ engine + reserve < GPU memory and max_concurrent_sequences ≥ max_batch_size

The PyTorch backend (`backend="pytorch"`: the checkpoint loaded by TensorRT-LLM's LLM API, no engine) loads the
same tensors, so weights and reserve are counted the same way, and the KV pool is
`kv_cache_config.free_gpu_memory_fraction` × the memory left once weights and a max_num_tokens forward pass are
in. CUDA graphs are captured after the KV pool is allocated, so they must fit in what the fraction leaves:

    CUDA graphs / rank = captured batch sizes × 200 MB (the LLM API's "up to about 200 MB" each)
    fits ⇔ as above, and CUDA graphs ≤ (1 − fraction) × (GPU memory − weights − reserve)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from trtforge.checkpoint.model import CheckpointInfo, TensorRole
from trtforge.constants import DEFAULT_KV_CACHE_FREE_GPU_MEM_FRACTION
from trtforge.errors import PlanError, UsageError

GIB = 1 << 30
RUNTIME_RESERVE_BYTES = 1 * GIB
ACTIVATION_DTYPE_BYTES = 2  # BF16 activations
LOGITS_DTYPE_BYTES = 4  # FP32 logits for the last token of each sequence
TP_CHOICES = (1, 2, 4, 8)
# The LLM API's CudaGraphConfig docstring: each captured graph "may use up to about 200 MB".
CUDA_GRAPH_BYTES = 200 * 1000**2

PlanBackend = Literal["tensorrt", "pytorch"]

KV_DTYPE_BYTES = {"FP8": 1, "INT8": 1, "BF16": 2, "F16": 2, "FP16": 2, "F32": 4, "FP32": 4}

# How each tensor role is split across tensor-parallel ranks: True = divided by tp, False = replicated.
SPLIT_BY_TP: dict[TensorRole, bool] = {
    "nvfp4_weight": True,
    "block_scale": True,
    "global_scale": False,
    "embedding": False,
    "lm_head": True,
    "norm": False,
    "linear": True,
    "other": False,
}


@dataclass(frozen=True)
class PlanSettings:
    """What the engine is built and served with."""

    max_batch_size: int = 8
    max_seq_len: int = 16384
    max_num_tokens: int = 8192
    tp_size: int = 1
    kv_cache_free_gpu_mem_fraction: float = DEFAULT_KV_CACHE_FREE_GPU_MEM_FRACTION
    kv_cache_dtype: str | None = None  # None: what the checkpoint declares
    backend: PlanBackend = "tensorrt"  # a TensorRT engine, or the checkpoint on the PyTorch backend
    # PyTorch backend: the CUDA-graph batch sizes; None: trtforge's choice for max_batch_size (llmapi_options).
    cuda_graph_batch_sizes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_seq_len", "max_num_tokens", "tp_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1")
        if not 0 < self.kv_cache_free_gpu_mem_fraction <= 1:
            raise UsageError("kv_cache_free_gpu_mem_fraction must be in (0, 1]")
        if self.backend not in ("tensorrt", "pytorch"):
            raise UsageError(f"the planner knows backends tensorrt and pytorch, not {self.backend!r}")

    def graph_batch_sizes(self) -> tuple[int, ...]:
        """The batch sizes CUDA graphs are captured for (none for a TensorRT engine: its graphs are its own)."""
        if self.backend != "pytorch":
            return ()
        if self.cuda_graph_batch_sizes is not None:
            return self.cuda_graph_batch_sizes
        from trtforge.builder.llmapi_options import cuda_graph_batch_sizes

        return tuple(cuda_graph_batch_sizes(self.max_batch_size))


@dataclass(frozen=True)
class EnginePart:
    """One row of the engine-size table: a tensor role, its total bytes and its bytes per rank."""

    role: str
    tensors: int
    params: int
    bytes_total: int
    bytes_per_rank: int
    split_by_tp: bool


@dataclass(frozen=True)
class MemoryPlan:
    """The numbers `trtforge plan` shows; GPU-dependent fields are None when no GPU memory is known."""

    source: str
    settings: PlanSettings
    gpu_name: str | None
    gpu_memory_bytes: int | None
    params_total: int
    weights_bytes: int
    parts: tuple[EnginePart, ...]
    engine_bytes_estimate: int
    kv_cache_dtype: str
    kv_bytes_per_token: int
    reserve_bytes: int
    kv_cache_bytes: int | None
    kv_tokens_capacity: int | None
    max_concurrent_sequences: int | None
    fits: bool | None
    recommendation: str | None
    alternatives: tuple[dict[str, Any], ...] = field(default=())
    trtllm_bench: dict[str, Any] = field(default_factory=dict)
    cuda_graph_bytes: int = 0  # PyTorch backend: captured batch sizes × CUDA_GRAPH_BYTES
    headroom_bytes: int | None = (
        None  # PyTorch backend: what the KV fraction leaves for CUDA graphs and the rest
    )

    @property
    def backend(self) -> PlanBackend:
        return self.settings.backend

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "backend": self.backend,
            "gpu": self.gpu_name,
            "gpu_memory_bytes": self.gpu_memory_bytes,
            "max_batch_size": self.settings.max_batch_size,
            "max_seq_len": self.settings.max_seq_len,
            "max_num_tokens": self.settings.max_num_tokens,
            "tp_size": self.settings.tp_size,
            "kv_cache_free_gpu_mem_fraction": self.settings.kv_cache_free_gpu_mem_fraction,
            "kv_cache_dtype": self.kv_cache_dtype,
            "params_total": self.params_total,
            "weights_bytes": self.weights_bytes,
            "engine_bytes_estimate": self.engine_bytes_estimate,
            "engine_parts": [part.__dict__ for part in self.parts],
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "reserve_bytes": self.reserve_bytes,
            "kv_cache_bytes": self.kv_cache_bytes,
            "kv_tokens_capacity": self.kv_tokens_capacity,
            "max_concurrent_sequences": self.max_concurrent_sequences,
            "fits": self.fits,
            "recommendation": self.recommendation,
            "alternatives": list(self.alternatives),
            "trtllm_bench": self.trtllm_bench,
            "cuda_graph_batch_sizes": list(self.settings.graph_batch_sizes()),
            "cuda_graph_bytes": self.cuda_graph_bytes,
            "headroom_bytes": self.headroom_bytes,
        }


def engine_parts(info: CheckpointInfo, tp_size: int) -> tuple[EnginePart, ...]:
    """Engine bytes per tensor role, as stored in the checkpoint, and per TP rank."""
    roles = info.roles()
    totals: dict[TensorRole, list[int]] = {}
    for tensor in info.tensors:
        role = roles[tensor.name]
        row = totals.setdefault(role, [0, 0, 0])
        row[0] += 1
        row[1] += tensor.params(role)
        row[2] += tensor.nbytes
    order = list(SPLIT_BY_TP)
    parts = []
    for role in sorted(totals, key=order.index):
        count, params, nbytes = totals[role]
        split = SPLIT_BY_TP[role]
        parts.append(
            EnginePart(role, count, params, nbytes, math.ceil(nbytes / tp_size) if split else nbytes, split)
        )
    return tuple(parts)


def kv_bytes_per_token(info: CheckpointInfo, *, tp_size: int = 1, kv_cache_dtype: str | None = None) -> int:
    """2 (K and V) × layers × KV heads on this rank × head_dim × bytes of the KV dtype."""
    dtype = (kv_cache_dtype or info.kv_cache_dtype).upper()
    if dtype not in KV_DTYPE_BYTES:
        raise UsageError(f"unknown KV-cache dtype {dtype!r}: use one of FP8, BF16, F16")
    kv_heads_per_rank = math.ceil(info.num_kv_heads / tp_size)  # each rank keeps at least one KV head
    return 2 * info.num_layers * kv_heads_per_rank * info.head_dim * KV_DTYPE_BYTES[dtype]


def reserve_bytes(info: CheckpointInfo, settings: PlanSettings) -> int:
    """Runtime + activation + logits memory a rank needs besides weights and KV cache (an estimate)."""
    hidden = info.dim("hidden_size")
    inter = info.optional_dim("intermediate_size") or 4 * hidden
    vocab = info.optional_dim("vocab_size") or 0
    tp = settings.tp_size
    activations = settings.max_num_tokens * (2 * inter // tp + 4 * hidden) * ACTIVATION_DTYPE_BYTES
    logits = settings.max_batch_size * math.ceil(vocab / tp) * LOGITS_DTYPE_BYTES
    return RUNTIME_RESERVE_BYTES + activations + logits


def plan_memory(
    info: CheckpointInfo,
    settings: PlanSettings,
    *,
    gpu_memory_bytes: int | None = None,
    gpu_name: str | None = None,
) -> MemoryPlan:
    """Plan one engine on one GPU model (every rank gets the same GPU). Without GPU memory, sizes only."""
    core = _plan_core(info, settings, gpu_memory_bytes)
    recommendation: str | None = None
    alternatives: tuple[dict[str, Any], ...] = ()
    if core["fits"] is False:
        alternatives = tuple(_alternatives(info, settings, gpu_memory_bytes or 0, core))
        recommendation = _recommendation_text(core, alternatives, settings)
    return MemoryPlan(
        source=info.source,
        settings=settings,
        gpu_name=gpu_name,
        gpu_memory_bytes=gpu_memory_bytes,
        params_total=info.params_total,
        weights_bytes=info.weights_bytes,
        parts=core["parts"],
        engine_bytes_estimate=core["engine"],
        kv_cache_dtype=(settings.kv_cache_dtype or info.kv_cache_dtype).upper(),
        kv_bytes_per_token=core["kv_per_token"],
        reserve_bytes=core["reserve"],
        kv_cache_bytes=core["kv_cache"],
        kv_tokens_capacity=core["capacity"],
        max_concurrent_sequences=core["sequences"],
        fits=core["fits"],
        recommendation=recommendation,
        alternatives=alternatives,
        # trtllm-bench sizes engines; the PyTorch backend builds none, so its heuristic says nothing there.
        trtllm_bench=trtllm_bench_estimate(info, settings, gpu_memory_bytes=gpu_memory_bytes)
        if settings.backend == "tensorrt"
        else {},
        cuda_graph_bytes=core["graphs"],
        headroom_bytes=core["headroom"],
    )


def _plan_core(info: CheckpointInfo, settings: PlanSettings, gpu_memory_bytes: int | None) -> dict[str, Any]:
    parts = engine_parts(info, settings.tp_size)
    engine = sum(p.bytes_per_rank for p in parts)
    per_token = kv_bytes_per_token(info, tp_size=settings.tp_size, kv_cache_dtype=settings.kv_cache_dtype)
    reserve = reserve_bytes(info, settings)
    graphs = len(settings.graph_batch_sizes()) * CUDA_GRAPH_BYTES
    result: dict[str, Any] = {
        "parts": parts,
        "engine": engine,
        "kv_per_token": per_token,
        "reserve": reserve,
        "graphs": graphs,
        "headroom": None,
        "kv_cache": None,
        "capacity": None,
        "sequences": None,
        "fits": None,
        "weights_fit": None,
        "graphs_fit": None,
    }
    if gpu_memory_bytes is None:
        return result
    free = gpu_memory_bytes - engine - reserve
    kv_cache = max(0, int(free * settings.kv_cache_free_gpu_mem_fraction))
    capacity = kv_cache // per_token
    sequences = capacity // settings.max_seq_len
    # The PyTorch backend captures its graphs once the KV pool is allocated: they live in what the fraction left.
    headroom = max(0, free - kv_cache) if settings.backend == "pytorch" else None
    graphs_fit = headroom is None or graphs <= headroom
    result.update(
        headroom=headroom,
        kv_cache=kv_cache,
        capacity=capacity,
        sequences=sequences,
        weights_fit=free > 0,
        graphs_fit=graphs_fit,
        fits=free > 0 and sequences >= settings.max_batch_size and graphs_fit,
    )
    return result


def _alternatives(
    info: CheckpointInfo, settings: PlanSettings, gpu_memory_bytes: int, core: dict[str, Any]
) -> list[dict[str, Any]]:
    """Catalogue settings that fit, cheapest change first: smaller batch, shorter sequences, more TP.

    Only what a catalogue entry (and so `build`) can change is offered: the KV-cache dtype, for one, comes with
    the checkpoint.
    """
    found: list[dict[str, Any]] = []

    def fits(candidate: PlanSettings) -> bool:
        return bool(_plan_core(info, candidate, gpu_memory_bytes)["fits"])

    if core["weights_fit"]:
        batch = _largest_fitting_batch(info, settings, gpu_memory_bytes, core["sequences"])
        if batch >= 1:
            found.append({"change": "max_batch_size", "max_batch_size": batch})
        per_sequence = core["capacity"] // settings.max_batch_size
        seq_len = (per_sequence // 1024) * 1024 if per_sequence >= 1024 else per_sequence
        if seq_len >= 1 and fits(replace(settings, max_seq_len=seq_len)):
            found.append({"change": "max_seq_len", "max_seq_len": seq_len})
    for tp in TP_CHOICES:
        if (
            tp > settings.tp_size
            and info.num_attention_heads % tp == 0
            and fits(replace(settings, tp_size=tp))
        ):
            found.append({"change": "tp_size", "tp_size": tp})
            break
    return found


def _largest_fitting_batch(
    info: CheckpointInfo, settings: PlanSettings, gpu_memory_bytes: int, sequences: int
) -> int:
    """The largest max_batch_size up to `sequences` that fits (fewer CUDA graphs on the PyTorch backend too)."""
    if settings.backend == "tensorrt":
        return sequences
    for batch in range(min(sequences, settings.max_batch_size - 1), 0, -1):
        if _plan_core(info, replace(settings, max_batch_size=batch), gpu_memory_bytes)["fits"]:
            return batch
    return 0


def _recommendation_text(
    core: dict[str, Any], alternatives: tuple[dict[str, Any], ...], settings: PlanSettings
) -> str:
    if not core["weights_fit"]:
        what = "the engine" if settings.backend == "tensorrt" else "the weights"
        head = f"{what} and runtime reserve alone do not fit on this GPU"
    elif not core["graphs_fit"]:
        head = (
            f"{len(settings.graph_batch_sizes())} CUDA graphs ({core['graphs'] / 1e9:.1f} GB) do not fit in the "
            f"{core['headroom'] / 1e9:.1f} GB that kv_cache_free_gpu_mem_fraction "
            f"{settings.kv_cache_free_gpu_mem_fraction} leaves beside the KV cache (lower the fraction in "
            "[engines.NAME.serve])"
        )
    else:
        head = (
            f"KV cache holds {core['sequences']} sequence(s) of {settings.max_seq_len} tokens, "
            f"max_batch_size is {settings.max_batch_size}"
        )
    if not alternatives:
        return f"{head}; no setting up to tp_size {TP_CHOICES[-1]} fits: use a GPU with more memory"
    options = [f"{alt['change']} = {alt[alt['change']]}" for alt in alternatives]
    return f"{head}; fits with " + ", or ".join(options)


def trtllm_bench_estimate(
    info: CheckpointInfo, settings: PlanSettings, *, gpu_memory_bytes: int | None
) -> dict[str, Any]:
    """What trtllm-bench's own heuristic (`bench/build/tuning.py: calc_engine_setting`) would say.

    It sizes the engine as params × bytes-per-element (0.5 for NVFP4, ignoring block scales and the unquantized
    embedding/lm_head), leaves no runtime reserve, and gives 0.95 of the rest to the KV cache.
    """
    per_elem = {"NVFP4": 0.5, "FP8": 1.0}.get(info.quant_algo or "", 2.0)
    engine = int(info.params_total * per_elem)
    kv_per_token = kv_bytes_per_token(info, tp_size=1, kv_cache_dtype=settings.kv_cache_dtype)
    # trtllm-bench keeps max(tp, kv_heads) heads in total, i.e. whole-model KV spread over all GPUs.
    kv_per_token = kv_per_token * max(settings.tp_size, info.num_kv_heads) // info.num_kv_heads
    result: dict[str, Any] = {"engine_bytes_estimate": engine, "kv_bytes_per_token": kv_per_token}
    if gpu_memory_bytes is not None:
        available = gpu_memory_bytes * settings.tp_size - engine
        cache = max(0.0, available * 0.95)
        result["kv_tokens_capacity"] = int(cache // kv_per_token)
        result["max_concurrent_sequences"] = int(cache // (kv_per_token * settings.max_seq_len))
    return result


def require_fit(plan: MemoryPlan) -> None:
    """Raise a one-line PlanError when the plan does not fit (and name what would)."""
    if plan.fits is False:
        gpu = plan.gpu_name or "the GPU"
        raise PlanError(f"{plan.source} does not fit on {gpu}: {plan.recommendation}")
