"""A running `ServePlan`: model repository → tritonserver → OpenAI proxy → the watch on tritonserver.

    plan.engines ──write_model_repository──▶ plan.triton.repository ($TRTFORGE_HOME/tmp/repositories/…)
                 ──plan.triton.server()────▶ tritonserver (gRPC/HTTP/metrics on 127.0.0.1)
                 ──plan.proxy_settings─────▶ uvicorn on plan.proxy (127.0.0.1:9000)

`up` runs all three as one `Stack`, and `serve` a `Stack` of a plan without the proxy (`plan.proxy` None:
tritonserver alone, for clients of its own). The stack also watches tritonserver: when it dies, the proxy stays
up (open streams get an error frame and `[DONE]`, new requests a 503, `/health` says not ready) and the stack
starts a new tritonserver with backoff until it is ready again, or — with `plan.restart` off, for supervisors
such as Kubernetes — ends `serve()` with an error. A tritonserver that crashes while it first starts (an abort,
not a model that fails to load) is started again the same way, a few times, when restarts are on. Every start
rewrites the plan's repository and runs the plan's command; restarts get a fresh shared-memory prefix.

One engine or several is the same code: several share the one tritonserver (one `tensorrt_llm`-contract model
each) and the one proxy, which routes by `model`.
"""

from __future__ import annotations

import enum
import json
import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

from trtforge.engine import EngineInfo
from trtforge.errors import TritonCrashedError, TritonError, UsageError
from trtforge.serving.plan import ServePlan

if TYPE_CHECKING:
    import uvicorn

    from trtforge.proxy.workers import ProxyWorkers
    from trtforge.triton import TritonServer

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


class TritonDiedError(TritonError):
    """tritonserver exited while serving and the stack does not restart it."""


class Stack:
    """engine → model repository → tritonserver → OpenAI proxy → the watch on tritonserver; a context manager.

        with Stack(plan_serving(["tiny"])) as stack:   # tritonserver started and ready
            stack.serve()                              # the proxy, until stop() or a signal

    `stop()` may be called from any thread; leaving the block stops the proxy, then tritonserver.

    Args:
        plan: what to serve and how (`plan_serving`).
        say: where progress lines go (one line each).
    """

    def __init__(self, plan: ServePlan, *, say: Callable[[str], None] = logger.info) -> None:
        self.plan = plan
        self._say = say
        self.state = StackState.CREATED
        self.engine: EngineInfo = plan.engines[0].engine  # the first engine
        self.engines: dict[str, EngineInfo] = plan.engine_infos  # every engine by name
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
        if self.plan.proxy is not None:
            self._make_proxy()
        self._watcher = threading.Thread(target=self._watch, name="triton-watch", daemon=True)
        self._watcher.start()
        self.state = StackState.SERVING

    def _make_proxy(self) -> None:
        from trtforge.proxy import make_proxy

        listen = self.plan.proxy
        assert listen is not None
        self.proxy = make_proxy(
            self.plan.proxy_settings,
            host=listen.host,
            port=listen.port,
            log_level=listen.log_level,
            api_key=listen.api_key,
            workers=listen.workers,
        )

    def serve(self) -> None:
        """Run the proxy in this thread until `stop()`, SIGINT/SIGTERM, or tritonserver dies without restart.

        Without the proxy (`plan.proxy` None), wait in this thread for `stop()` or that death; SIGINT and
        SIGTERM then reach the caller as usual (KeyboardInterrupt, or the caller's own handler).

        Raises:
            TritonDiedError: tritonserver died and `restart` is off.
            ProxyStartError: the proxy could not start.
        """
        from trtforge.proxy import run_server

        if self._watcher is None or (self.proxy is None and self.plan.proxy is not None):
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
                if delay is None or not self.plan.restart:
                    raise
                self._say(f"{exc}; starting a new one in {delay:g} s")
                if self._stopping.wait(delay):
                    raise

    def _start_triton(self) -> None:
        plan = self.plan
        with self._lock:
            if self._stopping.is_set():
                raise TritonError("the stack is stopping")
            plan.write_repository()
            # The first start runs the plan's command as planned; later ones get a shared-memory prefix of their own.
            triton = self.triton = plan.triton.server(fresh_shm_prefix=self.triton is not None)
            self._say(
                f"starting tritonserver for {', '.join(plan.names)} ({self.engine.backend} backend, world size "
                f"{self.engine.world_size}); log: {triton.log_path}"
            )
            triton.start()
        started = time.monotonic()
        triton.wait_ready(timeout_s=plan.ready_timeout_s)
        ports = plan.triton.ports
        self._say(
            f"tritonserver ready in {time.monotonic() - started:.1f} s: gRPC 127.0.0.1:{ports.grpc}, "
            f"HTTP 127.0.0.1:{ports.http}, metrics 127.0.0.1:{ports.metrics}"
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
            if not self.plan.restart:
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
