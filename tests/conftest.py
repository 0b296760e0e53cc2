"""Shared fixtures. Every test gets its own TRTFORGE_HOME and link directory: nothing touches ~/.cache."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (tests never use the fixed default ports)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point TRTFORGE_HOME, the link directory and the catalogue at a per-test temporary directory."""
    home = tmp_path / "trtforge-home"
    monkeypatch.setenv("TRTFORGE_HOME", str(home))
    monkeypatch.setenv("TRTLLM_ENGINE_PATH", str(tmp_path / "trtllm-engines"))
    monkeypatch.setenv("TRTFORGE_CATALOG", str(tmp_path / "engines.toml"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield home
