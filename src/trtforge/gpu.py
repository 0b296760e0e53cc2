"""What GPU trtforge is building for: NVML preflight and a catalogue of known GPUs.

Two sources of truth, in order:

1. NVML (`nvidia-ml-py`), when a driver is present: name, compute capability, memory, driver version.
2. The catalogue below, when the user names a GPU (`--gpu B200`) or only declares an architecture
   (`--gpu-arch sm100`): memory as `nvidia-smi` reports it on that part, and its compute capability.

NVFP4 GEMMs need compute capability ≥ 10.0 (Blackwell); `check_arch_supports` turns that into one line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from trtforge.errors import GpuError, UsageError

MIB = 1 << 20
GIB = 1 << 30

# Minimum compute capability per quantization: the kernels the engine needs must exist on the GPU.
# NVFP4 GEMMs are Blackwell-only (SM100/SM103 data centre, SM120 RTX); FP8 GEMMs start with Ada (8.9).
MIN_COMPUTE_CAPABILITY: dict[str, tuple[int, int]] = {
    "NVFP4": (10, 0),
    "FP8": (8, 9),
}


@dataclass(frozen=True)
class GpuSpec:
    """A GPU model trtforge knows without a driver (see docs/planner.md for the sources)."""

    key: str
    name: str
    compute_capability: tuple[int, int]
    memory_bytes: int

    @property
    def arch(self) -> str:
        return arch_from_capability(self.compute_capability)


# Memory is the total `nvidia-smi` shows on that part (MiB), i.e. what NVML's `total` will say — slightly less
# than the marketing figure, which counts reserved memory.
KNOWN_GPUS: dict[str, GpuSpec] = {
    spec.key: spec
    for spec in (
        GpuSpec("B200", "NVIDIA B200", (10, 0), 183_359 * MIB),
        GpuSpec("B300", "NVIDIA B300 SXM6 AC", (10, 3), 275_040 * MIB),
        GpuSpec("GB200", "NVIDIA GB200", (10, 0), 189_471 * MIB),
        GpuSpec("RTX5090", "NVIDIA GeForce RTX 5090", (12, 0), 32_607 * MIB),
        GpuSpec("RTXPRO6000", "NVIDIA RTX PRO 6000 Blackwell", (12, 0), 97_887 * MIB),
        GpuSpec("H100", "NVIDIA H100 80GB HBM3", (9, 0), 81_559 * MIB),
        GpuSpec("H200", "NVIDIA H200", (9, 0), 143_771 * MIB),
    )
}


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as NVML reports it."""

    index: int
    name: str
    compute_capability: tuple[int, int]
    memory_total_bytes: int
    memory_free_bytes: int
    driver_version: str

    @property
    def arch(self) -> str:
        return arch_from_capability(self.compute_capability)

    def to_json(self) -> dict[str, object]:
        return {
            "index": self.index,
            "name": self.name,
            "compute_capability": f"{self.compute_capability[0]}.{self.compute_capability[1]}",
            "arch": self.arch,
            "memory_total_bytes": self.memory_total_bytes,
            "memory_free_bytes": self.memory_free_bytes,
            "driver_version": self.driver_version,
        }


def arch_from_capability(capability: tuple[int, int]) -> str:
    """(10, 0) → "sm100", (12, 0) → "sm120", (9, 0) → "sm90"."""
    major, minor = capability
    return f"sm{major}{minor}"


def capability_from_arch(arch: str) -> tuple[int, int]:
    """Parse "sm100", "sm_120", "SM90", "10.0" or "9.0" into a compute capability."""
    text = arch.strip().lower()
    dotted = re.fullmatch(r"(\d+)\.(\d)", text)
    if dotted:
        return int(dotted.group(1)), int(dotted.group(2))
    match = re.fullmatch(r"sm_?(\d+)(\d)[af]?", text)
    if not match:
        raise UsageError(f"unknown GPU architecture {arch!r}: expected e.g. sm90, sm100, sm120 or 10.0")
    return int(match.group(1)), int(match.group(2))


