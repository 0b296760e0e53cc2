"""How Triton serves each kind of store entry: one row per `EngineInfo.backend`.

A row says what the repository's `tensorrt_llm`-contract model for an entry is made of (the Triton backend in
its config, the python model file copied into `1/`, the parameters its config carries, whether the config is
checked against the `tensorrtllm` backend's contract), how the entry's ranks run (one tritonserver per rank
under mpirun, or one process whose backend starts its own workers), and whether the entry may share one
tritonserver with other engines. The repository writer, the Triton command and the serving plan all read
this table; a new backend (TensorRT-LLM's PyTorch backend over its LLM API) is one more row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from trtforge.engine import XGRAMMAR_TOKENIZER_INFO, EngineInfo
from trtforge.errors import TritonError
from trtforge.serve_options import ServeOptions

__all__ = ["SERVING_BACKENDS", "ServingBackend", "serving_backend"]

# A `tensorrt_llm` model's backend parameters for one engine; `None` values are left out of the config.
Parameters = Callable[[EngineInfo, ServeOptions], dict[str, object | None]]


@dataclass(frozen=True)
class ServingBackend:
    """How one kind of store entry is served by Triton.

    Args:
        name: the `EngineInfo.backend` it serves.
        triton_backend: the `backend` of its `tensorrt_llm`-contract model's config.
        model_files: the python model's files by their name in `<model>/1/` (`model.py` and the siblings it
            imports), or None: the Triton backend is native.
        parameters: the model config's backend parameters.
        checks_contract: the generated config is checked against the `tensorrtllm` backend's contract
            (`triton.contract`) before it is written.
        ranks_under_mpirun: an entry of N ranks runs as N tritonservers under mpirun (False: one tritonserver,
            whose backend starts its own workers).
        shares_triton: a one-process entry may share a tritonserver with other engines.
    """

    name: str
    triton_backend: str
    model_files: Callable[[], Mapping[str, Path]] | None
    parameters: Parameters
    checks_contract: bool
    ranks_under_mpirun: bool
    shares_triton: bool

    def processes(self, engine: EngineInfo) -> int:
        """How many tritonserver processes serve `engine` (its ranks under mpirun, else one)."""
        return engine.world_size if self.ranks_under_mpirun else 1


def _trtllm_parameters(engine: EngineInfo, options: ServeOptions) -> dict[str, object | None]:
    """The `tensorrtllm` backend's parameters (the reference backend reads the same ones)."""
    return {
        "gpt_model_type": "inflight_fused_batching",
        "gpt_model_path": str(Path(engine.path).absolute()),
        "max_beam_width": engine.max_beam_width,
        **_guided_decoding_parameters(engine),
        "batch_scheduler_policy": options.batch_scheduler_policy,
        "kv_cache_free_gpu_mem_fraction": options.kv_cache_free_gpu_mem_fraction,
        "max_tokens_in_paged_kv_cache": options.max_tokens_in_paged_kv_cache,
        "kv_cache_host_memory_bytes": options.kv_cache_host_memory_bytes,
        "enable_kv_cache_reuse": options.enable_kv_cache_reuse,
        "enable_chunked_context": options.enable_chunked_context,
        "multi_block_mode": options.multi_block_mode,
        "cuda_graph_mode": options.cuda_graph_mode,
        "normalize_log_probs": options.normalize_log_probs,
        "exclude_input_in_output": options.exclude_input_in_output,
        "cancellation_check_period_ms": options.cancellation_check_period_ms,
        "stats_check_period_ms": options.stats_check_period_ms,
        "iter_stats_max_iterations": options.iter_stats_max_iterations,
        "request_stats_max_iterations": options.request_stats_max_iterations,
        "decoding_mode": options.decoding_mode,
        "max_attention_window_size": options.max_attention_window_size,
        "gpu_device_ids": options.gpu_device_ids,
        "FORCE_CPU_ONLY_INPUT_TENSORS": "no",
    }


def _guided_decoding_parameters(engine: EngineInfo) -> dict[str, object | None]:
    """The three parameters the backend reads without a fallback; empty strings keep guided decoding off.

    Guided decoding is on when the engine's store entry holds the xgrammar tokenizer info written at build.
    """
    info = Path(engine.path).absolute() / XGRAMMAR_TOKENIZER_INFO
    enabled = info.is_file()
    return {
        "tokenizer_dir": str(Path(engine.tokenizer_dir).absolute()),
        "xgrammar_tokenizer_info_path": str(info) if enabled else "",
        "guided_decoding_backend": "xgrammar" if enabled else "",
    }


def _reference_backend_files() -> dict[str, Path]:
    from trtforge.reference import reference_backend_files  # the reference package, only when serving one

    files = reference_backend_files()
    for source in files.values():
        if not source.is_file():
            raise TritonError(
                f"the reference backend file {source} is missing: cannot serve a reference engine"
            )
    return files


SERVING_BACKENDS: dict[str, ServingBackend] = {
    "tensorrt": ServingBackend(
        name="tensorrt",
        triton_backend="tensorrtllm",
        model_files=None,
        parameters=_trtllm_parameters,
        checks_contract=True,
        ranks_under_mpirun=True,
        shares_triton=True,
    ),
    # The CPU reference backend: a python model with the same tensors and parameters as TensorRT-LLM's.
    "reference": ServingBackend(
        name="reference",
        triton_backend="python",
        model_files=_reference_backend_files,
        parameters=_trtllm_parameters,
        checks_contract=True,
        ranks_under_mpirun=True,
        shares_triton=True,
    ),
}


def serving_backend(name: str) -> ServingBackend:
    """The row for backend `name`.

    Raises:
        TritonError: no row serves it (an entry of a backend this trtforge cannot serve).
    """
    try:
        return SERVING_BACKENDS[name]
    except KeyError:
        known = ", ".join(sorted(SERVING_BACKENDS))
        raise TritonError(f"trtforge cannot serve {name!r} entries (it serves: {known})") from None
