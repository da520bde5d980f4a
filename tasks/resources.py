"""Long-lived clients the delivery tasks share, opened once per process and closed on shutdown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
from standardwebhooks import Webhook

from core.config import Settings
from tasks.channels.email import ConsoleMailer, Mailer, SmtpMailer
from tasks.channels.netguard import GuardedTransport
from tasks.channels.sms import build_sms_sender
from tasks.channels.webhook_client import WebhookClient
from tasks.inbox import InboxStore
from tasks.preferences import PreferenceStore

WEBHOOK_CONNECTIONS = 100


def build_mailer(settings: Settings) -> Mailer:
    if settings.SMTP_HOST is None:
        return ConsoleMailer()
    return SmtpMailer(
        host=settings.SMTP_HOST,
        port=settings.SMTP_PORT,
        tls=settings.SMTP_TLS,
        username=settings.SMTP_USERNAME,
        password=settings.SMTP_PASSWORD.get_secret_value() if settings.SMTP_PASSWORD else None,
        timeout_s=settings.SMTP_TIMEOUT_S,
        pool_size=settings.SMTP_POOL_SIZE,
    )


def build_webhook_client(settings: Settings) -> httpx.AsyncClient:
    # All kept alive (each closes after 5 s idle): httpcore 1.0 evicts idle connections whenever the
    # pool holds more than max_keepalive_connections in all, busy ones included (encode/httpcore#1035).
    limits = httpx.Limits(max_connections=WEBHOOK_CONNECTIONS, max_keepalive_connections=WEBHOOK_CONNECTIONS)
    return httpx.AsyncClient(
        transport=GuardedTransport(allow_private=settings.WEBHOOK_ALLOW_PRIVATE, limits=limits),
        timeout=httpx.Timeout(settings.WEBHOOK_TIMEOUT_S),
        follow_redirects=False,
        trust_env=False,
    )


def build_webhook_sender(settings: Settings) -> WebhookClient:
    return WebhookClient(
        allow_private=settings.WEBHOOK_ALLOW_PRIVATE,
        timeout_s=settings.WEBHOOK_TIMEOUT_S,
        max_connections=WEBHOOK_CONNECTIONS,
        max_per_host=settings.WEBHOOK_MAX_PER_HOST,
    )


@asynccontextmanager
async def delivery_resources(
    settings: Settings, *, inbox: InboxStore | None = None, preferences: PreferenceStore | None = None
) -> AsyncIterator[dict[str, object]]:
    """The shared part of every DeliveryContext (the runner adds ``job_id`` and ``job_try``).

    ``inbox``: the store ``send_inapp`` writes to, owned (and closed) by the caller: in-process the web app's
    own, so its streams see the message; an arq worker adds its RedisInbox at start-up instead (it needs the
    worker's Redis connection, which does not exist yet here). ``preferences`` likewise: the store the API
    writes users' opt-outs to, which every delivery checks.
    """
    secret = settings.WEBHOOK_SECRET
    async with AsyncExitStack() as opened:  # closed in reverse order, each even if an earlier one fails
        http = await opened.enter_async_context(build_webhook_client(settings))
        webhooks = await opened.enter_async_context(build_webhook_sender(settings))
        mailer = build_mailer(settings)
        opened.push_async_callback(mailer.aclose)
        sms = build_sms_sender(settings)
        if sms is not None:
            opened.push_async_callback(sms.aclose)
        yield {
            "http": http,
            "webhooks": webhooks,
            "mailer": mailer,
            "email_from": settings.email_from_address,
            "webhook_signer": Webhook(secret.get_secret_value()) if secret else None,
            "sms": sms,
            **({"inbox": inbox} if inbox is not None else {}),
            **({"preferences": preferences} if preferences is not None else {}),
        }
