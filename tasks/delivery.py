"""The delivery tasks: plain async functions, ctx first, one call = one attempt.

The runner (in-process or arq) decides about retries from the TaskError each one raises.
Tests call them directly with a DeliveryContext of their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from email.headerregistry import Address
from typing import NotRequired

import httpx
from standardwebhooks import Webhook

from core.errors import BackendUnavailableError, PermanentError, RetryableError, SkipJob
from core.jobs import JobContext
from core.logging import bind_log_fields
from tasks.channels.email import Mailer, build_message
from tasks.channels.sms import SmsSender, post_sms
from tasks.channels.webhook import post_webhook
from tasks.channels.webhook_client import WebhookClient
from tasks.inbox import InboxMessage, InboxStore
from tasks.messages import DeliveryPayload
from tasks.preferences import Audience, PreferenceStore, skip_reason


class DeliveryContext(JobContext):
    http: httpx.AsyncClient  # for an application's own tasks; webhooks go through ``webhooks``
    webhooks: WebhookClient
    mailer: Mailer
    email_from: Address
    webhook_signer: Webhook | None
    sms: SmsSender | None  # None when SMS_ACCOUNT_SID, SMS_AUTH_TOKEN and SMS_FROM are not set
    inbox: InboxStore  # the web app's MemoryInbox in-process; a RedisInbox the worker opens in arq mode
    # Users' opt-outs, checked before a delivery that names its user is sent; as ``inbox``, the web app's
    # own in-process, the worker's RedisPreferences in arq mode. Without it nothing is skipped.
    preferences: NotRequired[PreferenceStore]


async def send_email(ctx: DeliveryContext, payload: DeliveryPayload) -> None:
    """Send one email; SMTP 4xx/connection errors are retryable, 5xx permanent."""
    await _begin(ctx, payload)
    await ctx["mailer"].send(build_message(payload, ctx["email_from"]))


async def send_webhook(ctx: DeliveryContext, payload: DeliveryPayload) -> int:
    """POST one signed webhook; returns the receiver's 2xx status."""
    await _begin(ctx, payload)
    signer = ctx["webhook_signer"]
    if signer is None:
        raise PermanentError("WEBHOOK_SECRET is not set on this server", channel="webhook")
    return await post_webhook(ctx["webhooks"], signer, payload)


async def send_sms(ctx: DeliveryContext, payload: DeliveryPayload) -> str:
    """Send one SMS through the provider; returns the provider's message sid (the job's result).

    Provider 408/429/5xx and connection errors are retryable (``Retry-After`` honoured), other 4xx permanent
    with the provider's code and message.
    """
    await _begin(ctx, payload)
    return await post_sms(ctx["sms"], payload)


async def send_inapp(ctx: DeliveryContext, payload: DeliveryPayload) -> str:
    """Store one message in the user's inbox (its live streams see it); returns the message id (the job's result).

    Idempotent on the delivery id: an attempt retried after the store answered, or run twice, stores nothing
    more and returns the id of the message already there. Redis errors are retried.
    """
    await _begin(ctx, payload)
    with _retried_while_unavailable("the inbox"):
        stored = await ctx["inbox"].deliver(
            InboxMessage.new(
                user_id=payload["address"],
                title=payload["subject"],
                body=payload["text"],
                url=payload.get("url"),
                delivery_id=payload["delivery_id"],
                notification_id=payload["notification_id"],
            )
        )
    return stored.id


async def _begin(ctx: DeliveryContext, payload: DeliveryPayload) -> None:
    """Log this attempt under the delivery's ids; raise SkipJob if its user opted out of it (checked on every
    attempt, just before sending, so an opt-out made meanwhile applies to a scheduled or retried delivery)."""
    _bind_ids(payload)
    user_id = payload.get("user_id")
    store = ctx.get("preferences")
    if user_id is None or store is None:
        return
    with _retried_while_unavailable("the user's preferences"):
        preferences = await store.get(user_id)
    audience = Audience(
        user_id=user_id,
        channel=payload["channel"],
        template=payload["template"],
        category=payload.get("category"),
        critical=payload.get("critical", False),
    )
    reason = skip_reason(preferences, audience)
    if reason is not None:
        raise SkipJob(reason, channel=payload["channel"])


@contextmanager
def _retried_while_unavailable(what: str) -> Iterator[None]:
    """Redis unreachable is a retryable failure of this attempt, not a bug in the task."""
    try:
        yield
    except BackendUnavailableError as exc:
        raise RetryableError(f"could not reach {what}: {exc}") from exc


def _bind_ids(payload: DeliveryPayload) -> None:
    """Put the delivery's ids (never its address or content) on this attempt's log lines."""
    bind_log_fields(
        delivery_id=payload["delivery_id"], notification_id=payload["notification_id"], channel=payload["channel"]
    )
