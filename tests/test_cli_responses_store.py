"""The bounds of the proxy's store of Responses as flags of `proxy` and `up`: `--responses-store-max`,
`--responses-store-bytes` and `--responses-store-ttl`, read, refused in one line, and carried into the plan's
proxy settings. (That they take effect on a served proxy: tests/test_cli_up_agent_apis.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port, link_engine
from trtforge import constants
from trtforge.cli._responses_store import STORE_BYTES, STORE_MAX, STORE_TTL, StoreBounds, store_bounds
from trtforge.errors import UsageError
from trtforge.proxy.response_store import ResponseStoreLimits
from trtforge.serving import ProxyListen, TritonPorts, plan_serving


@pytest.mark.parametrize(
    ("flags", "bounds"),
    [
        (("1024", "64MiB", "24h"), (1024, 64 << 20, 86400.0)),
        (("1", "1", "1"), (1, 1, 1.0)),
        (("7", "1GB", "90m"), (7, 10**9, 5400.0)),
        ((" 3 ", "2 KiB", "1.5h"), (3, 2048, 5400.0)),
        (("5", "67108864", "7d"), (5, 67108864, 7 * 86400.0)),
        (("5", "100", "30s"), (5, 100, 30.0)),
        (("5", "100", "0.25"), (5, 100, 0.25)),
    ],
)
def test_the_flags_are_read_as_counts_sizes_and_durations(
    flags: tuple[str, str, str], bounds: tuple[int, int, float]
) -> None:
    assert store_bounds(*flags) == StoreBounds(*bounds)


def test_the_defaults_are_the_stores_own() -> None:
    assert store_bounds(STORE_MAX, STORE_BYTES, STORE_TTL) == StoreBounds(
        constants.DEFAULT_RESPONSES_STORE_MAX,
        constants.DEFAULT_RESPONSES_STORE_BYTES,
        constants.DEFAULT_RESPONSES_STORE_TTL_S,
    )
    limits = ResponseStoreLimits()
    assert (limits.max_responses, limits.max_bytes, limits.max_age_s) == (1024, 64 << 20, 86400.0)


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--responses-store-max", "0"),
        ("--responses-store-max", "-1"),
        ("--responses-store-max", "1.5"),
        ("--responses-store-max", "lots"),
        ("--responses-store-bytes", "0"),
        ("--responses-store-bytes", "0MiB"),
        ("--responses-store-bytes", "-5"),
        ("--responses-store-bytes", "64 parsecs"),
        ("--responses-store-ttl", "0"),
        ("--responses-store-ttl", "0h"),
        ("--responses-store-ttl", "-3"),
        ("--responses-store-ttl", "1w"),
        ("--responses-store-ttl", ""),
    ],
)
def test_a_bad_value_is_a_usage_error_naming_the_flag(flag: str, value: str) -> None:
    values = {"--responses-store-max": "5", "--responses-store-bytes": "5", "--responses-store-ttl": "5"}
    values[flag] = value
    with pytest.raises(UsageError) as caught:
        store_bounds(*values.values())
    assert str(caught.value).startswith(f"{flag} takes ") and repr(value) in str(caught.value)


@pytest.mark.parametrize(
    ("command", "flag", "value"),
    [
        ("up", "--responses-store-max", "0"),
        ("up", "--responses-store-bytes", "-1"),
        ("up", "--responses-store-ttl", "0s"),
        ("proxy", "--responses-store-max", "-2"),
        ("proxy", "--responses-store-bytes", "0"),
        ("proxy", "--responses-store-ttl", "never"),
    ],
)
def test_a_bad_value_on_the_command_line_is_one_line_and_starts_nothing(
    isolated_home: Path, command: str, flag: str, value: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trtforge", command, "tiny", f"{flag}={value}", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag} takes "), result.stderr
    assert not (isolated_home / "store").exists()  # nothing built
    assert not (isolated_home / "tmp" / "repositories").exists()  # nothing written, nothing started


def test_the_bounds_reach_every_served_models_proxy_settings(tiny_engine: Path, isolated_home: Path) -> None:
    link_engine("tiny", tiny_engine)
    listen = ProxyListen(
        port=free_port(), responses_store_max=3, responses_store_bytes=4096, responses_store_ttl_s=90.0
    )
    ports = TritonPorts(http=free_port(), grpc=free_port(), metrics=free_port())
    plan = plan_serving(["tiny"], ports=ports, proxy=listen, build=False, dry_run=True)
    [settings] = plan.proxy_settings
    assert settings.response_store == ResponseStoreLimits(max_responses=3, max_bytes=4096, max_age_s=90.0)
    described = plan.describe()["proxy"]["responses_store"]
    assert described == {"max_responses": 3, "max_bytes": 4096, "max_age_s": 90.0}


def test_up_dry_run_json_shows_the_bounds_given_and_the_defaults(
    tiny_engine: Path, isolated_home: Path
) -> None:
    link_engine("tiny", tiny_engine)

    def planned(*flags: str) -> dict[str, float]:
        ports = [f"--triton-{kind}-port={free_port()}" for kind in ("http", "grpc", "metrics")]
        argv = [sys.executable, "-m", "trtforge", "up", "tiny", "--dry-run", "--json", *ports]
        argv += [f"--port={free_port()}", *flags]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        store: dict[str, float] = json.loads(result.stdout)["proxy"]["responses_store"]
        return store

    assert planned() == {"max_responses": 1024, "max_bytes": 64 << 20, "max_age_s": 86400.0}
    given = planned("--responses-store-max=2", "--responses-store-bytes=1MiB", "--responses-store-ttl=10m")
    assert given == {"max_responses": 2, "max_bytes": 1 << 20, "max_age_s": 600.0}
