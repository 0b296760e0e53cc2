"""`trtforge serve`, `proxy` and `up`: run Triton, the OpenAI proxy, or both, for one engine (`up`: or several).

`serve` and `up` (and `smoke`) make a `ServePlan` first (`make_plan`: every check, nothing started) and then run
it as a `Stack`; `up --dry-run` prints the plan instead, `serve --repository-only` writes its repository.
"""

from __future__ import annotations

import contextlib
import json
import resource
import shlex
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from trtforge import constants
from trtforge.catalog import load_catalog
from trtforge.cli._app import app, console, print_json
from trtforge.cli._exit import stopped_cleanly
from trtforge.cli._responses_store import (
    STORE_BYTES,
    STORE_MAX,
    STORE_TTL,
    StoreBytes,
    StoreMax,
    StoreTtl,
    store_bounds,
)
from trtforge.engine import read_engine
from trtforge.errors import UsageError
from trtforge.serve_options import merge_serve_options
from trtforge.serving import (
    ProxyListen,
    ServePlan,
    Stack,
    StackState,
    TritonPorts,
    check_ports_free,
    curl_example,
    plan_serving,
)
from trtforge.store.links import resolve_engine

if TYPE_CHECKING:
    import uvicorn

    from trtforge.proxy.workers import ProxyWorkers, WorkerCount

# The proxy (FastAPI, uvicorn) and Triton (tritonclient, grpc) are imported inside the commands that use them:
# every other command, and `--help`, starts without paying for them.

NameArg = Annotated[
    str, typer.Argument(help="Engine name (a catalogue entry or a link) or an engine directory.")
]
GrpcPort = Annotated[int, typer.Option("--triton-grpc-port", help="Triton gRPC port.")]
HttpPort = Annotated[int, typer.Option("--triton-http-port", help="Triton HTTP port.")]
MetricsPort = Annotated[int, typer.Option("--triton-metrics-port", help="Triton metrics port.")]
ReadyTimeout = Annotated[
    float, typer.Option("--ready-timeout", help="Seconds to wait for Triton to be ready.")
]
ProxyPort = Annotated[int, typer.Option("--port", help="Port of the OpenAI-compatible proxy.")]
ProxyHost = Annotated[str, typer.Option("--host", help="Address the proxy binds (default loopback only).")]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="TRTFORGE_API_KEY",
        show_default=False,
        help="Require `Authorization: Bearer KEY` on /v1/ routes (prefer the environment variable).",
    ),
]
Workers = Annotated[
    str,
    typer.Option(
        "--workers",
        metavar="N|auto",
        help="Proxy processes sharing the port (SO_REUSEPORT). auto: a quarter of the usable cores (CPU "
        "affinity and cgroup quota), from 1 to 8, leaving the rest to tritonserver (docs/openai.md).",
    ),
]
MaxBodyBytes = Annotated[
    str,
    typer.Option(
        "--max-body-bytes",
        metavar="BYTES",
        help="The largest request body the proxy reads, in bytes; a larger one gets a 413 before it is read.",
    ),
]
Coalesce = Annotated[
    bool,
    typer.Option(
        help="Send the tokens of a stream that are ready together (the client or the proxy is behind) as one "
        "chunk; --no-coalesce sends one chunk per token.",
    ),
]
StreamInterval = Annotated[
    int,
    typer.Option(
        metavar="TOKENS",
        help="After a stream's first chunk, send its text once this many tokens have arrived since the last "
        "chunk (as trtllm-serve's stream_interval: less proxy CPU per token, later tokens a little later); "
        "1 sends each token as it comes.",
    ),
]


def _check_stream_interval(interval: int, *, coalesce: bool) -> None:
    from trtforge.proxy.settings import check_stream_interval  # the proxy's imports only where it runs

    check_stream_interval(interval, coalesce=coalesce)


ServeOptionArg = Annotated[
    list[str] | None,
    typer.Option(
        "--option",
        "-o",
        metavar="KEY=VALUE",
        help="A serve option over the catalogue's [engines.NAME.serve] table, e.g. "
        "kv_cache_free_gpu_mem_fraction=0.85 (repeatable; the list is in docs/serving.md).",
    ),
]


Force = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Start even when the engine was built for another TensorRT-LLM version or GPU than the ones here.",
    ),
]


def _body_limit(value: str) -> int:
    """`--max-body-bytes` as a number: plain bytes, a whole number of at least 1."""
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise UsageError(
            f"--max-body-bytes takes a whole number of bytes (at least 1, e.g. 4194304), not {value!r}"
        )
    return int(text)


