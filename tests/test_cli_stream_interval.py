"""`--stream-interval` of `proxy` and `up`: refused in one line before anything starts when it cannot be kept,
and carried into the plan and every served model's proxy settings. (What it does to a stream:
tests/test_proxy_coalesce.py and tests/test_proxy_e2e.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port, link_engine
from trtforge.serving import ProxyListen, TritonPorts, plan_serving


@pytest.mark.parametrize("command", ["proxy", "up"])
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--stream-interval=0"], "error: --stream-interval must be at least 1 token, not 0"),
        (["--stream-interval=3", "--no-coalesce"], "error: --no-coalesce sends one chunk per token"),
    ],
)
def test_an_interval_it_cannot_keep_is_one_line_and_starts_nothing(
    isolated_home: Path, command: str, flags: list[str], message: str
) -> None:
    argv = [sys.executable, "-m", "trtforge", command, "tiny", *flags, "--port", str(free_port())]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    assert not (isolated_home / "store").exists()  # nothing built
    assert not (isolated_home / "tmp" / "repositories").exists()  # nothing written, nothing started


def test_the_interval_reaches_the_plan_and_every_models_settings(
    tiny_engine: Path, isolated_home: Path
) -> None:
    link_engine("tiny", tiny_engine)
    ports = TritonPorts(http=free_port(), grpc=free_port(), metrics=free_port())
    plan = plan_serving(
        ["tiny"],
        ports=ports,
        proxy=ProxyListen(port=free_port(), stream_interval=5),
        build=False,
        dry_run=True,
    )
    [settings] = plan.proxy_settings
    assert settings.stream_interval == 5
    assert plan.describe()["proxy"]["stream_interval"] == 5

    flags = [f"--triton-{kind}-port={free_port()}" for kind in ("http", "grpc", "metrics")]
    argv = [
        sys.executable,
        "-m",
        "trtforge",
        "up",
        "tiny",
        "--dry-run",
        "--json",
        f"--port={free_port()}",
        *flags,
    ]
    default = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    given = subprocess.run([*argv, "--stream-interval=8"], capture_output=True, text=True, timeout=300)
    assert default.returncode == given.returncode == 0, default.stderr + given.stderr
    assert json.loads(default.stdout)["proxy"]["stream_interval"] == 1
    assert json.loads(given.stdout)["proxy"]["stream_interval"] == 8
