"""The bounds of the proxy's store of Responses as flags, shared by `proxy` and `up`.

`--responses-store-max` (responses), `--responses-store-bytes` (a size: plain bytes or 64MiB, 1GB, ...) and
`--responses-store-ttl` (seconds, or a duration: 90s, 30m, 24h, 7d). Each is read as text and checked here,
so that a bad value is one line naming the flag (and nothing is built or started).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

import typer

from trtforge import constants
from trtforge.errors import UsageError
from trtforge.gpu import parse_memory_size

_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

StoreMax = Annotated[
    str,
    typer.Option(
        "--responses-store-max",
        metavar="COUNT",
        help="How many stored Responses (store: true, for previous_response_id) the proxy keeps in memory; "
        "past it the oldest are evicted.",
    ),
]
StoreBytes = Annotated[
    str,
    typer.Option(
        "--responses-store-bytes",
        metavar="SIZE",
        help="The most memory the stored Responses take (their JSON), e.g. 64MiB or 67108864; past it the "
        "oldest are evicted.",
    ),
]
StoreTtl = Annotated[
    str,
    typer.Option(
        "--responses-store-ttl",
        metavar="DURATION",
        help="How long a stored Response is kept: seconds, or a duration such as 90m, 24h or 7d.",
    ),
]
STORE_MAX = str(constants.DEFAULT_RESPONSES_STORE_MAX)
STORE_BYTES = f"{constants.DEFAULT_RESPONSES_STORE_BYTES >> 20}MiB"
STORE_TTL = f"{constants.DEFAULT_RESPONSES_STORE_TTL_S / 3600:g}h"


@dataclass(frozen=True)
class StoreBounds:
    """The three bounds, checked: each at least 1."""

    max_responses: int
    max_bytes: int
    max_age_s: float


def _count(value: str) -> int:
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise UsageError(
            f"--responses-store-max takes a whole number of responses (at least 1, e.g. 1024), not {value!r}"
        )
    return int(text)


def _size(value: str) -> int:
    try:
        size = parse_memory_size(value)
    except UsageError:
        size = 0
    if size < 1:
        raise UsageError(
            f"--responses-store-bytes takes a size of at least 1 byte (e.g. 64MiB or 67108864), not {value!r}"
        )
    return size


def _duration(value: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", value.lower())
    seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)] if match else 0.0
    if not seconds > 0:
        raise UsageError(
            f"--responses-store-ttl takes a duration above 0 (seconds, or e.g. 90m, 24h, 7d), not {value!r}"
        )
    return seconds


def store_bounds(max_responses: str, max_bytes: str, ttl: str) -> StoreBounds:
    """The flags' values, checked (a `UsageError` naming the flag otherwise)."""
    return StoreBounds(_count(max_responses), _size(max_bytes), _duration(ttl))
