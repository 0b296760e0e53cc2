"""One running stack for an engine: model repository → tritonserver → OpenAI proxy.

    engine dir ──write_model_repository──▶ $TRTFORGE_HOME/tmp/repositories/<name>-<key>/
               ──TritonServer────────────▶ tritonserver (gRPC/HTTP/metrics on 127.0.0.1)
               ──ProxySettings/make_server▶ uvicorn on 127.0.0.1:9000

`proxy` runs the last; `up` runs all three as one `Stack`, and `serve` a `Stack` without the proxy
(`StackConfig.proxy=False`: tritonserver alone, for clients of its own). The stack also watches
tritonserver: when it dies, the proxy stays up (open streams get an error frame and `[DONE]`, new requests a 503,
`/health` says not ready) and the stack starts a new tritonserver with backoff until it is ready again, or —
with `restart=False`, for supervisors such as Kubernetes — ends `serve()` with an error.
A tritonserver that crashes while it first starts (an abort, not a model that fails to load) is started again
the same way, a few times, when restarts are on.

A stack of several engines (`StackConfig.others`) writes one repository with a `tensorrt_llm`-contract model
per engine (`write_engines_repository`) into one single-rank tritonserver, and one proxy routes by `model`.
"""

from __future__ import annotations

import enum
import errno
import hashlib
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from trtforge import constants
from trtforge.engine import EngineInfo, read_engine
from trtforge.errors import TritonCrashedError, TritonError, UsageError

if TYPE_CHECKING:
    import uvicorn

    from trtforge.proxy.workers import ProxyWorkers
    from trtforge.triton import RepositoryOptions, TritonServer

logger = logging.getLogger(__name__)

RESTART_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
# stop() from another thread waits this long for the proxy to end its streams before stopping tritonserver.
_PROXY_STOP_WAIT_S = 10.0
# serve() without the proxy wakes this often to let the main thread's signal handlers run.
_WAIT_SLICE_S = 0.5
# How often a tritonserver that crashes while starting is started again (restarts on); see `_start_first_triton`.
_START_CRASH_RETRIES = 2
# A tritonserver that stayed up this long starts the backoff over when it dies.
_HEALTHY_RUN_S = 60.0


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


def prepare_triton_engines(
    engines: dict[str, Path],
    *,
    ports: TritonPorts,
    options: dict[str, RepositoryOptions | None],
    log_path: Path | None = None,
) -> tuple[dict[str, EngineInfo], TritonServer]:
    """`prepare_triton` for several engines sharing one tritonserver (one model per engine, single rank)."""
    from trtforge.triton import TritonServer  # tritonclient/grpc: only when serving
    from trtforge.triton.repository import RepositoryOptions, write_engines_repository

    infos = {name: read_engine(engine_dir) for name, engine_dir in engines.items()}
    key = hashlib.sha256(
        "\0".join(f"{name}={info.path.resolve()}" for name, info in infos.items()).encode()
    ).hexdigest()[:12]
    slug = _slug("+".join(engines))[:80]
    repository = write_engines_repository(
        infos,
        constants.scratch_dir() / "repositories" / f"{slug}-{key}",
        options={name: opts or RepositoryOptions() for name, opts in options.items()},
    )
    server = TritonServer(
        repository,
        http_port=ports.http,
        grpc_port=ports.grpc,
        metrics_port=ports.metrics,
        world_size=1,
        log_path=log_path or constants.scratch_dir() / "logs" / f"tritonserver-{slug}.log",
    )
    return infos, server


def curl_example(port: int, model: str) -> str:
    """A ready-to-paste curl line for the chat endpoint."""
    body = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16},
        separators=(",", ":"),
    )
    return f"curl 127.0.0.1:{port}/v1/chat/completions -H 'Content-Type: application/json' -d '{body}'"


class StackState(enum.Enum):
    CREATED = "created"
    STARTING = "starting"
    SERVING = "serving"
    RESTARTING = "restarting"  # tritonserver died; the proxy answers 503 until a new one is ready
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True)
class StackEngine:
    """One more engine a stack serves next to `StackConfig.name` (its own name, directory and serve options)."""

    name: str
    engine_dir: Path
    options: RepositoryOptions | None = None


