"""send_sms as the runners call it: with the process's resources, its registry policy, against a real provider."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from core.config import Settings
from core.errors import PermanentError
from core.jobs import JobState
from tasks.channels.sms import SmsSender
from tasks.delivery import send_sms
from tasks.messages import Channel
from tasks.registry import TASK_FOR_CHANNEL, build_registry
from tasks.resources import delivery_resources
from tests.support.sms_provider import ProviderReply, SmsProvider, sms_provider
from tests.tasks.helpers import deliver, delivery_context, inline_runner, make_payload

SettingsFactory = Callable[..., Settings]
TO = "+15551234567"


@pytest.fixture
def provider() -> Iterator[SmsProvider]:
    with sms_provider() as server:
        yield server


async def test_send_sms_sends_the_payloads_text_and_returns_the_sid(
    provider: SmsProvider, make_settings: SettingsFactory
) -> None:
    payload = make_payload(channel=Channel.SMS, address=TO, text="Your code is 123456")
    async with delivery_context(make_settings(**provider.settings())) as ctx:
        sid = await send_sms(ctx, payload)

    [message] = provider.messages()
    assert message.sid == sid
    assert (message.form["To"], message.form["Body"]) == (TO, "Your code is 123456")


async def test_send_sms_without_sms_settings_fails_permanently(make_settings: SettingsFactory) -> None:
    async with delivery_context(make_settings()) as ctx:
        assert ctx["sms"] is None
        with pytest.raises(PermanentError, match="SMS is not configured"):
            await send_sms(ctx, make_payload(channel=Channel.SMS, address=TO))


def test_send_sms_is_registered_with_the_sms_settings(make_settings: SettingsFactory) -> None:
    registry = build_registry(make_settings(SMS_MAX_ATTEMPTS=7, SMS_TIMEOUT_S=3.0))

    assert TASK_FOR_CHANNEL[Channel.SMS] == "send_sms"
    policy = registry.get("send_sms").policy
    assert (policy.max_attempts, policy.timeout_s) == (7, 8.0)


async def test_the_runner_gives_up_after_sms_max_attempts(
    provider: SmsProvider, make_settings: SettingsFactory
) -> None:
    provider.script(*[ProviderReply.error(503, 20500, "Service Unavailable")] * 3)
    settings = make_settings(**provider.settings(), SMS_MAX_ATTEMPTS=2)
    async with inline_runner(settings) as backend:
        record = await deliver(backend, make_payload(channel=Channel.SMS, address=TO, text="hi"))

    assert (record.state, record.attempts) == (JobState.FAILED, 2)
    assert record.last_error == "gave up after 2 attempts: SMS provider unavailable (20500): Service Unavailable"
    assert len(provider.received()) == 2


async def test_the_sender_is_opened_once_with_the_resources_and_closed_with_them(
    provider: SmsProvider, make_settings: SettingsFactory
) -> None:
    async with delivery_resources(make_settings(**provider.settings())) as resources:
        sender = resources["sms"]
        assert isinstance(sender, SmsSender)
        await sender.send(TO, "open", delivery_id="dlv_open")
    with pytest.raises(RuntimeError, match="closed"):
        await sender.send(TO, "closed", delivery_id="dlv_closed")
    assert len(provider.messages()) == 1

    async with delivery_resources(make_settings()) as resources:
        assert resources["sms"] is None
