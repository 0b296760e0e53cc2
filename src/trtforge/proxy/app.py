"""The FastAPI app: thin routes over `OpenAIServing`, errors through `proxy.errors`, and the uvicorn server.

GET  /v1/models             the served model (the engine name) with its context length
GET  /v1/models/{id}        one model card, or a 404 envelope
POST /v1/chat/completions   chat, streamed (SSE) or not
POST /v1/completions        completions, streamed (SSE) or not
POST /v1/responses          OpenAI Responses, streamed (SSE events) or not (see `proxy.responses`)
GET/DELETE /v1/responses/{id}, GET /v1/responses/{id}/input_items   the stored responses
POST /v1/messages           Anthropic Messages, streamed (SSE events) or not (see `proxy.messages`)
POST /v1/messages/count_tokens   the prompt's length in tokens, rendered as `/v1/messages` renders it
GET  /health                200 when Triton and its model are ready, else 503
GET  /metrics               Prometheus text format (see `proxy.metrics`)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeVar

import uvicorn
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from trtforge.constants import DEFAULT_PROXY_HOST, DEFAULT_PROXY_PORT
from trtforge.errors import TrtforgeError
from trtforge.proxy.backend import TritonBackend
from trtforge.proxy.disconnect import CancelOnDisconnect, uncancel
from trtforge.proxy.errors import (
    ApiError,
    InvalidRequestError,
    ModelNotFoundError,
    TritonUnavailableError,
    error_response,
)
from trtforge.proxy.generation import TextDelta
from trtforge.proxy.limits import BodyLimitMiddleware
from trtforge.proxy.messages import MessagesTurn, chat_request, prepare
from trtforge.proxy.messages_protocol import CountTokensRequest, MessagesRequest, TokenCount
from trtforge.proxy.metrics import METRICS_MEDIA_TYPE, ProxyMetrics
from trtforge.proxy.middleware import ProxyMiddleware
from trtforge.proxy.prepare import Prepared, PrepareRunner
from trtforge.proxy.protocol import ChatCompletionRequest, CompletionRequest, ModelList
from trtforge.proxy.response_store import ResponseStoreLimits, owner_of, response_store_for
from trtforge.proxy.responses import ResponsesApi, Turn, credential_of
from trtforge.proxy.responses_protocol import ResponsesRequest
from trtforge.proxy.serving import OpenAIServing
from trtforge.proxy.settings import ProxySettings
from trtforge.proxy.sse import DONE_FRAME, EventStreamResponse, error_frame
from trtforge.proxy.tokenizer import ProxyTokenizer
from trtforge.proxy.workers import ProxyWorkers, WorkerSpec

logger = logging.getLogger(__name__)

T = TypeVar("T")

# nginx and similar proxies buffer responses unless told not to; SSE must reach the client per chunk.
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ProxyStartError(TrtforgeError, RuntimeError):
    """The proxy did not start (the reason is in the log lines above)."""


# ------------------------------------------------------------------------------------------------- errors


async def _error_response(request: Request, exc: Exception) -> Response:
    # Whatever no handler takes (not an `ApiError`: a bug) becomes the 500 envelope in `ProxyMiddleware`.
    return error_response(exc, request.scope.get("path", ""))


# ---------------------------------------------------------------------------------------- disconnects


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Run `work` in this task; cancel it (and with it the Triton request) as soon as the client goes away,
    and return None then (see `proxy.disconnect`)."""
    with CancelOnDisconnect(request.receive):
        return await work
    logger.info("client disconnected; request cancelled")
    return None


# ------------------------------------------------------------------------------------------------ shutdown


def _chat_farewell(exc: Exception) -> str:
    return error_frame(exc) + DONE_FRAME


