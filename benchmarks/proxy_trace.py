"""Benchmark-only instrumentation of the proxy: `python benchmarks/proxy_trace.py OUT_DIR LABEL PROFILE -- ARGS`.

Runs `trtforge ARGS` (the proxy) in this process with timestamps taken at each stage of a request's admission,
keyed by its X-Request-Id, and written to `OUT_DIR/trace-LABEL.json` when the app shuts down (SIGTERM from the
benchmark). Nothing of the request's text is recorded. With PROFILE = 1,
the event loop's thread also runs under cProfile, its stats in `OUT_DIR/profile-LABEL.prof`.

The stages (all `time.monotonic()`, which is one clock for every process of the host, so the client's own
send time lines up with them):

    connected   uvicorn's protocol has the connection (`connection_made`)
    received    its first bytes are read (`data_received`)
    accept      the request reaches the ASGI app (HTTP parsed by uvicorn, before the body is validated)
    submit      its preparation is handed to the tokenizing executor
    prep_start  a tokenizing thread starts preparing it (the wait for the executor before it)
    template    the chat template is rendered
    tokenize    the rendered prompt is tokenized (= the preparation is done, but for building the generations)
    prep_end    the preparation returned in its thread
    stream      the event loop runs the request again, starting its generation
    written     its `ModelStreamInfer` request is written to the gRPC call
    first_read  the first response is read from the call
    first_byte  the first SSE body bytes are handed to the server

A loop-lag probe (a task sleeping 5 ms) records how late the event loop runs a callback that is due: the wait
every `await` of a request's admission pays under load.

The patches wrap functions of the code under test by name, so this runs the proxy of any checkout with the same
names (a baseline's `src/` on PYTHONPATH).
"""

from __future__ import annotations

import asyncio
import cProfile
import json
import sys
import threading
import time
from functools import wraps
from pathlib import Path
from typing import Any

_EVENTS: dict[str, dict[str, float]] = {}
_LAG_S: list[float] = []
_local = threading.local()


def _mark(request_id: str | None, stage: str) -> None:
    if request_id is not None:
        _EVENTS.setdefault(request_id, {}).setdefault(stage, time.monotonic())


