"""The typer application, its `--version`, and `print_json`; errors become a line and an exit status in
`trtforge.cli.main`."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console

from trtforge.errors import UsageError

app = typer.Typer(
    name="trtforge",
    help="Build NVFP4 TensorRT-LLM engines and serve them behind an OpenAI-compatible API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Human output goes to stderr so that stdout stays clean for data (paths, --json).
console = Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    """Write one JSON document to stdout."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


# `--version` and `--json` are both eager, so they are handled before any command is looked for. Click processes
# eager options in the order they were typed and calls the callback of one not given too (with False), so each
# callback records itself and whichever runs second prints: `--version`, `--version --json` and
# `--json --version` all work.
_VERSION_SEEN = "trtforge.version"
_JSON_SEEN = "trtforge.version_json"


def _on_version(ctx: typer.Context, value: bool) -> bool:
    ctx.meta[_VERSION_SEEN] = value
    if _JSON_SEEN in ctx.meta:
        _print_version(ctx)
    return value  # a callback's result becomes the option's value


def _on_json(ctx: typer.Context, value: bool) -> bool:
    ctx.meta[_JSON_SEEN] = value
    if _VERSION_SEEN in ctx.meta:
        _print_version(ctx)
    return value


def _print_version(ctx: typer.Context) -> None:
    from trtforge import __version__

    if not ctx.meta[_VERSION_SEEN]:
        return
    if ctx.meta[_JSON_SEEN]:
        print_json(versions())
    else:
        sys.stdout.write(f"trtforge {__version__}\n")
    raise typer.Exit()


def versions() -> dict[str, str | None]:
    """trtforge's version, and those of the TensorRT-LLM and tritonserver it would use here (None: not found)."""
    from trtforge import __version__
    from trtforge.triton.distribution import tritonserver_version
    from trtforge.trtllm import installed_trtllm_version

    return {
        "trtforge": __version__,
        "tensorrt_llm": installed_trtllm_version(),
        "tritonserver": tritonserver_version(),
    }


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            callback=_on_version,
            help="Print trtforge's version and exit; with --json also the TensorRT-LLM and tritonserver found.",
        ),
    ] = False,
    json_: Annotated[
        bool,
        typer.Option("--json", is_eager=True, callback=_on_json, help="With --version: print JSON."),
    ] = False,
) -> None:
    if json_:
        raise UsageError("--json before a command applies only to --version; put it after the command")
