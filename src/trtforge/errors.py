"""Every error a user can cause or meet, rooted at `TrtforgeError`.

The CLI turns these into one line and an exit status; the proxy turns them into the OpenAI error envelope.
Each subclass also inherits the builtin it resembles, so callers can catch either.
"""

from __future__ import annotations

from pathlib import Path


class TrtforgeError(Exception):
    """Root of every error trtforge reports to a user (one line, no traceback)."""

    exit_code: int = 1


class UsageError(TrtforgeError, ValueError):
    """The user asked for something that cannot be done as asked."""

    exit_code = 2


class CatalogError(TrtforgeError, ValueError):
    """A catalogue file or entry is invalid, or a name is not in the catalogue."""

    exit_code = 2


class EngineNotFoundError(TrtforgeError, FileNotFoundError):
    """No engine is linked under that name and the path is not an engine directory."""


class InvalidEngineError(TrtforgeError, ValueError):
    """A directory is not a usable engine directory (config.json, rank files, tokenizer...)."""


class CheckpointError(TrtforgeError, ValueError):
    """A checkpoint is missing, unreadable or would build into a broken engine."""


class GpuError(TrtforgeError, RuntimeError):
    """The GPU is absent, unreadable or cannot run what was asked."""


class PlanError(TrtforgeError, ValueError):
    """The requested engine does not fit the target GPU."""


class BuildFailedError(TrtforgeError, RuntimeError):
    """A builder failed; carries what the user needs to act on it."""

    def __init__(
        self,
        message: str,
        *,
        cause: str = "unknown",
        exit_code: int | None = None,
        log_path: Path | None = None,
        log_tail: str = "",
    ) -> None:
        super().__init__(message)
        self.cause = cause
        self.builder_exit_code = exit_code
        self.log_path = log_path
        self.log_tail = log_tail


class BuildInterruptedError(TrtforgeError):
    """`trtforge build` got SIGTERM or SIGHUP: the builder's session was ended, nothing was published."""

    def __init__(self, signum: int) -> None:
        super().__init__(
            f"interrupted by {signal_name(signum)}: the builder and its children were stopped, nothing was published"
        )
        self.exit_code = 128 + signum


def signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StoreError(TrtforgeError, OSError):
    """The engine store is unreadable or a store operation could not complete."""


class VerifyError(TrtforgeError, ValueError):
    """A stored engine is missing, truncated or changed files."""


class TritonError(TrtforgeError, RuntimeError):
    """tritonserver could not be found, started or made ready."""


class TritonCrashedError(TritonError):
    """tritonserver died of a signal nobody sent it (an abort, a segfault) before it was ready.

    Unlike a model that fails to load, this need not happen again: the stack may start a new one.
    """


class BackendUnavailableError(TritonError):
    """A Triton backend the model repository needs (e.g. `tensorrtllm`) is not installed."""


class CacheError(TrtforgeError, RuntimeError):
    """A binary cache is unreachable, misconfigured, or does not hold what was asked."""


class CacheTrustError(CacheError):
    """A cached entry is unsigned or not signed by a trusted key (nothing is published)."""


class CacheIntegrityError(CacheError):
    """A cached entry's bytes do not match its manifest, or its manifest does not match its hash."""
