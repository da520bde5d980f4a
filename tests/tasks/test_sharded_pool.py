"""The webhook client's sharded connection pool, against a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from core.config import Settings
from tasks.channels.netguard import SHARD_CONNECTIONS
from tasks.channels.sharded_pool import ShardedConnectionPool
from tasks.resources import WEBHOOK_CONNECTIONS, build_webhook_client
from tests.support.receiver import Receiver, Reply
from tests.support.smtp import free_port

SettingsFactory = Callable[..., Settings]
CONCURRENT = 5 * SHARD_CONNECTIONS  # more than one shard can carry


def sharded_pool(client: httpx.AsyncClient) -> ShardedConnectionPool:
    pool = client._transport._pool  # type: ignore[attr-defined]
    assert isinstance(pool, ShardedConnectionPool)
    return pool


async def post_all(client: httpx.AsyncClient, url: str, count: int) -> list[int]:
    responses = await asyncio.gather(*(client.post(url, content=b"{}") for _ in range(count)))
    return [response.status_code for response in responses]


async def test_concurrent_requests_each_get_a_connection_and_keep_it(
    make_settings: SettingsFactory, receiver: Receiver
) -> None:
    # Slow replies keep every request in flight together: were they not spread over the shards, one
    # shard's few connections would carry them all in turn.
    receiver.default = Reply(delay_s=0.3)
    async with build_webhook_client(make_settings(WEBHOOK_ALLOW_PRIVATE=True)) as client:
        pool = sharded_pool(client)
        assert await post_all(client, receiver.url("/wide"), CONCURRENT) == [200] * CONCURRENT
        first_round = {r.client for r in receiver.received("/wide")}
        assert len(first_round) == CONCURRENT
        # All were kept alive (httpcore evicts idle ones when a pool holds more than its keep-alive limit).
        assert await post_all(client, receiver.url("/wide"), CONCURRENT) == [200] * CONCURRENT
        assert {r.client for r in receiver.received("/wide")} == first_round
        assert len(pool.connections) == CONCURRENT
        assert pool.in_flight == 0


async def test_failed_requests_give_their_place_back(make_settings: SettingsFactory, receiver: Receiver) -> None:
    async with build_webhook_client(make_settings(WEBHOOK_ALLOW_PRIVATE=True)) as client:
        pool = sharded_pool(client)
        closed_port = free_port()
        for _ in range(WEBHOOK_CONNECTIONS + 1):  # more failures than the pool has places
            with pytest.raises(httpx.ConnectError):
                await client.post(f"http://127.0.0.1:{closed_port}/", content=b"{}")
        assert pool.in_flight == 0
        async with client.stream("POST", receiver.url("/streamed"), content=b"{}") as response:
            assert pool.in_flight == 1  # a response holds its connection until it is closed
            await response.aread()
        assert pool.in_flight == 0
        assert await post_all(client, receiver.url("/after"), CONCURRENT) == [200] * CONCURRENT
