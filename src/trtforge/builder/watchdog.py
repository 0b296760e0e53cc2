"""Run a builder in its own session, stream its log, and stop it the moment its engine is complete.

`trtllm-bench build` can hang at shutdown after saving the engine (joining its MPI worker pool). The watchdog does
not wait for it to exit: the build is done as soon as `<workspace>/<model>/tp_{tp}_pp_{pp}/` holds a whole engine —
a config that parses and every `rank{i}.engine`, each as large as its source in `tmp*-llm-workspace/tmp.engine/`
and no longer growing. Then everything the builder started is ended (`trtforge.processes.OwnedProcess`: its
session and every descendant seen, MPI workers that left it included): TERM, then KILL after
`FINISHED_GRACE_S`, so a finished builder that ignores SIGTERM or has a hung child is gone well within a second.
A builder stopped while still working (stall, timeout, a signal to us) gets `DEFAULT_GRACE_S` to exit cleanly.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from trtforge.engine import ENGINE_CONFIG, is_engine_config, rank_file_name
from trtforge.errors import BuildInterruptedError
from trtforge.processes import EndReport, OwnedProcess

LLM_WORKSPACE_GLOB = "tmp*-llm-workspace"
LLM_TMP_ENGINE = "tmp.engine"
DEFAULT_POLL_S = 0.2
DEFAULT_GRACE_S = 2.0  # TERM → KILL for a builder stopped while working: time to exit cleanly
# TERM → KILL once its engine is whole and checked: the builder has nothing left to write, and a builder hung in
# shutdown (which may ignore TERM) must not hold the build up for the working grace.
FINISHED_GRACE_S = 0.2
# Signals that end `trtforge build` (SIGINT arrives as KeyboardInterrupt already): each becomes an exception in
# the main thread, so the watchdog's cleanup ends the builder's session instead of orphaning it.
ENDING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
# Without a temporary source to compare against, a rank file must keep its size this long.
SETTLE_WITHOUT_SOURCE_S = 1.0


class Outcome(enum.Enum):
    COMPLETE = "complete"  # a whole engine is on disk (the builder may have been stopped for it)
    FAILED = "failed"  # the builder exited without a whole engine
    STALLED = "stalled"  # no log output and no file growth for the stall timeout
    TIMED_OUT = "timed_out"  # the overall timeout passed


class WatchState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    DONE = "done"


@dataclass(frozen=True)
class WatchResult:
    outcome: Outcome
    exit_code: int | None  # the builder's own exit status; None when we had to stop it
    started_at: float  # time.monotonic()
    engine_complete_at: float | None
    reaped_at: float  # every process of the session gone
    stopped: bool  # we signalled the builder
    stop_grace_s: float | None  # the TERM → KILL grace the stop allowed (None: not signalled)
    killed: bool  # some process outlived the grace and got SIGKILL
    ending: EndReport  # what ending the builder's processes did, pid by pid


@dataclass
class _FileSeen:
    size: int
    since: float


class BuildWatchdog:
    """One builder run. `run()` blocks until the engine is complete, the builder fails, stalls or times out."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        workspace: Path,
        engine_dir: Path,
        world_size: int,
        log_path: Path,
        timeout_s: float | None = None,
        stall_timeout_s: float | None = None,
        poll_s: float = DEFAULT_POLL_S,
        grace_s: float = DEFAULT_GRACE_S,
        on_line: Callable[[str], None] | None = None,
        on_phase: Callable[[str], None] | None = None,
        on_started: Callable[[int], None] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.env = dict(env)
        self.workspace = workspace
        self.engine_dir = engine_dir
        self.world_size = world_size
        self.log_path = log_path
        self.timeout_s = timeout_s
        self.stall_timeout_s = stall_timeout_s
        self.poll_s = poll_s
        self.grace_s = grace_s
        self._on_line = on_line or (lambda _line: None)
        self._on_phase = on_phase or (lambda _phase: None)
        self._on_started = on_started or (lambda _pid: None)
        self.state = WatchState.CREATED
        self._seen: dict[Path, _FileSeen] = {}
        self._last_output = 0.0
        self._phase = ""

    # the run

    def run(self) -> WatchResult:
        if self.state is not WatchState.CREATED:
            raise RuntimeError("a BuildWatchdog runs once")
        self.state = WatchState.RUNNING
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self._last_output = started
        last_activity = started
        last_signature = (-1, -1)
        owned = OwnedProcess(self.argv, env=self.env, stdout=subprocess.PIPE, grace_s=self.grace_s)
        with open(self.log_path, "ab") as log, _signals_raise():
            reader: threading.Thread | None = None
            outcome: Outcome
            complete_at: float | None = None
            exit_code: int | None = None
            try:
                owned.start()  # its own session: everything the builder starts is ended with it
                assert owned.stdout is not None and owned.pid is not None
                reader = threading.Thread(target=self._pump, args=(owned.stdout, log), daemon=True)
                reader.start()
                self._on_started(owned.pid)
                self._set_phase("starting the builder")
                while True:
                    exit_code = owned.poll()
                    now = time.monotonic()
                    if self._engine_complete(now):
                        outcome, complete_at = Outcome.COMPLETE, now
                        break
                    if exit_code is not None:
                        reader.join(timeout=2)  # let the last lines land before judging
                        outcome = (
                            Outcome.COMPLETE if self._engine_complete(now, settled=True) else Outcome.FAILED
                        )
                        complete_at = now if outcome is Outcome.COMPLETE else None
                        break
                    signature = self._workspace_signature()
                    if signature != last_signature:
                        last_signature, last_activity = signature, now
                    if self.timeout_s is not None and now - started > self.timeout_s:
                        outcome = Outcome.TIMED_OUT
                        break
                    quiet_s = now - max(last_activity, self._last_output)
                    if self.stall_timeout_s is not None and quiet_s > self.stall_timeout_s:
                        outcome = Outcome.STALLED
                        break
                    time.sleep(self.poll_s)
            finally:
                _ignore_ending_signals()  # a second TERM must not interrupt the cleanup that ends the builder
                if complete_at is not None:
                    self._set_phase("engine complete; stopping the builder")
                ending = owned.stop(grace_s=FINISHED_GRACE_S if complete_at is not None else self.grace_s)
                reaped_at = time.monotonic()
                if reader is not None:
                    reader.join(timeout=1)
                elif owned.stdout is not None:
                    owned.stdout.close()  # no reader started to close it
                self.state = WatchState.DONE
        return WatchResult(
            outcome,
            exit_code,
            started,
            complete_at,
            reaped_at,
            stopped=ending.signalled,
            stop_grace_s=ending.grace_s if ending.signalled else None,
            killed=ending.killed,
            ending=ending,
        )

    def _pump(self, stream: IO[bytes], log: IO[bytes]) -> None:
        with stream:  # closed here, at end of output: closing it from another thread would race this read
            for raw in iter(stream.readline, b""):
                log.write(raw)
                log.flush()
                self._last_output = time.monotonic()
                line = raw.decode(errors="replace").rstrip()
                if line:
                    self._on_line(line)

    def _set_phase(self, phase: str) -> None:
        if phase != self._phase:
            self._phase = phase
            self._on_phase(phase)

    # what is on disk

    def _workspace_signature(self) -> tuple[int, int]:
        """(file count, total bytes) under the workspace: growth means the builder is alive."""
        count = total = 0
        for dirpath, _dirs, files in os.walk(self.workspace):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                    count += 1
        return count, total

    def _source_dirs(self) -> list[Path]:
        return [path / LLM_TMP_ENGINE for path in self.workspace.glob(LLM_WORKSPACE_GLOB)]

    def _engine_complete(self, now: float, *, settled: bool = False) -> bool:
        """True when the final directory holds a whole engine that is no longer being written."""
        if not self.engine_dir.is_dir():
            if any(source.is_dir() for source in self._source_dirs()):
                self._set_phase("writing the engine")
            return False
        self._set_phase("saving the engine")
        try:
            config = json.loads((self.engine_dir / ENGINE_CONFIG).read_text())
        except (OSError, ValueError):
            return False
        if not is_engine_config(config):
            return False
        mapping = config["pretrained_config"].get("mapping") or {}
        world = int(mapping.get("world_size", self.world_size))
        sources = self._source_dirs()
        complete = True
        for rank in range(world):
            if not self._rank_complete(rank_file_name(rank), sources, now, settled=settled):
                complete = False  # keep going: every file's size history must stay current
        return complete

    def _rank_complete(self, name: str, sources: list[Path], now: float, *, settled: bool) -> bool:
        dest = self.engine_dir / name
        try:
            size = dest.stat().st_size
        except OSError:
            return False
        seen = self._seen.get(dest)
        if seen is None or seen.size != size:
            self._seen[dest] = _FileSeen(size, now)
            return settled and self._matches_source(name, size, sources) is not False
        if settled:  # the builder exited: nothing is still writing
            return self._matches_source(name, size, sources) is not False
        matches = self._matches_source(name, size, sources)
        if matches is None:
            return now - seen.since >= SETTLE_WITHOUT_SOURCE_S
        return matches and now > seen.since  # same size as the source, and unchanged since the last poll

    @staticmethod
    def _matches_source(name: str, size: int, sources: list[Path]) -> bool | None:
        """Whether the copy is as large as its source; None when no source exists."""
        sizes = []
        for source in sources:
            with contextlib.suppress(OSError):
                sizes.append((source / name).stat().st_size)
        if not sizes:
            return None
        return size in sizes and size > 0


# --- signals ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """While a builder runs, SIGTERM/SIGHUP raise `BuildInterruptedError` (main thread only; restored after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, _frame: object) -> None:
        _ignore_ending_signals()
        raise BuildInterruptedError(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in ENDING_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _ignore_ending_signals() -> None:
    if threading.current_thread() is threading.main_thread():
        for sig in ENDING_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
