"""Launching and stopping tritonserver for a model repository.

    with TritonServer(repository, http_port=8000, grpc_port=8001, metrics_port=8002) as server:
        ...                     # __enter__ = start() + wait_ready(); __exit__ = stop()

Lifecycle: CREATED -> STARTING -> READY -> STOPPING -> STOPPED, or -> FAILED when it does not become ready
(the process is stopped before the error is raised). `stop()` is idempotent and safe from any state.

The server is an `OwnedProcess` (`trtforge.processes`): it runs in its own session, so a Ctrl-C in the terminal
does not reach it and the caller forwards signals: let SIGINT/SIGTERM unwind the `with` block (the CLI turns
SIGTERM into SystemExit around its stacks), or call `server.stop()` from its own handler. Python-backend stubs (`triton_python_backend_stub`) are descendants of
tritonserver that may leave its process group; the owner records them while the server runs and ends them with
it, and `stop_report` says what the end did.

Each server gives its python backend a shared-memory prefix of its own (`shm_prefix`): a tritonserver that is
killed cannot remove its regions in /dev/shm, so `stop()` removes what is left under that prefix, and only that.
"""

from __future__ import annotations

import enum
import glob
import json
import re
import shutil
import stat
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from types import TracebackType

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from trtforge import constants
from trtforge.errors import BackendUnavailableError, TritonCrashedError, TritonError
from trtforge.processes import EndReport, OwnedProcess
from trtforge.triton.distribution import TritonDistribution, find_tritonserver

__all__ = [
    "ServerState",
    "TritonServer",
    "remove_shm_regions",
    "required_backends",
]

_POLL_INTERVAL_S = 0.2
_KILL_GRACE_S = 5.0  # TERM → KILL grace on top of `exit_timeout_s`
# TERM → KILL grace for what outlives tritonserver (python-backend stubs, which ignore SIGTERM and wait for
# tritonserver to tell them to finish): with tritonserver gone nothing will, so they are not waited for.
_ORPHAN_GRACE_S = 0.2
# Where the python backend's shared-memory regions live (POSIX shm_open); only our own prefix is ever removed.
SHM_DIR = Path("/dev/shm")
# model_lifecycle.cc: "failed to load 'name' version 1: Internal: ValueError: ..."
_FAILED_LOAD = re.compile(r"failed to load '(?P<model>[^']+)' version \d+: (?P<reason>.*)")
# Talks to our own local server: never through an HTTP proxy from the environment.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_STATUS_ROW = re.compile(r"^\|\s*(?P<model>[^|\s]+)\s*\|\s*\d+\s*\|\s*UNAVAILABLE:\s*(?P<reason>.*?)\s*\|?$")
# What a crash prints: std::terminate's line and the exception's what(), tritonserver's own signal report, a failed
# assertion. An abort writes no "E…" line of its own, and the last one before it (e.g. the CUDA notice every
# CPU-only start logs) would name the wrong cause.
_CRASH_LINE = re.compile(r"^terminate called|^what\(\):|^Signal \(\d+\) received|Assertion .+ failed")


class ServerState(enum.Enum):
    CREATED = "created"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


