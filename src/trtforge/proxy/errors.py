"""The proxy's one error path: the errors it answers with, and how any exception becomes the route's envelope.

Every failure leaves the proxy as OpenAI's `{"error": {"message", "type", "param", "code"}}`
(`protocol.ErrorResponse`), or on the Anthropic routes (`/v1/messages*`, see `envelope_of`) as Anthropic's
`{"type": "error", "error": {"type", "message"}}`; `error_body` builds either from the `ApiError` that
`api_error` maps the exception to, chosen by the request's path:

- a route's exception: `error_response` (the app's exception handlers); one no handler takes (a bug) reaches
  `ProxyMiddleware`, which answers with `send_error`;
- a middleware's refusal before any route runs (401, 413, 431): `send_error`, a raw ASGI response;
- an exception after a stream has started (its 200 is sent): `sse.error_frame`, then `data: [DONE]`.

An exception that is not an `ApiError` is a bug or a failure nobody anticipated: the client gets a 500
`internal server error` and nothing of the exception (its text may quote the prompt); the log gets all of it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import Send

from trtforge.errors import TrtforgeError
from trtforge.proxy.messages_protocol import AnthropicErrorInfo, AnthropicErrorResponse
from trtforge.proxy.protocol import ErrorInfo, ErrorResponse

logger = logging.getLogger(__name__)

JSON_MEDIA_TYPE = "application/json"
# The OpenAI error type of the framework's own HTTP errors (others: by their status class).
_STATUS_TYPES = {404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error"}
# Anthropic's error type by HTTP status (the SDK picks its exception class by the status; clients read the type).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    431: "request_too_large",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
ANTHROPIC_ROUTE = "/v1/messages"


class ApiError(TrtforgeError):
    """An error with an HTTP status; the message is safe to show to the client (never prompt text)."""

    status_code: int = 500
    error_type: str = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class InternalError(ApiError):
    """What the client sees of an unexpected exception: a 500 with a message that tells nothing of it."""

    def __init__(self) -> None:
        super().__init__("internal server error")


class InvalidRequestError(ApiError, ValueError):
    """The request is malformed, out of range or asks for something this server does not support."""

    status_code = 400
    error_type = "invalid_request_error"


class AuthenticationError(ApiError):
    """The request to a `/v1/` route carries no API key, or the wrong one."""

    status_code = 401
    error_type = "invalid_request_error"

    def __init__(self) -> None:
        super().__init__(
            "Incorrect or missing API key: send `Authorization: Bearer <key>`.", code="invalid_api_key"
        )


class ModelNotFoundError(ApiError, LookupError):
    """The request names a model this proxy does not serve."""

    status_code = 404
    error_type = "not_found_error"

    def __init__(self, model: str, served: str) -> None:
        super().__init__(
            f"The model `{model}` does not exist; this server serves `{served}`.",
            param="model",
            code="model_not_found",
        )


class RequestTooLargeError(ApiError):
    """The request body is larger than the proxy accepts (413), or its headers are (431)."""

    status_code = 413
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, headers: bool = False) -> None:
        super().__init__(message, code="request_too_large")
        if headers:
            self.status_code = 431


class HttpStatusError(ApiError):
    """An HTTP error of the framework's own (unknown route, wrong method) with its status."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error_type = _STATUS_TYPES.get(
            status_code, "invalid_request_error" if status_code < 500 else "server_error"
        )


class TritonUnavailableError(ApiError, ConnectionError):
    """Triton is unreachable or its model is not ready."""

    status_code = 503
    error_type = "service_unavailable"


class TritonTimeoutError(ApiError, TimeoutError):
    """Triton did not finish the request within the proxy's request timeout."""

    status_code = 504
    error_type = "timeout"


class TritonRequestError(ApiError, RuntimeError):
    """Triton answered the request with an error."""

    status_code = 500
    error_type = "server_error"


# ------------------------------------------------------------------------------------- exception → error


def api_error(exc: Exception) -> ApiError:
    """The error the client is told of for `exc` (the one mapping; an unexpected exception is logged here)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, RequestValidationError):
        return _validation_error(exc.errors())
    if isinstance(exc, StarletteHTTPException):
        return HttpStatusError(exc.status_code, str(exc.detail))
    logger.error("unexpected error: %s: %s", type(exc).__name__, exc, exc_info=exc)
    return InternalError()


def _validation_error(errors: Sequence[Any]) -> InvalidRequestError:
    """The first of pydantic's complaints about a request body, as OpenAI names it."""
    first = errors[0] if errors else {}
    # loc is ("body", field, ...); the OpenAI `param` is the field path without "body".
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    # pydantic prefixes what a validator raised ("Value error, ..."); the client needs only the reason.
    message = str(first.get("msg", "invalid request"))
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if first.get("type") == "json_invalid":
        # loc is ("body", offset): the offset of the syntax error, not a field.
        param = None
        message = f"invalid JSON in the request body at character {loc[0] if loc else '?'}"
    if param:
        message = f"{param}: {message}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problems)"
    return InvalidRequestError(message, param=param, code="invalid_value")


# ------------------------------------------------------------------------------------------- the envelope


def error_envelope(exc: ApiError) -> ErrorResponse:
    """OpenAI's error object for `exc`: the only place one is built."""
    return ErrorResponse(
        error=ErrorInfo(message=exc.message, type=exc.error_type, param=exc.param, code=exc.code)
    )


def anthropic_envelope(exc: ApiError) -> AnthropicErrorResponse:
    """Anthropic's error object for `exc` (its type from the HTTP status, as Anthropic's own are)."""
    status = exc.status_code
    kind = _ANTHROPIC_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return AnthropicErrorResponse(error=AnthropicErrorInfo(type=kind, message=exc.message))


def envelope_of(path: str) -> Literal["openai", "anthropic"]:
    """The error envelope of the route at `path`: Anthropic's on `/v1/messages` and below, else OpenAI's."""
    anthropic = path == ANTHROPIC_ROUTE or path.startswith(ANTHROPIC_ROUTE + "/")
    return "anthropic" if anthropic else "openai"


def error_body(exc: ApiError, path: str = "") -> bytes:
    """The envelope of the route at `path` as a response body (compact JSON)."""
    envelope = anthropic_envelope(exc) if envelope_of(path) == "anthropic" else error_envelope(exc)
    return envelope.model_dump_json().encode()


def error_response(exc: Exception, path: str = "") -> Response:
    """The HTTP response for an exception the route at `path` raised."""
    error = api_error(exc)
    return Response(error_body(error, path), status_code=error.status_code, media_type=JSON_MEDIA_TYPE)


async def send_error(
    send: Send, exc: ApiError, headers: Sequence[tuple[bytes, bytes]] = (), *, path: str = ""
) -> None:
    """Answer with `exc`'s envelope (the route's at `path`) straight through ASGI (middlewares, before or
    instead of the app)."""
    body = error_body(exc, path)
    await send(
        {
            "type": "http.response.start",
            "status": exc.status_code,
            "headers": [
                (b"content-type", JSON_MEDIA_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
