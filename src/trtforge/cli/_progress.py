"""Rich rendering of `trtforge.progress`: a build's spinner line with its log above, a transfer's bar."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from trtforge.cli._app import console
from trtforge.progress import BuildProgress, TransferProgress


class _RichProgress:
    """The running phase and how long it has run on a live line; above it the builder's log, and each finished
    phase with the time it took (so a log that is not a terminal, which gets no live line, shows them too).

    A phase whose text up to its first `: ` is the running one's (a transfer's `pull x: 3% of 1.20 GiB`) updates
    that phase in place rather than finishing it.
    """

    def __init__(self, progress: Progress, task: TaskID, name: str) -> None:
        self._progress = progress
        self._task = task
        self._name = name
        self._phase: str | None = None
        self._since = time.monotonic()

    def phase(self, text: str) -> None:
        if self._phase is not None and _same_phase(self._phase, text):
            self._progress.update(self._task, description=escape(text))
        else:
            self.finish()
            self._progress.reset(self._task, description=escape(text))
            self._since = time.monotonic()
        self._phase = text

    def log(self, line: str) -> None:
        self._progress.console.print(f"[dim]{escape(line)}[/]")

    def finish(self) -> None:
        """Print the running phase as finished, with how long it ran."""
        if self._phase is None:
            return
        took = time.monotonic() - self._since
        self._progress.console.print(
            f"[bold]{escape(self._name)}[/] {escape(self._phase)} [dim]({took:.1f} s)[/]", soft_wrap=True
        )
        self._phase = None


def _same_phase(running: str, text: str) -> bool:
    head, sep, _ = running.partition(": ")
    return bool(sep) and text.startswith(f"{head}: ")


@contextmanager
def build_progress(name: str, *, to: Console | None = None) -> Iterator[BuildProgress]:
    """A build's progress drawn on `to` (default: the CLI's stderr console); the live line goes at the end."""
    columns = (
        SpinnerColumn(),
        TextColumn(f"[bold]{escape(name)}[/] {{task.description}}"),
        TimeElapsedColumn(),
    )
    drawn_on = to or console
    # Not a terminal (a log file, CI): no live line at all, only the finished phases and the log.
    with Progress(*columns, console=drawn_on, transient=True, disable=not drawn_on.is_terminal) as progress:
        drawn = _RichProgress(progress, progress.add_task("planning", total=None), name)
        try:
            yield drawn
        finally:
            drawn.finish()


class _BytesProgress:
    """One progress bar: bytes done, total, rate, time left."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: TaskID | None = None

    def start(self, description: str, total_bytes: int) -> None:
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(escape(description), total=total_bytes)

    def advance(self, n_bytes: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, n_bytes)


@contextmanager
def bytes_progress(quiet: bool) -> Iterator[TransferProgress]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False, disable=quiet) as progress:
        yield _BytesProgress(progress)
