"""The installed TensorRT-LLM: which interpreter has it, which version it is, and what that version can do.

The builder (to name the version an engine is built with), the compatibility gate (to compare it with an
engine's) and `trtforge --version` all ask here, so none of them imports another for it. The probe runs the
chosen interpreter in a subprocess and never imports the heavy package into trtforge's own process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping

from trtforge.constants import trtllm_python_override
from trtforge.errors import BuildFailedError, UsageError

# The TensorRT engine backend (`backend="tensorrt"`, `trtllm-build`, `trtllm-bench build`, the Triton C++
# `tensorrtllm` backend) is in every 1.2.x and in the 1.3 pre-releases cut before its removal reached main. The
# facts (NVIDIA/TensorRT-LLM pull requests): main was bumped to 1.3.0rc21 on 2026-06-30 (#15742); the removal of
# the Python modules (#15918, `TrtLlmArgs`, `BuildConfig`, `trtllm-bench build`) was opened on 2026-07-03 and still
# in pre-merge CI on 2026-07-14 (#16350); main went from rc21 to 1.3.0rc23 on 2026-07-22 (#16758). So 1.3.0rc21
# (and its .postN) is the last release known to have it. Whether an rc22 had it is not known: it counts as gone,
# the safe side ("auto" picks the PyTorch backend, which every 1.3 pre-release has).
FIRST_WITHOUT_TENSORRT_BACKEND = "1.3.0rc22"

# Without package metadata, `tensorrt_llm/version.py` is run on its own: importing the package would load torch
# and CUDA for seconds, and reading the file as text would miss a version that is computed (the test stand-in's).
_VERSION_PROBE = """
import importlib.metadata, importlib.util, pathlib, sys
try:
    print(importlib.metadata.version("tensorrt_llm"))
except importlib.metadata.PackageNotFoundError:
    spec = importlib.util.find_spec("tensorrt_llm")
    if spec is None or spec.origin is None:
        sys.exit(3)
    path = pathlib.Path(spec.origin).with_name("version.py")
    version = importlib.util.spec_from_file_location("_trtllm_version", path)
    if version is None or version.loader is None:
        sys.exit(3)
    module = importlib.util.module_from_spec(version)
    version.loader.exec_module(module)
    print(module.__version__)
"""


def resolve_python(explicit: str | os.PathLike[str] | None) -> str:
    """`--trtllm-python`, else `$TRTFORGE_TRTLLM_PYTHON`, else the running interpreter.

    Raises:
        UsageError: the chosen interpreter is not found or not executable.
    """
    chosen = str(explicit) if explicit else trtllm_python_override()
    if not chosen:
        return sys.executable
    found = shutil.which(chosen)
    if found is None:
        raise UsageError(f"TensorRT-LLM python {chosen!r} not found or not executable")
    return found


def probe_trtllm_version(python: str, env: Mapping[str, str] | None = None, timeout_s: float = 120) -> str:
    """The TensorRT-LLM version `python` imports (without importing the heavy package).

    Raises:
        BuildFailedError: TensorRT-LLM is not importable by that interpreter (cause `no_trtllm`).
    """
    try:
        done = subprocess.run(
            [python, "-c", _VERSION_PROBE],
            env=None if env is None else dict(env),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildFailedError(
            f"cannot run {python} to find TensorRT-LLM: {exc}", cause="no_trtllm"
        ) from None
    version = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if done.returncode != 0 or not version:
        raise BuildFailedError(
            f"TensorRT-LLM is not installed for {python}; pass --trtllm-python (or set TRTFORGE_TRTLLM_PYTHON) "
            "to an interpreter that has it",
            cause="no_trtllm",
        )
    return version


def installed_trtllm_version(python: str | os.PathLike[str] | None = None) -> str | None:
    """The version `python` (default: `$TRTFORGE_TRTLLM_PYTHON`, else ours) imports; None when it has none."""
    try:
        return probe_trtllm_version(resolve_python(python))
    except (BuildFailedError, UsageError):
        return None


def has_tensorrt_backend(version: str) -> bool:
    """Whether TensorRT-LLM `version` still has the TensorRT engine backend: 1.2.x and older, and the 1.3
    pre-releases up to 1.3.0rc21 (see `FIRST_WITHOUT_TENSORRT_BACKEND`).

    A version that does not parse is not judged (True), as the compatibility gate does not judge one.
    """
    from packaging.version import InvalidVersion, Version

    try:
        parsed = Version(version)
    except InvalidVersion:
        return True
    return parsed < Version(FIRST_WITHOUT_TENSORRT_BACKEND)
