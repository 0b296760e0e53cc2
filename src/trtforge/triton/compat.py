"""The compatibility gate: will this TensorRT engine load here? Checked before tritonserver starts.

A TensorRT engine runs only with the TensorRT-LLM (and so TensorRT) version that built it and only on GPUs of
the compute capability it was built for. A mismatch otherwise surfaces minutes later, deep inside Triton's
log ("The engine plan file is generated on an incompatible device", "not compatible with this version of
TensorRT"). This module compares, in one line naming both sides and the fix:

    engine side:     config.json "version" (else the manifest's builder_version); the manifest's gpu_arch
    installed side:  the TensorRT-LLM the serving Python imports (the backend's own package in NVIDIA's
                     Triton container); the GPUs NVML reports (those in gpu_device_ids when given)

Reference engines (served on CPU by the python reference backend) have nothing to check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trtforge.engine import EngineInfo
from trtforge.errors import StoreError, TrtforgeError
from trtforge.gpu import GpuInfo
from trtforge.triton.contract import MIN_TRTLLM_VERSION

__all__ = ["EngineTarget", "IncompatibleEngineError", "InstalledBackend", "check_compatibility", "gate"]

CONTAINER_HINT = "nvcr.io/nvidia/tritonserver:<yy.mm>-trtllm-python-py3"


class IncompatibleEngineError(TrtforgeError, RuntimeError):
    """The engine was built for another TensorRT-LLM version or GPU than the ones here."""

    exit_code = 3


@dataclass(frozen=True)
class EngineTarget:
    """What an engine was built for."""

    trtllm_version: str | None
    gpu_arch: str | None  # None when the engine has no manifest (a directory built outside trtforge)


@dataclass(frozen=True)
class InstalledBackend:
    """What this machine would run it with."""

    trtllm_version: str | None
    gpus: list[GpuInfo] = field(default_factory=list)


def engine_target(engine: EngineInfo) -> EngineTarget:
    """The engine's TensorRT-LLM version and GPU arch, from its config.json and (if any) trtforge manifest."""
    from trtforge.manifest import read_manifest

    arch: str | None = None
    manifest_version: str | None = None
    try:
        manifest = read_manifest(Path(engine.path).resolve())
    except StoreError:
        manifest = None
    if manifest is not None:
        arch = str(manifest.inputs.get("gpu_arch") or "") or None
        manifest_version = manifest.builder_version
    return EngineTarget(trtllm_version=engine.trtllm_version or manifest_version, gpu_arch=arch)


def installed_backend(python: str | None = None) -> InstalledBackend:
    """The TensorRT-LLM version `python` (default: `$TRTFORGE_TRTLLM_PYTHON`, else ours) imports, and the GPUs."""
    from trtforge.gpu import try_detect_gpus
    from trtforge.trtllm import installed_trtllm_version

    return InstalledBackend(trtllm_version=installed_trtllm_version(python), gpus=try_detect_gpus())


def check_compatibility(
    name: str,
    engine: EngineInfo,
    target: EngineTarget,
    installed: InstalledBackend,
    *,
    device_ids: list[int] | None = None,
) -> list[str]:
    """Each reason the engine would not load here, one line apiece naming both sides and the fix."""
    if engine.backend != "tensorrt":
        return []
    rebuild = f"rebuild it here with `trtforge build {name}`"
    problems: list[str] = []
    if _older_than(target.trtllm_version, MIN_TRTLLM_VERSION):
        problems.append(
            f"engine {name!r} was built with TensorRT-LLM {target.trtllm_version}; trtforge writes tensorrt_llm "
            f"configs for the backend of TensorRT-LLM {MIN_TRTLLM_VERSION} or newer: rebuild it with a newer "
            "TensorRT-LLM"
        )
    if installed.trtllm_version is None:
        problems.append(
            f"engine {name!r} needs TensorRT-LLM {target.trtllm_version or '(unknown version)'}, but no TensorRT-LLM "
            f"is installed here: serve it in the {CONTAINER_HINT} container that ships that version"
        )
    elif target.trtllm_version is not None and target.trtllm_version != installed.trtllm_version:
        problems.append(
            f"engine {name!r} was built with TensorRT-LLM {target.trtllm_version}, the installed backend is "
            f"TensorRT-LLM {installed.trtllm_version}: {rebuild}, or serve it in the {CONTAINER_HINT} "
            f"container that ships TensorRT-LLM {target.trtllm_version}"
        )
    gpus = installed.gpus
    if device_ids is not None:
        known = {gpu.index: gpu for gpu in gpus}
        missing = [index for index in device_ids if index not in known]
        if missing:
            problems.append(
                f"gpu_device_ids names GPU {', '.join(map(str, missing))}, but NVML sees "
                f"{len(gpus)} GPU(s) here: pick ids among {', '.join(str(g.index) for g in gpus) or 'none'}"
            )
            return problems
        gpus = [known[index] for index in device_ids]
    if len(gpus) < engine.world_size:
        problems.append(
            f"engine {name!r} needs {engine.world_size} GPU(s) (tp {engine.tp_size} × pp {engine.pp_size}), "
            f"NVML sees {len(gpus)} here: serve it on a machine with enough GPUs, or rebuild with a smaller tp_size"
        )
        return problems
    if target.gpu_arch is not None:
        wrong = [gpu for gpu in gpus[: engine.world_size] if gpu.arch != target.gpu_arch]
        if wrong:
            seen = ", ".join(f"GPU {gpu.index} {gpu.name} is {gpu.arch}" for gpu in wrong)
            problems.append(
                f"engine {name!r} was built for {target.gpu_arch} GPUs, but {seen}: {rebuild}, "
                f"or serve it on {target.gpu_arch} GPUs"
            )
    return problems


def _older_than(version: str | None, minimum: str) -> bool:
    """True when `version` parses and is older than `minimum` (an unparsable version is not judged)."""
    from packaging.version import InvalidVersion, Version

    if version is None:
        return False
    try:
        return Version(version) < Version(minimum)
    except InvalidVersion:
        return False


def gate(
    name: str,
    engine: EngineInfo,
    *,
    device_ids: list[int] | None = None,
    force: bool = False,
    installed: InstalledBackend | None = None,
) -> list[str]:
    """Refuse an engine that would not load here; with `force`, return the problems as warnings instead.

    Raises:
        IncompatibleEngineError: the first problem, in one line (with how to override).
    """
    if engine.backend != "tensorrt":
        return []
    installed = installed or installed_backend()
    problems = check_compatibility(name, engine, engine_target(engine), installed, device_ids=device_ids)
    if problems and not force:
        raise IncompatibleEngineError(f"{problems[0]} (--force starts it anyway)")
    return problems
