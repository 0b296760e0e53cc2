"""Know the model before building: `inspect`, `plan` and `gpus`.

Human output (rich tables) goes to stderr; `--json` writes one document to stdout.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from trtforge.checkpoint.locate import inspect_checkpoint
from trtforge.checkpoint.model import CheckpointInfo
from trtforge.checkpoint.validate import check_checkpoint
from trtforge.cli._app import app, console, print_json
from trtforge.cli._options import BackendOption, JsonFlag, TrtllmPython
from trtforge.constants import DEFAULT_KV_CACHE_FREE_GPU_MEM_FRACTION
from trtforge.errors import CatalogError, CheckpointError, GpuError, PlanError, UsageError
from trtforge.gpu import (
    KNOWN_GPUS,
    check_arch_supports,
    detect_gpus,
    lookup_gpu,
    parse_memory_size,
    try_detect_gpus,
)
from trtforge.planner import MemoryPlan, PlanBackend, PlanSettings, plan_memory

if TYPE_CHECKING:
    from trtforge.catalog import CatalogEntry

GB = 1000**3


def _gb(size: int | None) -> str:
    return "—" if size is None else f"{size / GB:,.2f} GB"


@app.command()
def inspect(
    model: Annotated[
        str,
        typer.Argument(
            help="Checkpoint directory, Hugging Face hub id (org/name), or a built engine (name or dir)."
        ),
    ],
    revision: Annotated[str | None, typer.Option(help="Hub revision (branch, tag or commit).")] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the inspection as JSON on stdout.")
    ] = False,
) -> None:
    """Describe a checkpoint from its configs and safetensors headers (no weights loaded); exit 1 on problems.

    A built engine (its link name or its directory) is described from its config instead: backend, limits and
    the prompt limit it is served with.
    """
    engine_dir = _engine_dir(model)
    if engine_dir is not None:
        _inspect_engine(model, engine_dir, json_output=json_output)
        return
    info = inspect_checkpoint(model, revision=revision)
    problems = check_checkpoint(info)
    if json_output:
        print_json(info.to_json())
    else:
        _print_inspection(info, problems)
    if problems:
        raise typer.Exit(CheckpointError.exit_code)


def _engine_dir(model: str) -> Path | None:
    """The engine directory `model` names (an engine directory, or a link name of a built engine), or None."""
    from trtforge.engine import is_engine_dir
    from trtforge.errors import EngineNotFoundError
    from trtforge.store.links import resolve_engine

    path = Path(model).expanduser()
    if path.is_dir():
        return path if is_engine_dir(path) else None
    if "/" in model or model.startswith("."):
        return None  # a hub id (org/name) or a path that is not there
    try:
        return resolve_engine(model)
    except (EngineNotFoundError, CatalogError):
        return None


def _inspect_engine(name: str, path: Path, *, json_output: bool) -> None:
    """An engine's facts; the prompt limit under its catalogue entry's serve table (the default without one)."""
    from trtforge.catalog import load_catalog
    from trtforge.engine import read_engine

    engine = read_engine(path)
    catalog = load_catalog()
    requested = catalog.get(name).serve.enable_chunked_context if name in catalog else None
    chunked = engine.chunked_context(requested)
    facts = {
        "path": str(engine.path),
        "backend": engine.backend,
        "architecture": engine.architecture,
        "trtllm_version": engine.trtllm_version,
        "tp_size": engine.tp_size,
        "pp_size": engine.pp_size,
        "quant_algo": engine.quant_algo,
        "kv_cache_quant_algo": engine.kv_cache_quant_algo,
        "max_batch_size": engine.max_batch_size,
        "max_seq_len": engine.max_seq_len,
        "max_num_tokens": engine.max_num_tokens,
        "max_input_len": engine.max_input_len,
        "gather_generation_logits": engine.gather_generation_logits,
        "chunked_context": chunked,
        "prompt_limit": engine.prompt_limit(requested),
        "prompt_limit_rule": engine.runtime_limits.prompt_limit_rule(chunked_context=chunked),
    }
    if json_output:
        print_json(facts)
        return
    summary = Table(title=escape(str(engine.path)), show_header=False, box=None)
    summary.add_column(style="bold")
    summary.add_column()
    for key, value in facts.items():
        if key not in ("path", "prompt_limit", "prompt_limit_rule"):
            summary.add_row(key, escape(str(value)))
    console.print(summary)
    console.print(
        f"prompt limit: {engine.prompt_limit(requested):,} tokens ({escape(str(facts['prompt_limit_rule']))})"
    )


def _print_inspection(info: CheckpointInfo, problems: list[str]) -> None:
    quant = info.quantization
    summary = Table(title=escape(info.source), show_header=False, box=None)
    summary.add_column(style="bold")
    summary.add_column()
    rows = [
        ("architecture", info.architecture),
        ("dtype", info.dtype),
        (
            "layers / heads / kv heads / head_dim",
            f"{info.text_config.get('num_hidden_layers')} / {info.text_config.get('num_attention_heads')} / "
            f"{info.text_config.get('num_key_value_heads')} / {info.text_config.get('head_dim')}",
        ),
        ("parameters", f"{info.params_total / 1e9:,.2f} B ({info.params_total:,})"),
        ("quantization", f"{info.quant_algo or 'none'}" + (f" (from {quant.source})" if quant else "")),
        ("KV cache dtype", info.kv_cache_dtype),
        ("excluded modules", ", ".join(quant.exclude_modules) if quant and quant.exclude_modules else "—"),
        ("tensors", f"{len(info.tensors):,} in {len({t.file for t in info.tensors})} file(s)"),
        ("weight bytes", _gb(info.weights_bytes)),
    ]
    for key, value in rows:
        summary.add_row(key, escape(str(value)))
    console.print(summary)

    histogram = Table(title="tensor dtypes")
    histogram.add_column("dtype")
    histogram.add_column("tensors", justify="right")
    histogram.add_column("bytes", justify="right")
    for dtype, row in info.dtype_histogram().items():
        histogram.add_row(dtype, f"{row['tensors']:,}", _gb(row["bytes"]))
    console.print(histogram)
    for problem in problems:
        console.print(f"[bold red]problem:[/] {escape(problem)}")
    if not problems:
        console.print("[green]no problems found[/]")


@app.command()
def plan(
    name_or_model: Annotated[
        str,
        typer.Argument(help="Catalogue entry name, checkpoint directory or hub id.", metavar="NAME|MODEL"),
    ],
    gpu: Annotated[
        str | None,
        typer.Option(help=f"Plan for a known GPU: {', '.join(KNOWN_GPUS)} (default: NVML's GPU 0)."),
    ] = None,
    gpu_memory: Annotated[str | None, typer.Option(help="Plan for this much GPU memory, e.g. 32GiB.")] = None,
    max_batch_size: Annotated[
        int | None, typer.Option(help="Default: the catalogue entry's, else 8.")
    ] = None,
    max_seq_len: Annotated[
        int | None, typer.Option(help="Default: the catalogue entry's, else 16384.")
    ] = None,
    max_num_tokens: Annotated[
        int | None, typer.Option(help="Default: the catalogue entry's, else 8192.")
    ] = None,
    tp_size: Annotated[int | None, typer.Option(help="Default: the catalogue entry's, else 1.")] = None,
    kv_cache_free_gpu_mem_fraction: Annotated[
        float | None,
        typer.Option(
            help="Share of the memory left after weights that the KV cache takes (default: a pytorch entry's "
            f"serve table, else {DEFAULT_KV_CACHE_FREE_GPU_MEM_FRACTION})."
        ),
    ] = None,
    kv_cache_dtype: Annotated[
        str | None, typer.Option(help="Override the checkpoint's KV-cache dtype (FP8, BF16) to compare.")
    ] = None,
    revision: Annotated[str | None, typer.Option(help="Hub revision.")] = None,
    backend: BackendOption = None,
    trtllm_python: TrtllmPython = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the plan as JSON on stdout.")] = False,
) -> None:
    """Estimate engine size, KV cache capacity and whether max_batch_size × max_seq_len fits a GPU.

    Plans the backend `build` would use: a TensorRT engine, or the checkpoint on the PyTorch backend (its CUDA
    graphs included). Exits 1 when it does not fit or the GPU cannot run the quantization (what `build` would
    refuse).
    """
    from trtforge.catalog import load_catalog

    catalog = load_catalog()
    entry = catalog.get(name_or_model) if name_or_model in catalog else None
    chosen, requested, version = _plan_backend(entry, name_or_model, backend, trtllm_python)
    model = str(entry.local_model_dir or entry.model) if entry else name_or_model
    info = inspect_checkpoint(model, revision=revision or (entry.revision if entry else None))

    base = entry or PlanSettings()  # a flag given as 0 must reach PlanSettings' check, not fall back
    if kv_cache_free_gpu_mem_fraction is None:
        carried = entry.serve.kv_cache_free_gpu_mem_fraction if entry and chosen == "pytorch" else None
        kv_cache_free_gpu_mem_fraction = carried or DEFAULT_KV_CACHE_FREE_GPU_MEM_FRACTION
    settings = PlanSettings(
        max_batch_size=base.max_batch_size if max_batch_size is None else max_batch_size,
        max_seq_len=base.max_seq_len if max_seq_len is None else max_seq_len,
        max_num_tokens=base.max_num_tokens if max_num_tokens is None else max_num_tokens,
        tp_size=base.tp_size if tp_size is None else tp_size,
        kv_cache_free_gpu_mem_fraction=kv_cache_free_gpu_mem_fraction,
        kv_cache_dtype=kv_cache_dtype.upper() if kv_cache_dtype else None,
        backend=chosen,
    )
    gpu_name, memory, arch = _target_gpu(gpu, gpu_memory)
    result = plan_memory(info, settings, gpu_memory_bytes=memory, gpu_name=gpu_name)
    arch_problem = _arch_problem(arch, info)
    limit, rule = _planned_prompt_limit(settings, entry.serve.enable_chunked_context if entry else None)
    if json_output:
        print_json(
            {
                **result.to_json(),
                "requested_backend": requested,
                "trtllm_version": version,
                "gpu_arch": arch,
                "arch_problem": arch_problem,
                "prompt_limit": limit,
                "prompt_limit_rule": rule,
            }
        )
    else:
        _print_plan(result, arch_problem, requested=requested, version=version)
        console.print(f"prompt limit: {limit:,} tokens ({escape(rule)})")
    if result.fits is False or arch_problem:
        raise typer.Exit(PlanError.exit_code)  # `build` would refuse it: scripts can test the exit status


def _plan_backend(
    entry: CatalogEntry | None, name: str, override: str | None, trtllm_python: str | None
) -> tuple[PlanBackend, str, str | None]:
    """(the GPU backend to plan, what was asked for, the TensorRT-LLM version "auto" was resolved against).

    Raises:
        UsageError: the reference backend (nothing on a GPU to plan) or an unknown backend.
        TensorrtBackendGoneError: a TensorRT engine asked of TensorRT-LLM 1.3 or newer (`build` refuses it too).
    """
    from trtforge.builder.backend_choice import requested_backend, resolve_backend
    from trtforge.trtllm import installed_trtllm_version

    if override is not None or entry is None:
        requested = requested_backend(entry, override) if entry else (override or "auto")
    else:
        requested = entry.backend
    if requested == "reference":
        raise UsageError("the reference backend runs on the CPU: there is no GPU memory to plan")
    # Only "auto" and "tensorrt" depend on what is installed (pytorch plans the same everywhere).
    version = installed_trtllm_version(trtllm_python) if requested != "pytorch" else None
    chosen = resolve_backend(requested, version, name=entry.name if entry else name)
    return ("pytorch" if chosen == "pytorch" else "tensorrt"), requested, version


def _planned_prompt_limit(settings: PlanSettings, enable_chunked_context: bool | None) -> tuple[int, str]:
    """The prompt limit the planned entry will be served with, and the line of the runtime's rule that gives it.

    A TensorRT engine is one `trtllm-bench build` makes (context FMHA, packed input, paged context FMHA), served
    with chunked context unless the entry's serve table turns it off; a PyTorch entry is the LLM API's,
    prepared without chunked prefill (`trtforge.prompt_limit`).
    """
    from trtforge.prompt_limit import bench_engine_limits, llm_api_prompt_limit

    limits = bench_engine_limits(max_seq_len=settings.max_seq_len, max_num_tokens=settings.max_num_tokens)
    if settings.backend == "pytorch":
        limit = llm_api_prompt_limit(max_seq_len=settings.max_seq_len, max_num_tokens=settings.max_num_tokens)
        return limit, "min(max_seq_len - 1, max_num_tokens): the LLM API without chunked prefill"
    chunked = limits.chunked_context_possible if enable_chunked_context is None else enable_chunked_context
    return limits.prompt_limit(chunked_context=chunked), limits.prompt_limit_rule(chunked_context=chunked)


def _target_gpu(gpu: str | None, gpu_memory: str | None) -> tuple[str | None, int | None, str | None]:
    """(name, memory bytes, arch) from --gpu, --gpu-memory, or NVML; all None when nothing is known."""
    if gpu and gpu_memory:
        spec = lookup_gpu(gpu)
        return spec.key, parse_memory_size(gpu_memory), spec.arch
    if gpu:
        spec = lookup_gpu(gpu)
        return spec.key, spec.memory_bytes, spec.arch
    if gpu_memory:
        return None, parse_memory_size(gpu_memory), None
    gpus = try_detect_gpus()
    if gpus:
        return gpus[0].name, gpus[0].memory_total_bytes, gpus[0].arch
    return None, None, None


def _arch_problem(arch: str | None, info: CheckpointInfo) -> str | None:
    if arch is None:
        return None
    try:
        check_arch_supports(arch, info.quant_algo)
    except GpuError as exc:
        return str(exc)
    return None


def _print_plan(result: MemoryPlan, arch_problem: str | None, *, requested: str, version: str | None) -> None:
    s = result.settings
    pytorch = result.backend == "pytorch"
    parts = Table(title=f"{'weights' if pytorch else 'engine'} per rank (tp_size {s.tp_size})")
    for column in ("part", "tensors", "params", "total", "per rank"):
        parts.add_column(column, justify="left" if column == "part" else "right")
    for part in result.parts:
        split = "" if part.split_by_tp or s.tp_size == 1 else " (replicated)"
        parts.add_row(
            part.role + split,
            f"{part.tensors:,}",
            f"{part.params / 1e9:,.2f} B",
            _gb(part.bytes_total),
            _gb(part.bytes_per_rank),
        )
    parts.add_row(
        "[bold]weights estimate[/]" if pytorch else "[bold]engine estimate[/]",
        "",
        f"{result.params_total / 1e9:,.2f} B",
        _gb(result.weights_bytes),
        f"[bold]{_gb(result.engine_bytes_estimate)}[/]",
    )
    console.print(parts)

    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    gpu = result.gpu_name or (
        "declared memory" if result.gpu_memory_bytes else "unknown (no NVML; use --gpu)"
    )
    chosen = f"{result.backend}" + (
        f" (auto, TensorRT-LLM {version or 'not found'})" if requested == "auto" else ""
    )
    rows = [
        ("backend", chosen),
        ("GPU", f"{gpu} ({_gb(result.gpu_memory_bytes)})"),
        (
            "settings",
            f"max_batch_size {s.max_batch_size}, max_seq_len {s.max_seq_len}, "
            f"max_num_tokens {s.max_num_tokens}, kv fraction {s.kv_cache_free_gpu_mem_fraction}",
        ),
        ("KV bytes / token / rank", f"{result.kv_bytes_per_token:,} ({result.kv_cache_dtype})"),
        ("runtime + activation reserve", _gb(result.reserve_bytes)),
        ("KV cache", _gb(result.kv_cache_bytes)),
        ("KV tokens", "—" if result.kv_tokens_capacity is None else f"{result.kv_tokens_capacity:,}"),
        (
            "concurrent max_seq_len sequences",
            str(result.max_concurrent_sequences or 0) if result.max_concurrent_sequences is not None else "—",
        ),
    ]
    if pytorch:
        rows.append(
            (
                "CUDA graphs",
                f"{len(s.graph_batch_sizes())} batch sizes, up to {_gb(result.cuda_graph_bytes)} "
                f"(room beside the KV cache: {_gb(result.headroom_bytes)})",
            )
        )
    else:
        rows.append(
            (
                "trtllm-bench heuristic",
                f"engine {_gb(result.trtllm_bench['engine_bytes_estimate'])}"
                + (
                    f", {result.trtllm_bench['max_concurrent_sequences']} sequences"
                    if "max_concurrent_sequences" in result.trtllm_bench
                    else ""
                ),
            )
        )
    for key, value in rows:
        table.add_row(key, escape(value))
    console.print(table)
    if result.fits is None:
        console.print("[yellow]fit unknown:[/] no GPU memory known; pass --gpu or --gpu-memory")
    elif result.fits:
        console.print("[green]fits[/]")
    else:
        console.print(f"[bold red]does not fit:[/] {escape(result.recommendation or '')}")
    if arch_problem:
        console.print(f"[bold red]GPU cannot run it:[/] {escape(arch_problem)}")


@app.command()
def gpus(
    known: Annotated[
        bool, typer.Option("--known", help="List the GPUs trtforge knows instead of NVML's.")
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """The GPUs NVML sees (name, compute capability, memory, driver); one-line error without a driver."""
    if known:
        rows = [
            {"key": s.key, "name": s.name, "arch": s.arch, "memory_total_bytes": s.memory_bytes}
            for s in KNOWN_GPUS.values()
        ]
    else:
        rows = [g.to_json() for g in detect_gpus()]
    if json_output:
        print_json(rows)
        return
    table = Table()
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(
            *(
                _gb(v) if k.startswith("memory") and isinstance(v, int) else escape(str(v))
                for k, v in row.items()
            )
        )
    console.print(table)
