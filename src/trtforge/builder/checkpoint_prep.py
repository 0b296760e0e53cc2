"""What a TensorRT build takes from the checkpoint alone, prepared in a child process while the builder runs.

The tokenizer files and chat template put beside the engine and the xgrammar tokenizer info depend only on the
checkpoint, and loading a tokenizer imports `transformers` (and torch: seconds, and most of a second more to
unload at exit). So a TensorRT build starts `python -m trtforge.builder.checkpoint_prep` the moment its builder
has started (never before: the builder's start is not delayed), at a lower CPU priority. The child writes the
files into `files/` of a staging directory in the store's tmp/ and its outcome into `result.json`; the build
joins it after the builder is reaped, re-raises its error as the same error (nothing is published), and moves
the staged files into the entry before the manifest is written. The build's own process never imports
transformers. Ending the build early (builder failure, signal) kills the child and removes its staging.

`TRTFORGE_BUILD_PREP=serial` prepares in-process after the reap instead, the order trtforge used before
(`benchmarks/build_reap.py` compares the two).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

from trtforge.atomic import write_text_atomic
from trtforge.errors import CheckpointError, InvalidEngineError, StoreError, TrtforgeError

PREP_MODE_ENV = "TRTFORGE_BUILD_PREP"
FILES_DIR = "files"
RESULT_FILE = "result.json"
STDERR_FILE = "child.log"
_RESULT_LIMIT = 1 << 20
_NICENESS = 10  # the builder comes first on a busy machine; the child needs a few CPU seconds in all
# Errors the child's failure is re-raised as, by name (each takes just a message).
_ERRORS: dict[str, type[TrtforgeError]] = {
    cls.__name__: cls for cls in (CheckpointError, InvalidEngineError, StoreError, TrtforgeError)
}

__all__ = ["CheckpointPrep", "PrepRequest", "PrepResult", "parallel_prep", "prepare"]


@dataclass(frozen=True)
class PrepRequest:
    """Where the checkpoint's files come from (as `checks.copy_tokenizer_files` takes them)."""

    model_dir: str | None
    hub_model: str | None = None
    revision: str | None = None


@dataclass(frozen=True)
class PrepResult:
    """The staged files' directory, why guided decoding stays off (None: the tokenizer info was written), and
    how long preparing took (in a child: from its start to its outcome written)."""

    files: Path
    guided_off: str | None
    prep_s: float

    def move_into(self, engine_dir: Path) -> list[str]:
        """Move the staged files beside the engine (replacing the builder's copies of the same names)."""
        moved = []
        for path in sorted(self.files.iterdir()):
            os.replace(path, engine_dir / path.name)
            moved.append(path.name)
        return moved


def parallel_prep() -> bool:
    """Whether the checkpoint work runs beside the builder (the default) rather than after it."""
    return os.environ.get(PREP_MODE_ENV, "parallel").strip().lower() != "serial"


def prepare(request: PrepRequest, files: Path) -> str | None:
    """Copy the tokenizer files and chat template into `files`, then write the xgrammar tokenizer info there;
    returns why guided decoding stays off, or None.

    Raises:
        CheckpointError: no tokenizer for the engine, or a tokenizer file refused (see `copy_tokenizer_files`).
    """
    from trtforge.builder.checks import copy_tokenizer_files
    from trtforge.builder.xgrammar import write_tokenizer_info

    files.mkdir(parents=True, exist_ok=True)
    copy_tokenizer_files(
        files,
        Path(request.model_dir) if request.model_dir else None,
        hub_model=request.hub_model,
        revision=request.revision,
    )
    try:
        write_tokenizer_info(files)
    except CheckpointError as exc:
        return str(exc)
    return None


