"""Errors the proxy answers with, each carrying its HTTP status and OpenAI error type.

Every failure leaves the proxy as the one envelope `{"error": {"message", "type", "param", "code"}}`
(see `protocol.ErrorResponse`); the app's exception handlers are the only place that does the conversion.
"""

from __future__ import annotations

from trtforge.errors import TrtforgeError


class ApiError(TrtforgeError):
    """An error with an HTTP status; the message is safe to show to the client (never prompt text)."""

    status_code: int = 500
    error_type: str = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class InvalidRequestError(ApiError, ValueError):
    """The request is malformed, out of range or asks for something this server does not support."""

    status_code = 400
    error_type = "invalid_request_error"


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
