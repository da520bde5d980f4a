"""The HTTP client webhooks are POSTed with: httpcore's pools, guarded and sharded, without httpx's client.

httpx.AsyncClient wraps every request in what a webhook POST never uses (base-URL merging, cookies,
auth and redirect flows, event hooks, header defaults), and that layer cost about a third of each
request's CPU (bench/webhook_client.py). URLs are still parsed by httpx, so hosts are IDNA-encoded and
paths quoted exactly as before; connections go through the same SSRF guard (tasks/channels/netguard.py).

The client also keeps, per process, how many sends each host has in flight (``host_slot``), so one slow
or hanging receiver cannot take every worker: a send to a host already at ``max_per_host`` is refused at
once (``HostBusyError``) rather than queued, and the delivery comes back later (DeferJob).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import httpcore
import httpx

from tasks.channels.closing import AsyncClosing
from tasks.channels.netguard import GuardedNetworkBackend
from tasks.channels.sharded_pool import ShardedConnectionPool, sharded

DEFAULT_PORTS = {b"http": 80, b"https": 443}


class DeadlineExceeded(httpcore.TimeoutException):
    """The whole exchange, from waiting for a connection to the last byte read, took longer than ``timeout_s``.

    httpcore's own timeouts bound each socket operation, not their sum: a receiver dripping a byte of its
    headers or body just inside the read timeout would hold the request for as long as it liked.
    """


class HostBusyError(Exception):
    """``host`` already has ``in_flight`` sends in flight, its limit: nothing was sent."""

    def __init__(self, host: str, in_flight: int) -> None:
        super().__init__(f"{host} has {in_flight} sends in flight")
        self.host = host
        self.in_flight = in_flight


def host_key(url: str) -> str:
    """What the per-host limit counts by: ``scheme://host:port``, lower-cased, the default port spelled out.

    The host as the URL names it (IDNA-encoded), not the address it resolves to. Raises ``httpx.InvalidURL``.
    """
    target = httpx.URL(url)
    if target.raw_scheme not in DEFAULT_PORTS or not target.raw_host:
        raise httpx.InvalidURL(f"not an http(s) URL with a host: {url!r}")
    host = target.raw_host.decode("ascii").lower()
    port = target.port if target.port is not None else DEFAULT_PORTS[target.raw_scheme]
    return f"{target.raw_scheme.decode('ascii')}://{f'[{host}]' if ':' in host else host}:{port}"


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: Mapping[str, str]  # names lower-cased; a repeated header keeps its last value
    body: bytes  # at most what the caller asked to read

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300

    @property
    def is_redirect(self) -> bool:
        return self.status in (301, 302, 303, 307, 308) and "location" in self.headers


class WebhookClient(AsyncClosing):
    """POSTs a body and reads at most part of the answer; never follows redirects.

    Each request, all of it, takes at most ``timeout_s`` (``DeadlineExceeded`` after that). Raises
    ``httpx.InvalidURL`` for a URL that cannot be sent to, the guard's ``ForbiddenDestinationError``, and
    httpcore's own errors (``httpcore.TimeoutException`` and the rest).

    ``max_per_host`` bounds the sends to one host (``host_key``) made under ``host_slot``; ``post`` itself
    does not count (the pool's own tests and benchmarks drive it directly).

    ``guard`` replaces the ``GuardedNetworkBackend(allow_private=allow_private)`` built by default (tests
    give one with their own resolver and dialler).
    """

    def __init__(
        self,
        *,
        allow_private: bool,
        timeout_s: float,
        max_connections: int,
        max_per_host: int,
        guard: GuardedNetworkBackend | None = None,
    ) -> None:
        if max_per_host < 1:
            raise ValueError("max_per_host must be at least 1")
        self.max_per_host = max_per_host
        self._in_flight: dict[str, int] = {}  # host_key -> sends holding a slot; no entry at zero
        self._pool = sharded(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            ssl_context=httpx.create_ssl_context(trust_env=False),
            network_backend=guard or GuardedNetworkBackend(allow_private=allow_private),
        )
        self._timeout_s = timeout_s
        self._timeouts = {"connect": timeout_s, "read": timeout_s, "write": timeout_s, "pool": timeout_s}

    @property
    def pool(self) -> ShardedConnectionPool:
        return self._pool

    def in_flight(self, url: str) -> int:
        """Sends to ``url``'s host holding a slot now."""
        return self._in_flight.get(host_key(url), 0)

    @contextmanager
    def host_slot(self, url: str) -> Iterator[str]:
        """Hold one of ``url``'s host's ``max_per_host`` slots for the block; yields the host's key.

        Raises ``HostBusyError`` at once, holding nothing, when all are taken (never waits for one), and
        ``httpx.InvalidURL``. The slot is given back however the block ends, cancellation included.
        """
        key = host_key(url)
        taken = self._in_flight.get(key, 0)
        if taken >= self.max_per_host:
            raise HostBusyError(key, taken)
        self._in_flight[key] = taken + 1  # no await between the check and this: one event loop, no race
        try:
            yield key
        finally:
            left = self._in_flight[key] - 1
            if left:
                self._in_flight[key] = left
            else:  # a process sends to many hosts over time: keep only the busy ones
                del self._in_flight[key]

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], *, read_at_most: Callable[[int], int]
    ) -> Reply:
        """POST ``body``; of the answer, read ``read_at_most(status)`` bytes of its body at most."""
        target = httpx.URL(url)
        if target.raw_scheme not in DEFAULT_PORTS or not target.raw_host:
            raise httpx.InvalidURL(f"not an http(s) URL with a host: {url!r}")
        request = httpcore.Request(
            b"POST",
            httpcore.URL(scheme=target.raw_scheme, host=target.raw_host, port=target.port, target=target.raw_path),
            headers=[*_request_headers(target, len(body)), *headers.items()],
            content=body,
            extensions={"timeout": self._timeouts},
        )
        try:
            async with asyncio.timeout(self._timeout_s) as deadline:
                return await self._exchange(request, read_at_most)
        except TimeoutError as exc:
            if not deadline.expired():
                raise
            raise DeadlineExceeded(f"no complete answer within {self._timeout_s:g}s") from exc

    async def _exchange(self, request: httpcore.Request, read_at_most: Callable[[int], int]) -> Reply:
        response = await self._pool.handle_async_request(request)
        try:
            limit = read_at_most(response.status)
            received = bytearray()
            if limit > 0:
                async for chunk in response.aiter_stream():
                    received.extend(chunk)
                    if len(received) >= limit:
                        break
        finally:
            await response.aclose()
        answer = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in response.headers}
        return Reply(response.status, answer, bytes(received[:limit]))

    async def aclose(self) -> None:
        await self._pool.aclose()


def _request_headers(url: httpx.URL, length: int) -> list[tuple[bytes, bytes]]:
    """What httpx would have added: Host (with a non-default port), Content-Length, Basic auth from the URL."""
    host = url.raw_host if url.port is None else url.raw_host + b":%d" % url.port
    headers = [(b"host", host), (b"content-length", b"%d" % length)]
    if url.userinfo:
        credentials = f"{url.username}:{url.password}".encode()
        headers.append((b"authorization", b"Basic " + base64.b64encode(credentials)))
    return headers
