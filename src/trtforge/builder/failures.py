"""Why a builder failed, in one line, from what it printed."""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from trtforge.errors import BuildFailedError

LOG_TAIL_LINES = 25


@dataclass(frozen=True)
class FailureCause:
    cause: str  # machine-readable: out_of_gpu_memory, arch_unsupported, gated_model, disk_full, unknown, ...
    summary: str  # what the user reads


# Checked in order: the first match wins. Patterns are the messages CUDA, TensorRT-LLM, huggingface_hub and the
# OS print for each cause.
_CAUSES: tuple[tuple[FailureCause, tuple[str, ...]], ...] = (
    (
        FailureCause("disk_full", "disk full"),
        (r"No space left on device", r"\[Errno 28\]", r"\bENOSPC\b", r"Disk quota exceeded"),
    ),
    (
        FailureCause(
            "gated_model", "gated or unauthorised model (log in with `hf auth login` or request access)"
        ),
        (
            r"GatedRepoError",
            r"Cannot access gated repo",
            r"Access to model \S+ is restricted",
            r"\b401 Client Error",
            r"\b403 Client Error",
            r"Invalid username or password",
            r"RepositoryNotFoundError",
        ),
    ),
    (
        FailureCause("arch_unsupported", "GPU architecture unsupported for this quantization"),
        (
            r"Arch unsupported",
            r"not supported before Blackwell",
            r"FP4 Gemm not supported",
            r"[Uu]nsupported (GPU |SM |compute )?arch",
            r"no kernel image is available for execution on the device",
            r"requires (compute capability|SM) ?(>=|≥) ?10",
        ),
    ),
    (
        FailureCause("out_of_gpu_memory", "out of GPU memory"),
        (
            r"CUDA out of memory",
            r"OutOfMemoryError",
            r"cudaErrorMemoryAllocation",
            r"CUDA_ERROR_OUT_OF_MEMORY",
            r"out of memory",
            r"Requested amount of GPU memory",
        ),
    ),
)
UNKNOWN = FailureCause("unknown", "unknown cause")


def classify_failure(log_text: str) -> FailureCause:
    """The first known cause whose message appears in the log, else `UNKNOWN`."""
    for cause, patterns in _CAUSES:
        if any(re.search(pattern, log_text) for pattern in patterns):
            return cause
    return UNKNOWN


def read_log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, errors="replace") as handle:
            return "".join(deque(handle, maxlen=lines)).rstrip("\n")
    except OSError:
        return ""


def read_log(path: Path, max_bytes: int = 1 << 20) -> str:
    """The last `max_bytes` of a log (causes are printed near the end)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def builder_failure(
    name: str,
    *,
    what: str,
    log_path: Path,
    exit_code: int | None,
    cause: FailureCause | None = None,
) -> BuildFailedError:
    """A `BuildFailedError` whose message is one line: what happened, why, and where the log is."""
    cause = cause or classify_failure(read_log(log_path))
    status = f", exit status {exit_code}" if exit_code is not None else ""
    return BuildFailedError(
        f"build of {name!r} failed: {what}: {cause.summary}{status} (log: {log_path})",
        cause=cause.cause,
        exit_code=exit_code,
        log_path=log_path,
        log_tail=read_log_tail(log_path),
    )
