"""The compatibility gate: will this engine (or PyTorch entry) load here? Checked before tritonserver starts.

A TensorRT engine runs only with the TensorRT-LLM (and so TensorRT) version that built it and only on GPUs of
the compute capability it was built for. A mismatch otherwise surfaces minutes later, deep inside Triton's
log ("The engine plan file is generated on an incompatible device", "not compatible with this version of
TensorRT"). This module compares, in one line naming both sides and the fix:

    engine side:     config.json "version" (else the manifest's builder_version); the manifest's gpu_arch
    installed side:  the TensorRT-LLM the serving Python imports (the backend's own package in NVIDIA's
                     Triton container); the GPUs NVML reports (those in gpu_device_ids when given)

A PyTorch entry (backend "pytorch": a checkpoint and its LLM API arguments, no engine) is compiled for no GPU and
no TensorRT version; it was prepared for a TensorRT-LLM version, whose LLM API arguments it carries:

    same major, another minor or patch   a warning (the arguments are TorchLlmArgs fields, stable within a major)
    another major, or none installed     refused
    NVFP4 weights                        every GPU it runs on needs compute capability ≥ 10.0

On a TensorRT-LLM without the TensorRT backend (1.3 and newer) an engine is refused in one line that names
`backend = "pytorch"`, the way to serve its checkpoint there. Reference engines (served on CPU by the python
reference backend) have nothing to check.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trtforge.engine import EngineInfo
from trtforge.errors import GpuError, StoreError, TrtforgeError, UsageError
from trtforge.gpu import GpuInfo, check_arch_supports
from trtforge.triton.contract import MIN_TRTLLM_VERSION
from trtforge.trtllm import has_tensorrt_backend

log = logging.getLogger(__name__)

__all__ = [
    "EngineTarget",
    "IncompatibleEngineError",
    "InstalledBackend",
    "check_compatibility",
    "compatibility_warnings",
    "gate",
    "tensorrt_backend_gone",
]

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
    if engine.backend == "reference":
        return []
    if engine.backend == "pytorch":
        return _pytorch_version_problems(name, target, installed) + _gpu_problems(
            name, engine, target, installed.gpus, device_ids
        )
    gone = tensorrt_backend_gone(name, target, installed.trtllm_version)
    if gone is not None:
        return [gone]  # nothing else matters: no version of this engine can load on this TensorRT-LLM
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
    return problems + _gpu_problems(name, engine, target, installed.gpus, device_ids)


def tensorrt_backend_gone(name: str, target: EngineTarget, installed_version: str | None) -> str | None:
    """The one line saying engine `name` cannot load on TensorRT-LLM `installed_version` (no TensorRT backend
    there, e.g. 1.3), naming the installed version and the way out; None where the backend exists."""
    if installed_version is None or has_tensorrt_backend(installed_version):
        return None
    return (
        f"engine {name!r} is a TensorRT engine, but the installed TensorRT-LLM {installed_version} has no TensorRT "
        f'backend (removed in 1.3): set backend = "pytorch" in [engines.{name}] (or pass --backend pytorch) and '
        f"run `trtforge build {name}` to serve its checkpoint on the PyTorch backend, or serve the engine in the "
        f"{CONTAINER_HINT} container that ships TensorRT-LLM {target.trtllm_version or 'its version'}"
    )


def compatibility_warnings(name: str, engine: EngineInfo, installed: InstalledBackend) -> list[str]:
    """What loads here but deserves a word: a PyTorch entry prepared for another minor TensorRT-LLM version."""
    if engine.backend != "pytorch" or installed.trtllm_version is None or engine.trtllm_version is None:
        return []
    prepared, here = _release(engine.trtllm_version), _release(installed.trtllm_version)
    if prepared is None or here is None or prepared[0] != here[0] or prepared == here:
        return []
    return [
        f"PyTorch entry {name!r} was prepared for TensorRT-LLM {engine.trtllm_version}, the installed one is "
        f"{installed.trtllm_version}: its LLM API arguments should still apply; `trtforge build {name}` "
        "prepares it for this version"
    ]


def _pytorch_version_problems(name: str, target: EngineTarget, installed: InstalledBackend) -> list[str]:
    prepared = target.trtllm_version or "(unknown version)"
    if installed.trtllm_version is None:
        return [
            f"PyTorch entry {name!r} needs TensorRT-LLM {prepared} (its LLM API), but no TensorRT-LLM is "
            f"installed here: serve it in a container that ships TensorRT-LLM {prepared} (deploy/Dockerfile.llmapi)"
        ]
    ours, theirs = _release(target.trtllm_version), _release(installed.trtllm_version)
    if ours is not None and theirs is not None and ours[0] != theirs[0]:
        return [
            f"PyTorch entry {name!r} was prepared for TensorRT-LLM {prepared}, the installed one is "
            f"{installed.trtllm_version} (another major version, whose LLM API arguments may differ): prepare it "
            f"again here with `trtforge build {name}`"
        ]
    return []


def _gpu_problems(
    name: str,
    engine: EngineInfo,
    target: EngineTarget,
    gpus: list[GpuInfo],
    device_ids: list[int] | None,
) -> list[str]:
    """Enough GPUs, and of the right kind: an engine's exact arch, a PyTorch entry's quantization's minimum."""
    if device_ids is not None:
        known = {gpu.index: gpu for gpu in gpus}
        missing = [index for index in device_ids if index not in known]
        if missing:
            return [
                f"gpu_device_ids names GPU {', '.join(map(str, missing))}, but NVML sees "
                f"{len(gpus)} GPU(s) here: pick ids among {', '.join(str(g.index) for g in gpus) or 'none'}"
            ]
        gpus = [known[index] for index in device_ids]
    what = "engine" if engine.backend == "tensorrt" else "PyTorch entry"
    if len(gpus) < engine.world_size:
        smaller = "rebuild with" if engine.backend == "tensorrt" else "prepare it again with"
        return [
            f"{what} {name!r} needs {engine.world_size} GPU(s) (tp {engine.tp_size} × pp {engine.pp_size}), "
            f"NVML sees {len(gpus)} here: serve it on a machine with enough GPUs, or {smaller} a smaller tp_size"
        ]
    used = gpus[: engine.world_size]
    if engine.backend == "pytorch":
        for gpu in used:
            try:
                check_arch_supports(gpu.arch, engine.quant_algo)
            except (GpuError, UsageError) as exc:
                return [f"PyTorch entry {name!r} cannot run on GPU {gpu.index} {gpu.name}: {exc}"]
        return []
    if target.gpu_arch is not None:
        wrong = [gpu for gpu in used if gpu.arch != target.gpu_arch]
        if wrong:
            seen = ", ".join(f"GPU {gpu.index} {gpu.name} is {gpu.arch}" for gpu in wrong)
            return [
                f"engine {name!r} was built for {target.gpu_arch} GPUs, but {seen}: rebuild it here with "
                f"`trtforge build {name}`, or serve it on {target.gpu_arch} GPUs"
            ]
    return []


def _release(version: str | None) -> tuple[int, ...] | None:
    """(major, minor, patch…) of a version that parses, else None (an unparsable version is not judged)."""
    from packaging.version import InvalidVersion, Version

    if version is None:
        return None
    try:
        return Version(version).release
    except InvalidVersion:
        return None


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
    warn: Callable[[str], None] | None = None,
) -> list[str]:
    """Refuse an engine that would not load here; with `force`, return the problems as warnings instead.

    Args:
        warn: told each warning that is no refusal (a PyTorch entry prepared for another minor version);
            default: this module's logger.

    Raises:
        IncompatibleEngineError: the first problem, in one line (with how to override).
    """
    if engine.backend == "reference":
        return []
    installed = installed or installed_backend()
    problems = check_compatibility(name, engine, engine_target(engine), installed, device_ids=device_ids)
    if problems and not force:
        raise IncompatibleEngineError(f"{problems[0]} (--force starts it anyway)")
    for warning in compatibility_warnings(name, engine, installed):
        (warn or log.warning)(warning)
    return problems
