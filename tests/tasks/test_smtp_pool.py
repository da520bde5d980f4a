"""The SMTP connection pool, against a real SMTP server (aiosmtpd on 127.0.0.1)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from aiosmtpd.controller import Controller

from core.config import Settings
from core.errors import RetryableError
from tasks.channels.email import SmtpMailer, build_message
from tasks.messages import Channel, DeliveryPayload
from tests.support.smtp import SmtpSink, free_port
from tests.tasks.helpers import make_payload

SettingsFactory = Callable[..., Settings]


@asynccontextmanager
async def pooled_mailer(sink: SmtpSink, **options: int) -> AsyncIterator[SmtpMailer]:
    mailer = SmtpMailer(
        host="127.0.0.1", port=sink.port, tls="none", username=None, password=None, timeout_s=5, **options
    )
    try:
        yield mailer
    finally:
        await mailer.aclose()


def _payload(n: int) -> DeliveryPayload:
    return make_payload(channel=Channel.EMAIL, delivery_id=f"dlv_{n}", address=f"user{n}@example.com")


async def _send(mailer: SmtpMailer, settings: Settings, n: int) -> None:
    await mailer.send(build_message(_payload(n), settings.email_from_address))


async def test_one_connection_carries_many_messages(make_settings: SettingsFactory, smtp: SmtpSink) -> None:
    settings = make_settings()
    async with pooled_mailer(smtp) as mailer:
        for n in range(10):
            await _send(mailer, settings, n)
    assert len(smtp.messages) == 10
    assert mailer.connections_opened == 1
    assert len(set(smtp.peers)) == 1, "the server saw one connection"


async def test_concurrent_sends_open_at_most_the_pool_size(make_settings: SettingsFactory, smtp: SmtpSink) -> None:
    settings = make_settings()
    async with pooled_mailer(smtp, pool_size=3) as mailer:
        await asyncio.gather(*(_send(mailer, settings, n) for n in range(30)))
    assert sorted(m["To"] for m in smtp.messages) == sorted(f"user{n}@example.com" for n in range(30))
    assert 1 <= mailer.connections_opened <= 3
    assert len(set(smtp.peers)) == mailer.connections_opened


async def test_a_connection_the_server_dropped_while_idle_is_replaced_at_once(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    sink = SmtpSink()
    sink.port = free_port()
    first = Controller(sink, hostname="127.0.0.1", port=sink.port)
    first.start()
    try:
        async with pooled_mailer(sink) as mailer:
            await _send(mailer, settings, 1)
            first.stop()  # the server goes away (as one closing idle connections would): the pooled one is dead
            second = Controller(sink, hostname="127.0.0.1", port=sink.port)
            second.start()
            try:
                await _send(mailer, settings, 2)
            finally:
                second.stop()
    finally:
        if first.loop.is_running():
            first.stop()
    assert [m["To"] for m in sink.messages] == ["user1@example.com", "user2@example.com"]
    assert mailer.connections_opened == 2


async def test_a_refused_message_leaves_its_connection_usable(make_settings: SettingsFactory, smtp: SmtpSink) -> None:
    settings = make_settings()
    smtp.replies.append("451 4.3.0 try again later")
    async with pooled_mailer(smtp) as mailer:
        with pytest.raises(RetryableError) as refused:
            await _send(mailer, settings, 1)
        await _send(mailer, settings, 2)
    assert refused.value.status_code == 451
    assert [m["To"] for m in smtp.messages] == ["user2@example.com"]
    assert mailer.connections_opened == 1, "RSET, not a new connection"


async def test_a_connection_is_retired_after_its_message_limit(make_settings: SettingsFactory, smtp: SmtpSink) -> None:
    settings = make_settings()
    async with pooled_mailer(smtp, max_messages=3) as mailer:
        for n in range(7):
            await _send(mailer, settings, n)
    assert len(smtp.messages) == 7
    assert mailer.connections_opened == 3
    assert len(set(smtp.peers)) == 3
