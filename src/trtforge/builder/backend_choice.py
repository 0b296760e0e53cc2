"""Which GPU backend an entry is built for: its `backend` (or `--backend`), "auto" resolved by TensorRT-LLM's version.

TensorRT-LLM 1.2.x and older build TensorRT engines (`trtllm-bench build`) and also run checkpoints on the PyTorch
backend; from 1.3 the engine backend is gone and the PyTorch backend is all there is. So "auto" means `tensorrt`
where the installed TensorRT-LLM can still build an engine and `pytorch` everywhere else, and an explicit
`tensorrt` on 1.3 or newer is refused before anything is hashed or started (`TensorrtBackendGoneError`).
"""

from __future__ import annotations

from dataclasses import dataclass

from trtforge.catalog import BACKEND_CHOICES, CatalogEntry, ConcreteBackend
from trtforge.errors import BuildFailedError, UsageError
from trtforge.trtllm import has_tensorrt_backend

__all__ = [
    "BackendChoice",
    "TensorrtBackendGoneError",
    "choose_backend",
    "entry_backend",
    "requested_backend",
    "resolve_backend",
]


class TensorrtBackendGoneError(BuildFailedError):
    """An engine (backend "tensorrt") was asked of a TensorRT-LLM that has no TensorRT backend any more."""

    def __init__(self, name: str, version: str) -> None:
        super().__init__(
            f"{name!r} is a TensorRT engine entry, but TensorRT-LLM {version} has no TensorRT backend (removed in "
            f'1.3): set backend = "pytorch" (or "auto") in [engines.{name}], or pass --backend pytorch, to serve '
            "the checkpoint on the PyTorch backend",
            cause="no_tensorrt_backend",
        )


@dataclass(frozen=True)
class BackendChoice:
    """The entry on the backend it resolved to, and why (for `plan` and `engines` to show)."""

    entry: CatalogEntry
    requested: str  # what the entry or --backend asked for ("auto", "tensorrt", ...)
    trtllm_version: str | None  # the version "auto" was resolved against (None: not probed / not installed)

    @property
    def backend(self) -> ConcreteBackend:
        backend = self.entry.backend
        assert backend != "auto"
        return backend

    def to_json(self) -> dict[str, object]:
        return {"backend": self.backend, "requested": self.requested, "trtllm_version": self.trtllm_version}


def requested_backend(entry: CatalogEntry, override: str | None) -> str:
    """`--backend` when given (checked), else the entry's own `backend`."""
    if override is None:
        return entry.backend
    if override not in BACKEND_CHOICES:
        raise UsageError(f"--backend must be one of {', '.join(BACKEND_CHOICES)}, not {override!r}")
    return override


def choose_backend(entry: CatalogEntry, requested: str, version: str | None) -> BackendChoice:
    """`entry` on the backend `requested` means with TensorRT-LLM `version` installed (None: none is).

    "auto" with no TensorRT-LLM at all stays `tensorrt`, the backend whose absence the build then reports.

    Raises:
        TensorrtBackendGoneError: `tensorrt` asked of a TensorRT-LLM that has no TensorRT backend.
        CatalogError: the entry cannot run on the chosen backend (e.g. builder_options on pytorch).
    """
    chosen = resolve_backend(requested, version, name=entry.name)
    return BackendChoice(entry.resolved(chosen), requested, version)


def entry_backend(entry: CatalogEntry, *, trtllm_python: str | None = None) -> ConcreteBackend:
    """The backend `entry` would be built for here, without building it ("auto" probes the installed version).

    Raises:
        TensorrtBackendGoneError: the entry asks for an engine of a TensorRT-LLM that has none.
    """
    from trtforge.trtllm import installed_trtllm_version

    version = installed_trtllm_version(trtllm_python) if entry.backend in ("auto", "tensorrt") else None
    return resolve_backend(entry.backend, version, name=entry.name)


def resolve_backend(requested: str, version: str | None, *, name: str) -> ConcreteBackend:
    """The backend `requested` ("auto" or a concrete one) is with TensorRT-LLM `version` (None: none installed).

    Raises:
        TensorrtBackendGoneError: `tensorrt` asked of a TensorRT-LLM that has no TensorRT backend (`name` is
            the entry, for the message).
        UsageError: `requested` is no backend.
    """
    chosen: ConcreteBackend
    if requested == "auto":
        chosen = "pytorch" if version is not None and not has_tensorrt_backend(version) else "tensorrt"
    elif requested == "tensorrt":
        chosen = "tensorrt"
    elif requested == "pytorch":
        chosen = "pytorch"
    elif requested == "reference":
        chosen = "reference"
    else:
        raise UsageError(f"backend must be one of {', '.join(BACKEND_CHOICES)}, not {requested!r}")
    if chosen == "tensorrt" and version is not None and not has_tensorrt_backend(version):
        raise TensorrtBackendGoneError(name, version)
    return chosen
