"""Where a request's preparation runs (`PrepareRunner`): a small one at once on the event loop, a large one on
the tokenizing thread, in arrival order."""

from __future__ import annotations

import asyncio
import threading

import pytest

from trtforge.proxy.prepare import PrepareRunner


def _thread_name() -> str:
    return threading.current_thread().name


def test_small_requests_are_prepared_on_the_event_loop_large_ones_on_the_thread() -> None:
    async def main() -> tuple[str, str, str, str]:
        runner = PrepareRunner(inline_bytes=100)
        try:
            return (
                await runner.run(100, _thread_name),
                await runner.run(101, _thread_name),
                await runner.run(None, _thread_name),  # a chunked body: its size is not known
                threading.current_thread().name,
            )
        finally:
            runner.close()

    small, large, unknown, loop_thread = asyncio.run(main())
    assert small == loop_thread
    assert large.startswith("tokenize") and unknown.startswith("tokenize")


def test_large_requests_keep_their_arrival_order_and_errors_reach_the_caller() -> None:
    order: list[int] = []

    def work(index: int) -> int:
        order.append(index)
        if index == 3:
            raise ValueError("the template rejected it")
        return index

    async def main() -> list[int | BaseException]:
        runner = PrepareRunner(inline_bytes=0)
        try:
            return await asyncio.gather(*(runner.run(1, work, i) for i in range(6)), return_exceptions=True)
        finally:
            runner.close()

    results = asyncio.run(main())
    assert order == list(range(6))
    assert results[:3] == [0, 1, 2] and results[4:] == [4, 5]
    assert isinstance(results[3], ValueError)


def test_an_inline_preparation_raises_in_the_caller() -> None:
    def refuse() -> None:
        raise ValueError("too long")

    async def main() -> None:
        runner = PrepareRunner()
        try:
            await runner.run(10, refuse)
        finally:
            runner.close()

    with pytest.raises(ValueError, match="too long"):
        asyncio.run(main())