def _header(scope: Any, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _patch_middleware() -> None:
    from trtforge.proxy import middleware

    original = middleware.ProxyMiddleware.__call__

    async def call(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith("/v1/"):
            await original(self, scope, receive, send)
            return
        request_id = _header(scope, b"x-request-id")
        _mark(request_id, "accept")

        async def traced_send(message: Any) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                _mark(request_id, "first_byte")
            await send(message)

        await original(self, scope, receive, traced_send)

    middleware.ProxyMiddleware.__call__ = call  # type: ignore[method-assign]


def _patch_uvicorn() -> None:
    """The connection's stages, before the request has an ASGI scope: found by the id in its first bytes."""
    from uvicorn.protocols.http import httptools_impl

    protocol = httptools_impl.HttpToolsProtocol
    made, received = protocol.connection_made, protocol.data_received

    def connection_made(self: Any, transport: Any) -> None:
        self._trace_made = time.monotonic()
        made(self, transport)

    def data_received(self: Any, data: bytes) -> None:
        made_at = getattr(self, "_trace_made", None)
        if made_at is not None:
            self._trace_made = None
            _, found, rest = data.partition(b"X-Request-Id: ")
            if found:
                request_id = rest.partition(b"\r\n")[0].decode("latin-1")
                _EVENTS.setdefault(request_id, {})["connected"] = made_at
                _mark(request_id, "received")
        received(self, data)

    protocol.connection_made = connection_made  # type: ignore[method-assign]
    protocol.data_received = data_received  # type: ignore[method-assign]


def _patch_preparation() -> None:
    from trtforge.proxy import app, prepare, tokenizer

    submit = app._off_loop_call

    async def off_loop_call(request: Any, work: Any, *args: Any, **kwargs: Any) -> Any:
        _mark(getattr(request.state, "request_id", None), "submit")
        return await submit(request, work, *args, **kwargs)

    app._off_loop_call = off_loop_call

    chat = prepare.Preparer.chat

    @wraps(chat)
    def traced_chat(self: Any, request: Any, *, request_id: str | None = None) -> Any:
        _mark(request_id, "prep_start")
        _local.request_id = request_id
        try:
            return chat(self, request, request_id=request_id)
        finally:
            _mark(request_id, "prep_end")
            _local.request_id = None

    prepare.Preparer.chat = traced_chat  # type: ignore[method-assign]

    for method, stage in (("render_chat_text", "template"), ("encode_rendered", "tokenize")):
        original = getattr(tokenizer.ProxyTokenizer, method)

        def traced(*args: Any, __original: Any = original, __stage: str = stage, **kwargs: Any) -> Any:
            try:
                return __original(*args, **kwargs)
            finally:
                _mark(getattr(_local, "request_id", None), __stage)

        setattr(tokenizer.ProxyTokenizer, method, traced)


class _TracedCall:
    """A `ModelStreamInfer` call that timestamps its first write and first read."""

    def __init__(self, call: Any, request_id: str) -> None:
        self._call = call
        self._id = request_id

    async def write(self, message: Any) -> None:
        await self._call.write(message)
        _mark(self._id, "written")

    async def read(self) -> Any:
        message = await self._call.read()
        _mark(self._id, "first_read")
        return message

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


def _patch_backend() -> None:
    from trtforge.proxy import backend, serving

    start_stream = serving.OpenAIServing.start_stream

    async def traced_start(self: Any, prepared: Any) -> Any:
        _mark(prepared.request_id, "stream")
        return await start_stream(self, prepared)

    serving.OpenAIServing.start_stream = traced_start  # type: ignore[method-assign]

    init = backend._Stream.__init__

    def traced_init(self: Any, *args: Any) -> None:
        init(self, *args)
        # The reader task has not run yet: it reads `self.call` when it does.
        self.call = _TracedCall(self.call, self.request.id)

    backend._Stream.__init__ = traced_init  # type: ignore[method-assign]


async def _lag_probe() -> None:
    period = 0.005
    while True:
        due = time.monotonic() + period
        await asyncio.sleep(period)
        _LAG_S.append(time.monotonic() - due)


def _patch_lifespan(dump: Any) -> None:
    """Start the lag probe with the app (in the server's event loop); `dump` when the app shuts down.

    Not at exit: uvicorn raises the SIGTERM it caught again once it has shut down, and the process ends by it.
    """
    from trtforge.proxy import app

    build = app.build_app

    def traced_build(*args: Any, **kwargs: Any) -> Any:
        built = build(*args, **kwargs)
        lifespan = built.router.lifespan_context

        async def with_probe(application: Any) -> Any:
            probe = asyncio.ensure_future(_lag_probe())
            try:
                async with lifespan(application) as state:
                    yield state
            finally:
                probe.cancel()
                dump()

        from contextlib import asynccontextmanager

        built.router.lifespan_context = asynccontextmanager(with_probe)
        return built

    app.build_app = traced_build


def main() -> None:
    out_dir, label, profile = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
    args = sys.argv[sys.argv.index("--") + 1 :]
    _patch_uvicorn()
    _patch_middleware()
    _patch_preparation()
    _patch_backend()
    profiler = cProfile.Profile() if profile else None

    def dump() -> None:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(str(out_dir / f"profile-{label}.prof"))
        (out_dir / f"trace-{label}.json").write_text(json.dumps({"events": _EVENTS, "lag_s": _LAG_S}))

    _patch_lifespan(dump)
    from trtforge.cli import main as cli_main

    sys.argv = ["trtforge", *args]
    if profiler is not None:
        profiler.enable()
    cli_main()


if __name__ == "__main__":
    main()
