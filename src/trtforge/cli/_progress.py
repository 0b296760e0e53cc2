"""Rich rendering of `trtforge.progress`: a build's spinner line with its log above, a transfer's bar."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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
    """Phase and elapsed time on a live line; the builder's log streams above it."""

    def __init__(self, progress: Progress, task: TaskID) -> None:
        self._progress = progress
        self._task = task

    def phase(self, text: str) -> None:
        self._progress.update(self._task, description=escape(text))

    def log(self, line: str) -> None:
        self._progress.console.print(f"[dim]{escape(line)}[/]")


@contextmanager
def build_progress(name: str) -> Iterator[BuildProgress]:
    columns = (
        SpinnerColumn(),
        TextColumn(f"[bold]{escape(name)}[/] {{task.description}}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        yield _RichProgress(progress, progress.add_task("planning", total=None))


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
