"""Factories for the delivery tests: payloads, a DeliveryContext, and the real in-process runner."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from standardwebhooks import Webhook

from core.config import Settings
from core.inline import InlineBackend
from core.jobs import JobRecord, JobSpec
from core.store import MemoryJobStore
from tasks.channels.email import Mailer
from tasks.channels.sms import build_sms_sender
from tasks.channels.webhook_client import WebhookClient
from tasks.delivery import DeliveryContext
from tasks.inbox import InboxStore, MemoryInbox
from tasks.messages import Channel, DeliveryPayload
from tasks.registry import TASK_FOR_CHANNEL, build_registry
from tasks.resources import build_mailer, build_webhook_client, build_webhook_sender, delivery_resources
from tests.conftest import WEBHOOK_SECRET
from tests.support.waiting import eventually

_ids = itertools.count(1)


def make_payload(
    *,
    channel: Channel = Channel.WEBHOOK,
    address: str = "ada@example.com",
    delivery_id: str | None = None,
    event_type: str = "notification.sent",
    subject: str = "Hello Ada",
    text: str = "Hi Ada,\nthis is a test.\n",
    html: str | None = None,
    template: str | None = None,
    context: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> DeliveryPayload:
    """A JSON-able payload as the notification service would enqueue it; unique ids per call."""
    n = next(_ids)
    return DeliveryPayload(
        delivery_id=delivery_id or f"dlv_test{n:04d}",
        notification_id=f"ntf_test{n:04d}",
        channel=channel.value,
        address=address,
        event_type=event_type,
        created_at="2024-05-01T12:00:00+00:00",
        subject=subject,
        text=text,
        html=html,
        template=template,
        context=context or {},
        metadata=metadata or {},
    )


@asynccontextmanager
async def delivery_context(
    settings: Settings, *, mailer: Mailer | None = None, signed: bool = True, inbox: InboxStore | None = None
) -> AsyncIterator[DeliveryContext]:
    """A DeliveryContext over the real clients ``tasks.resources`` builds (and a MemoryInbox unless ``inbox``)."""
    if inbox is None:
        inbox = MemoryInbox(max_per_user=settings.INBOX_MAX_PER_USER, ttl_s=settings.RECORD_TTL_S)
    mailer = mailer or build_mailer(settings)
    sms = build_sms_sender(settings)
    async with build_webhook_client(settings) as http, build_webhook_sender(settings) as webhooks:
        try:
            yield DeliveryContext(
                job_id="job_test",
                job_try=1,
                http=http,
                webhooks=webhooks,
                mailer=mailer,
                email_from=settings.email_from_address,
                webhook_signer=Webhook(WEBHOOK_SECRET) if signed else None,
                sms=sms,
                inbox=inbox,
            )
        finally:
            await mailer.aclose()
            if sms is not None:
                await sms.aclose()


@asynccontextmanager
async def inline_runner(
    settings: Settings, *, inbox: InboxStore | None = None, webhooks: WebhookClient | None = None
) -> AsyncIterator[InlineBackend]:
    """The real InlineBackend with Herald's registry and resources (``inbox`` for send_inapp), started and stopped.

    ``webhooks`` replaces the resources' WebhookClient (a drill's own guard and dialler); it is closed here too.
    """
    async with delivery_resources(settings, inbox=inbox) as resources, AsyncExitStack() as owned:
        if webhooks is not None:
            resources = {**resources, "webhooks": await owned.enter_async_context(webhooks)}
        backend = InlineBackend(
            build_registry(settings),
            MemoryJobStore(max_finished=100, ttl_s=3600),
            resources,
            concurrency=2,
            max_unfinished=100,
        )
        await backend.start()
        try:
            yield backend
        finally:
            await backend.stop(grace_s=1.0)


async def deliver(backend: InlineBackend, payload: DeliveryPayload, *, timeout_s: float = 10.0) -> JobRecord:
    """Enqueue one delivery the way the service does and wait until its record is final."""
    task = TASK_FOR_CHANNEL[Channel(payload["channel"])]
    spec = JobSpec(task=task, job_id=payload["delivery_id"], args=(payload,))
    await backend.enqueue([spec])

    async def finished() -> bool:
        record = await backend.store.get(spec.job_id)
        return record is not None and record.state.is_terminal

    await eventually(finished, timeout_s=timeout_s, what=f"job {spec.job_id} to finish")
    record = await backend.store.get(spec.job_id)
    assert record is not None
    return record
