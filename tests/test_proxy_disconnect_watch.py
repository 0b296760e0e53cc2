"""`CancelOnDisconnect`: the request's own task is cancelled when the ASGI channel reports the client gone, the
block ends quietly, and nothing else is swallowed or cancelled later."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from trtforge.proxy.disconnect import CancelOnDisconnect


class Channel:
    """An ASGI `receive` fed by the test: messages are handed out in order, waiting when there is none."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def receive(self) -> dict[str, Any]:
        return await self.messages.get()

    def disconnect(self) -> None:
        self.messages.put_nowait({"type": "http.disconnect"})


async def _a_disconnect_ends_the_block_quietly() -> None:
    channel = Channel()
    started = asyncio.Event()
    reached_after = False

    async def request() -> bool:
        nonlocal reached_after
        with CancelOnDisconnect(channel.receive) as watch:
            started.set()
            await asyncio.Event().wait()  # work that would never end by itself
        reached_after = True
        await asyncio.sleep(0)  # no cancellation is left pending for what follows
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
        return watch.gone

    task = asyncio.ensure_future(request())
    await started.wait()
    channel.messages.put_nowait({"type": "http.request", "body": b"", "more_body": False})  # skipped
    channel.disconnect()
    assert await task is True
    assert reached_after


async def _another_cancellation_propagates() -> None:
    channel = Channel()
    started = asyncio.Event()

    async def request() -> None:
        with CancelOnDisconnect(channel.receive):
            started.set()
            await asyncio.Event().wait()

    task = asyncio.ensure_future(request())
    await started.wait()
    task.cancel()  # the server shutting down, not the client
    with pytest.raises(asyncio.CancelledError):
        await task


async def _a_disconnect_after_the_block_cancels_nothing() -> None:
    channel = Channel()
    after = asyncio.Event()
    finished = asyncio.Event()

    async def request() -> str:
        with CancelOnDisconnect(channel.receive) as watch:
            await asyncio.sleep(0)
        assert not watch.gone
        after.set()
        await finished.wait()  # the client leaves now; this wait must not be cancelled
        return "done"

    task = asyncio.ensure_future(request())
    await after.wait()
    channel.disconnect()
    for _ in range(5):  # let any stray callback run
        await asyncio.sleep(0)
    finished.set()
    assert await task == "done"
    assert channel.messages.qsize() == 1  # the watcher was gone: nobody consumed the disconnect


async def _an_error_in_the_block_propagates() -> None:
    channel = Channel()
    with pytest.raises(ValueError, match="bad"), CancelOnDisconnect(channel.receive):
        raise ValueError("bad")


def test_a_disconnect_ends_the_block_quietly() -> None:
    asyncio.run(_a_disconnect_ends_the_block_quietly())


def test_another_cancellation_propagates() -> None:
    asyncio.run(_another_cancellation_propagates())


def test_a_disconnect_after_the_block_cancels_nothing() -> None:
    asyncio.run(_a_disconnect_after_the_block_cancels_nothing())


def test_an_error_in_the_block_propagates() -> None:
    asyncio.run(_an_error_in_the_block_propagates())