def _worker_count(value: str) -> WorkerCount:
    """`--workers` resolved: `auto` counts the usable cores here."""
    from trtforge.proxy.workers import WorkerCount

    try:
        return WorkerCount.parse(value)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _raise_open_file_limit() -> None:
    """Raise this process's soft limit on open files to its hard limit, for the proxy and what it starts.

    Every streamed client holds a socket for as long as its generation runs, and the soft limit is often 1024:
    a proxy past it fails to accept connections. The hard limit is the administrator's, so it is never passed.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft >= hard:
        return  # unlimited: Linux refuses an infinite NOFILE limit anyway, and the soft one already suffices
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def make_plan(
    names: list[str],
    *,
    option_pairs: list[str] | None,
    ports: TritonPorts,
    proxy: ProxyListen | None,
    build: bool,
    force: bool,
    ready_timeout_s: float,
    restart: bool,
    dry_run: bool = False,
    repository: Path | None = None,
) -> ServePlan:
    """`plan_serving` with this CLI's build progress and lines; the gate's warnings (`--force`) are printed."""
    from trtforge.cli._progress import build_progress

    plan = plan_serving(
        names,
        option_pairs=option_pairs or [],
        ports=ports,
        proxy=proxy,
        build=build,
        dry_run=dry_run,
        force=force,
        repository=repository,
        ready_timeout_s=ready_timeout_s,
        restart=restart,
        progress=build_progress,
        say=lambda line: console.print(escape(line)),
    )
    for notice in plan.notices:
        console.print(f"[bold yellow]warning:[/] {escape(notice)}", soft_wrap=True)
    for problem in plan.warnings:
        console.print(
            f"[bold yellow]warning:[/] {escape(problem)} (starting anyway: --force)", soft_wrap=True
        )
    return plan


def _print_repository_command(plan: ServePlan) -> None:
    """After `serve --repository-only`: where the repository went, then (stdout) the exact command serving it."""
    served = plan.engines[0]
    launch = plan.triton
    extra_env = [f"{key}={value}" for key, value in launch.env]
    console.print(
        f"wrote the model repository for {escape(str(served.engine.path))} to {launch.repository} "
        f"({served.backend} backend, world size {served.engine.world_size}); serve it with:"
    )
    argv = list(launch.argv)
    print(shlex.join(["env", *extra_env, *argv] if extra_env else argv), flush=True)


def _print_plan(plan: ServePlan) -> None:
    """`up --dry-run` without `--json`: the plan for a reader (stdout)."""
    lines = [f"plan for {', '.join(plan.names)} (dry run: nothing built or started)"]
    for served in plan.engines:
        options = served.options.model_dump(mode="json", exclude_unset=True)
        shown = ", ".join(f"{key}={value}" for key, value in options.items()) or "defaults"
        lines += [
            f"engine {served.name}: {served.backend} backend, world size {served.engine.world_size}, "
            f"context {served.context_length}, prompts up to {served.prompt_limit} tokens",
            f"  store path: {served.engine.path}",
            f"  triton model: {served.triton_model}; parsers: reasoning {served.reasoning_parser}, "
            f"tools {served.tool_parser}; options: {shown}",
        ]
    launch = plan.triton
    lines.append(f"repository: {launch.repository}: {', '.join(plan.models)}")
    env = " ".join(f"{key}={value}" for key, value in launch.env)
    lines.append(f"tritonserver: {shlex.join(launch.argv)}")
    if env:
        lines.append(f"  environment: {env}")
    ports = launch.ports
    lines.append(f"triton ports: HTTP {ports.http}, gRPC {ports.grpc}, metrics {ports.metrics} on 127.0.0.1")
    if plan.proxy is not None:
        workers = f"{plan.proxy.workers} worker{'s' if plan.proxy.workers > 1 else ''}"
        if (cores := plan.proxy.workers_auto_cores) is not None:
            workers += f" (auto: {cores} usable core{'s' if cores != 1 else ''})"
        key = ", API key required" if plan.proxy.api_key is not None else ""
        lines.append(f"proxy: {plan.proxy.url} ({workers}{key})")
    print("\n".join(lines), flush=True)


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """Within the block SIGTERM raises SystemExit, as SIGINT raises KeyboardInterrupt, so `with` blocks unwind
    (the proxy handles both itself while it runs). Main thread only (Python's signal rule)."""

    def raise_exit(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def running(stack: Stack) -> Iterator[Stack]:
    """Start `stack` and stop it when the block ends, whatever ends it. Main thread only (Python's signal rule).

    SIGTERM raises SystemExit in the block as SIGINT raises KeyboardInterrupt; both are ignored while the stack
    stops (a second Ctrl-C must not cut the stop short: tritonserver runs in its own session and would be left
    behind). Once the stack has stopped, `main` may leave without the interpreter's teardown.
    """
    previous = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}
    try:
        with sigterm_exits(), stack:
            try:
                yield stack
            finally:
                for sig in _STOP_SIGNALS:
                    signal.signal(sig, signal.SIG_IGN)
    finally:
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)
        if stack.state is StackState.STOPPED:
            stopped_cleanly()


