"""Several small httpcore connection pools behind one, each request sent through the least busy.

httpcore 1.0's pool walks all of its connections on every request and every release (polling each
idle socket), so its cost per request grows with the number of open connections: with 50 webhooks
in flight to one receiver a request cost about 1 ms of CPU against 0.4 ms with 5 in flight
(bench/webhook_client.py). Upstream fixes are open (encode/httpcore#1035). Until one lands, the
connections are split over shards of a few each; a shard keeps its own connections alive, so reuse
within a shard is unchanged.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence

import httpcore

from tasks.channels.closing import AsyncClosing

SHARD_CONNECTIONS = 8


def sharded(
    *,
    max_connections: int,
    max_keepalive_connections: int,
    ssl_context: ssl.SSLContext,
    network_backend: httpcore.AsyncNetworkBackend,
    keepalive_expiry: float | None = None,
) -> ShardedConnectionPool:
    """Pools of at most SHARD_CONNECTIONS connections each, ``max_connections`` in all."""
    count = math.ceil(max_connections / SHARD_CONNECTIONS)
    return ShardedConnectionPool(
        [
            httpcore.AsyncConnectionPool(
                ssl_context=ssl_context,
                max_connections=math.ceil(max_connections / count),
                max_keepalive_connections=math.ceil(max_keepalive_connections / count),
                keepalive_expiry=keepalive_expiry,
                network_backend=network_backend,
            )
            for _ in range(count)
        ]
    )


class ShardedConnectionPool(AsyncClosing):
    """What httpx's transport and WebhookClient use of ``httpcore.AsyncConnectionPool``, over ``shards``."""

    def __init__(self, shards: Sequence[httpcore.AsyncConnectionPool]) -> None:
        if not shards:
            raise ValueError("at least one shard is needed")
        self._shards = list(shards)
        self._in_flight = [0] * len(shards)  # requests whose response is not closed yet, per shard

    @property
    def in_flight(self) -> int:
        """Requests sent whose response has not been closed yet."""
        return sum(self._in_flight)

    @property
    def connections(self) -> list[httpcore.AsyncConnectionInterface]:
        return [connection for shard in self._shards for connection in shard.connections]

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        index = min(range(len(self._shards)), key=self._in_flight.__getitem__)
        self._in_flight[index] += 1
        release = _once(lambda: self._done(index))
        try:
            response = await self._shards[index].handle_async_request(request)
        except BaseException:
            release()
            raise
        if not isinstance(response.stream, AsyncIterable):  # an async pool's never is; nothing to wrap then
            release()
            return response
        response.stream = _ReleasingStream(response.stream, release)
        return response

    def _done(self, index: int) -> None:
        self._in_flight[index] -= 1

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()


def _once(action: Callable[[], None]) -> Callable[[], None]:
    done = False

    def run() -> None:
        nonlocal done
        if not done:
            done = True
            action()

    return run


class _ReleasingStream:
    """A response body that tells its pool when it is closed (its connection is free again then)."""

    def __init__(self, stream: AsyncIterable[bytes], release: Callable[[], None]) -> None:
        self._stream = stream
        self._release = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            close = getattr(self._stream, "aclose", None)
            if close is not None:
                await close()
        finally:
            self._release()
