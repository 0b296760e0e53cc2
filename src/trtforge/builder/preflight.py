"""Refuse, in a second, a build that cannot work: checkpoint validation, GPU architecture, memory plan.

`trtforge build` calls `preflight_build` before starting `trtllm-bench build` (a TensorRT engine) or before
preparing a PyTorch entry (the same checks, the PyTorch backend's memory model and architecture list). Each refusal is one line
(`CheckpointError`, `GpuError`, `PlanError`); `force=True` turns them into logged warnings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from trtforge.checkpoint.locate import inspect_checkpoint
from trtforge.checkpoint.model import CheckpointInfo
from trtforge.checkpoint.validate import check_checkpoint
from trtforge.constants import DEFAULT_KV_CACHE_FREE_GPU_MEM_FRACTION
from trtforge.errors import CheckpointError, GpuError, PlanError, TrtforgeError
from trtforge.gpu import GpuInfo, check_arch_supports, try_detect_gpus
from trtforge.planner import MemoryPlan, PlanBackend, PlanSettings, plan_memory, require_fit

if TYPE_CHECKING:
    from trtforge.catalog import CatalogEntry

log = logging.getLogger(__name__)


class _EntryLike(Protocol):
    """The fields of `CatalogEntry` preflight reads (duck-typed so tests can pass any such object)."""

    name: str
    model: str
    revision: str | None
    quantization: str | None
    tp_size: int
    pp_size: int
    max_batch_size: int
    max_seq_len: int
    max_num_tokens: int
    backend: str


@dataclass(frozen=True)
class PreflightReport:
    """What preflight found; `warnings` are the refusals `force=True` let through."""

    checkpoint: CheckpointInfo | None
    gpu_arch: str | None
    gpu: GpuInfo | None
    plan: MemoryPlan | None
    notes: tuple[str, ...]
    warnings: tuple[str, ...]


def preflight_build(
    entry: CatalogEntry | _EntryLike,
    *,
    model_dir: Path | None,
    gpu_arch: str | None,
    force: bool,
    gpu_memory_bytes: int | None = None,
) -> PreflightReport:
    """Inspect and validate the checkpoint, check the GPU architecture, and plan memory, before a build.

    Args:
        entry: the catalogue entry being built (`trtforge.catalog.CatalogEntry`).
        model_dir: the local checkpoint directory, when the build already has one (else `entry.model`).
        gpu_arch: a declared architecture ("sm100"…); None → the GPU NVML reports, if any.
        force: log refusals as warnings instead of raising.
        gpu_memory_bytes: memory of the target GPU when NVML cannot tell (e.g. `--gpu B200`'s); NVML wins.

    Raises:
        CheckpointError: the checkpoint would build into a broken engine (names the tensor or file).
        GpuError: the GPU cannot run the quantization (NVFP4 needs compute capability ≥ 10.0).
        PlanError: the engine or its max_batch_size × max_seq_len KV cache does not fit the GPU.
    """
    notes: list[str] = []
    warnings: list[str] = []

    def refuse(error: TrtforgeError) -> None:
        if not force:
            raise error
        warnings.append(str(error))
        log.warning("--force: %s", error)

    def note(text: str) -> None:
        notes.append(text)
        log.info("preflight: %s", text)

    if getattr(entry, "backend", "tensorrt") == "reference":
        note(f"{entry.name}: {entry.backend} backend, nothing to check")
        return PreflightReport(None, None, None, None, tuple(notes), tuple(warnings))
    # An entry not yet resolved ("auto") is checked as an engine: the stricter architecture list.
    backend = "pytorch" if entry.backend == "pytorch" else "tensorrt"

    info = _inspect(entry, model_dir, refuse)
    quantization = entry.quantization or (info.quant_algo if info else None)
    if info is not None:
        problems = check_checkpoint(info, quantization=entry.quantization, backend=backend)
        for problem in problems if force else problems[:1]:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 and not force else ""
            refuse(CheckpointError(f"{info.source}: {problem}{more}"))

    gpus = try_detect_gpus()
    gpu = gpus[0] if gpus else None
    arch = gpu_arch or (gpu.arch if gpu else None)
    if gpu_arch and gpu and gpu.arch != gpu_arch.lower().replace("_", ""):
        note(f"declared --gpu-arch {gpu_arch} but GPU 0 is {gpu.name} ({gpu.arch}); checking {gpu_arch}")
    if arch is None:
        note("no GPU found through NVML and no --gpu-arch given: architecture check skipped")
    else:
        try:
            check_arch_supports(arch, quantization)
        except GpuError as exc:
            refuse(GpuError(f"{entry.name}: {exc}"))

    plan = None
    if info is not None:
        plan = _plan(entry, info, gpu, gpu_memory_bytes, note)
        if plan.fits is False:
            try:
                require_fit(plan)
            except PlanError as exc:
                refuse(exc)
    return PreflightReport(info, arch, gpu, plan, tuple(notes), tuple(warnings))


def _inspect(
    entry: _EntryLike | CatalogEntry, model_dir: Path | None, refuse: Callable[[TrtforgeError], None]
) -> CheckpointInfo | None:
    source = str(model_dir) if model_dir is not None else entry.model
    try:
        return inspect_checkpoint(source, revision=entry.revision)
    except CheckpointError as exc:
        refuse(exc)
        return None


def plan_settings(entry: _EntryLike | CatalogEntry) -> PlanSettings:
    """What the planner checks for `entry` on its (resolved) backend.

    A PyTorch entry carries its KV share in its LLM API arguments (the serve table's, else the default), so the
    plan uses the same one; an engine's is a serving choice made later, planned at the default.
    """
    backend: PlanBackend = "pytorch" if getattr(entry, "backend", "tensorrt") == "pytorch" else "tensorrt"
    serve = getattr(entry, "serve", None)
    fraction = getattr(serve, "kv_cache_free_gpu_mem_fraction", None) if backend == "pytorch" else None
    return PlanSettings(
        max_batch_size=entry.max_batch_size,
        max_seq_len=entry.max_seq_len,
        max_num_tokens=entry.max_num_tokens,
        tp_size=entry.tp_size,
        kv_cache_free_gpu_mem_fraction=fraction or DEFAULT_KV_CACHE_FREE_GPU_MEM_FRACTION,
        backend=backend,
    )


def _plan(
    entry: _EntryLike | CatalogEntry,
    info: CheckpointInfo,
    gpu: GpuInfo | None,
    gpu_memory_bytes: int | None,
    note: Callable[[str], None],
) -> MemoryPlan:
    settings = plan_settings(entry)
    if entry.pp_size > 1:
        note(f"pp_size {entry.pp_size}: the plan assumes all layers on each rank (pessimistic)")
    if gpu is None and gpu_memory_bytes is not None:
        return plan_memory(info, settings, gpu_memory_bytes=gpu_memory_bytes, gpu_name="the declared GPU")
    if gpu is None:
        note("GPU memory unknown (no NVML): memory fit check skipped")
        return plan_memory(info, settings)
    return plan_memory(info, settings, gpu_memory_bytes=gpu.memory_total_bytes, gpu_name=gpu.name)
