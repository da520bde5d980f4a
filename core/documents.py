"""Small JSON documents stored beside the jobs (e.g. a notification), each with a time to live."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Document:
    """A JSON-able value under ``key``, written atomically with the jobs it belongs to."""

    key: str
    value: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Claim:
    """Set ``key`` to ``value`` for ``ttl_s`` unless it already holds a value (SET NX)."""

    key: str
    value: dict[str, Any]
    ttl_s: float


class DocumentStore(Protocol):
    async def get(self, key: str) -> dict[str, Any] | None: ...

    async def get_many(self, keys: list[str]) -> list[dict[str, Any] | None]: ...

    async def delete(self, *keys: str) -> None: ...

    async def replace(self, key: str, value: dict[str, Any]) -> bool:
        """Set the value of an existing document, keeping its time to live; False if there is none."""
        ...


class MemoryDocumentStore:
    """Documents in a dict, bounded by count (oldest first out) and by age.

    Claims (idempotency keys) are kept apart, bounded by their TTL and a far larger count, so a
    burst of documents can never push out a key that must live its full TTL.
    """

    def __init__(self, *, max_documents: int, ttl_s: float, max_claims: int | None = None) -> None:
        self._items: OrderedDict[str, tuple[dict[str, Any], float]] = OrderedDict()
        self._claims: OrderedDict[str, tuple[dict[str, Any], float]] = OrderedDict()
        self._max = max_documents
        self._max_claims = max_claims if max_claims is not None else max_documents * 100
        self._ttl_s = ttl_s

    def put(self, key: str, value: dict[str, Any], ttl_s: float | None = None) -> None:
        now = _now_s()
        self._items.pop(key, None)
        self._items[key] = (value, now + (ttl_s if ttl_s is not None else self._ttl_s))
        while self._items:
            _, oldest_expiry = next(iter(self._items.values()))
            if len(self._items) <= self._max and oldest_expiry > now:
                break
            self._items.popitem(last=False)

    def claim(self, claim: Claim) -> dict[str, Any] | None:
        """Claim atomically (nothing awaits in between); return the live value if already claimed."""
        now = _now_s()
        existing = self._claims.get(claim.key)
        if existing is not None and existing[1] > now:
            return existing[0]
        self._claims.pop(claim.key, None)
        self._claims[claim.key] = (claim.value, now + claim.ttl_s)
        while self._claims:  # claims share one TTL, so the oldest expires first
            _, oldest_expiry = next(iter(self._claims.values()))
            if len(self._claims) <= self._max_claims and oldest_expiry > now:
                break
            self._claims.popitem(last=False)
        return None

    async def get(self, key: str) -> dict[str, Any] | None:
        return self._live(key)

    async def get_many(self, keys: list[str]) -> list[dict[str, Any] | None]:
        return [self._live(key) for key in keys]

    async def delete(self, *keys: str) -> None:
        for key in keys:
            self._items.pop(key, None)
            self._claims.pop(key, None)

    async def replace(self, key: str, value: dict[str, Any]) -> bool:
        item = self._items.get(key)
        if item is None or item[1] <= _now_s():
            return False
        self._items[key] = (value, item[1])
        return True

    def peek(self, key: str) -> dict[str, Any] | None:
        """``get`` without awaiting, for checks that must not be interleaved with other tasks."""
        return self._live(key)

    def purge(self) -> int:
        """Evict every expired document now (reads already skip them); how many went.

        ``put`` only evicts from the oldest end, so an expired short-lived claim can sit behind a
        longer-lived document until this runs.
        """
        now = _now_s()
        expired = [key for key, (_, expires_at) in self._items.items() if expires_at <= now]
        for key in expired:
            del self._items[key]
        return len(expired)

    def __len__(self) -> int:
        return len(self._items)

    def _live(self, key: str) -> dict[str, Any] | None:
        item = self._items.get(key) or self._claims.get(key)
        if item is None or item[1] <= _now_s():
            return None
        return item[0]


def _now_s() -> float:
    return time.time()  # what datetime.now(UTC).timestamp() gives, without building a datetime (a tenth of the cost)