@dataclass(frozen=True)
class StackConfig:
    """What `up` (or, without the proxy, `serve`) serves and how.

    Args:
        name: the model name clients pass (the engine name).
        engine_dir: the engine directory.
        ports: tritonserver's ports.
        host, port: where the proxy listens.
        options: serve options for the model repository.
        api_key: the key clients must send, or None.
        workers: proxy processes sharing the port.
        ready_timeout_s: how long one tritonserver start may take to be ready.
        restart: start a new tritonserver when it dies (False: `serve()` ends with an error instead).
        log_level: the proxy's log level.
        others: more engines served by the same tritonserver and proxy, routed by `model` (each one rank).
        max_body_bytes: the largest request body the proxy accepts (larger: 413 before parsing).
        proxy: put the OpenAI proxy in front; False runs tritonserver alone (host, port, api_key, workers,
            log_level and max_body_bytes then do not apply) and stops it with its graceful exit timeout, since
            its clients are not ours to end first.
    """

    name: str
    engine_dir: Path
    ports: TritonPorts = TritonPorts()
    host: str = constants.DEFAULT_PROXY_HOST
    port: int = constants.DEFAULT_PROXY_PORT
    options: RepositoryOptions | None = None
    api_key: str | None = None
    workers: int = 1
    ready_timeout_s: float = 600.0
    restart: bool = True
    log_level: str = "warning"
    others: tuple[StackEngine, ...] = ()
    max_body_bytes: int = constants.DEFAULT_MAX_BODY_BYTES
    proxy: bool = True

    def __post_init__(self) -> None:
        names = [engine.name for engine in self.engines]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise UsageError(f"engine {duplicates[0]!r} is named more than once; serve each engine once")

    @property
    def engines(self) -> tuple[StackEngine, ...]:
        """Every engine served, the first one (`name`) first."""
        return (StackEngine(self.name, self.engine_dir, self.options), *self.others)


class TritonDiedError(TritonError):
    """tritonserver exited while serving and the stack does not restart it."""


