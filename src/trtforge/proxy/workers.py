"""Several proxy processes on one port, for machines where one core cannot relay every token.

Each worker is a whole proxy (`make_server`: its own event loop, gRPC channel and tokenizer) in a process of its
own, listening on the same port through `SO_REUSEPORT`: the kernel spreads new connections over the workers.
The supervisor (`ProxyWorkers.run`, in the foreground) starts them, stops them all on SIGINT/SIGTERM or
`.should_exit` (each ends its open streams properly, as one proxy does at shutdown), and stops them all when one
of them dies, so a half-alive proxy never keeps the port.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event
from types import FrameType

from trtforge.proxy.settings import ProxySettings

logger = logging.getLogger(__name__)

_STOP_TIMEOUT_S = 15.0  # uvicorn's graceful timeout is 5 s; then the worker is killed


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker serves, and where (sent to the spawned processes, so plain picklable data)."""

    settings: tuple[ProxySettings, ...]
    host: str
    port: int
    log_level: str = "info"
    api_key: str | None = field(default=None, repr=False)  # a secret: never in a repr or a log line


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening socket on `host:port` that other processes may bind too (`SO_REUSEPORT`)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def _serve_worker(spec: WorkerSpec, ready: Event) -> None:
    """A worker process: one proxy on its own `SO_REUSEPORT` socket until SIGTERM/SIGINT."""
    from trtforge.proxy.app import make_server

    server = make_server(
        spec.settings, host=spec.host, port=spec.port, log_level=spec.log_level, api_key=spec.api_key
    )

    def report_ready() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started:
            ready.set()

    threading.Thread(target=report_ready, name="worker-ready", daemon=True).start()
    with reuse_port_socket(spec.host, spec.port) as sock:
        server.run(sockets=[sock])


class ProxyWorkers:
    """Runs `workers` proxy processes sharing `spec.port`; `.run()` in the foreground.

    Like `uvicorn.Server`: `.started` once every worker listens, `.should_exit` to stop them from elsewhere.
    """

    def __init__(self, spec: WorkerSpec, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.spec = spec
        self.workers = workers
        self.should_exit = False
        self.started = False
        self.failed = False
        self._context = multiprocessing.get_context("spawn")  # no fork of a process with threads and gRPC

    @property
    def host(self) -> str:
        return self.spec.host

    @property
    def port(self) -> int:
        return self.spec.port

    def run(self) -> None:
        """Start the workers and supervise them until a signal, `.should_exit`, or a worker's death."""
        captured: list[int] = []

        def on_signal(signum: int, frame: FrameType | None) -> None:
            captured.append(signum)
            self.should_exit = True

        in_main = threading.current_thread() is threading.main_thread()
        previous = (
            {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
        )
        processes: list[SpawnProcess] = []
        try:
            readies = [self._context.Event() for _ in range(self.workers)]
            for index, ready in enumerate(readies):
                process = self._context.Process(
                    target=_serve_worker, args=(self.spec, ready), name=f"trtforge-proxy-{index}"
                )
                process.start()
                processes.append(process)
            self._supervise(processes, readies)
        finally:
            self._stop(processes)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        for signum in captured[-1:]:
            signal.raise_signal(signum)  # the caller's own handling of the signal (as uvicorn does)

    def _supervise(self, processes: list[SpawnProcess], readies: list[Event]) -> None:
        sentinels = [p.sentinel for p in processes]
        while not self.should_exit:
            if wait(sentinels, timeout=0.2):
                dead = [p for p in processes if not p.is_alive()]
                names = ", ".join(f"{p.name} (exit code {p.exitcode})" for p in dead)
                logger.error("proxy worker exited: %s; stopping the others", names)
                self.failed = True
                return
            if not self.started and all(ready.is_set() for ready in readies):
                self.started = True
                logger.info("%d proxy workers listening on %s:%d", self.workers, self.host, self.port)

    @staticmethod
    def _stop(processes: list[SpawnProcess]) -> None:
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: uvicorn's graceful shutdown, streams end with [DONE]
        for process in processes:
            process.join(_STOP_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                process.join()
