"""`trtforge smoke NAME`: start the stack (or attach to a running proxy), run the smoke checks, report."""

from __future__ import annotations

import socket
import threading
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from trtforge import constants
from trtforge.cli._app import app, console, print_json
from trtforge.smoke import SmokeReport, run_smoke


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _with_own_stack(
    name: str, *, max_tokens: int, ready_timeout_s: float, build: bool, force: bool
) -> SmokeReport:
    """Start a `Stack` (tritonserver and the proxy) on free loopback ports, run the checks, stop it."""
    from trtforge.cli.serving import make_plan, running
    from trtforge.serving import ProxyListen, Stack, TritonPorts

    port = _free_port()
    plan = make_plan(
        [name],
        option_pairs=None,
        ports=TritonPorts(http=_free_port(), grpc=_free_port(), metrics=_free_port()),
        proxy=ProxyListen(port=port),
        build=build,
        force=force,
        ready_timeout_s=ready_timeout_s,
        restart=False,
    )
    with running(Stack(plan, say=lambda line: console.print(escape(line)))) as stack:
        proxy = stack.proxy
        assert proxy is not None
        failures: list[BaseException] = []

        def serve() -> None:
            try:
                stack.serve()
            except Exception as exc:  # reported below as the failed check
                failures.append(exc)

        thread = threading.Thread(target=serve, name="smoke-proxy", daemon=True)
        thread.start()
        while not proxy.started and thread.is_alive():
            thread.join(0.05)
        if not proxy.started:
            report = SmokeReport(model=name, base_url=f"http://127.0.0.1:{port}/v1")
            why = str(failures[0]) if failures else f"the proxy did not start on 127.0.0.1:{port}"
            report.check("proxy: started", False, why)
            return report
        console.print(f"running the smoke checks against http://127.0.0.1:{port}/v1")
        return run_smoke(f"http://127.0.0.1:{port}/v1", name, max_tokens=max_tokens)


def _print_report(report: SmokeReport) -> None:
    table = Table(title=f"smoke: {report.model} at {report.base_url}", show_lines=False)
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail")
    for check in report.checks:
        mark = "[green]ok[/]" if check.ok else "[bold red]FAIL[/]"
        table.add_row(escape(check.name), mark, escape(check.detail))
    console.print(table)
    ttft = f"{report.ttft_s * 1000:.0f} ms" if report.ttft_s is not None else "n/a"
    rate = f"{report.tokens_per_s:.1f} tokens/s" if report.tokens_per_s is not None else "n/a"
    console.print(f"time to first token {ttft}; {rate} ({report.completion_tokens} tokens streamed)")
    console.print(f"reply: {escape(report.text[:200])!s}")
    verdict = "[bold green]PASS[/]" if report.ok else "[bold red]FAIL[/]"
    console.print(f"{verdict}: {sum(c.ok for c in report.checks)}/{len(report.checks)} checks passed")


@app.command()
def smoke(
    name: Annotated[
        str, typer.Argument(help="Engine to smoke-test (catalogue entry, link or directory).")
    ] = (constants.TINY_ENGINE_NAME),
    url: Annotated[
        str | None,
        typer.Option(
            help="Attach to a running proxy (e.g. http://127.0.0.1:9000/v1) instead of starting one."
        ),
    ] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="max_tokens of each request.")] = 32,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="TRTFORGE_API_KEY", show_default=False, help="Bearer key of the proxy."),
    ] = None,
    ready_timeout: Annotated[float, typer.Option(help="Seconds to wait for Triton to be ready.")] = 600.0,
    build: Annotated[bool, typer.Option(help="Build the engine first when it is missing.")] = True,
    force: Annotated[bool, typer.Option(help="Skip the compatibility gate (warn instead).")] = False,
) -> None:
    """Chat, streamed chat and completion against the engine; exit 1 if any check fails."""
    if url is not None:
        report = run_smoke(url, name, max_tokens=max_tokens, api_key=api_key)
    else:
        report = _with_own_stack(
            name, max_tokens=max_tokens, ready_timeout_s=ready_timeout, build=build, force=force
        )
    if json_output:
        print_json(report.to_json())
    else:
        _print_report(report)
    if not report.ok:
        raise typer.Exit(1)