async def _until_shutdown(
    frames: AsyncIterator[str],
    shutting_down: asyncio.Event,
    farewell: Callable[[Exception], str] = _chat_farewell,
) -> AsyncIterator[str]:
    """Forward SSE frames; when the server shuts down, cancel the generation and end the stream properly
    (`farewell`: the wire format's last frames for the error, by default an error frame and `[DONE]`).

    uvicorn otherwise lets a stream run for its whole graceful timeout, then cancels it: the client gets a cut
    stream without `[DONE]` and the terminal a traceback per stream.

    One watcher per stream, not per frame: when shutdown begins while the stream waits for its next frame, the
    watcher cancels this task, which unwinds the stream generator (and with it the Triton request); while a
    frame is being sent, the stream ends after that frame.
    """
    task = asyncio.current_task()
    waiting = False
    stopping = False

    def on_shutdown(_: object) -> None:
        nonlocal stopping
        stopping = True
        if waiting and task is not None:
            task.cancel()

    watcher = asyncio.ensure_future(shutting_down.wait())
    watcher.add_done_callback(on_shutdown)
    try:
        while not stopping:
            waiting = True
            try:
                text = await anext(frames)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if not stopping:
                    raise  # the client left, or the server cancelled the response
                uncancel(task)
                break
            finally:
                waiting = False
            yield text
        logger.info("server shutting down; stream ended")
        await frames.aclose()  # type: ignore[attr-defined]
        yield farewell(TritonUnavailableError("the server is shutting down"))
    finally:
        watcher.remove_done_callback(on_shutdown)
        watcher.cancel()
        await frames.aclose()  # type: ignore[attr-defined]


class _ProxyServer(uvicorn.Server):
    """uvicorn's server, telling open streams when shutdown begins (before its graceful wait)."""

    def __init__(self, config: uvicorn.Config, shutting_down: asyncio.Event) -> None:
        super().__init__(config)
        self._shutting_down = shutting_down

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        self._shutting_down.set()
        await super().shutdown(sockets)


# ------------------------------------------------------------------------------------------------- routes

router = APIRouter()


def _servings(request: Request) -> dict[str, OpenAIServing]:
    return request.app.state.servings  # type: ignore[no-any-return]


def _serving(request: Request, model: str) -> OpenAIServing:
    """The serving of `model` (the request's `model` field routes it)."""
    servings = _servings(request)
    serving = servings.get(model)
    if serving is None:
        raise ModelNotFoundError(model, "`, `".join(servings))
    return serving


@router.get("/v1/models")
async def list_models(request: Request) -> JSONResponse:
    cards = [serving.model_card() for serving in _servings(request).values()]
    return JSONResponse(ModelList(data=cards).model_dump())


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> JSONResponse:
    return JSONResponse(_serving(request, model_id).model_card().model_dump())


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    registry: ProxyMetrics = request.app.state.metrics
    return Response(registry.render(), media_type=METRICS_MEDIA_TYPE)


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    for serving in _servings(request).values():
        if not await serving.backend.is_ready(serving.settings.health_timeout_s):
            raise TritonUnavailableError(
                f"Triton at {serving.settings.triton_grpc_url} or its model `{serving.settings.triton_model}` is not ready"
            )
    return JSONResponse({"status": "ok"})


async def _respond(
    request: Request,
    serving: OpenAIServing,
    prepared: Prepared,
    *,
    whole: Callable[[Prepared], Awaitable[Any]],
    stream: Callable[[Prepared, AsyncIterator[TextDelta]], AsyncIterator[str]] | None,
    farewell: Callable[[Exception], str] = _chat_farewell,
) -> Response:
    if stream is not None:
        deltas = await _unless_disconnected(request, serving.start_stream(prepared))
        if deltas is None:
            return Response(status_code=499)
        frames = _until_shutdown(stream(prepared, deltas), request.app.state.shutting_down, farewell)
        return EventStreamResponse(frames, headers=_SSE_HEADERS)
    result = await _unless_disconnected(request, whole(prepared))
    if result is None:
        return Response(status_code=499)
    return JSONResponse(result.model_dump())


async def _off_loop(
    request: Request, prepare: Callable[..., Prepared], *args: Any, **kwargs: Any
) -> Prepared:
    """Run a request's preparation (chat template, tokenising): at once when its body is small, else on the
    tokenizer thread, where a long template cannot stall the streams waiting for their next token (see
    `PrepareRunner`)."""
    return await _off_loop_call(request, prepare, *args, **kwargs)


def _body_size(request: Request) -> int | None:
    length = request.headers.get("content-length")
    return int(length) if length is not None and length.isdigit() else None


