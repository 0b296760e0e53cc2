"""Command-line interface: `trtforge build|serve|proxy|up|...`.

Each module below registers its commands on the shared `app`; `main` is the console script and turns
`TrtforgeError` into one line on stderr and a non-zero exit status (no traceback for user mistakes).
"""

from __future__ import annotations

import sys

from rich.markup import escape

# Command modules register themselves on `app` when imported.
from trtforge.cli import cache as _cache  # noqa: F401
from trtforge.cli import engines as _engines  # noqa: F401
from trtforge.cli import inspection as _inspection  # noqa: F401
from trtforge.cli import serving as _serving  # noqa: F401
from trtforge.cli import smoke as _smoke  # noqa: F401
from trtforge.cli._app import app, console
from trtforge.cli._exit import leave
from trtforge.errors import TrtforgeError

__all__ = ["app", "main"]


def main() -> None:
    leave(_run())


def _run() -> int:
    """Run the command; its exit status."""
    try:
        app()
    except TrtforgeError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130
    except SystemExit as exc:
        return _status(exc.code)
    return 0


def _status(code: object) -> int:
    """The status `sys.exit(code)` gives (None: 0; a message: printed, 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1
