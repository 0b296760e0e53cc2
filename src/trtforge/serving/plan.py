"""The serving plan: everything `up`, `serve`, `smoke` and `serve --repository-only` will do, decided first.

    plan = plan_serving(["tiny"], ports=TritonPorts(), proxy=ProxyListen(port=9000))   # checks; starts nothing
    plan.describe()                    # what `up --dry-run --json` prints
    with Stack(plan) as stack:         # writes plan.triton.repository, runs plan.triton.argv, then the proxy
        stack.serve()

`plan_serving` runs every check that decides whether the request can be served, in the order that lets the
cheap ones refuse before anything slow happens: duplicate names, serve options and parser names, ports that
clash or are taken, ranks of catalogue entries served together, locating (or, unless `dry_run`, building or
substituting) each engine, ranks and backends of the engines served together, the compatibility gate, and the
repository's configs (the `tensorrt_llm` contract). Then it works out the repository path, the tritonserver (or
mpirun) argv and environment and the proxy settings. It starts nothing and writes nothing; one engine is N = 1
of the same plan. How each backend is served (model files, parameters, mpirun, sharing a Triton) is the table
in `triton.backends`.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import re
import shutil
import socket
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtforge import constants
from trtforge.catalog import CatalogEntry, load_catalog
from trtforge.engine import EngineInfo, read_engine
from trtforge.errors import EngineNotFoundError, UsageError
from trtforge.progress import BuildProgress, NullProgress
from trtforge.serve_options import ServeOptions, merge_serve_options, parse_option_pairs
from trtforge.store.links import resolve_engine

if TYPE_CHECKING:
    from trtforge.proxy.settings import ProxySettings
    from trtforge.triton.distribution import TritonDistribution
    from trtforge.triton.server import TritonServer

__all__ = [
    "ProxyListen",
    "ServePlan",
    "ServedEngine",
    "TritonLaunch",
    "TritonPorts",
    "check_ports_free",
    "plan_serving",
    "repository_path",
]

logger = logging.getLogger(__name__)

# tritonserver's graceful exit when clients of its own may still be generating (`serve`); behind the proxy it
# is 0: the stack stops tritonserver only after the proxy, its one client, has ended every generation.
_ALONE_EXIT_TIMEOUT_S = 3


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

    def by_option(self) -> dict[str, int]:
        """Each port by the command-line option that sets it (what a port error names)."""
        return {
            "--triton-http-port": self.http,
            "--triton-grpc-port": self.grpc,
            "--triton-metrics-port": self.metrics,
        }


@dataclass(frozen=True)
class ProxyListen:
    """Where and how the OpenAI proxy listens.

    Args:
        host, port: the address it binds (default loopback only).
        api_key: the key clients must send, or None; never shown in a repr.
        workers: proxy processes sharing the port.
        workers_auto_cores: with `--workers auto`, the usable cores `workers` was derived from; else None.
        log_level: the proxy's log level.
        max_body_bytes: the largest request body it accepts (larger: 413 before parsing).
        coalesce: tokens of one stream that are ready together go out as one chunk (False: one per token).
        stream_interval: after a stream's first chunk, tokens per chunk at least (1: each as it comes).
        responses_store_max, responses_store_bytes, responses_store_ttl_s: the bounds of its store of
            Responses (`proxy.response_store`), in responses, bytes and seconds.
    """

    host: str = constants.DEFAULT_PROXY_HOST
    port: int = constants.DEFAULT_PROXY_PORT
    api_key: str | None = field(default=None, repr=False)
    workers: int = 1
    workers_auto_cores: int | None = None
    log_level: str = "warning"
    max_body_bytes: int = constants.DEFAULT_MAX_BODY_BYTES
    coalesce: bool = True
    stream_interval: int = 1
    responses_store_max: int = constants.DEFAULT_RESPONSES_STORE_MAX
    responses_store_bytes: int = constants.DEFAULT_RESPONSES_STORE_BYTES
    responses_store_ttl_s: float = constants.DEFAULT_RESPONSES_STORE_TTL_S

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"


@dataclass(frozen=True)
class ServedEngine:
    """One engine of a plan: what clients call it, the store entry, how it is served.

    Args:
        name: the model name clients pass (the engine name).
        engine: the engine's facts (its store path is `engine.path`).
        options: the serve options (the catalogue's table with `--option` over it).
        triton_model: the repository's `tensorrt_llm`-contract model that generates for it.
        reasoning_parser, tool_parser: the proxy's parsers (the options', else the architecture's defaults).
    """

    name: str
    engine: EngineInfo
    options: ServeOptions
    triton_model: str
    reasoning_parser: str
    tool_parser: str

    @property
    def backend(self) -> str:
        """The backend that serves it: the key of its row in `triton.backends.SERVING_BACKENDS`."""
        return self.engine.backend

    @property
    def context_length(self) -> int:
        return self.engine.max_seq_len

    @property
    def prompt_limit(self) -> int:
        """The longest prompt the runtime takes with these serve options (`EngineInfo.prompt_limit`)."""
        return self.engine.prompt_limit(self.options.enable_chunked_context)


@dataclass(frozen=True)
class TritonLaunch:
    """The tritonserver a plan runs: its repository, ports and exact command.

    Args:
        repository: where the model repository is written.
        ports: the ports it binds.
        processes: tritonservers launched (one per rank under mpirun when > 1).
        exit_timeout_s: its `--exit-timeout-secs`.
        log_path: where its output goes.
        shm_prefix: the python backend's shared-memory prefix of the first start (restarts get fresh ones).
        argv: the command of the first start.
        env: variables set over the caller's environment.
        distribution: the tritonserver found here.
    """

    repository: Path
    ports: TritonPorts
    processes: int
    exit_timeout_s: int
    log_path: Path
    shm_prefix: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    distribution: TritonDistribution

    def server(self, *, fresh_shm_prefix: bool = False) -> TritonServer:
        """A not-yet-started `TritonServer` running `argv` (with a new shared-memory prefix if asked)."""
        from trtforge.triton.server import TritonServer

        return TritonServer(
            self.repository,
            http_port=self.ports.http,
            grpc_port=self.ports.grpc,
            metrics_port=self.ports.metrics,
            world_size=self.processes,
            log_path=self.log_path,
            exit_timeout_s=self.exit_timeout_s,
            distribution=self.distribution,
            shm_prefix=None if fresh_shm_prefix else self.shm_prefix,
        )


@dataclass(frozen=True)
class ServePlan:
    """Everything a serving command will do, decided before anything starts (`plan_serving`).

    Args:
        engines: every engine served, in the order named.
        models: the repository's models.
        triton: the tritonserver and its repository.
        proxy: where the proxy listens; None runs tritonserver alone (`serve`).
        proxy_settings: what the proxy serves, one per engine (empty without the proxy).
        ready_timeout_s: how long one tritonserver start may take to be ready.
        restart: start a new tritonserver when it dies (False: `Stack.serve()` ends with an error instead).
        warnings: compatibility problems passed with `force`.
        notices: what the gate warns of without refusing (a PyTorch entry prepared for another minor
            TensorRT-LLM version).
    """

    engines: tuple[ServedEngine, ...]
    models: tuple[str, ...]
    triton: TritonLaunch
    proxy: ProxyListen | None
    proxy_settings: tuple[ProxySettings, ...]
    ready_timeout_s: float = 600.0
    restart: bool = True
    warnings: tuple[str, ...] = ()
    notices: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(served.name for served in self.engines)

    @property
    def engine_infos(self) -> dict[str, EngineInfo]:
        return {served.name: served.engine for served in self.engines}

    @property
    def options(self) -> dict[str, ServeOptions]:
        return {served.name: served.options for served in self.engines}

    def write_repository(self) -> Path:
        """Write the plan's model repository (replacing one generated earlier); its path."""
        from trtforge.triton.repository import write_model_repository

        return write_model_repository(self.engine_infos, self.triton.repository, options=self.options)

    def describe(self) -> dict[str, Any]:
        """The plan as JSON data (what `up --dry-run --json` prints); the API key only as whether one is set."""
        launch = self.triton
        return {
            "engines": [
                {
                    "name": served.name,
                    "backend": served.backend,
                    "path": str(served.engine.path),
                    "triton_model": served.triton_model,
                    "world_size": served.engine.world_size,
                    "context_length": served.context_length,
                    "prompt_limit": served.prompt_limit,
                    "chunked_context": served.engine.chunked_context(served.options.enable_chunked_context),
                    "max_batch_size": served.engine.max_batch_size,
                    "reasoning_parser": served.reasoning_parser,
                    "tool_parser": served.tool_parser,
                    "options": served.options.model_dump(mode="json", exclude_unset=True),
                }
                for served in self.engines
            ],
            "repository": {"path": str(launch.repository), "models": list(self.models)},
            "triton": {
                "argv": list(launch.argv),
                "env": dict(launch.env),
                "processes": launch.processes,
                "ports": {
                    "http": launch.ports.http,
                    "grpc": launch.ports.grpc,
                    "metrics": launch.ports.metrics,
                },
                "log": str(launch.log_path),
                "ready_timeout_s": self.ready_timeout_s,
                "restart": self.restart,
            },
            "proxy": None
            if self.proxy is None
            else {
                "host": self.proxy.host,
                "port": self.proxy.port,
                "url": self.proxy.url,
                "workers": self.proxy.workers,
                "workers_auto_cores": self.proxy.workers_auto_cores,
                "api_key_required": self.proxy.api_key is not None,
                "max_body_bytes": self.proxy.max_body_bytes,
                "coalesce": self.proxy.coalesce,
                "stream_interval": self.proxy.stream_interval,
                "responses_store": {
                    "max_responses": self.proxy.responses_store_max,
                    "max_bytes": self.proxy.responses_store_bytes,
                    "max_age_s": self.proxy.responses_store_ttl_s,
                },
            },
            "warnings": list(self.warnings),
            "notices": list(self.notices),
        }


def check_ports_free(ports: Mapping[str, int], host: str = "127.0.0.1") -> None:
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


def repository_path(engines: Mapping[str, EngineInfo]) -> Path:
    """Where the generated repository serving `engines` lives (one per set of names and engine paths)."""
    key = hashlib.sha256(
        "\0".join(f"{name}={info.path.resolve()}" for name, info in engines.items()).encode()
    ).hexdigest()[:12]
    return constants.scratch_dir() / "repositories" / f"{_slug('+'.join(engines))[:80]}-{key}"


def plan_serving(
    names: Sequence[str],
    *,
    option_pairs: Sequence[str] = (),
    ports: TritonPorts = TritonPorts(),
    proxy: ProxyListen | None = ProxyListen(),
    build: bool = False,
    dry_run: bool = False,
    force: bool = False,
    repository: Path | None = None,
    engine_dirs: Mapping[str, Path] | None = None,
    ready_timeout_s: float = 600.0,
    restart: bool = True,
    progress: Callable[[str], AbstractContextManager[BuildProgress]] | None = None,
    say: Callable[[str], None] = logger.info,
) -> ServePlan:
    """Decide how to serve `names`, or refuse in one line; nothing is started, and nothing is written but what a
    build (`build`) puts in the store.

    Args:
        names: engines to serve (catalogue entries, links or engine directories); several share one
            tritonserver and one proxy.
        option_pairs: `--option KEY=VALUE` pairs, over each catalogue entry's `[engines.NAME.serve]` table.
        ports: tritonserver's ports.
        proxy: where the proxy listens; None: tritonserver alone.
        build: build (or substitute from a cache) catalogue entries that are not in the store, and rebuild
            those whose entry changed.
        dry_run: build nothing: a catalogue entry that is not built yet is an error saying so.
        force: the compatibility gate warns (`ServePlan.warnings`) instead of refusing.
        repository: write the repository here, for a tritonserver started elsewhere (`serve --repository-only`):
            ports are not checked and the compatibility gate does not apply here.
        engine_dirs: engine directories by name (library use): those names are served from there as they are,
            without the catalogue (no build, no serve table).
        ready_timeout_s, restart: as `ServePlan` holds them.
        progress: a build's progress display per name (default: none).
        say: where the "engine built/cached" line goes.

    Raises:
        UsageError: a duplicate name, a bad serve option or parser name, a port clash or a taken port, an
            engine that cannot share a Triton with the others, options that do not fit an engine, a
            repository directory that holds something trtforge did not generate.
        CatalogError, EngineNotFoundError: an unknown name, or (dry run) an engine not built yet.
        IncompatibleEngineError: the gate refused an engine (exit status 3).
        TrtforgeError: a build failed, or tritonserver (or mpirun, for several ranks) is not found.
    """
    from trtforge.triton.repository import check_replaceable, model_configs

    if not names:
        raise UsageError("name at least one engine to serve")
    duplicates = sorted({name for name in names if list(names).count(name) > 1})
    if duplicates:
        raise UsageError(f"engine {duplicates[0]!r} is named more than once; serve each engine once")
    given = dict(engine_dirs or {})
    catalog = load_catalog()
    entries = {name: catalog.get(name) for name in names if name in catalog and name not in given}
    options = _options(names, option_pairs, {name: entry.serve for name, entry in entries.items()})
    if proxy is not None and proxy.port in (ports.http, ports.grpc, ports.metrics):
        raise UsageError(f"--port {proxy.port} is also a Triton port; pick another")
    if len(names) > 1:  # before building anything: catalogue entries say their backend and ranks
        from trtforge.builder.backend_choice import entry_backend

        for name, entry in entries.items():
            _check_shareable(name, entry_backend(entry), entry.world_size)  # "auto" resolved as a build would
    to_build = [name for name in entries if build and not dry_run]
    if repository is None:  # (a repository for a tritonserver elsewhere is served by that one's TensorRT-LLM)
        _refuse_engine_entries_without_backend(entries, to_build)
    # What needs no build is located first: an unknown name is refused before the ports are looked at.
    located = {
        name: given[name] if name in given else _locate(name, not_built_yet=dry_run and name in entries)
        for name in names
        if name not in to_build
    }
    if repository is None:
        if proxy is not None:
            check_ports_free({"--port": proxy.port}, host=proxy.host)
        check_ports_free(ports.by_option())
    for name in to_build:
        located[name] = _build(name, progress, say)
    infos = {name: read_engine(located[name]) for name in names}
    if len(infos) > 1:
        for name, info in infos.items():
            _check_shareable(name, info.backend, info.world_size)
    notices: list[str] = []
    warnings = [] if repository is not None else _gate(infos, options, force=force, warn=notices.append)
    models = tuple(model_configs(infos, options))  # the contract and per-engine option checks
    served = _served_engines(infos, options)
    destination = Path(repository).expanduser().absolute() if repository else repository_path(infos)
    check_replaceable(destination)
    launch = _triton_launch(
        infos,
        repository=destination,
        ports=ports,
        alone=proxy is None,
        elsewhere=repository is not None,
    )
    return ServePlan(
        engines=tuple(served),
        models=models,
        triton=launch,
        proxy=proxy,
        proxy_settings=_proxy_settings(served, ports, proxy),
        ready_timeout_s=ready_timeout_s,
        restart=restart,
        warnings=tuple(warnings),
        notices=tuple(notices),
    )


def _served_engines(
    infos: Mapping[str, EngineInfo], options: Mapping[str, ServeOptions]
) -> list[ServedEngine]:
    """Each engine as the plan serves it: its Triton model, and its parsers (the options', else the defaults of
    its architecture)."""
    from trtforge.proxy.parsers import default_parsers
    from trtforge.triton.repository import triton_model_names

    triton_models = triton_model_names(list(infos))
    served = []
    for name, info in infos.items():
        default_reasoning, default_tools = default_parsers(info.architecture)
        opts = options[name]
        served.append(
            ServedEngine(
                name=name,
                engine=info,
                options=opts,
                triton_model=triton_models[name],
                reasoning_parser=default_reasoning
                if opts.reasoning_parser is None
                else opts.reasoning_parser,
                tool_parser=default_tools if opts.tool_parser is None else opts.tool_parser,
            )
        )
    return served


def _options(
    names: Sequence[str], option_pairs: Sequence[str], tables: Mapping[str, ServeOptions | None]
) -> dict[str, ServeOptions]:
    """Each name's serve options: its catalogue serve table (`tables`) with the `--option` pairs over it;
    parser names checked (an unknown one lists the known ones)."""
    from trtforge.proxy.parsers import UnknownParserError, check_reasoning_parser, check_tool_parser

    overrides = parse_option_pairs(option_pairs)
    options = {name: merge_serve_options(tables.get(name), overrides) for name in names}
    for opts in options.values():
        try:
            if opts.reasoning_parser is not None:
                check_reasoning_parser(opts.reasoning_parser)
            if opts.tool_parser is not None:
                check_tool_parser(opts.tool_parser)
        except UnknownParserError as exc:
            raise UsageError(str(exc)) from None
    return options


def _check_shareable(name: str, backend: str, ranks: int) -> None:
    """Several engines share one single-process tritonserver: each must run as one process and allow sharing."""
    from trtforge.triton.backends import serving_backend

    row = serving_backend(backend)
    if ranks != 1:  # its ranks take the GPUs from 0 up, whether under mpirun or the backend's own workers
        raise UsageError(
            f"engine {name!r} has {ranks} ranks and cannot share a Triton with other engines; serve it alone"
        )
    if not row.shares_triton:
        raise UsageError(
            f"engine {name!r} ({backend} backend) cannot share a Triton with other engines; serve it alone"
        )


def _refuse_engine_entries_without_backend(entries: Mapping[str, CatalogEntry], to_build: list[str]) -> None:
    """An engine entry (backend "tensorrt") served unbuilt or as built, where the installed TensorRT-LLM has no
    TensorRT backend: refused now in the words `build` uses (those to build are refused by the build itself)."""
    from trtforge.builder.backend_choice import entry_backend

    for name, entry in entries.items():
        if name not in to_build and entry.backend == "tensorrt":
            entry_backend(entry)


def _locate(name: str, *, not_built_yet: bool) -> Path:
    """The engine directory linked as `name`, or the directory `name` names.

    Args:
        not_built_yet: `name` is a catalogue entry a dry run does not build: its absence says so.
    """
    try:
        return resolve_engine(name)
    except EngineNotFoundError:
        if not_built_yet:
            raise EngineNotFoundError(
                f"engine {name!r} is not built yet and --dry-run builds nothing: `trtforge build {name}` "
                f"builds it (`trtforge up {name}` builds and serves it)"
            ) from None
        raise


def _build(
    name: str,
    progress: Callable[[str], AbstractContextManager[BuildProgress]] | None,
    say: Callable[[str], None],
) -> Path:
    """The catalogue entry's engine: the cached store entry, a substituter's, or a fresh build."""
    from trtforge.builder.pipeline import ensure_engine

    display: AbstractContextManager[BuildProgress] = (
        progress(name) if progress is not None else nullcontext(NullProgress())
    )
    with display as shown:
        result = ensure_engine(name, progress=shown)
    say(f"engine {'(cached)' if result.cached else 'built'}: {result.path}")
    return result.path


def _gate(
    infos: Mapping[str, EngineInfo],
    options: Mapping[str, ServeOptions],
    *,
    force: bool,
    warn: Callable[[str], None],
) -> list[str]:
    """The compatibility gate for every engine: refuse one that cannot load here (with `force`: warnings);
    `warn` is told what the gate warns of without refusing."""
    from trtforge.triton.compat import gate

    warnings = []
    for name, info in infos.items():
        warnings += gate(name, info, device_ids=options[name].device_ids(), force=force, warn=warn)
    return warnings


def _triton_launch(
    infos: Mapping[str, EngineInfo], *, repository: Path, ports: TritonPorts, alone: bool, elsewhere: bool
) -> TritonLaunch:
    """The tritonserver serving `infos` from `repository`; its argv names mpirun as found on PATH (`elsewhere`:
    as "mpirun" when this machine has none, since the command runs on another one)."""
    from trtforge.triton.backends import serving_backend
    from trtforge.triton.server import TritonServer

    [(first_name, first)] = list(infos.items())[:1]
    processes = serving_backend(first.backend).processes(first) if len(infos) == 1 else 1
    log_name = first_name if len(infos) == 1 else "+".join(infos)
    server = TritonServer(
        repository,
        http_port=ports.http,
        grpc_port=ports.grpc,
        metrics_port=ports.metrics,
        world_size=processes,
        log_path=constants.scratch_dir() / "logs" / f"tritonserver-{_slug(log_name)[:80]}.log",
        exit_timeout_s=_ALONE_EXIT_TIMEOUT_S if alone else 0,
    )
    mpirun = (shutil.which("mpirun") or "mpirun") if elsewhere else None
    argv = server.command(mpirun=mpirun)
    assert server.log_path is not None
    return TritonLaunch(
        repository=server.repository,
        ports=ports,
        processes=processes,
        exit_timeout_s=server.exit_timeout_s,
        log_path=server.log_path,
        shm_prefix=server.shm_prefix,
        argv=tuple(argv),
        env=tuple(sorted(server.distribution.env.items())),
        distribution=server.distribution,
    )


def _proxy_settings(
    served: Sequence[ServedEngine], ports: TritonPorts, proxy: ProxyListen | None
) -> tuple[ProxySettings, ...]:
    """What the proxy serves: one `ProxySettings` per engine, routed by `model` to its own Triton model."""
    if proxy is None:
        return ()
    from trtforge.proxy.response_store import ResponseStoreLimits
    from trtforge.proxy.settings import ProxySettings

    store = ResponseStoreLimits(
        max_responses=proxy.responses_store_max,
        max_bytes=proxy.responses_store_bytes,
        max_age_s=proxy.responses_store_ttl_s,
    )
    return tuple(
        ProxySettings.from_engine(
            engine.name,
            engine.engine,
            ports.grpc_url,
            triton_model=engine.triton_model,
            reasoning_parser=engine.reasoning_parser,
            tool_parser=engine.tool_parser,
            max_body_bytes=proxy.max_body_bytes,
            coalesce=proxy.coalesce,
            stream_interval=proxy.stream_interval,
            response_store=store,
            enable_chunked_context=engine.options.enable_chunked_context,
        )
        for engine in served
    )
