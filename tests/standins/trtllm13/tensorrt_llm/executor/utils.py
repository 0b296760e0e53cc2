"""The error one request fails with (raised from its result's await or iteration)."""


class RequestError(RuntimeError):
    """A per-request error; the executor goes on serving the others."""
