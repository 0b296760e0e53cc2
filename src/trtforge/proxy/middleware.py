"""ASGI middleware of the proxy: request ids and the optional API key.

Plain ASGI rather than starlette's `BaseHTTPMiddleware`, which wraps `receive` and would hide the client's
`http.disconnect` from the routes that cancel generations on it.

- `X-Request-Id`: a client's id (printable ASCII, at most 128 characters) is kept, otherwise one is made; it is
  echoed on every response, becomes the Triton request id and the response's `id` suffix.
- API key: when set, every `/v1/` route needs `Authorization: Bearer <key>` or `x-api-key: <key>` (what older
  `anthropic` SDKs send); a missing or wrong key is a 401 in the route's envelope. `/health` and `/metrics` stay open (probes and scrapers carry no key). The key is compared
  in constant time and never logged.
- The last resort: an exception no exception handler of the app took (not an `ApiError`: a bug) becomes the 500
  envelope here, inside the request id's reach, rather than in starlette's outermost error middleware.
"""

from __future__ import annotations

import hmac
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trtforge.proxy.errors import AuthenticationError, api_error, send_error

REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID_CHARS = 128
_PROTECTED_PREFIX = "/v1/"


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


def _usable_request_id(raw: bytes | None) -> str | None:
    if raw is None or not 0 < len(raw) <= MAX_REQUEST_ID_CHARS:
        return None
    text = raw.decode("latin-1")
    return text if all(" " < ch < "\x7f" for ch in text) else None


class ProxyMiddleware:
    """Assigns the request id, echoes it, and checks the API key of `/v1/` routes.

    Args:
        app: the wrapped ASGI app.
        api_key: the key clients must send; None serves without authentication.
    """

    def __init__(self, app: ASGIApp, *, api_key: str | None = None) -> None:
        self.app = app
        self._api_key = api_key.encode() if api_key else None

    def __repr__(self) -> str:  # never show the key
        return f"ProxyMiddleware(api_key={'set' if self._api_key else 'unset'})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _usable_request_id(_header(scope, b"x-request-id")) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        echo = (REQUEST_ID_HEADER.encode(), request_id.encode())
        path = str(scope.get("path", ""))

        if not self._authorized(scope):
            await send_error(send, AuthenticationError(), [echo, (b"www-authenticate", b"Bearer")], path=path)
            return
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", ()), echo]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if started:  # the status is sent: only the server closing the connection can tell the client
                raise
            await send_error(send_with_id, api_error(exc), path=path)

    def _authorized(self, scope: Scope) -> bool:
        if self._api_key is None or not str(scope.get("path", "")).startswith(_PROTECTED_PREFIX):
            return True
        value = _header(scope, b"authorization") or b""
        scheme, _, token = value.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._api_key):
            return True
        key = _header(scope, b"x-api-key")
        return key is not None and hmac.compare_digest(key.strip(), self._api_key)
