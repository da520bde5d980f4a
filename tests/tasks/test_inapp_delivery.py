"""send_inapp as the runners call it: with a real inbox store (memory, and Redis as an arq worker has it)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from core.config import Settings
from core.jobs import JobState
from tasks.delivery import send_inapp
from tasks.inbox import InboxStore, MemoryInbox, RedisInbox
from tasks.messages import Channel
from tasks.registry import INAPP_MAX_ATTEMPTS, TASK_FOR_CHANNEL, build_registry
from tests.tasks.helpers import deliver, delivery_context, inline_runner, make_payload

SettingsFactory = Callable[..., Settings]


@pytest.fixture(params=["memory", "redis"])
async def inbox(request: pytest.FixtureRequest) -> AsyncIterator[InboxStore]:
    if request.param == "memory":
        memory = MemoryInbox(max_per_user=10, ttl_s=60)
        yield memory
        await memory.aclose()
        return
    redis = Redis.from_url(request.getfixturevalue("redis_url"))  # as the worker's start-up builds it
    store = RedisInbox(redis, max_per_user=10, ttl_s=60)
    try:
        yield store
    finally:
        await store.aclose()
        await redis.aclose()


async def test_send_inapp_stores_the_payloads_title_body_and_url_and_returns_the_message_id(
    inbox: InboxStore, make_settings: SettingsFactory
) -> None:
    payload = make_payload(channel=Channel.INAPP, address="user_42", subject="Welcome, Ada!", text="Ready.")
    payload["url"] = "https://app.example.com/start"
    async with delivery_context(make_settings(), inbox=inbox) as ctx:
        message_id = await send_inapp(ctx, payload)

    [stored] = (await inbox.list("user_42")).items
    assert stored.id == message_id
    assert (stored.title, stored.body, stored.url) == ("Welcome, Ada!", "Ready.", "https://app.example.com/start")
    assert (stored.delivery_id, stored.notification_id) == (payload["delivery_id"], payload["notification_id"])


async def test_the_same_delivery_sent_again_stores_nothing_more_and_returns_the_same_id(
    inbox: InboxStore, make_settings: SettingsFactory
) -> None:
    payload = make_payload(channel=Channel.INAPP, address="user_42", subject="Once", text="only once")
    async with delivery_context(make_settings(), inbox=inbox) as ctx:
        first = await send_inapp(ctx, payload)
        again = await send_inapp(ctx, payload)  # a retry after the store answered, or the job run twice
        other = await send_inapp(ctx, make_payload(channel=Channel.INAPP, address="user_42"))

    page = await inbox.list("user_42")
    assert again == first != other
    assert [m.id for m in page.items] == [other, first]


async def test_the_inline_runner_gives_send_inapp_the_inbox_and_keeps_the_id_as_result(
    make_settings: SettingsFactory,
) -> None:
    inbox = MemoryInbox(max_per_user=10, ttl_s=60)
    payload = make_payload(channel=Channel.INAPP, address="user_7", subject="Hi", text="there")
    async with inline_runner(make_settings(), inbox=inbox) as backend:
        record = await deliver(backend, payload)

    [stored] = (await inbox.list("user_7")).items
    assert (record.task, record.state, record.result) == ("send_inapp", JobState.SUCCEEDED, stored.id)


def test_send_inapp_is_registered_for_the_inapp_channel(make_settings: SettingsFactory) -> None:
    registry = build_registry(make_settings(RETRY_BASE_DELAY_S=0.5, RETRY_MAX_DELAY_S=9.0))

    assert TASK_FOR_CHANNEL[Channel.INAPP] == "send_inapp"
    policy = registry.get("send_inapp").policy
    assert (policy.max_attempts, policy.base_delay_s) == (INAPP_MAX_ATTEMPTS, 0.5)
