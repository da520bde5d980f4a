"""GET /users/{id}/inbox/stream on a real uvicorn (httpx's ASGITransport buffers whole responses)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from redis.asyncio import Redis

from api.__main__ import HeraldServer
from api.app import create_app
from core.config import Settings
from tasks.inbox import InboxMessage, InboxStore, RedisInbox
from tasks.inbox.redis_store import events_channel
from tests.support.waiting import eventually

DEADLINE_S = 10.0


@dataclass
class Served:
    app: FastAPI
    server: HeraldServer
    task: asyncio.Task[None]
    url: str

    @property
    def inbox(self) -> InboxStore:
        store: InboxStore = self.app.state.inbox
        return store


@pytest.fixture
def serve(make_settings: Callable[..., Settings]) -> Callable[..., Any]:
    """``async with serve(**settings) as served``: the app on uvicorn at a free port, as ``python -m api`` runs it."""

    @asynccontextmanager
    async def run(**overrides: Any) -> AsyncIterator[Served]:
        app = create_app(make_settings(**overrides))
        # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on a socket that says it is TCP (else ~40 ms a reply)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(app, log_config=None, ws="none", lifespan="on", timeout_graceful_shutdown=30)
        server = HeraldServer(config, app)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        await eventually(lambda: server.started or task.done(), timeout_s=DEADLINE_S, what="uvicorn to start")
        try:
            yield Served(app, server, task, f"http://127.0.0.1:{sock.getsockname()[1]}")
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, DEADLINE_S)
            sock.close()

    return run


class Events:
    """The events of one open stream, read line by line."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self) -> dict[str, str]:
        """The next block (an event, or a comment as ``{"comment": …}``), within DEADLINE_S."""
        block: dict[str, str] = {}
        while True:
            line = await asyncio.wait_for(anext(self._lines), DEADLINE_S)
            if line == "":
                if block:
                    return block
                continue
            field, _, value = line.partition(":")
            block[field or "comment"] = value.strip()

    async def next_message(self) -> dict[str, str]:
        while "event" not in (block := await self.next()):
            pass
        return block


@asynccontextmanager
async def opened(url: str, user_id: str = "user_42", **headers: str) -> AsyncIterator[Events]:
    async with (
        httpx.AsyncClient(base_url=url, timeout=DEADLINE_S) as client,
        client.stream("GET", f"/users/{user_id}/inbox/stream", headers=headers) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = Events(response)
        assert (await events.next()) == {"retry": "3000", "comment": "live"}  # subscribed from here on
        yield events


def new(n: int, user_id: str = "user_42") -> InboxMessage:
    return InboxMessage.new(user_id=user_id, title=f"t{n}", body=f"b{n}", delivery_id=f"dlv_{user_id}_{n}")


def arq(redis_url: str, **more: Any) -> dict[str, Any]:
    return {"TASK_BACKEND": "arq", "REDIS_URL": redis_url, "WORKER_MODE": "separate", **more}


async def test_in_process_a_message_stored_after_connecting_is_streamed(serve: Any) -> None:
    async with serve(INBOX_HEARTBEAT_S=0.2) as served, opened(served.url) as events:
        stored = await served.inbox.deliver(new(1))
        await served.inbox.deliver(new(2, user_id="someone_else"))
        event = await events.next_message()
        assert event["event"] == "message"
        assert event["id"] == str(stored.position)
        assert '"title":"t1"' in event["data"]
        assert f'"id":"{stored.id}"' in event["data"]
        assert await events.next() == {"comment": "heartbeat"}  # and nothing of someone else's


async def test_arq_a_message_stored_by_a_separate_client_reaches_the_stream(serve: Any, redis_url: str) -> None:
    worker_redis = Redis.from_url(redis_url)
    worker_inbox = RedisInbox(worker_redis, max_per_user=10, ttl_s=60)  # as tasks/worker.py would build it
    try:
        async with serve(**arq(redis_url)) as served, opened(served.url) as events:
            stored = await worker_inbox.deliver(new(1))
            event = await events.next_message()
            assert event["id"] == str(stored.position)
            assert f'"delivery_id":"{stored.delivery_id}"' in event["data"]
    finally:
        await worker_inbox.aclose()
        await worker_redis.aclose()


async def test_two_web_instances_on_one_redis_share_the_stream(serve: Any, redis_url: str) -> None:
    async with serve(**arq(redis_url)) as one, serve(**arq(redis_url)) as other, opened(other.url) as events:
        stored = await one.inbox.deliver(new(1))
        assert (await events.next_message())["id"] == str(stored.position)


async def test_last_event_id_replays_what_was_stored_since(serve: Any, backend_settings: dict[str, Any]) -> None:
    settings = {**backend_settings, "WORKER_MODE": "separate"} if "REDIS_URL" in backend_settings else {}
    async with serve(**settings) as served:
        first, second, third = [await served.inbox.deliver(new(n)) for n in range(3)]
        async with opened(served.url, **{"Last-Event-ID": str(first.position)}) as events:
            assert (await events.next_message())["id"] == str(second.position)
            assert (await events.next_message())["id"] == str(third.position)
            live = await served.inbox.deliver(new(3))
            assert (await events.next_message())["id"] == str(live.position)


async def test_a_client_leaving_ends_its_subscription(serve: Any, redis_url: str) -> None:
    async with serve(**arq(redis_url)) as served:
        redis: Redis = Redis.from_url(redis_url)
        try:

            async def subscribers() -> int:
                return int((await redis.pubsub_numsub(events_channel("user_42")))[0][1])

            async with opened(served.url):
                assert await subscribers() == 1
                assert served.inbox.subscribers() == 1
            await eventually(lambda: served.inbox.subscribers() == 0, what="the stream's feed to close")

            async def unsubscribed() -> bool:
                return await subscribers() == 0

            await eventually(unsubscribed, what="Redis to see the UNSUBSCRIBE")
        finally:
            await redis.aclose()


async def test_in_process_a_client_leaving_ends_its_feed(serve: Any) -> None:
    async with serve() as served:
        async with opened(served.url):
            assert served.inbox.subscribers() == 1
        await eventually(lambda: served.inbox.subscribers() == 0, what="the stream's feed to close")


async def test_shutdown_with_an_open_stream_ends_it_and_completes(serve: Any, backend_settings: dict[str, Any]) -> None:
    settings = {**backend_settings, "WORKER_MODE": "separate"} if "REDIS_URL" in backend_settings else {}
    async with serve(**settings) as served, opened(served.url) as events:
        served.server.should_exit = True  # what SIGTERM does
        # uvicorn would wait timeout_graceful_shutdown (30 s here) for the stream; it must not need to
        await asyncio.wait_for(asyncio.shield(served.task), 3.0)
        with pytest.raises((StopAsyncIteration, httpx.RemoteProtocolError)):
            await events.next()
