"""How Triton serves each kind of store entry: one row per `EngineInfo.backend`.

A row says what the repository's `tensorrt_llm`-contract model for an entry is made of (the Triton backend in
its config, the python model file copied into `1/`, the parameters its config carries, whether those parameters
are checked against the `tensorrtllm` backend's table; the tensors always are, since the proxy sends the same
ones to every backend), how the entry's ranks run (one tritonserver per rank under mpirun, or one process whose
backend starts its own workers), and whether the entry may share one tritonserver with other engines. The
repository writer, the Triton command and the serving plan all read this table:

    tensorrt    engines (`rank*.engine`): NVIDIA's C++ `tensorrtllm` backend, one tritonserver per rank
    reference   the CPU reference model (`reference/backend_model.py`), the same parameters as `tensorrtllm`
    pytorch     PyTorch entries (TensorRT-LLM >= 1.3, no engine): our python model over the LLM API
                (`triton/models/tensorrt_llm_llmapi`), given `checkpoint_dir` and `llm_api_options`; TP/PP > 1
                is the LLM API's own worker pool inside that one model instance, so never mpirun
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
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
        checks_parameters: the parameters are the `tensorrtllm` backend's and are checked against its table
            (`triton.contract`) before the config is written; False: the model reads parameters of its own.
            Either way the config's tensors are checked against the contract.
        ranks_under_mpirun: an entry of N ranks runs as N tritonservers under mpirun (False: one tritonserver,
            whose backend starts its own workers).
        shares_triton: a one-rank entry may share a tritonserver with other engines (an entry of several
            ranks is served alone: its ranks take the GPUs from 0 up).
        unread_options: serve options its model does not read; setting one is refused rather than ignored.
    """

    name: str
    triton_backend: str
    model_files: Callable[[], Mapping[str, Path]] | None
    parameters: Parameters
    checks_parameters: bool
    ranks_under_mpirun: bool
    shares_triton: bool
    unread_options: frozenset[str] = frozenset()

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
        # Always written: trtforge's default (on where the engine can) is not the backend's (off).
        "enable_chunked_context": engine.chunked_context(options.enable_chunked_context),
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


# The `tensorrtllm` parameters among the serve options, which the LLM API model does not read.
# kv_cache_free_gpu_mem_fraction is not among them: a catalogue entry's serve table gives it to the LLM API's
# arguments when the entry is prepared (builder.llmapi_options), so the same table serves either backend.
_ENGINE_BACKEND_OPTIONS = frozenset(
    {
        "max_tokens_in_paged_kv_cache",
        "kv_cache_host_memory_bytes",
        "enable_kv_cache_reuse",
        "enable_chunked_context",
        "batch_scheduler_policy",
        "multi_block_mode",
        "cuda_graph_mode",
        "normalize_log_probs",
        "gpu_device_ids",
        "decoding_mode",
        "max_attention_window_size",
        "stats_check_period_ms",
        "iter_stats_max_iterations",
        "request_stats_max_iterations",
    }
)


def _llmapi_parameters(engine: EngineInfo, options: ServeOptions) -> dict[str, object | None]:
    """What the LLM API model reads: the entry's checkpoint and LLM API arguments (absolute paths), and the two
    serve options it honours. The engine backend's KV cache and scheduling knobs do not apply: the LLM API's
    arguments were fixed in the entry's `llm_api_options.yaml` when it was prepared."""
    return {
        "checkpoint_dir": str(Path(engine.checkpoint_dir).absolute()),
        "llm_api_options": str(Path(engine.llm_api_options_path).absolute()),
        "exclude_input_in_output": options.exclude_input_in_output,
        "cancellation_check_period_ms": options.cancellation_check_period_ms,
    }


def _llmapi_model_files() -> dict[str, Path]:
    """The LLM API `tensorrt_llm` model (`model.py`), its sampling sibling, the shared contract and the prompt
    limit's rule (`trtforge/prompt_limit.py`, which the proxy applies too)."""
    models = Path(str(resources.files("trtforge.triton") / "models"))
    files = {
        "model.py": models / "tensorrt_llm_llmapi" / "model.py",
        "llmapi_sampling.py": models / "tensorrt_llm_llmapi" / "llmapi_sampling.py",
        "trtllm_contract.py": models / "common" / "trtllm_contract.py",
        "prompt_limit.py": Path(str(resources.files("trtforge") / "prompt_limit.py")),
    }
    for source in files.values():
        if not source.is_file():
            raise TritonError(f"the LLM API model file {source} is missing: cannot serve a PyTorch entry")
    return files


SERVING_BACKENDS: dict[str, ServingBackend] = {
    "tensorrt": ServingBackend(
        name="tensorrt",
        triton_backend="tensorrtllm",
        model_files=None,
        parameters=_trtllm_parameters,
        checks_parameters=True,
        ranks_under_mpirun=True,
        shares_triton=True,
    ),
    # The CPU reference backend: a python model with the same tensors and parameters as TensorRT-LLM's.
    "reference": ServingBackend(
        name="reference",
        triton_backend="python",
        model_files=_reference_backend_files,
        parameters=_trtllm_parameters,
        checks_parameters=True,
        ranks_under_mpirun=True,
        shares_triton=True,
    ),
    # TensorRT-LLM's PyTorch backend: one decoupled python model over `tensorrt_llm.LLM`, whose own executor
    # starts a worker per rank (ended by `LLM.shutdown()`, or by tritonserver's owner with its process tree).
    "pytorch": ServingBackend(
        name="pytorch",
        triton_backend="python",
        model_files=_llmapi_model_files,
        parameters=_llmapi_parameters,
        checks_parameters=False,
        ranks_under_mpirun=False,
        shares_triton=True,
        unread_options=_ENGINE_BACKEND_OPTIONS,
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