class TritonServer:
    """One tritonserver (or one per rank under mpirun) serving `repository`; a context manager.

    Args:
        repository: the model repository (see `trtforge.triton.repository`).
        http_port, grpc_port, metrics_port: the ports to bind on `host`.
        world_size: ranks of the TensorRT-LLM engine; > 1 launches one tritonserver per rank under mpirun
            (leader mode: rank 0 serves, the others only load `tensorrt_llm`).
        log_path: where the server's stdout/stderr go; default a new file under the scratch directory.
        host: the address every endpoint binds (keep it local; the proxy is the public face).
        exit_timeout_s: tritonserver's `--exit-timeout-secs` (it otherwise waits 30 s on SIGTERM).
        distribution: the tritonserver to run; default `find_tritonserver()`.
        shm_prefix: the python backend's shared-memory prefix; default a new one (`trtforge_<uuid12>_`). Give one
            only to run a command decided earlier, never the prefix of a server that is still running.
    """

    def __init__(
        self,
        repository: Path,
        *,
        http_port: int = constants.DEFAULT_TRITON_HTTP_PORT,
        grpc_port: int = constants.DEFAULT_TRITON_GRPC_PORT,
        metrics_port: int = constants.DEFAULT_TRITON_METRICS_PORT,
        world_size: int = 1,
        log_path: Path | None = None,
        host: str = "127.0.0.1",
        exit_timeout_s: int = 3,
        distribution: TritonDistribution | None = None,
        shm_prefix: str | None = None,
    ) -> None:
        if world_size < 1:
            raise TritonError(f"world_size must be at least 1, not {world_size}")
        self.repository = Path(repository).expanduser().absolute()
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.metrics_port = metrics_port
        self.world_size = world_size
        self.host = host
        self.exit_timeout_s = exit_timeout_s
        self.log_path = Path(log_path).absolute() if log_path is not None else None
        self._distribution = distribution
        # Unique per server: regions left by a killed server are told apart from other servers' live ones.
        self.shm_prefix = shm_prefix or f"trtforge_{uuid.uuid4().hex[:12]}_"
        self._state = ServerState.CREATED
        self._process: OwnedProcess | None = None
        self._stop_report: EndReport | None = None
        self._lock = threading.RLock()

    # -- properties ------------------------------------------------------------------------------------

    @property
    def state(self) -> ServerState:
        return self._state

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def stop_report(self) -> EndReport | None:
        """What `stop()` did to tritonserver and its descendants (None until it ended a started server)."""
        return self._stop_report

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def distribution(self) -> TritonDistribution:
        if self._distribution is None:
            self._distribution = find_tritonserver()
        return self._distribution

    def __repr__(self) -> str:
        return f"TritonServer({str(self.repository)!r}, state={self._state.value}, http={self.http_url})"

    # -- lifecycle -------------------------------------------------------------------------------------

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def command(self, *, mpirun: str | None = None) -> list[str]:
        """The argv that `start()` runs (mpirun with one tritonserver per rank when world_size > 1).

        Args:
            mpirun: the mpirun to name in the argv; default the one on PATH.
        """
        if self.world_size == 1:
            return [str(self.distribution.binary), *self._server_args(rank=0)]
        mpirun = mpirun or shutil.which("mpirun")
        if mpirun is None:
            raise TritonError(
                f"world_size {self.world_size} needs mpirun (Open MPI) on PATH to start one tritonserver per rank"
            )
        argv = [mpirun, "--allow-run-as-root"]
        for rank in range(self.world_size):
            if rank:
                argv.append(":")
            argv += ["-n", "1", str(self.distribution.binary), *self._server_args(rank=rank)]
        return argv

    def start(self) -> None:
        """Launch the server (returns at once; see `wait_ready`).

        Raises:
            BackendUnavailableError: a model needs a backend the distribution lacks (nothing is started).
            TritonError: the repository is missing, mpirun is missing, or the process could not start.
        """
        with self._lock:
            if self._state is not ServerState.CREATED:
                raise TritonError(f"this TritonServer was already started (state {self._state.value})")
            if not self.repository.is_dir():
                raise TritonError(f"model repository {self.repository} does not exist")
            self._check_backends()
            argv = self.command()
            self.log_path = self.log_path or _default_log_path()
            process = OwnedProcess(argv, env=self.distribution.launch_env(), stdout=self.log_path)
            try:
                process.start()
            except OSError as exc:
                self._state = ServerState.FAILED
                raise TritonError(f"cannot start {argv[0]}: {exc}") from None
            self._process = process
            self._state = ServerState.STARTING

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        """Poll `/v2/health/ready` until the server and all its models are ready.

        Raises:
            TritonError: the process exited, or `timeout_s` passed; names the models that failed to load and
                Triton's reason when the log or the repository index says. The server is stopped first.
        """
        if self._state is ServerState.READY:
            return
        if self._state is not ServerState.STARTING or self._process is None:
            raise TritonError(f"wait_ready() needs a started server (state {self._state.value})")
        deadline = time.monotonic() + timeout_s
        while True:
            if (code := self._process.poll()) is not None:
                # Nothing has signalled it yet: a negative status is a crash of its own.
                self._fail(f"tritonserver exited with status {code}", crashed=code < 0)
            if self._is_ready():
                self._state = ServerState.READY
                self._process.track()  # every model is loaded: its stubs are recorded now, not at the next scan
                return
            if time.monotonic() >= deadline:
                self._fail(f"tritonserver was not ready after {timeout_s:g} s")
            time.sleep(_POLL_INTERVAL_S)

    def wait(self, timeout_s: float | None = None) -> int | None:
        """Wait for tritonserver to exit on its own; its exit status, or None if still running at `timeout_s`."""
        if self._process is None:
            raise TritonError(f"wait() needs a started server (state {self._state.value})")
        return self._process.wait(timeout_s)

    def stop(self) -> None:
        """Stop the server and everything it started (stubs, ranks): SIGTERM, then SIGKILL after
        `exit_timeout_s` + 5 s, or 0.2 s after tritonserver itself has exited for what outlived it; then remove
        the python backend's shared memory left under `shm_prefix`."""
        with self._lock:
            if self._state is ServerState.CREATED:
                self._state = ServerState.STOPPED
                return
            process = self._process
            if process is None or self._stop_report is not None:
                return
            final = ServerState.FAILED if self._state is ServerState.FAILED else ServerState.STOPPED
            self._state = ServerState.STOPPING
            try:
                self._stop_report = process.stop(
                    grace_s=self.exit_timeout_s + _KILL_GRACE_S, after_leader_s=_ORPHAN_GRACE_S
                )
                remove_shm_regions(self.shm_prefix)
            finally:
                self._state = final

    # -- internals -------------------------------------------------------------------------------------

    def _server_args(self, *, rank: int) -> list[str]:
        args = [
            f"--model-repository={self.repository}",
            "--disable-auto-complete-config",
            f"--backend-directory={self.distribution.backend_dir}",
            f"--exit-timeout-secs={self.exit_timeout_s}",
        ]
        if rank == 0:
            args += [
                f"--http-address={self.host}",
                f"--http-port={self.http_port}",
                f"--grpc-address={self.host}",
                f"--grpc-port={self.grpc_port}",
                f"--metrics-address={self.host}",
                f"--metrics-port={self.metrics_port}",
            ]
        else:
            # Other ranks only host their part of the engine; no endpoints, so no port clashes with rank 0.
            args += [
                "--model-control-mode=explicit",
                "--load-model=tensorrt_llm",
                "--allow-http=false",
                "--allow-grpc=false",
                "--allow-metrics=false",
            ]
        # Each server, and each rank, needs its own shared-memory namespace (see `remove_shm_regions`).
        prefix = f"{self.shm_prefix}{rank}_" if self.world_size > 1 else self.shm_prefix
        args.append(f"--backend-config=python,shm-region-prefix-name={prefix}")
        return args

    def _check_backends(self) -> None:
        for backend, models in required_backends(self.repository).items():
            if self.distribution.has_backend(backend):
                continue
            if backend == "tensorrtllm":
                raise BackendUnavailableError(
                    f"the tensorrtllm backend is not installed in {self.distribution.backend_dir}; use the NGC "
                    "tritonserver trtllm container or TRITON_HOME"
                )
            raise BackendUnavailableError(
                f"the {backend} backend (needed by {', '.join(models)}) is not installed in "
                f"{self.distribution.backend_dir}"
            )

    def _is_ready(self) -> bool:
        try:
            with _LOCAL.open(f"{self.http_url}/v2/health/ready", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _fail(self, what: str, *, crashed: bool = False) -> None:
        """Stop the server and raise the most specific error the log and the repository index give.

        A model that failed to load is reported as such; otherwise a `crashed` server raises
        `TritonCrashedError`, which a caller may answer by starting a new one."""
        failures = self._model_failures()
        self._state = ServerState.FAILED
        self.stop()
        log_hint = f" (log: {self.log_path})"
        if failures:
            # Report the root cause first: an ensemble fails because one of its steps did.
            ordered = sorted(
                failures.items(), key=lambda item: "ensemble" in item[0] or "not available" in item[1]
            )
            name, reason = ordered[0]
            others = [other for other, _ in ordered[1:]]
            also = f"; also unavailable: {', '.join(others)}" if others else ""
            raise TritonError(f"model '{name}' failed to load: {reason}{also}{log_hint}")
        last_error = _last_error_line(self.log_path)
        error = TritonCrashedError if crashed else TritonError
        raise error(f"{what}: {last_error}{log_hint}" if last_error else f"{what}{log_hint}")

    def _model_failures(self) -> dict[str, str]:
        failures = _failures_from_log(self.log_path)
        if not failures and self._process is not None and self._process.poll() is None:
            failures = _failures_from_index(self.http_url)
        return failures


# -- helpers ---------------------------------------------------------------------------------------------


def required_backends(repository: Path) -> dict[str, list[str]]:
    """Backend name -> the models in `repository` that use it (ensembles and unparsable configs skipped)."""
    backends: dict[str, list[str]] = {}
    for config_path in sorted(Path(repository).glob("*/config.pbtxt")):
        config = model_config_pb2.ModelConfig()
        try:
            text_format.Parse(config_path.read_text(), config)
        except (OSError, text_format.ParseError):
            continue  # tritonserver reports it, naming the model
        if config.backend:
            backends.setdefault(config.backend, []).append(config.name or config_path.parent.name)
    return backends


def remove_shm_regions(prefix: str, shm_dir: Path = SHM_DIR) -> list[Path]:
    """Remove the python backend's shared-memory regions named `prefix*` in `shm_dir`; the paths removed.

    A tritonserver that exits cleanly removes its own; one that was killed cannot. Only regular files are
    touched (never a link or a directory someone placed there), and only with this server's unique prefix, so
    regions of other servers on the machine stay.
    """
    removed = []
    for path in shm_dir.glob(f"{glob.escape(prefix)}*"):
        try:
            if not stat.S_ISREG(path.lstat().st_mode):
                continue
            path.unlink()
        except OSError:
            continue  # gone already, or not ours to remove
        removed.append(path)
    return removed


def _default_log_path() -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return constants.scratch_dir() / "triton-logs" / f"tritonserver-{stamp}-{uuid.uuid4().hex[:8]}.log"


def _read_log(log_path: Path | None) -> list[str]:
    if log_path is None:
        return []
    try:
        return log_path.read_text(errors="replace").splitlines()
    except OSError:
        return []


def _clean_reason(reason: str) -> str:
    reason = reason.strip().rstrip('"').strip()
    reason = reason.split("\\n\\nAt:")[0]  # the python backend appends the traceback location
    reason = reason.replace("\\n", " ").replace("\\'", "'")
    reason = re.sub(r"\s+", " ", reason)
    return reason[:400]


def _failures_from_log(log_path: Path | None) -> dict[str, str]:
    failures: dict[str, str] = {}
    for line in _read_log(log_path):
        match = _FAILED_LOAD.search(line) or _STATUS_ROW.match(line.strip())
        if match and match.group("model") not in failures:
            failures[match.group("model")] = _clean_reason(match.group("reason"))
    return failures


def _failures_from_index(http_url: str) -> dict[str, str]:
    """Models the running server reports as not ready, from `POST /v2/repository/index`."""
    request = urllib.request.Request(f"{http_url}/v2/repository/index", data=b"{}", method="POST")
    try:
        with _LOCAL.open(request, timeout=2) as response:
            index = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return {}
    return {
        entry["name"]: _clean_reason(entry.get("reason") or entry.get("state", "not ready"))
        for entry in index
        if isinstance(entry, dict) and entry.get("name") and entry.get("state") != "READY"
    }


def _last_error_line(log_path: Path | None) -> str:
    """The line that best says why tritonserver ended: what an abort printed, else its last error line."""
    lines = _read_log(log_path)
    crash = [line.strip() for line in lines if _CRASH_LINE.search(line.strip())]
    if crash:
        return _clean_reason(" ".join(crash[-2:]))
    for line in reversed(lines):
        stripped = line.strip()
        if stripped.startswith("error:") or re.match(r"^E\d{4} ", stripped):
            return _clean_reason(stripped)
    return ""