def lookup_gpu(name: str) -> GpuSpec:
    """Find a known GPU by key, ignoring case, spaces, dashes and an "NVIDIA" prefix ("RTX PRO 6000" works)."""
    wanted = _normalise_gpu_name(name)
    for spec in KNOWN_GPUS.values():
        if wanted in (_normalise_gpu_name(spec.key), _normalise_gpu_name(spec.name)):
            return spec
    raise UsageError(f"unknown GPU {name!r}: known GPUs are {', '.join(KNOWN_GPUS)}")


def match_known_gpu(nvml_name: str) -> GpuSpec | None:
    """The catalogue entry an NVML device name belongs to, if any (longest key first: GB200 before B200)."""
    normalised = _normalise_gpu_name(nvml_name)
    for spec in sorted(KNOWN_GPUS.values(), key=lambda s: -len(s.key)):
        if _normalise_gpu_name(spec.key) in normalised:
            return spec
    return None


def _normalise_gpu_name(name: str) -> str:
    text = re.sub(r"[\s_\-]+", "", name.lower())
    return text.removeprefix("nvidia").removeprefix("geforce")


def detect_gpus() -> list[GpuInfo]:
    """Every GPU NVML sees.

    Raises:
        GpuError: no NVIDIA driver (NVML cannot be loaded or initialised) or no GPU — one line.
    """
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound:
        raise GpuError(
            "no NVIDIA driver found (NVML library not loadable): no GPU to build or run on"
        ) from None
    except pynvml.NVMLError as exc:
        raise GpuError(f"NVIDIA driver present but NVML failed to initialise: {exc}") from None
    try:
        driver = _as_str(pynvml.nvmlSystemGetDriverVersion())
        gpus = [_read_device(pynvml, index, driver) for index in range(pynvml.nvmlDeviceGetCount())]
    except pynvml.NVMLError as exc:
        raise GpuError(f"NVML could not read the GPUs: {exc}") from None
    finally:
        pynvml.nvmlShutdown()
    if not gpus:
        raise GpuError(f"NVIDIA driver {driver} is loaded but reports no GPU")
    return gpus


def _read_device(nvml: Any, index: int, driver: str) -> GpuInfo:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
    return GpuInfo(
        index=index,
        name=_as_str(nvml.nvmlDeviceGetName(handle)),
        compute_capability=(int(major), int(minor)),
        memory_total_bytes=int(memory.total),
        memory_free_bytes=int(memory.free),
        driver_version=driver,
    )


def _as_str(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def try_detect_gpus() -> list[GpuInfo]:
    """Like `detect_gpus`, but an empty list when there is no driver or GPU (never raises)."""
    try:
        return detect_gpus()
    except GpuError:
        return []
    except Exception:  # a broken NVML binding must not break planning; the caller notes "no GPU"
        return []


def detect_gpu_arch() -> str | None:
    """The architecture of GPU 0 ("sm100", "sm120", "sm90"…), or None without a GPU or driver. Never raises."""
    gpus = try_detect_gpus()
    return gpus[0].arch if gpus else None


def check_arch_supports(arch: str, quantization: str | None) -> None:
    """Refuse, in one line, a quantization whose kernels the architecture does not have.

    Raises:
        GpuError: e.g. NVFP4 on sm90 (Hopper) — NVFP4 GEMMs need compute capability ≥ 10.0.
        UsageError: the architecture string cannot be parsed.
    """
    if not quantization:
        return
    needed = MIN_COMPUTE_CAPABILITY.get(quantization.upper())
    if needed is None:
        return
    capability = capability_from_arch(arch)
    if capability < needed:
        raise GpuError(
            f"{quantization.upper()} needs compute capability ≥ {needed[0]}.{needed[1]} "
            f"({'Blackwell' if needed >= (10, 0) else 'Ada or newer'}); "
            f"{arch_from_capability(capability)} (compute capability {capability[0]}.{capability[1]}) cannot run it"
        )


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}


def parse_memory_size(text: str) -> int:
    """ "32GiB" → 34359738368, "96GB" → 96·10⁹, "183359MiB", or plain bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _SIZE_UNITS:
        raise UsageError(f"cannot read memory size {text!r}: use e.g. 32GiB, 96GB or 183359MiB")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])
