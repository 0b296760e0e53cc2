"""A build reports the phase that is really running, and the CLI draws each phase with the time it took."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from trtforge.builder.pipeline import ensure_engine
from trtforge.cli._progress import build_progress
from trtforge.engine import REFERENCE_MODEL_DIR


class _Recorder:
    """A `BuildProgress` noting, at each phase, whether the build directory holds trained weights yet."""

    def __init__(self, store_tmp: Path) -> None:
        self.store_tmp = store_tmp
        self.phases: list[tuple[str, bool]] = []

    def phase(self, text: str) -> None:
        weights = list(self.store_tmp.glob(f"*.incomplete/{REFERENCE_MODEL_DIR}/*.safetensors"))
        self.phases.append((text, bool(weights)))

    def log(self, line: str) -> None:
        pass


def test_the_tiny_build_reports_its_training_before_hashing(isolated_home: Path) -> None:
    recorder = _Recorder(isolated_home / "store" / "tmp")
    ensure_engine("tiny", progress=recorder, substitute=False)
    texts = [text for text, _ in recorder.phases]
    training = texts.index("training the tiny model")
    hashing = texts.index("hashing files and publishing")
    assert training < hashing
    # The weights appear while "training the tiny model" is the phase: none when it starts, all of them by
    # the time hashing starts.
    assert recorder.phases[training] == ("training the tiny model", False)
    assert recorder.phases[hashing] == ("hashing files and publishing", True)
    assert not any(has for _, has in recorder.phases[:training])


def test_finished_phases_are_printed_with_their_time_and_transfers_update_in_place() -> None:
    out = io.StringIO()
    with build_progress(
        "tiny", to=Console(file=out, force_terminal=False, highlight=False, width=200)
    ) as shown:
        shown.phase("training the tiny model")
        shown.log("a builder line")
        shown.phase("pull tiny: 0% of 1.00 GiB")
        shown.phase("pull tiny: 50% of 1.00 GiB")
        shown.phase("pull tiny: 100% of 1.00 GiB")
        shown.phase("hashing files and publishing")
    lines = out.getvalue().splitlines()
    # A phase is printed when it ends, below the log lines written while it ran.
    assert [line.rsplit(" (", 1)[0] for line in lines] == [
        "a builder line",
        "tiny training the tiny model",
        "tiny pull tiny: 100% of 1.00 GiB",
        "tiny hashing files and publishing",
    ]
    assert all(line.endswith(" s)") for line in lines if line.startswith("tiny "))
