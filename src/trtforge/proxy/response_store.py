"""The stored Responses (`store: true`), in this process's memory, bounded by count, bytes and age.

What `previous_response_id`, `GET /v1/responses/{id}`, `DELETE` and `/input_items` read. Each entry holds the
Response object, the request's input items and the conversation so far as chat messages (the history the next
turn continues), kept as compact JSON: its size in bytes is what the byte limit counts.

- Oldest first out: storing past `max_responses` entries or `max_bytes` bytes evicts the oldest entries; an
  entry older than `max_age_s` is gone (removed when anything touches the store). An entry larger than
  `max_bytes` on its own is not stored.
- Scoped by owner: the digest of the API key the request carried (the empty string without one). A lookup
  under another owner finds nothing, exactly as an id that never existed, so one key never learns of another's
  responses.
- In memory: a restart loses every stored response. With several proxy workers, the workers share one store
  on disk instead (`proxy.shared_response_store`, chosen by `response_store_for`), with the same bounds and
  scope; it is lost on restart too.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from trtforge import constants


@dataclass(frozen=True)
class ResponseStoreLimits:
    """How much the store holds (`max_responses` 0: nothing is stored)."""

    max_responses: int = constants.DEFAULT_RESPONSES_STORE_MAX
    max_bytes: int = constants.DEFAULT_RESPONSES_STORE_BYTES
    max_age_s: float = constants.DEFAULT_RESPONSES_STORE_TTL_S

    def __post_init__(self) -> None:
        if self.max_responses < 0 or self.max_bytes < 1 or not self.max_age_s > 0:
            raise ValueError(f"invalid response store limits: {self}")

    @classmethod
    def widest(cls, limits: list[ResponseStoreLimits]) -> ResponseStoreLimits:
        """One store for several models: the largest of each limit."""
        if not limits:
            return cls()
        return cls(
            max_responses=max(x.max_responses for x in limits),
            max_bytes=max(x.max_bytes for x in limits),
            max_age_s=max(x.max_age_s for x in limits),
        )


@dataclass(frozen=True)
class StoredResponse:
    """One stored response, as read back."""

    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    conversation: list[dict[str, Any]]


class Responses(Protocol):
    """What the Responses API needs of a store (`ResponseStore` here, or the workers' shared one)."""

    limits: ResponseStoreLimits

    def __len__(self) -> int: ...

    @property
    def bytes(self) -> int: ...

    def put(self, owner: str, response_id: str, stored: StoredResponse) -> bool: ...

    def get(self, owner: str, response_id: str) -> StoredResponse | None: ...

    def delete(self, owner: str, response_id: str) -> bool: ...


def encode(stored: StoredResponse) -> bytes:
    """An entry as the store keeps it: compact JSON, whose length is what the byte limit counts."""
    blob = [stored.response, stored.input_items, stored.conversation]
    return json.dumps(blob, ensure_ascii=False, separators=(",", ":")).encode()


def decode(blob: bytes) -> StoredResponse:
    response, input_items, conversation = json.loads(blob)
    return StoredResponse(response, input_items, conversation)


@dataclass(frozen=True)
class _Entry:
    owner: str
    blob: bytes
    stored_at: float


def owner_of(credential: str | None) -> str:
    """The store's owner for an API key: a digest, so no key is kept in memory longer than its request."""
    if not credential:
        return ""
    return hashlib.sha256(credential.encode()).hexdigest()


class ResponseStore:
    """Stored responses by id, oldest first.

    Args:
        limits: the count, bytes and age bounds.
        clock: seconds, monotonic (tests pass their own).
    """

    def __init__(
        self, limits: ResponseStoreLimits | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits or ResponseStoreLimits()
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    @property
    def bytes(self) -> int:
        self._expire()
        return self._bytes

    def put(self, owner: str, response_id: str, stored: StoredResponse) -> bool:
        """Store (or replace) a response; False when it is not kept (store off, or larger than the limit)."""
        self._expire()
        blob = encode(stored)
        self._remove(response_id)
        if self.limits.max_responses == 0 or len(blob) > self.limits.max_bytes:
            return False
        self._entries[response_id] = _Entry(owner, blob, self._clock())
        self._bytes += len(blob)
        while len(self._entries) > self.limits.max_responses or self._bytes > self.limits.max_bytes:
            oldest = next(iter(self._entries))
            self._remove(oldest)
        return True

    def get(self, owner: str, response_id: str) -> StoredResponse | None:
        """The response stored under `response_id` by `owner`, or None (never stored, evicted, expired,
        deleted, or another owner's)."""
        self._expire()
        entry = self._entries.get(response_id)
        if entry is None or entry.owner != owner:
            return None
        return decode(entry.blob)

    def delete(self, owner: str, response_id: str) -> bool:
        """Remove `owner`'s response; False when there is none to remove."""
        self._expire()
        entry = self._entries.get(response_id)
        if entry is None or entry.owner != owner:
            return False
        self._remove(response_id)
        return True

    def _remove(self, response_id: str) -> None:
        entry = self._entries.pop(response_id, None)
        if entry is not None:
            self._bytes -= len(entry.blob)

    def _expire(self) -> None:
        horizon = self._clock() - self.limits.max_age_s
        while self._entries:
            oldest_id, oldest = next(iter(self._entries.items()))
            if oldest.stored_at > horizon:
                return
            self._remove(oldest_id)


def response_store_for(limits: ResponseStoreLimits) -> Responses:
    """The store of this proxy process: the workers' shared one when the supervisor named its directory
    (`SHARED_STORE_DIR_ENV`, several workers), else one in memory."""
    from trtforge.proxy.shared_response_store import SHARED_STORE_DIR_ENV, SharedResponseStore

    directory = os.environ.get(SHARED_STORE_DIR_ENV)
    return SharedResponseStore(directory, limits) if directory else ResponseStore(limits)
