"""Leaving the process at once once a serving command has stopped everything it started.

After `up` has stopped the proxy and tritonserver, what is left of the exit is CPython's own teardown: the weakref
finalizers torch registers for its operator libraries (about 0.8 s) and the interpreter's last garbage collections
over torch and transformers (about 2 s), none of which has an effect outside this process. `main` (the console
script, never library code or an in-process `app()`) leaves with `os._exit` instead, after the atexit handlers
that do have effects (logging's flush and close, filelock, multiprocessing's children) and a flush of stdout and
stderr. It does so only when the command said its resources are released (`stopped_cleanly`); any other end
(an error, a stop that did not finish) goes through the ordinary `sys.exit`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
import weakref
from typing import NoReturn

_clean = threading.Event()


def stopped_cleanly() -> None:
    """The command has stopped every process it started and closed its files: `leave` may skip teardown."""
    _clean.set()


def leave(code: int) -> NoReturn:
    """Exit with `code`: at once after `stopped_cleanly()`, else through `sys.exit`."""
    if not _clean.is_set():
        sys.exit(code)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the handlers below run to the end
    # weakref's exit hook runs finalizers that only free this process's memory (torch's operator libraries).
    atexit.unregister(weakref.finalize._exitfunc)  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream
            stream.flush()
    os._exit(code)