def _demo_request(proxy: uvicorn.Server | ProxyWorkers, port: int, model: str, api_key: str | None) -> None:
    """Once the proxy listens, send one chat request and print the reply and a curl line."""
    deadline = time.monotonic() + 60
    while not proxy.started and time.monotonic() < deadline and not proxy.should_exit:
        time.sleep(0.1)
    if not proxy.started:
        return
    body = {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 32}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}
        | ({"Authorization": f"Bearer {api_key}"} if api_key else {}),
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            reply = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        console.print(f"[bold red]demo request failed:[/] {escape(str(exc))}")
        return
    choice = reply["choices"][0]
    console.print("\n[bold]user:[/] Hello")
    console.print(f"[bold]{escape(model)}:[/] {escape(choice['message'].get('content') or '')}")
    console.print(
        f"[dim](finish_reason={choice['finish_reason']}, usage={reply['usage']}; "
        f"`{escape(model)}` is a smoke model trained on a few sentences, not a real assistant)[/]"
    )
    console.print("\nTry it yourself:")
    print(curl_example(port, model), flush=True)  # stdout, unwrapped: ready to paste
    console.print("\nServing until Ctrl-C.")


@app.command()
def serve(
    name: NameArg,
    triton_grpc_port: GrpcPort = constants.DEFAULT_TRITON_GRPC_PORT,
    triton_http_port: HttpPort = constants.DEFAULT_TRITON_HTTP_PORT,
    triton_metrics_port: MetricsPort = constants.DEFAULT_TRITON_METRICS_PORT,
    ready_timeout: ReadyTimeout = 600.0,
    option: ServeOptionArg = None,
    force: Force = False,
    repository_only: Annotated[
        Path | None,
        typer.Option(
            "--repository-only",
            metavar="DIR",
            help="Only write a self-contained model repository to DIR and print the tritonserver command line.",
        ),
    ] = None,
    restart: Annotated[
        bool, typer.Option(help="Start a new tritonserver when it dies (default: exit with status 1).")
    ] = False,
) -> None:
    """Generate the Triton model repository for an engine and run tritonserver until Ctrl-C."""
    plan = make_plan(
        [name],
        option_pairs=option,
        ports=TritonPorts(http=triton_http_port, grpc=triton_grpc_port, metrics=triton_metrics_port),
        proxy=None,
        build=False,
        force=force,
        ready_timeout_s=ready_timeout,
        restart=restart,
        repository=repository_only,
    )
    if repository_only is not None:
        plan.write_repository()
        _print_repository_command(plan)
        return
    with running(Stack(plan, say=lambda line: console.print(escape(line)))) as stack:
        console.print("Serving until Ctrl-C.")
        stack.serve()  # until a signal; tritonserver's death without --restart raises (status 1)


@app.command()
def proxy(
    name: NameArg,
    port: ProxyPort = constants.DEFAULT_PROXY_PORT,
    host: ProxyHost = constants.DEFAULT_PROXY_HOST,
    triton_grpc_port: GrpcPort = constants.DEFAULT_TRITON_GRPC_PORT,
    api_key: ApiKey = None,
    workers: Workers = "auto",
    max_body_bytes: MaxBodyBytes = str(constants.DEFAULT_MAX_BODY_BYTES),
    coalesce: Coalesce = True,
    stream_interval: StreamInterval = 1,
    responses_store_max: StoreMax = STORE_MAX,
    responses_store_bytes: StoreBytes = STORE_BYTES,
    responses_store_ttl: StoreTtl = STORE_TTL,
) -> None:
    """Run the OpenAI-compatible proxy in front of an already running Triton."""
    from trtforge.proxy import ProxySettings, make_proxy, run_server
    from trtforge.proxy.response_store import ResponseStoreLimits

    body_limit = _body_limit(max_body_bytes)
    _check_stream_interval(stream_interval, coalesce=coalesce)
    bounds = store_bounds(responses_store_max, responses_store_bytes, responses_store_ttl)
    count = _worker_count(workers)
    _raise_open_file_limit()
    engine = read_engine(resolve_engine(name))
    check_ports_free({"--port": port}, host=host)
    catalog = load_catalog()
    options = merge_serve_options(catalog.get(name).serve if name in catalog else None, {})
    settings = ProxySettings.from_engine(
        name,
        engine,
        f"127.0.0.1:{triton_grpc_port}",  # Triton binds loopback
        reasoning_parser=options.reasoning_parser,
        tool_parser=options.tool_parser,
        max_body_bytes=body_limit,
        coalesce=coalesce,
        stream_interval=stream_interval,
        response_store=ResponseStoreLimits(bounds.max_responses, bounds.max_bytes, bounds.max_age_s),
        enable_chunked_context=options.enable_chunked_context,  # as `serve` runs it, so the limits agree
    )
    console.print(
        f"OpenAI-compatible API for [bold]{escape(name)}[/] on http://{host}:{port}/v1 ({count.describe()})"
    )
    try:
        run_server(make_proxy([settings], host=host, port=port, api_key=api_key, workers=count.workers))
    except KeyboardInterrupt:  # SIGINT, raised again by the server once it has shut down
        stopped_cleanly()
        raise
    stopped_cleanly()


