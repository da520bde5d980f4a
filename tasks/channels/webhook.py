"""Signed webhooks (Standard Webhooks) over one shared WebhookClient.

Only a 2xx answer is success. Redirects are not followed. Connect errors, timeouts, 408, 429 and
5xx are retried (``Retry-After`` honoured); any other answer, and a refused destination, is final.
A host already at WEBHOOK_MAX_PER_HOST sends in flight (in this process) is not waited for: the
delivery is deferred (DeferJob), which is no attempt, and tried again shortly.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpcore
import httpx
from standardwebhooks import Webhook

from core.errors import DeferJob, PermanentError, RetryableError
from tasks.channels.netguard import ForbiddenDestinationError
from tasks.channels.webhook_client import HostBusyError, WebhookClient
from tasks.messages import DeliveryPayload

CHANNEL = "webhook"
USER_AGENT = "Herald-Webhooks/1"
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
ERROR_BODY_BYTES = 512
# A 2xx body is read (and dropped) up to this much: httpcore closes a connection whose body was not read,
# which would cost every delivery a new TCP + TLS handshake. A longer body just gives up the connection.
SUCCESS_BODY_BYTES = 64 * 1024
# A delivery to a full host comes back after this (plus the runner's jitter, up to half as much again): a
# few sends to a fast host end meanwhile, and a hanging host's waiting deliveries cost a few cheap runs a second.
HOST_BUSY_DEFER_S = 0.3


def webhook_body(payload: DeliveryPayload) -> str:
    """The JSON body: ``{"type", "timestamp", "data"}``; identical on every retry."""
    data = {
        "notification_id": payload["notification_id"],
        "delivery_id": payload["delivery_id"],
        "template": payload["template"],
        "subject": payload["subject"],
        "text": payload["text"],
        "context": payload["context"],
        "metadata": payload["metadata"],
    }
    body = {"type": payload["event_type"], "timestamp": payload["created_at"], "data": data}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def signed_headers(signer: Webhook, delivery_id: str, body: str, now: datetime | None = None) -> dict[str, str]:
    """Standard Webhooks headers; ``webhook-id`` is the delivery id so receivers can dedupe retries."""
    sent_at = now or datetime.now(UTC)
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "accept-encoding": "identity",  # error excerpts are read raw: a gzipped one would be unreadable bytes
        "webhook-id": delivery_id,
        "webhook-timestamp": str(int(sent_at.timestamp())),
        "webhook-signature": signer.sign(delivery_id, sent_at, body),
    }


async def post_webhook(client: WebhookClient, signer: Webhook, payload: DeliveryPayload) -> int:
    """POST the signed payload once; return the status code or raise a TaskError.

    Raises DeferJob, sending nothing, when the host already has ``client.max_per_host`` sends in flight.
    """
    body = webhook_body(payload)
    headers = signed_headers(signer, payload["delivery_id"], body)
    url = payload["address"]
    try:
        with client.host_slot(url):
            reply = await client.post(url, body.encode(), headers, read_at_most=_body_to_read)
    except HostBusyError as exc:
        raise DeferJob(
            f"webhook host {exc.host} has {exc.in_flight} sends in flight (WEBHOOK_MAX_PER_HOST)",
            delay_s=HOST_BUSY_DEFER_S,
            channel=CHANNEL,
        ) from None
    except ForbiddenDestinationError as exc:
        raise PermanentError(f"destination refused: {exc}", channel=CHANNEL) from exc
    except httpx.InvalidURL as exc:
        raise PermanentError(f"cannot send to this URL: {exc}", channel=CHANNEL) from exc
    except httpcore.TimeoutException as exc:
        raise RetryableError(f"timed out ({type(exc).__name__})", channel=CHANNEL) from exc
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
        raise RetryableError(f"connection failed: {type(exc).__name__}: {exc}", channel=CHANNEL) from exc
    if reply.is_success:
        return reply.status
    excerpt = reply.body.decode("utf-8", "replace").strip()
    reason = f"HTTP {reply.status}" + (f": {excerpt}" if excerpt else "")
    if reply.status in RETRYABLE_STATUS:
        retry_after = parse_retry_after(reply.headers.get("retry-after"))
        raise RetryableError(reason, channel=CHANNEL, status_code=reply.status, retry_after_s=retry_after)
    if reply.is_redirect:
        reason += f" (redirects are not followed; Location: {reply.headers.get('location', '-')})"
    raise PermanentError(reason, channel=CHANNEL, status_code=reply.status)


def _body_to_read(status: int) -> int:
    return SUCCESS_BODY_BYTES if 200 <= status < 300 else ERROR_BODY_BYTES


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit() is true of '²' too, which float() refuses
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):  # a huge year overflows datetime()
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