async def _off_loop_call(request: Request, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    runner: PrepareRunner = request.app.state.tokenizing
    return await runner.run(_body_size(request), work, *args, **kwargs)


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    serving = _serving(request, body.model)
    serving.metrics.count_request(body.model, "chat")
    prepared = await _off_loop(request, serving.prepare_chat, body, request_id=request.state.request_id)
    return await _respond(
        request, serving, prepared, whole=serving.chat, stream=serving.chat_stream if body.stream else None
    )


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request) -> Response:
    serving = _serving(request, body.model)
    serving.metrics.count_request(body.model, "completions")
    prepared = await _off_loop(request, serving.prepare_completion, body, request_id=request.state.request_id)
    return await _respond(
        request,
        serving,
        prepared,
        whole=serving.completion,
        stream=serving.completion_stream if body.stream else None,
    )


def _responses(request: Request) -> tuple[ResponsesApi, str]:
    """The store's routes' state and the request's owner in it (its API key's digest)."""
    return request.app.state.responses, owner_of(credential_of(request.headers))


@router.post("/v1/responses")
async def create_response(body: ResponsesRequest, request: Request) -> Response:
    serving = _serving(request, body.model)
    serving.metrics.count_request(body.model, "responses")
    api, owner = _responses(request)
    turn: Turn = api.turn(body, owner)
    prepared = await _off_loop(
        request, turn.prepare, serving.prepare_chat, request_id=request.state.request_id
    )

    async def count_tokens(text: str) -> int:
        runner: PrepareRunner = request.app.state.tokenizing
        return len(await runner.run(len(text), serving.tokenizer.encode_rendered, text))

    async def whole(prepared: Prepared) -> Any:
        return await turn.whole(prepared, await serving.start_stream(prepared), count_tokens)

    def stream(prepared: Prepared, deltas: AsyncIterator[TextDelta]) -> AsyncIterator[str]:
        return turn.stream(prepared, deltas, count_tokens)

    return await _respond(
        request,
        serving,
        prepared,
        whole=whole,
        stream=stream if body.stream else None,
        farewell=turn.farewell,
    )


