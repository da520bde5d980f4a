"""Both inbox stores against the same expectations: memory, and Redis on the suite's redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis.asyncio import Redis

from tasks.inbox import InboxMessage, InboxStore, MemoryInbox, RedisInbox
from tasks.inbox.redis_store import events_channel, inbox_keys
from tests.support.waiting import eventually

TTL_S = 3600.0
Factory = Callable[..., InboxStore]


@pytest.fixture(params=["memory", "redis"])
async def make_inbox(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    """``make_inbox(max_per_user=…)``: a store of the parametrised kind, closed at the end."""
    async with AsyncExitStack() as stack:
        redis: Redis | None = None
        if request.param == "redis":
            redis = Redis.from_url(request.getfixturevalue("redis_url"))  # a clean database
            stack.push_async_callback(redis.aclose)

        def make(max_per_user: int = 200, ttl_s: float = TTL_S, subscriber_buffer: int = 100) -> InboxStore:
            store: InboxStore
            if redis is None:
                store = MemoryInbox(max_per_user=max_per_user, ttl_s=ttl_s, subscriber_buffer=subscriber_buffer)
            else:
                store = RedisInbox(redis, max_per_user=max_per_user, ttl_s=ttl_s, subscriber_buffer=subscriber_buffer)
            stack.push_async_callback(store.aclose)
            return store

        yield make


def message(n: int, *, user_id: str = "ada", delivery_id: str | None = None, **fields: Any) -> InboxMessage:
    new = InboxMessage.new(
        user_id=user_id,
        title=f"title {n}",
        body=f"body {n}",
        delivery_id=delivery_id or f"dlv_{user_id}_{n}",
        notification_id=f"ntf_{n}",
        url=f"https://example.com/{n}" if n % 2 else None,
    )
    return replace(new, **fields)


async def test_delivered_messages_list_newest_first_with_every_field(make_inbox: Factory) -> None:
    inbox = make_inbox()
    first = await inbox.deliver(message(1))
    second = await inbox.deliver(message(2))
    page = await inbox.list("ada")
    assert [m.id for m in page.items] == [second.id, first.id]
    assert page.items[1] == first
    assert (first.title, first.body, first.url, first.notification_id) == (
        "title 1",
        "body 1",
        "https://example.com/1",
        "ntf_1",
    )
    assert first.read_at is None
    assert second.url is None
    assert page.next_cursor is None
    assert page.unread == 2
    assert (await inbox.list("bob")).items == []


async def test_each_user_keeps_only_the_newest_max_per_user(make_inbox: Factory) -> None:
    inbox = make_inbox(max_per_user=3)
    for n in range(5):
        await inbox.deliver(message(n))
        assert len((await inbox.list("ada")).items) == min(n + 1, 3)  # after every delivery, not only the last
    await inbox.deliver(message(9, user_id="bob"))
    page = await inbox.list("ada")
    assert [m.title for m in page.items] == ["title 4", "title 3", "title 2"]
    assert page.unread == 3
    assert [m.title for m in (await inbox.list("bob")).items] == ["title 9"]
    # a dropped message's delivery id is forgotten with it: nothing else of it is kept
    assert await inbox.mark_read("ada", page.items[0].id) is not None


async def test_a_retried_delivery_stores_nothing_and_announces_nothing(make_inbox: Factory) -> None:
    inbox = make_inbox()
    with await inbox.subscribe("ada") as feed:
        first = await inbox.deliver(message(1, delivery_id="dlv_same"))
        again = await inbox.deliver(message(2, delivery_id="dlv_same"))  # a new msg id, as a retry would make
        other = await inbox.deliver(message(3))
        assert again == first
        assert [m.id for m in (await inbox.list("ada")).items] == [other.id, first.id]
        assert await feed.next(5) == first
        assert await feed.next(5) == other  # not the retry


async def test_cursor_pages_have_no_gaps_or_duplicates_even_at_one_timestamp(make_inbox: Factory) -> None:
    inbox = make_inbox()
    same_time = datetime.now(UTC)
    delivered = [await inbox.deliver(message(n, created_at=same_time)) for n in range(7)]
    assert len({m.position for m in delivered}) == 7
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await inbox.list("ada", cursor=cursor, limit=3)
        seen += [m.id for m in page.items]
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [m.id for m in reversed(delivered)]
    assert pages == 3
    exact = await inbox.list("ada", limit=7)
    assert exact.next_cursor is None  # no empty last page


async def test_unread_filter_mark_read_and_mark_all_read(make_inbox: Factory) -> None:
    inbox = make_inbox()
    ms = [await inbox.deliver(message(n)) for n in range(4)]
    read = await inbox.mark_read("ada", ms[1].id)
    assert read is not None
    assert read.read_at is not None
    assert read.id == ms[1].id
    again = await inbox.mark_read("ada", ms[1].id)
    assert again is not None
    assert again.read_at == read.read_at
    assert await inbox.unread_count("ada") == 3
    unread = await inbox.list("ada", unread_only=True, limit=2)
    assert [m.id for m in unread.items] == [ms[3].id, ms[2].id]
    rest = await inbox.list("ada", unread_only=True, cursor=unread.next_cursor)
    assert [m.id for m in rest.items] == [ms[0].id]
    assert rest.next_cursor is None
    assert await inbox.mark_all_read("ada") == 3
    assert await inbox.mark_all_read("ada") == 0
    assert await inbox.unread_count("ada") == 0
    listed = (await inbox.list("ada")).items
    assert all(m.read_at is not None for m in listed)
    assert listed[2].read_at == read.read_at
    assert (await inbox.list("ada", unread_only=True)).items == []


async def test_mark_read_of_a_message_the_user_does_not_have_is_none(make_inbox: Factory) -> None:
    inbox = make_inbox()
    theirs = await inbox.deliver(message(1, user_id="bob"))
    assert await inbox.mark_read("ada", theirs.id) is None
    assert await inbox.mark_read("bob", "msg_" + "0" * 32) is None
    assert await inbox.unread_count("bob") == 1


async def test_messages_older_than_the_ttl_are_neither_listed_nor_counted(make_inbox: Factory) -> None:
    inbox = make_inbox(ttl_s=60)
    await inbox.deliver(message(1, created_at=datetime.now(UTC) - timedelta(minutes=5)))
    fresh = await inbox.deliver(message(2))
    assert [m.id for m in (await inbox.list("ada")).items] == [fresh.id]
    assert await inbox.unread_count("ada") == 1
    assert await inbox.mark_all_read("ada") == 1


async def test_since_replays_what_came_after_a_position(make_inbox: Factory) -> None:
    inbox = make_inbox()
    ms = [await inbox.deliver(message(n)) for n in range(3)]
    assert [m.id for m in await inbox.since("ada", ms[0].position)] == [ms[1].id, ms[2].id]
    assert await inbox.since("ada", ms[2].position) == []


async def test_a_feed_gets_only_its_users_new_messages_until_closed(make_inbox: Factory) -> None:
    inbox = make_inbox()
    feed = await inbox.subscribe("ada")
    await inbox.deliver(message(1, user_id="bob"))
    mine = await inbox.deliver(message(2))
    assert await feed.next(5) == mine
    assert await feed.next(0.05) is None
    feed.close()
    assert feed.ended
    await inbox.deliver(message(3))
    assert [m async for m in feed] == []


async def test_a_subscriber_that_falls_behind_is_dropped_after_what_it_buffered(make_inbox: Factory) -> None:
    inbox = make_inbox(subscriber_buffer=2)
    feed = await inbox.subscribe("ada")
    sent = [await inbox.deliver(message(n)) for n in range(4)]

    await eventually(lambda: feed.overflowed, what="the third message to overflow the feed")
    assert [m async for m in feed] == sent[:2]
    assert feed.ended


async def test_closing_streams_ends_feeds_and_refuses_new_ones(make_inbox: Factory) -> None:
    from core.errors import BackendUnavailableError

    inbox = make_inbox()
    feed = await inbox.subscribe("ada")
    inbox.close_streams()
    assert feed.ended
    with pytest.raises(BackendUnavailableError):
        await inbox.subscribe("ada")
    assert (await inbox.deliver(message(1))).title == "title 1"  # storing still works during the drain


async def test_redis_keys_expire_with_the_record_ttl(redis_client: Redis) -> None:
    inbox = RedisInbox(redis_client, max_per_user=5, ttl_s=120)
    stored = await inbox.deliver(message(1))
    await inbox.deliver(message(2))
    await inbox.mark_read("ada", stored.id)  # every key exists: one message read, one unread
    for key in inbox_keys("ada"):
        ttl_ms = await redis_client.pttl(key)
        assert 110_000 < ttl_ms <= 120_000, (key, ttl_ms)
    assert all(key.startswith("herald:inbox:{ada}:") for key in inbox_keys("ada"))


async def test_a_message_stored_by_another_instance_reaches_a_feed(redis_url: str) -> None:
    web_client, worker_client = Redis.from_url(redis_url), Redis.from_url(redis_url)
    web = RedisInbox(web_client, max_per_user=10, ttl_s=TTL_S)
    worker = RedisInbox(worker_client, max_per_user=10, ttl_s=TTL_S)
    try:
        feed = await web.subscribe("ada")
        assert (await web_client.pubsub_numsub(events_channel("ada")))[0][1] == 1
        stored = await worker.deliver(message(1))
        assert await feed.next(5) == stored
        feed.close()

        async def unsubscribed() -> bool:
            return bool((await web_client.pubsub_numsub(events_channel("ada")))[0][1] == 0)

        await eventually(unsubscribed, what="the last feed's close to UNSUBSCRIBE")
        again = await web.subscribe("ada")  # and subscribing again works
        assert (await worker.deliver(message(2))).id == (await again.next(5) or stored).id
    finally:
        await web.aclose()
        await worker.aclose()
        await web_client.aclose()
        await worker_client.aclose()
