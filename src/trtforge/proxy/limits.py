"""ASGI middleware that bounds request headers and bodies before anything parses them.

Headers over `MAX_HEADER_BYTES` in all are refused with 431 (the HTTP parser has read them, nothing else has).

A body over `max_bytes` is refused with 413 in OpenAI's envelope: at once when `Content-Length` says so, otherwise
as soon as the bytes received pass the limit (chunked uploads). Bodies within the limit are read here and handed
to the app unchanged; after the body, `receive` is the server's own again, so routes still see the client's
`http.disconnect`.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trtforge.proxy.errors import RequestTooLargeError, send_error
from trtforge.proxy.settings import DEFAULT_MAX_BODY_BYTES

MAX_HEADER_BYTES = 64 * 1024


class BodyLimitMiddleware:
    """Refuse request bodies over `max_bytes` with a 413 before they are parsed, and oversized headers with 431.

    Args:
        app: the wrapped ASGI app.
        max_bytes: the largest body accepted.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, not {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header_bytes = sum(len(key) + len(value) + 4 for key, value in scope.get("headers", ()))
        if header_bytes > MAX_HEADER_BYTES:
            refusal = f"the request headers are larger than {MAX_HEADER_BYTES} bytes"
            await _refuse(send, RequestTooLargeError(refusal, headers=True), scope)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _refuse(send, self._body_too_large(), scope)
            return
        body: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before the body was complete
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _refuse(send, self._body_too_large(), scope)
                return
            body.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _body_too_large(self) -> RequestTooLargeError:
        return RequestTooLargeError(f"the request body is larger than {self.max_bytes} bytes")


async def _refuse(send: Send, error: RequestTooLargeError, scope: Scope) -> None:
    # The rest of the request is never read: the connection cannot carry another one.
    await send_error(send, error, [(b"connection", b"close")], path=str(scope.get("path", "")))


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