@router.get("/v1/responses/{response_id}")
async def retrieve_response(response_id: str, request: Request, stream: bool = False) -> JSONResponse:
    if stream:
        raise InvalidRequestError("stream is not supported: responses run in the foreground", param="stream")
    api, owner = _responses(request)
    return JSONResponse(api.retrieve(owner, response_id))


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, request: Request) -> JSONResponse:
    api, owner = _responses(request)
    return JSONResponse(api.delete(owner, response_id))


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(
    response_id: str,
    request: Request,
    limit: int = Query(20, ge=1, le=100),
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> JSONResponse:
    api, owner = _responses(request)
    return JSONResponse(api.input_items(owner, response_id, limit=limit, order=order, after=after))


@router.post("/v1/messages")
async def create_message(body: MessagesRequest, request: Request) -> Response:
    serving = _serving(request, body.model)
    serving.metrics.count_request(body.model, "messages")
    turn = MessagesTurn(body)
    prepared = await _off_loop(
        request, turn.prepare, serving.prepare_chat, request_id=request.state.request_id
    )
    limits = serving.settings
    first = turn.capped(prepared, max_seq_len=limits.max_seq_len, max_input_len=limits.max_input_len)

    async def encode(text: str) -> list[int]:
        return await _off_loop_call(request, serving.tokenizer.encode_rendered, text)

    async def whole(prepared: Prepared) -> Any:
        return await turn.whole(prepared, await serving.start_stream(prepared), serving.start_stream, encode)

    def stream(prepared: Prepared, deltas: AsyncIterator[TextDelta]) -> AsyncIterator[str]:
        return turn.stream(prepared, deltas, serving.start_stream, encode)

    return await _respond(
        request,
        serving,
        first,
        whole=whole,
        stream=stream if body.stream else None,
        farewell=turn.farewell,
    )


@router.post("/v1/messages/count_tokens")
async def count_message_tokens(body: CountTokensRequest, request: Request) -> JSONResponse:
    serving = _serving(request, body.model)
    prepared = await _off_loop(
        request, prepare, chat_request(body), serving.prepare_chat, request_id=request.state.request_id
    )
    return JSONResponse(TokenCount(input_tokens=prepared.prompt_tokens).model_dump())


# ----------------------------------------------------------------------------------------------- assembly


def build_app(settings: Sequence[ProxySettings], *, api_key: str | None = None) -> FastAPI:
    """The proxy app. Its lifespan loads each model's tokenizer and opens its gRPC channel to Triton.

    Args:
        settings: what is served, one entry per model (routed by the request's `model`).
        api_key: when set, `/v1/` routes need `Authorization: Bearer <api_key>`.
    """
    models = list(settings)
    names = [m.model_name for m in models]
    if not models or len(set(names)) != len(names):
        raise ValueError(f"need one or more models with distinct names, got {names}")
    proxy_metrics = ProxyMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        servings: dict[str, OpenAIServing] = {}
        app.state.tokenizing = PrepareRunner()
        try:
            for model in models:
                tokenizer = await asyncio.to_thread(ProxyTokenizer.load, model.engine_dir)
                backend = TritonBackend(
                    model.triton_grpc_url, model.triton_model, request_timeout_s=model.request_timeout_s
                )
                await backend.open()
                servings[model.model_name] = OpenAIServing(model, tokenizer, backend, proxy_metrics)
                logger.info(
                    "serving `%s` through Triton %s (model %s)",
                    model.model_name,
                    model.triton_grpc_url,
                    model.triton_model,
                )
            app.state.servings = servings
            yield
        finally:
            app.state.tokenizing.close()
            for serving in servings.values():
                await serving.backend.close()

    app = FastAPI(title="trtforge OpenAI proxy", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.shutting_down = asyncio.Event()  # set by the server that runs the app (`make_server`)
    app.state.metrics = proxy_metrics
    # In memory, or shared by the workers when there are several: see `proxy.response_store`.
    app.state.responses = ResponsesApi(
        response_store_for(ResponseStoreLimits.widest([m.response_store for m in models]))
    )
    # Inside the API-key check; one limit for the whole app: the largest any served model allows.
    app.add_middleware(BodyLimitMiddleware, max_bytes=max(m.max_body_bytes for m in models))
    app.add_middleware(ProxyMiddleware, api_key=api_key)
    app.include_router(router)
    for handled in (ApiError, RequestValidationError, StarletteHTTPException):
        app.add_exception_handler(handled, _error_response)
    return app


def make_server(
    settings: Sequence[ProxySettings],
    *,
    host: str = DEFAULT_PROXY_HOST,
    port: int = DEFAULT_PROXY_PORT,
    log_level: str = "info",
    api_key: str | None = None,
) -> uvicorn.Server:
    """A uvicorn server for the proxy; `.run()` in the foreground, or set `.should_exit` from elsewhere."""
    app = build_app(settings, api_key=api_key)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        # The standard loop, not uvloop (uvicorn picks it when installed): measured side by side, uvloop did not
        # lower the CPU per streamed token (docs/benchmarks.md), and the tests run on this loop.
        loop="asyncio",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    return _ProxyServer(config, app.state.shutting_down)


def make_proxy(
    settings: Sequence[ProxySettings],
    *,
    host: str = DEFAULT_PROXY_HOST,
    port: int = DEFAULT_PROXY_PORT,
    log_level: str = "info",
    api_key: str | None = None,
    workers: int = 1,
) -> uvicorn.Server | ProxyWorkers:
    """`make_server` for one worker (in this process); `ProxyWorkers` (processes sharing the port) for more."""
    if workers == 1:
        return make_server(settings, host=host, port=port, log_level=log_level, api_key=api_key)
    spec = WorkerSpec(settings=tuple(settings), host=host, port=port, log_level=log_level, api_key=api_key)
    return ProxyWorkers(spec, workers)


def run_server(server: uvicorn.Server | ProxyWorkers) -> None:
    """Run a server from `make_server`/`make_proxy` in the foreground until SIGINT/SIGTERM (or `.should_exit`).

    Raises:
        ProxyStartError: the server could not start (port taken, tokenizer unreadable, ...), or a worker died.
    """
    server.run()
    if isinstance(server, ProxyWorkers):
        if server.failed:
            raise ProxyStartError("a proxy worker died; all workers were stopped (see the log lines above)")
        if not server.started:
            raise ProxyStartError(f"the proxy workers did not start on {server.host}:{server.port}")
        return
    if not server.started:
        config = server.config
        raise ProxyStartError(f"the proxy did not start on {config.host}:{config.port} (is the port taken?)")
