"""Shared fixtures. Every test gets its own TRTFORGE_HOME and link directory: nothing touches ~/.cache."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now and never handed out before in this process.

    The kernel may give the same ephemeral port to two binds in a row once the first socket is closed, so
    three calls for one server's three ports could collide; remembering what was handed out rules that out.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def triton_port_args() -> list[str]:
    """`--triton-http-port/--triton-grpc-port/--triton-metrics-port` on free ports, for commands that start Triton."""
    args = []
    for flag in ("--triton-http-port", "--triton-grpc-port", "--triton-metrics-port"):
        args += [flag, str(free_port())]
    return args


def _isolate(mp: pytest.MonkeyPatch, root: Path) -> Path:
    home = root / "trtforge-home"
    mp.setenv("TRTFORGE_HOME", str(home))
    mp.setenv("TRTLLM_ENGINE_PATH", str(root / "trtllm-engines"))
    mp.setenv("TRTFORGE_CATALOG", str(root / "engines.toml"))
    mp.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.fixture(scope="session", autouse=True)
def isolated_session_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The same isolation for session- and module-scoped fixtures, which run before per-test fixtures."""
    mp = pytest.MonkeyPatch()
    try:
        yield _isolate(mp, tmp_path_factory.mktemp("session"))
    finally:
        mp.undo()


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point TRTFORGE_HOME, the link directory and the catalogue at a per-test temporary directory."""
    yield _isolate(monkeypatch, tmp_path)


def link_engine(name: str, engine_dir: Path) -> None:
    """Name `engine_dir` `name` in the link directory (`TRTLLM_ENGINE_PATH`, isolated per test by `isolated_home`)."""
    links = Path(os.environ["TRTLLM_ENGINE_PATH"])
    links.mkdir(parents=True, exist_ok=True)
    (links / name).symlink_to(engine_dir)


@pytest.fixture(scope="session")
def tiny_engine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in tiny reference engine with its default build settings, written once per session (~20 s).

    Read-only: tests that change files or need other build settings write their own.
    """
    from trtforge.reference.tiny import TINY_DEFAULTS, write_tiny_engine

    dest = tmp_path_factory.mktemp("tiny-engine")
    write_tiny_engine(dest, **TINY_DEFAULTS)
    return dest


def copy_engine_with(source: Path, dest: Path, **build_config: int | bool) -> Path:
    """A copy of engine `source` at `dest` whose config.json build_config has `build_config` applied.

    Cheaper than writing another tiny engine when a test only needs other limits (max_seq_len, batch...),
    which is all the serving side reads from build_config.
    """
    import json
    import shutil

    shutil.copytree(source, dest)
    config_path = dest / "config.json"
    config = json.loads(config_path.read_text())
    config["build_config"].update(build_config)
    config_path.write_text(json.dumps(config, indent=2))
    return dest


@pytest.fixture(scope="session")
def tiny_nvfp4_checkpoint(tiny_engine: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny engine's model quantized into a real NVFP4 ModelOpt export (tokenizer and chat template too).

    Read-only, like `tiny_engine`.
    """
    from nvfp4_quant import write_tiny_nvfp4_checkpoint

    return write_tiny_nvfp4_checkpoint(tiny_engine, tmp_path_factory.mktemp("tiny-nvfp4") / "checkpoint")


@pytest.fixture(scope="session")
def tiny_float_checkpoint(tiny_engine: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny engine's model as a plain float Hugging Face checkpoint with its tokenizer. Read-only."""
    from nvfp4_quant import write_tiny_float_checkpoint

    return write_tiny_float_checkpoint(tiny_engine, tmp_path_factory.mktemp("tiny-float") / "checkpoint")
