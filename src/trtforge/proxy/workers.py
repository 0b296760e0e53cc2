"""Several proxy processes on one port, for machines where one core cannot relay every token.

Each worker is a whole proxy (`make_server`: its own event loop, gRPC channel and tokenizer) in a process of its
own, listening on the same port through `SO_REUSEPORT`: the kernel spreads new connections over the workers.
The supervisor (`ProxyWorkers.run`, in the foreground) starts them, stops them all on SIGINT/SIGTERM or
`.should_exit` (each ends its open streams properly, as one proxy does at shutdown), and stops them all when one
of them dies, so a half-alive proxy never keeps the port.

How many by default (`--workers auto`): `auto_workers`, from the cores this process may use (`usable_cores`).

Metrics: the workers share one private directory for prometheus-client's multiprocess mode (created by the
supervisor, set as `PROMETHEUS_MULTIPROC_DIR` in each worker's environment, removed when they have stopped), so
`/metrics` from any worker is the sum over all of them (see `proxy.metrics`).

Stored Responses: likewise one private directory for the workers' shared store (`SHARED_STORE_DIR_ENV`, see
`proxy.shared_response_store`), so a response stored by one worker is found by all of them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event
from pathlib import Path
from types import FrameType

from trtforge.proxy.settings import ProxySettings
from trtforge.proxy.shared_response_store import SHARED_STORE_DIR_ENV

logger = logging.getLogger(__name__)

_STOP_TIMEOUT_S = 15.0  # uvicorn's graceful timeout is 5 s; then the worker is killed

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's switch to its multiprocess mode

# `auto_workers`: one worker per `_CORES_PER_WORKER` usable cores, about two for the worker itself (its event
# loop, its tokenizing threads) and two left to tritonserver (TensorRT-LLM's executor and its threads, the
# python-backend stubs, gRPC) and the host. At most `_MAX_AUTO_WORKERS`: one worker relays ~9,000 tokens/s
# (~110 µs of CPU per token), so 8 cover several GPUs' output, while each worker adds a gRPC channel and a
# tokenizer's memory.
_CORES_PER_WORKER = 4
_MAX_AUTO_WORKERS = 8
_CGROUP_V2_CPU_MAX = "/sys/fs/cgroup/cpu.max"
_CGROUP_V1_QUOTA = "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"
_CGROUP_V1_PERIOD = "/sys/fs/cgroup/cpu/cpu.cfs_period_us"


def _cgroup_cpu_limit() -> float | None:
    """The CPU quota of this process's cgroup in cores (a container's `--cpus`), or None when unlimited."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open(_CGROUP_V2_CPU_MAX) as handle:
            quota, period = handle.read().split()[:2]  # "max 100000" or "200000 100000"
        return None if quota == "max" else int(quota) / int(period)
    with contextlib.suppress(OSError, ValueError):
        with open(_CGROUP_V1_QUOTA) as quota_file, open(_CGROUP_V1_PERIOD) as period_file:
            quota_us, period_us = int(quota_file.read()), int(period_file.read())
        return None if quota_us <= 0 else quota_us / period_us  # -1: unlimited
    return None


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (`taskset`, cpusets), capped by its cgroup's CPU
    quota rounded up; at least 1."""
    cores = len(os.sched_getaffinity(0))
    limit = _cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, math.ceil(limit))
    return max(1, cores)


def auto_workers(cores: int) -> int:
    """The default number of proxy workers on a host with `cores` usable cores: `cores // 4`, from 1 to 8
    (1 up to 7 cores, 2 on 8, 4 on 16, 8 from 32)."""
    return max(1, min(_MAX_AUTO_WORKERS, cores // _CORES_PER_WORKER))


@dataclass(frozen=True)
class WorkerCount:
    """How many proxy workers to run, and why (`--workers N` or `--workers auto`)."""

    workers: int
    auto: bool = False
    cores: int | None = None  # the usable cores `auto` counted

    @classmethod
    def parse(cls, value: str) -> WorkerCount:
        """`--workers`: `auto` (derived from the usable cores) or a whole number of at least 1.

        Raises:
            ValueError: anything else (its message is one line for the user).
        """
        text = value.strip().lower()
        if text == "auto":
            cores = usable_cores()
            return cls(auto_workers(cores), auto=True, cores=cores)
        if not (text.isascii() and text.isdigit()) or int(text) < 1:
            raise ValueError(f"--workers takes `auto` or a whole number of at least 1, not {value!r}")
        return cls(int(text))

    def describe(self) -> str:
        """E.g. `4 workers (auto: 16 usable cores)`, `1 worker`."""
        plural = "s" if self.workers != 1 else ""
        reason = f" (auto: {self.cores} usable core{'s' if self.cores != 1 else ''})" if self.auto else ""
        return f"{self.workers} worker{plural}{reason}"


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
        metrics_dir = _make_private_dir(_METRICS_DIR_PREFIX)
        store_dir = _make_private_dir(_STORE_DIR_PREFIX)
        try:
            readies = [self._context.Event() for _ in range(self.workers)]
            # The workers find the directories in their environment: prometheus-client picks its mode when it
            # is imported, which a spawned worker does before it runs any of our code.
            with _environment({MULTIPROC_DIR_ENV: metrics_dir, SHARED_STORE_DIR_ENV: store_dir}):
                for index, ready in enumerate(readies):
                    process = self._context.Process(
                        target=_serve_worker, args=(self.spec, ready), name=f"trtforge-proxy-{index}"
                    )
                    process.start()
                    processes.append(process)
            self._supervise(processes, readies)
        finally:
            self._stop(processes, metrics_dir)
            shutil.rmtree(metrics_dir, ignore_errors=True)
            shutil.rmtree(store_dir, ignore_errors=True)
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
    def _stop(processes: list[SpawnProcess], metrics_dir: str) -> None:
        from prometheus_client.multiprocess import mark_process_dead

        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: uvicorn's graceful shutdown, streams end with [DONE]
        for process in processes:
            process.join(_STOP_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                process.join()
            if process.pid is not None:
                # Its live gauges leave the sum (prometheus-client has no annotations here).
                mark_process_dead(process.pid, metrics_dir)  # type: ignore[no-untyped-call]


_METRICS_DIR_PREFIX = "trtforge-proxy-metrics-"
_STORE_DIR_PREFIX = "trtforge-proxy-responses-"


def _make_private_dir(prefix: str) -> str:
    """A fresh private directory (mode 0700) for the workers, named `prefix` + this supervisor's pid; those of
    supervisors that are gone (killed before they could remove theirs) are removed first."""
    root = Path(tempfile.gettempdir())
    for stale in root.glob(f"{prefix}*-*"):
        owner = stale.name.removeprefix(prefix).split("-", 1)[0]
        if owner.isdigit() and not _pid_exists(int(owner)) and stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-")


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """`os.environ` with `values` within the block (for the processes started there), as it was after."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
