"""`trtforge --version` and `trtforge --version --json`, run as the console command a user types."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import trtforge

STANDINS = Path(__file__).parent / "standins"


def _trtforge(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trtforge", *args], capture_output=True, text=True, timeout=120, env=env
    )


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRTFORGE_TRTLLM_PYTHON")}
    env["TRITON_HOME"] = str(tmp_path / "no-triton")  # never a machine's /opt/tritonserver
    return {**env, **extra}


def test_version_prints_the_package_version(tmp_path: Path) -> None:
    done = _trtforge("--version", env=_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"trtforge {trtforge.__version__}\n"


@pytest.mark.parametrize("order", [("--version", "--json"), ("--json", "--version")])
def test_version_json_without_tensorrt_llm_or_a_triton_install(
    tmp_path: Path, order: tuple[str, str]
) -> None:
    done = _trtforge(*order, env=_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "trtforge": trtforge.__version__,
        "tensorrt_llm": None,
        "tritonserver": None,
    }


def test_version_json_names_the_tensorrt_llm_and_tritonserver_found(tmp_path: Path) -> None:
    home = tmp_path / "tritonserver"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "tritonserver").write_text("#!/bin/sh\n")
    (home / "TRITON_VERSION").write_text("2.59.0\n")
    env = _env(
        tmp_path, PYTHONPATH=str(STANDINS), TRTFORGE_TRTLLM_PYTHON=sys.executable, TRITON_HOME=str(home)
    )
    done = _trtforge("--version", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "trtforge": trtforge.__version__,
        "tensorrt_llm": "1.0.0",
        "tritonserver": "2.59.0",
    }


def test_json_before_a_command_is_one_line_not_ignored(tmp_path: Path) -> None:
    done = _trtforge("--json", "engines", env=_env(tmp_path))
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "error: --json before a command applies only to --version; put it after the command"
    ]
