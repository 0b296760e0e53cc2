"""Where long work reports how far it is: the progress protocols, their silent default, and one adapter.

There are two protocols because there are two kinds of long work, drawn differently:
- `BuildProgress`: a build's length is not known in advance; it says which phase it is in and streams the
  builder's log lines (the CLI draws a spinner line with the log above it).
- `TransferProgress`: a push or pull knows its byte total up front; it moves bytes against it (the CLI draws a
  bar with rate and time left).

`NullProgress` is the silent default for both. `TransferAsPhases` shows a transfer inside a build (a
substitution pulls while the build's phase line is up) as that phase line. The rich rendering lives in `cli/`.
"""

from __future__ import annotations

from typing import Protocol


class BuildProgress(Protocol):
    """What a build reports: the phase it is in, and the builder's log lines."""

    def phase(self, text: str) -> None: ...

    def log(self, line: str) -> None: ...


class TransferProgress(Protocol):
    """What a push or pull reports: bytes moved against a total known at the start."""

    def start(self, description: str, total_bytes: int) -> None: ...

    def advance(self, n_bytes: int) -> None: ...


class NullProgress:
    """Reports nowhere; a `BuildProgress` and a `TransferProgress`."""

    def phase(self, text: str) -> None:
        pass

    def log(self, line: str) -> None:
        pass

    def start(self, description: str, total_bytes: int) -> None:
        pass

    def advance(self, n_bytes: int) -> None:
        pass


class TransferAsPhases:
    """A transfer's bytes as a build's phase line (whole percents, a new line only when the percent changes)."""

    def __init__(self, progress: BuildProgress) -> None:
        self._progress = progress
        self._description = ""
        self._total = 0
        self._done = 0
        self._shown = -1

    def start(self, description: str, total_bytes: int) -> None:
        self._description, self._total, self._done, self._shown = description, total_bytes, 0, -1
        self.advance(0)

    def advance(self, n_bytes: int) -> None:
        self._done += n_bytes
        percent = 100 * self._done // self._total if self._total else 100
        if percent != self._shown:
            self._shown = percent
            self._progress.phase(f"{self._description}: {percent}% of {self._total / 2**30:.2f} GiB")
