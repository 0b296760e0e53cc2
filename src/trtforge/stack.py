"""One running stack for an engine: model repository → tritonserver → OpenAI proxy.

    engine dir ──write_model_repository──▶ $TRTFORGE_HOME/tmp/repositories/<name>-<key>/
               ──TritonServer────────────▶ tritonserver (gRPC/HTTP/metrics on 127.0.0.1)
               ──ProxySettings/make_server▶ uvicorn on 127.0.0.1:9000

`serve` runs the first two, `proxy` the last, `up` all three in one process group of ours.
"""

from __future__ import annotations

import errno
import hashlib
import json
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trtforge import constants
from trtforge.engine import EngineInfo, read_engine
from trtforge.errors import UsageError

if TYPE_CHECKING:
    from trtforge.triton import RepositoryOptions, TritonServer


@dataclass(frozen=True)
class TritonPorts:
    """The three ports tritonserver binds on 127.0.0.1."""

    http: int = constants.DEFAULT_TRITON_HTTP_PORT
    grpc: int = constants.DEFAULT_TRITON_GRPC_PORT
    metrics: int = constants.DEFAULT_TRITON_METRICS_PORT

    def __post_init__(self) -> None:
        ports = (self.http, self.grpc, self.metrics)
        if len(set(ports)) != 3:
            raise ValueError(f"Triton's HTTP, gRPC and metrics ports must differ, got {ports}")

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc}"


def check_ports_free(ports: dict[str, int], host: str = "127.0.0.1") -> None:
    """Fail in one line, before anything starts, when a port we are about to bind is taken.

    Args:
        ports: port number by the option that sets it (named in the error).
    """
    for option, port in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                reason = "already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
                raise UsageError(
                    f"port {port} on {host} ({option}) is {reason}; pick another with {option}"
                ) from None


def _slug(name: str) -> str:
    """`name` as one path component: an engine given as a directory path must not escape the scratch dir."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip("/")) or "engine"


def repository_path(name: str, engine: EngineInfo) -> Path:
    """Where the generated repository for `name` serving `engine` lives (one per engine path)."""
    key = hashlib.sha256(str(engine.path.resolve()).encode()).hexdigest()[:12]
    return constants.scratch_dir() / "repositories" / f"{_slug(name)}-{key}"


def prepare_triton(
    name: str,
    engine_dir: Path,
    *,
    ports: TritonPorts,
    options: RepositoryOptions | None = None,
    log_path: Path | None = None,
) -> tuple[EngineInfo, TritonServer]:
    """Read the engine, write its model repository, and return a not-yet-started `TritonServer`."""
    from trtforge.triton import TritonServer, write_model_repository  # tritonclient/grpc: only when serving

    engine = read_engine(engine_dir)
    repository = write_model_repository(engine, repository_path(name, engine), options=options)
    server = TritonServer(
        repository,
        http_port=ports.http,
        grpc_port=ports.grpc,
        metrics_port=ports.metrics,
        world_size=engine.world_size,
        log_path=log_path or constants.scratch_dir() / "logs" / f"tritonserver-{_slug(name)}.log",
    )
    return engine, server


def curl_example(port: int, model: str) -> str:
    """A ready-to-paste curl line for the chat endpoint."""
    body = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16},
        separators=(",", ":"),
    )
    return f"curl 127.0.0.1:{port}/v1/chat/completions -H 'Content-Type: application/json' -d '{body}'"
