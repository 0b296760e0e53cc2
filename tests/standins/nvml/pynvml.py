"""Stand-in for `pynvml` (nvidia-ml-py) reporting the GPUs named in `$TRTFORGE_STANDIN_GPUS`.

Put `tests/standins/nvml` on PYTHONPATH to use it. `TRTFORGE_STANDIN_GPUS="NVIDIA B200:10.0:183,NVIDIA H100:9.0:80"`
is two GPUs (name : compute capability : GiB); unset or empty behaves like a machine without a driver, as the
real module does here.
"""

import os
from types import SimpleNamespace

_GIB = 1 << 30


class NVMLError(Exception):
    pass


class NVMLError_LibraryNotFound(NVMLError):
    pass


def _gpus():
    spec = os.environ.get("TRTFORGE_STANDIN_GPUS", "")
    gpus = []
    for item in filter(None, spec.split(",")):
        name, capability, gib = item.split(":")
        major, minor = capability.split(".")
        gpus.append((name, (int(major), int(minor)), int(gib) * _GIB))
    return gpus


def nvmlInit():
    if not _gpus():
        raise NVMLError_LibraryNotFound("NVML Shared Library Not Found")


def nvmlShutdown():
    pass


def nvmlSystemGetDriverVersion():
    return "580.00"


def nvmlDeviceGetCount():
    return len(_gpus())


def nvmlDeviceGetHandleByIndex(index):
    return _gpus()[index]


def nvmlDeviceGetName(handle):
    return handle[0]


def nvmlDeviceGetCudaComputeCapability(handle):
    return handle[1]


def nvmlDeviceGetMemoryInfo(handle):
    return SimpleNamespace(total=handle[2], free=handle[2] - _GIB, used=_GIB)
