"""Test helpers for TensorRT-LLM's LLM API: the 1.3 stand-in package and its worker processes.

`TRTLLM13_STANDIN` is the directory to put on PYTHONPATH (it holds the stand-in `tensorrt_llm` 1.3 package;
tests/standins/tensorrt_llm is the 1.0 builder stand-in, a different package of the same name).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

from trtforge.processes import descendant_processes, stat_fields

TRTLLM13_STANDIN = Path(__file__).parent / "standins" / "trtllm13"
WORKER_MODULE = "tensorrt_llm._standin.worker"


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
