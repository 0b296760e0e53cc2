"""`trtforge smoke` against the real embedded Triton serving `tiny` on CPU, and its failure exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port

pytestmark = pytest.mark.triton


def _smoke(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "trtforge", "smoke", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=900)


def test_smoke_tiny_passes_on_cpu_and_reports_json(tiny_engine: Path, isolated_home: Path) -> None:
    links = Path(os.environ["TRTLLM_ENGINE_PATH"])
    links.mkdir(parents=True, exist_ok=True)
    (links / "tiny").symlink_to(tiny_engine)
    result = _smoke("tiny", "--no-build", "--json", "--max-tokens", "24")
    assert result.returncode == 0, result.stderr + result.stdout
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["model"] == "tiny"
    names = {check["name"] for check in report["checks"]}
    assert {"chat: finish reason", "stream: equals non-stream", "completion: token counts"} <= names
    assert all(check["ok"] for check in report["checks"])
    assert report["ttft_s"] > 0 and report["completion_tokens"] >= 1
    assert report["text"]
    # Everything it started is gone: no tritonserver serving this home's repository.
    repositories = isolated_home / "tmp" / "repositories"
    assert repositories.is_dir()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            assert str(repositories) not in cmdline


def test_smoke_fails_with_a_non_zero_exit_when_nothing_answers() -> None:
    result = _smoke("tiny", "--url", f"http://127.0.0.1:{free_port()}/v1", "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert [check["name"] for check in report["checks"]] == ["requests"]
    assert "Connection refused" in report["checks"][0]["detail"]