class Stack:
    """engine → model repository → tritonserver → OpenAI proxy → the watch on tritonserver; a context manager.

        with Stack(StackConfig("tiny", engine_dir)) as stack:   # tritonserver started and ready
            stack.serve()                                       # the proxy, until stop() or a signal

    `stop()` may be called from any thread; leaving the block stops the proxy, then tritonserver.

    Args:
        config: what to serve.
        say: where progress lines go (one line each).
    """

    def __init__(self, config: StackConfig, *, say: Callable[[str], None] = logger.info) -> None:
        self.config = config
        self._say = say
        self.state = StackState.CREATED
        self.engine: EngineInfo | None = None  # the first engine (`config.name`)
        self.engines: dict[str, EngineInfo] = {}  # every engine by name
        self.triton: TritonServer | None = None
        self.proxy: uvicorn.Server | ProxyWorkers | None = None
        self.restarts = 0
        self._died: str | None = None  # why serve() must fail (tritonserver died, no restart)
        self._stopping = threading.Event()
        self._ended = threading.Event()  # stop() began, or tritonserver died without restart
        self._lock = threading.Lock()  # guards replacing and stopping `triton`
        self._watcher: threading.Thread | None = None
        self._serving = threading.Event()  # serve() was entered
        self._served = threading.Event()  # serve() returned

    # -- lifecycle -------------------------------------------------------------------------------------

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Write the repository, start tritonserver and wait until it is ready, then build the proxy."""
        if self.state is not StackState.CREATED:
            raise UsageError(f"this Stack was already started (state {self.state.value})")
        self.state = StackState.STARTING
        self._start_first_triton()
        cfg = self.config
        if cfg.proxy:
            self._make_proxy()
        self._watcher = threading.Thread(target=self._watch, name="triton-watch", daemon=True)
        self._watcher.start()
        self.state = StackState.SERVING

    def _make_proxy(self) -> None:
        from trtforge.proxy import ProxySettings, make_proxy
        from trtforge.proxy.settings import DEFAULT_TRITON_MODEL
        from trtforge.triton.repository import engine_model_name

        cfg = self.config
        several = len(cfg.engines) > 1
        settings = [
            ProxySettings.from_engine(
                spec.name,
                self.engines[spec.name],
                cfg.ports.grpc_url,
                reasoning_parser=spec.options.reasoning_parser if spec.options else None,
                tool_parser=spec.options.tool_parser if spec.options else None,
                # One engine: the repository's one `tensorrt_llm` model as before; several: each engine's own.
                triton_model=engine_model_name(spec.name) if several else DEFAULT_TRITON_MODEL,
                max_body_bytes=cfg.max_body_bytes,
            )
            for spec in cfg.engines
        ]
        self.proxy = make_proxy(
            settings[0] if len(settings) == 1 else settings,
            host=cfg.host,
            port=cfg.port,
            log_level=cfg.log_level,
            api_key=cfg.api_key,
            workers=cfg.workers,
        )

    def serve(self) -> None:
        """Run the proxy in this thread until `stop()`, SIGINT/SIGTERM, or tritonserver dies without restart.

        Without the proxy (`config.proxy` off), wait in this thread for `stop()` or that death; SIGINT and
        SIGTERM then reach the caller as usual (KeyboardInterrupt, or the caller's own handler).

        Raises:
            TritonDiedError: tritonserver died and `restart` is off.
            ProxyStartError: the proxy could not start.
        """
        from trtforge.proxy import run_server

        if self._watcher is None or (self.proxy is None and self.config.proxy):
            raise UsageError("Stack.serve() needs a started stack")
        self._serving.set()
        try:
            if self.proxy is not None:
                run_server(self.proxy)
            else:
                while not self._ended.wait(_WAIT_SLICE_S):  # in slices: signal handlers run between them
                    pass
        finally:
            self._served.set()
        if self._died is not None:
            raise TritonDiedError(self._died)

    def stop(self) -> None:
        """Stop the proxy, then tritonserver (idempotent; any thread)."""
        if self.state is StackState.STOPPED:
            return
        self.state = StackState.STOPPING
        self._stopping.set()
        self._ended.set()
        if self.proxy is not None:
            self.proxy.should_exit = True
            if self._serving.is_set():  # serve() runs in another thread: let the proxy end its streams first
                self._served.wait(timeout=_PROXY_STOP_WAIT_S)
        with self._lock:
            if self.triton is not None:
                self.triton.stop()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join()
        self.state = StackState.STOPPED

    # -- tritonserver ----------------------------------------------------------------------------------

    def _start_first_triton(self) -> None:
        """Start tritonserver; with restarts on, start a new one when it crashes before it is ready.

        A crash (a signal nobody sent, e.g. an abort while the python models load) is retried like a death
        while serving, a few times with the same backoff; a model that fails to load, a timeout or a missing
        backend fails at once: trying again would give the same answer.
        """
        for delay in (*RESTART_BACKOFF_S[:_START_CRASH_RETRIES], None):
            try:
                self._start_triton()
                return
            except TritonCrashedError as exc:
                if delay is None or not self.config.restart:
                    raise
                self._say(f"{exc}; starting a new one in {delay:g} s")
                if self._stopping.wait(delay):
                    raise

    def _start_triton(self) -> None:
        cfg = self.config
        with self._lock:
            if self._stopping.is_set():
                raise TritonError("the stack is stopping")
            if cfg.others:
                self.engines, self.triton = prepare_triton_engines(
                    {spec.name: spec.engine_dir for spec in cfg.engines},
                    ports=cfg.ports,
                    options={spec.name: spec.options for spec in cfg.engines},
                )
                self.engine = self.engines[cfg.name]
            else:
                self.engine, self.triton = prepare_triton(
                    cfg.name, cfg.engine_dir, ports=cfg.ports, options=cfg.options
                )
                self.engines = {cfg.name: self.engine}
            triton = self.triton
            names = ", ".join(spec.name for spec in cfg.engines)
            if cfg.proxy:
                # The stack stops tritonserver only after the proxy, its one client, has ended every generation:
                # nothing is left for tritonserver's graceful unload to wait for (it takes seconds).
                triton.exit_timeout_s = 0
            self._say(
                f"starting tritonserver for {names} ({self.engine.backend} backend, world size "
                f"{self.engine.world_size}); log: {triton.log_path}"
            )
            triton.start()
        started = time.monotonic()
        triton.wait_ready(timeout_s=cfg.ready_timeout_s)
        self._say(
            f"tritonserver ready in {time.monotonic() - started:.1f} s: gRPC 127.0.0.1:{cfg.ports.grpc}, "
            f"HTTP 127.0.0.1:{cfg.ports.http}, metrics 127.0.0.1:{cfg.ports.metrics}"
        )

    def _watch(self) -> None:
        """Wait for tritonserver to die; then restart it with backoff, or stop the proxy."""
        attempt = 0
        while not self._stopping.is_set():
            triton = self.triton
            assert triton is not None
            up_since = time.monotonic()
            while (code := triton.wait(timeout_s=0.2)) is None:
                if self._stopping.is_set():
                    return
            if self._stopping.is_set():
                return
            if time.monotonic() - up_since >= _HEALTHY_RUN_S:
                attempt = 0
            why = f"tritonserver exited with status {code}; log: {triton.log_path}"
            with self._lock:
                triton.stop()  # reap what is left of it (python-backend stubs, the log file)
            if not self.config.restart:
                self._died = why
                self._say(f"{why}; stopping (restarts are off)")
                self._ended.set()
                if self.proxy is not None:
                    self.proxy.should_exit = True
                return
            self.state = StackState.RESTARTING
            while not self._stopping.is_set():
                delay = RESTART_BACKOFF_S[min(attempt, len(RESTART_BACKOFF_S) - 1)]
                attempt += 1
                self._say(f"{why}; starting a new one in {delay:g} s (restart {self.restarts + 1})")
                if self._stopping.wait(delay):
                    return
                try:
                    self._start_triton()
                except TritonError as exc:
                    if self._stopping.is_set():
                        return
                    why = str(exc)
                    continue
                self.restarts += 1
                self.state = StackState.SERVING
                break