@app.command()
def up(
    names: Annotated[
        list[str] | None,
        typer.Argument(
            help="Engines to build (if missing) and serve; several share one Triton and one proxy, routed by "
            "`model`.",
            show_default=constants.TINY_ENGINE_NAME,
        ),
    ] = None,
    port: ProxyPort = constants.DEFAULT_PROXY_PORT,
    host: ProxyHost = constants.DEFAULT_PROXY_HOST,
    triton_grpc_port: GrpcPort = constants.DEFAULT_TRITON_GRPC_PORT,
    triton_http_port: HttpPort = constants.DEFAULT_TRITON_HTTP_PORT,
    triton_metrics_port: MetricsPort = constants.DEFAULT_TRITON_METRICS_PORT,
    ready_timeout: ReadyTimeout = 600.0,
    build: Annotated[bool, typer.Option(help="Build the engine first when it is missing.")] = True,
    demo: Annotated[
        bool, typer.Option(help="Send one chat request once serving and print the reply.")
    ] = False,
    api_key: ApiKey = None,
    option: ServeOptionArg = None,
    force: Force = False,
    workers: Workers = "auto",
    restart: Annotated[
        bool, typer.Option(help="Start a new tritonserver when it dies (--no-restart: exit 1 instead).")
    ] = True,
    max_body_bytes: MaxBodyBytes = str(constants.DEFAULT_MAX_BODY_BYTES),
    coalesce: Coalesce = True,
    stream_interval: StreamInterval = 1,
    responses_store_max: StoreMax = STORE_MAX,
    responses_store_bytes: StoreBytes = STORE_BYTES,
    responses_store_ttl: StoreTtl = STORE_TTL,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print what would be served (engines, repository, Triton command, ports) and exit; nothing is "
            "built or started and no repository is written (an engine not built yet is an error).",
        ),
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="With --dry-run: print the plan as JSON.")
    ] = False,
) -> None:
    """Build (if missing), start Triton and the proxy, and serve until Ctrl-C; then stop everything.

    Several engines share one tritonserver and one proxy, which routes by the request's `model` (each engine
    must have one rank; `--option` applies to every engine, over each catalogue entry's serve table). When
    tritonserver dies, the proxy stays up (503 until Triton is back) and a new tritonserver is started with
    backoff; `--no-restart` exits with status 1 instead.
    """
    names = names or [constants.TINY_ENGINE_NAME]
    body_limit = _body_limit(max_body_bytes)
    _check_stream_interval(stream_interval, coalesce=coalesce)
    bounds = store_bounds(responses_store_max, responses_store_bytes, responses_store_ttl)
    count = _worker_count(workers)
    if json_output and not dry_run:
        raise UsageError("--json prints the plan of --dry-run; add --dry-run")
    if not dry_run:
        _raise_open_file_limit()
    listen = ProxyListen(
        host=host,
        port=port,
        api_key=api_key,
        workers=count.workers,
        workers_auto_cores=count.cores,
        max_body_bytes=body_limit,
        coalesce=coalesce,
        stream_interval=stream_interval,
        responses_store_max=bounds.max_responses,
        responses_store_bytes=bounds.max_bytes,
        responses_store_ttl_s=bounds.max_age_s,
    )
    plan = make_plan(
        names,
        option_pairs=option,
        ports=TritonPorts(http=triton_http_port, grpc=triton_grpc_port, metrics=triton_metrics_port),
        proxy=listen,
        build=build,
        dry_run=dry_run,
        force=force,
        ready_timeout_s=ready_timeout,
        restart=restart,
    )
    if dry_run:
        if json_output:
            print_json(plan.describe())
        else:
            _print_plan(plan)
        return
    with running(Stack(plan, say=lambda line: console.print(escape(line)))) as stack:
        assert stack.proxy is not None
        if demo:
            threading.Thread(
                target=_demo_request, args=(stack.proxy, port, names[0], api_key), daemon=True
            ).start()
        console.print(
            f"OpenAI-compatible API for [bold]{escape(', '.join(names))}[/] on http://{host}:{port}/v1"
        )
        stack.serve()
    console.print("stopped tritonserver and the proxy")
