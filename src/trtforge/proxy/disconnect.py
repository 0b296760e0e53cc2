"""Cancel the work of a request when its client goes away, in the request's own task.

Under load every task start and every wake-up of a waiter queues behind the token frames of the running
streams, so a request's work runs in its own task rather than in one started for it; a watcher task reads the
ASGI `receive` channel and cancels the request's task when the client disconnects. The cancellation unwinds the
work (a frames generator is closed, and with it the generation behind it), and the block ends quietly, as
starlette's task group ends a response whose client left.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

from starlette.types import Receive


async def wait_for_disconnect(receive: Receive) -> None:
    """Return when the client has disconnected (any other message, e.g. a body chunk, is skipped)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def uncancel(task: asyncio.Task[Any] | None) -> None:
    """Forget one handled cancellation request (Python 3.11+ counts them; one left over breaks timeouts)."""
    forget = getattr(task, "uncancel", None)
    if forget is not None:
        forget()


class CancelOnDisconnect:
    """`with CancelOnDisconnect(receive) as watch:` cancels the running task if the client leaves inside the
    block; the block then ends without raising and `watch.gone` is True. Any other cancellation (the server
    shutting down, uvicorn cancelling the request) propagates as usual.
    """

    __slots__ = ("_active", "_receive", "_task", "_watcher", "gone")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._task: asyncio.Task[Any] | None = None
        self._watcher: asyncio.Future[None] | None = None
        self._active = False
        self.gone = False

    def __enter__(self) -> CancelOnDisconnect:
        self._task = asyncio.current_task()
        self._active = True
        self._watcher = asyncio.ensure_future(wait_for_disconnect(self._receive))
        self._watcher.add_done_callback(self._on_disconnect)
        return self

    def _on_disconnect(self, watcher: asyncio.Future[None]) -> None:
        # `_active`: the callback may be scheduled just as the block ends; it must not cancel what follows.
        if (
            self._active
            and not watcher.cancelled()
            and watcher.exception() is None
            and self._task is not None
        ):
            self.gone = True
            self._task.cancel()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        self._active = False
        if self._watcher is not None:
            self._watcher.remove_done_callback(self._on_disconnect)
            # Not awaited (one more wait in line): a cancelled watcher consumes no message, and uvicorn reports
            # a disconnect to every later `receive`.
            self._watcher.cancel()
        if exc_type is not None and issubclass(exc_type, asyncio.CancelledError) and self.gone:
            uncancel(self._task)
            return True
        return False
