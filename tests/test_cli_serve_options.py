"""`--option KEY=VALUE` on `trtforge serve`/`up`: validated in one line before anything starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(
    ("command", "pair", "message"),
    [
        (
            "serve",
            "kv_cache_free_gpu_mem_fraction=1.5",
            "kv_cache_free_gpu_mem_fraction: Input should be less",
        ),
        ("up", "no_such_option=1", "unknown serve option 'no_such_option'"),
        ("serve", "enable_kv_cache_reuse", "expected KEY=VALUE"),
    ],
)
def test_bad_serve_option_is_one_line_and_starts_nothing(
    isolated_home: Path, command: str, pair: str, message: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trtforge", command, "tiny", "--option", pair],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (isolated_home / "tmp" / "repositories").exists()  # no repository written, nothing started
