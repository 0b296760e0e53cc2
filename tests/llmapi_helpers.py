"""Test helpers for TensorRT-LLM's LLM API: the 1.3 stand-in package and its worker processes, and PyTorch
entries prepared by trtforge's own build and served through the repository writer.

`TRTLLM13_STANDIN` is the directory to put on PYTHONPATH (it holds the stand-in `tensorrt_llm` 1.3 package;
tests/standins/tensorrt_llm is the 1.0 builder stand-in, a different package of the same name).
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from triton_helpers import loopback_triton
from trtforge.builder.pipeline import ensure_engine
from trtforge.catalog import add_entry
from trtforge.engine import EngineInfo, read_engine
from trtforge.processes import descendant_processes, stat_fields
from trtforge.triton.repository import write_model_repository
from trtforge.triton.server import TritonServer

TRTLLM13_STANDIN = Path(__file__).parent / "standins" / "trtllm13"
WORKER_MODULE = "tensorrt_llm._standin.worker"
# The limits of a small CPU entry (what the LLM API gets as max_batch_size, max_num_tokens, max_seq_len).
SMALL_LIMITS: dict[str, Any] = {"max_batch_size": 8, "max_num_tokens": 512, "max_seq_len": 512}


def standin_variables(worker_log: Path) -> dict[str, str]:
    """TensorRT-LLM 1.3 installed (the stand-in on PYTHONPATH: the version probe, and the python model, which
    adds PYTHONPATH to its sys.path), its workers' log, a Blackwell target for NVFP4 preflight."""
    return {
        "PYTHONPATH": str(TRTLLM13_STANDIN),
        "TRTFORGE_TRTLLM_PYTHON": sys.executable,
        "TRTFORGE_STANDIN_WORKER_LOG": str(worker_log),
        "TRTFORGE_GPU_ARCH": "sm100",
    }


@contextlib.contextmanager
def standin_environment(worker_log: Path) -> Iterator[None]:
    """This process's environment with `standin_variables` set, restored after."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in standin_variables(worker_log).items():
            patch.setenv(key, value)
        yield


def prepare_pytorch_entry(name: str, checkpoint: Path, **fields: Any) -> EngineInfo:
    """`trtforge build` of a `backend = "pytorch"` catalogue entry `name` for `checkpoint` (in this process's
    catalogue and store; set `standin_environment` first), read back."""
    add_entry(name, model=str(checkpoint), backend="pytorch", replace=True, **{**SMALL_LIMITS, **fields})
    result = ensure_engine(name)
    assert result.backend == "pytorch", result
    return read_engine(result.path)


@contextlib.contextmanager
def serving_pytorch_entry(
    name: str, checkpoint: Path, root: Path, **fields: Any
) -> Iterator[tuple[TritonServer, EngineInfo]]:
    """The embedded tritonserver serving a PyTorch entry prepared from `checkpoint`, its repository written by
    `write_model_repository`, its log and the stand-in workers' (`worker.log`) in `root`."""
    with contextlib.ExitStack() as running:
        with standin_environment(root / "worker.log"):
            engine = prepare_pytorch_entry(name, checkpoint, **fields)
            repository = write_model_repository({name: engine}, root / "repository")
            # tritonserver (and the python stub it starts) take the environment at start.
            server = running.enter_context(loopback_triton(repository, root))
        yield server, engine


def worker_log_lines(worker_log: Path) -> list[str]:
    return worker_log.read_text().splitlines() if worker_log.is_file() else []


def import_standin() -> ModuleType:
    """The stand-in `tensorrt_llm` 1.3, imported into this process (no other `tensorrt_llm` may be loaded)."""
    loaded = sys.modules.get("tensorrt_llm")
    if loaded is not None:
        assert Path(str(loaded.__file__)).is_relative_to(TRTLLM13_STANDIN), f"another tensorrt_llm: {loaded}"
        return loaded
    sys.path.insert(0, str(TRTLLM13_STANDIN))
    return importlib.import_module("tensorrt_llm")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def is_running(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie has exited; its parent has just not reaped it)."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def llm_api_workers(root_pid: int) -> list[int]:
    """The running stand-in executor workers among `root_pid`'s descendants."""
    return [
        pid for pid in descendant_processes(root_pid) if WORKER_MODULE in _cmdline(pid) and is_running(pid)
    ]
