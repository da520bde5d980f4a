"""The webhook sender's sharded connection pool, against a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpcore
import pytest

from core.config import Settings
from tasks.channels.sharded_pool import SHARD_CONNECTIONS
from tasks.channels.webhook_client import WebhookClient
from tasks.resources import WEBHOOK_CONNECTIONS, build_webhook_sender
from tests.support.receiver import Receiver, Reply
from tests.support.smtp import free_port
from tests.support.waiting import eventually

SettingsFactory = Callable[..., Settings]
CONCURRENT = 5 * SHARD_CONNECTIONS  # more than one shard can carry


async def post_all(client: WebhookClient, url: str, count: int) -> list[int]:
    replies = await asyncio.gather(*(client.post(url, b"{}", {}, read_at_most=lambda _: 64) for _ in range(count)))
    return [reply.status for reply in replies]


async def test_concurrent_requests_each_get_a_connection_and_keep_it(
    make_settings: SettingsFactory, receiver: Receiver
) -> None:
    # Slow replies keep every request in flight together: were they not spread over the shards, one
    # shard's few connections would carry them all in turn.
    receiver.default = Reply(delay_s=0.3)
    async with build_webhook_sender(make_settings(WEBHOOK_ALLOW_PRIVATE=True)) as client:
        assert await post_all(client, receiver.url("/wide"), CONCURRENT) == [200] * CONCURRENT
        first_round = {r.client for r in receiver.received("/wide")}
        assert len(first_round) == CONCURRENT
        # All were kept alive (httpcore evicts idle ones when a pool holds more than its keep-alive limit).
        assert await post_all(client, receiver.url("/wide"), CONCURRENT) == [200] * CONCURRENT
        assert {r.client for r in receiver.received("/wide")} == first_round
        assert len(client.pool.connections) == CONCURRENT
        assert client.pool.in_flight == 0


async def test_failed_requests_give_their_place_back(make_settings: SettingsFactory, receiver: Receiver) -> None:
    async with build_webhook_sender(make_settings(WEBHOOK_ALLOW_PRIVATE=True)) as client:
        pool = client.pool
        closed_port = free_port()
        for _ in range(WEBHOOK_CONNECTIONS + 1):  # more failures than the pool has places
            with pytest.raises(httpcore.ConnectError):
                await client.post(f"http://127.0.0.1:{closed_port}/", b"{}", {}, read_at_most=lambda _: 0)
        assert pool.in_flight == 0
        receiver.script("/slow", Reply(delay_s=0.5))
        sending = asyncio.create_task(client.post(receiver.url("/slow"), b"{}", {}, read_at_most=lambda _: 64))
        await eventually(lambda: len(receiver.received("/slow")) == 1, what="the receiver to get the request")
        assert pool.in_flight == 1
        assert (await sending).status == 200
        assert pool.in_flight == 0
        assert await post_all(client, receiver.url("/after"), CONCURRENT) == [200] * CONCURRENT