class CheckpointPrep:
    """One build's checkpoint work in `staging` (a fresh directory it owns); a context manager that always ends
    the child and removes `staging`.

    `start()` (after the builder started) runs it in a child process; `join()` waits for it, or, when it was
    never started or `parallel` is off, does the work in this process.
    """

    def __init__(self, request: PrepRequest, staging: Path, *, parallel: bool = True) -> None:
        self.request = request
        self.staging = staging
        self.parallel = parallel
        self._child: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0  # time.time(): the child reports when it finished on the same clock

    def __enter__(self) -> CheckpointPrep:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> None:
        """Start the child (once; nothing when not `parallel`)."""
        if not self.parallel or self._child is not None:
            return
        self._started_at = time.time()
        try:
            with open(self.staging / STDERR_FILE, "wb") as log:
                self._child = subprocess.Popen(
                    [sys.executable, "-m", __name__, json.dumps(asdict(self.request)), str(self.staging)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    close_fds=True,
                )
        except OSError:
            return  # no process to spare right now: `join` does the work in this process, after the reap
        with contextlib.suppress(OSError):  # gone already, or not permitted: it only runs sooner
            os.setpriority(os.PRIO_PROCESS, self._child.pid, _NICENESS)

    @property
    def pid(self) -> int | None:
        """The child's process id while it is ours (None: not started, or in-process)."""
        return self._child.pid if self._child is not None else None

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.poll() is None

    def join(self) -> PrepResult:
        """The prepared files, once ready.

        Raises:
            CheckpointError: (and the other errors of `prepare`) what the checkpoint work failed with.
            TrtforgeError: the child died without saying how it ended.
        """
        files = self.staging / FILES_DIR
        if self._child is None:
            started = time.monotonic()
            guided_off = prepare(self.request, files)
            return PrepResult(files, guided_off, time.monotonic() - started)
        status = self._child.wait()
        try:
            outcome = json.loads((self.staging / RESULT_FILE).read_bytes()[:_RESULT_LIMIT])
        except (OSError, ValueError):
            outcome = None
        if not isinstance(outcome, dict):
            raise TrtforgeError(
                f"preparing the checkpoint's tokenizer files failed (exit status {status}): {self._last_words()}"
            )
        error = outcome.get("error")
        if isinstance(error, dict):
            raise _rebuilt([str(kind) for kind in error.get("types", [])], str(error.get("message")))
        guided_off = outcome.get("guided_off")
        finished = float(outcome.get("finished_at") or time.time())
        return PrepResult(files, str(guided_off) if guided_off else None, finished - self._started_at)

    def close(self) -> None:
        """End the child if it still runs (and reap it), then remove the staging directory."""
        child, self._child = self._child, None
        if child is not None:
            if child.poll() is None:
                child.kill()
            child.wait()
        shutil.rmtree(self.staging, ignore_errors=True)

    def _last_words(self) -> str:
        try:
            lines = (self.staging / STDERR_FILE).read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        return lines[-1] if lines else "no output"


def _rebuilt(kinds: list[str], message: str) -> TrtforgeError:
    """The child's error (`kinds`: its class and bases, nearest first) as the nearest trtforge error that takes a
    message; a disk error as a StoreError; anything else (a bug) in one line naming its type."""
    for kind in kinds:
        if kind in _ERRORS:
            return _ERRORS[kind](message)
        if kind == "OSError":
            return StoreError(message)
    kind = kinds[0] if kinds else "unknown error"
    return TrtforgeError(f"preparing the checkpoint's tokenizer files failed: {kind}: {message}")


def _child_main(argv: list[str]) -> int:
    """`python -m trtforge.builder.checkpoint_prep REQUEST_JSON STAGING`: prepare, then write the outcome."""
    request = PrepRequest(**json.loads(argv[0]))
    staging = Path(argv[1])
    outcome: dict[str, object]
    try:
        outcome = {"guided_off": prepare(request, staging / FILES_DIR), "error": None}
    except Exception as exc:  # every failure is reported to the build, which raises it
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        kinds = [cls.__name__ for cls in type(exc).__mro__]
        outcome = {"guided_off": None, "error": {"types": kinds, "message": message}}
    write_text_atomic(staging / RESULT_FILE, json.dumps({**outcome, "finished_at": time.time()}))
    return 0


if __name__ == "__main__":
    sys.stdout.flush()
    code = _child_main(sys.argv[1:])
    sys.stderr.flush()
    # Unloading torch and transformers takes most of a second; the outcome is written, nothing is left to do.
    os._exit(code)
