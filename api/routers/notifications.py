from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, Header, HTTPException, Response, status

from api.auth import require_api_key
from api.deps import NotificationsDep, SettingsDep, TemplatesDep
from api.errors import invalid
from api.routers.metrics import MetricsDep
from api.schemas import (
    ADDRESS_CACHE_SIZE,
    ErrorOut,
    NotificationOut,
    NotifyRequest,
    ValidationErrorOut,
    webhook_host,
)
from core.config import Settings
from tasks.channels.netguard import forbidden_reason, parse_ip_literal
from tasks.channels.sms import length_problem
from tasks.messages import Channel
from tasks.notifications import NotificationView, Recipient
from tasks.rendering import InAppMessage, RenderedMessage

router = APIRouter(tags=["notifications"], dependencies=[Depends(require_api_key)])

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing or wrong API key"},
    413: {"model": ErrorOut, "description": "Body larger than MAX_BODY_BYTES"},
    422: {"model": ValidationErrorOut, "description": "Invalid body; each error names where"},
}
_NOT_FOUND: dict[str, Any] = {"model": ErrorOut, "description": "Unknown (or no longer kept) id"}
_503_REDIS: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorOut, "description": "Redis is unavailable (arq mode); see Retry-After"}
}
_503_QUEUE: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorOut, "description": "Queue full or shutting down, or Redis unavailable; see Retry-After"}
}


async def refuse_early_when_full(service: NotificationsDep) -> None:
    """503 before the body is validated or its template rendered, when the queue has no room for it anyway.

    Under overload that work would be thrown away; in-process it is CPU the deliveries need to make room.
    The exact check (every recipient counted) is still made when the notification is queued.
    """
    service.check_room()


@router.post(
    "/notify",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[Depends(refuse_early_when_full)],
    response_model=NotificationOut,
    summary="Accept a notification; deliveries go out in the background",
    responses={
        **_ERRORS,
        409: {"model": ErrorOut, "description": "Idempotency-Key reused with a different body"},
        **_503_QUEUE,
    },
)
async def notify(
    body: NotifyRequest,
    background: BackgroundTasks,
    response: Response,
    service: NotificationsDep,
    settings: SettingsDep,
    templates: TemplatesDep,
    metrics: MetricsDep,
    idempotency_key: Annotated[
        str | None,
        Header(alias="Idempotency-Key", description="Same key + same body: same notification, nothing resent."),
    ] = None,
) -> NotificationOut:
    _check_limits(body, settings)
    if idempotency_key is not None and not _IDEMPOTENCY_KEY.match(idempotency_key):
        raise invalid(["header", "Idempotency-Key"], "must be 1-255 printable ASCII characters without spaces")
    send_at = _check_send_at(body.send_at, settings)
    expires_at = _check_expires_at(body.expires_at, body.send_at)
    sms = any(recipient.channel == Channel.SMS.value for recipient in body.to)
    inapp = any(recipient.channel == Channel.INAPP.value for recipient in body.to)
    message = (
        templates.render(body.template, body.context, sms=sms, inapp=inapp)
        if body.template is not None
        else RenderedMessage(
            subject=body.subject or "",
            text=body.text or "",
            html=body.html,
            sms=body.text if sms else None,
            # the literal subject is already one line of at most 255 characters: a fine title
            inapp=InAppMessage(title=body.subject or "", body=body.text or "") if inapp else None,
        )
    )
    if message.sms is not None:
        _check_sms_length(message.sms, body.template, settings)
    view, replayed = await service.submit(
        recipients=[Recipient(Channel(r.channel), r.address) for r in body.to],
        message=message,
        template=body.template,
        context=body.context,
        metadata=body.metadata,
        send_at=send_at,
        priority=body.priority,
        expires_at=expires_at,
        idempotency=(idempotency_key, _fingerprint(body)) if idempotency_key else None,
        after_response=background,
        user_id=body.user_id,
        template_info=templates.info(body.template) if body.template is not None else None,
    )
    response.headers["Location"] = f"/notifications/{view.id}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    else:
        metrics.accepted.inc()
    return NotificationOut.of(view)


@router.get(
    "/notifications/{notification_id}",
    response_model=NotificationOut,
    summary="A notification and the status of each delivery",
    responses={401: _ERRORS[401], 404: _NOT_FOUND, **_503_REDIS},
)
async def get_notification(notification_id: str, service: NotificationsDep) -> NotificationOut:
    return _found(await service.get(notification_id), notification_id)


@router.delete(
    "/notifications/{notification_id}",
    response_model=NotificationOut,
    summary="Cancel the deliveries not yet sent (sending ones finish)",
    responses={401: _ERRORS[401], 404: _NOT_FOUND, **_503_REDIS},
)
async def cancel_notification(notification_id: str, service: NotificationsDep) -> NotificationOut:
    return _found(await service.cancel(notification_id), notification_id)


@router.post(
    "/notifications/{notification_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=NotificationOut,
    summary="Send the notification's failed deliveries again (same webhook-id / Message-ID)",
    responses={
        401: _ERRORS[401],
        404: _NOT_FOUND,
        409: {"model": ErrorOut, "description": "A failed delivery was retried by another request meanwhile"},
        **_503_QUEUE,
    },
)
async def retry_notification(notification_id: str, service: NotificationsDep) -> NotificationOut:
    return _found(await service.retry_notification(notification_id), notification_id)


def _found(view: NotificationView | None, notification_id: str) -> NotificationOut:
    if view is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no notification with id {notification_id!r}")
    return NotificationOut.of(view)


def _check_send_at(send_at: datetime | None, settings: Settings) -> datetime | None:
    if send_at is None:
        return None
    try:
        send_at = send_at.astimezone(UTC)
    except OverflowError:
        raise invalid(["body", "send_at"], "send_at is outside the supported date range") from None
    ahead_s = (send_at - datetime.now(UTC)).total_seconds()
    if ahead_s <= 0:
        return None  # in the past: send now
    if settings.TASK_BACKEND == "inline" and ahead_s > settings.INLINE_MAX_DEFER_S:
        raise invalid(
            ["body", "send_at"],
            f"in-process mode keeps scheduled sends in memory, so at most {settings.INLINE_MAX_DEFER_S:g}s ahead "
            "(INLINE_MAX_DEFER_S); later sends need the durable backend (TASK_BACKEND=arq)",
        )
    return send_at


def _check_expires_at(expires_at: datetime | None, send_at: datetime | None) -> datetime | None:
    if expires_at is None:
        return None
    try:
        expires_at = expires_at.astimezone(UTC)
    except OverflowError:
        raise invalid(["body", "expires_at"], "expires_at is outside the supported date range") from None
    if expires_at <= datetime.now(UTC):
        raise invalid(["body", "expires_at"], "expires_at is already past: nothing would be sent")
    if send_at is not None and expires_at <= send_at:
        raise invalid(["body", "expires_at"], "expires_at must be after send_at, or nothing would be sent")
    return expires_at


def _check_limits(body: NotifyRequest, settings: Settings) -> None:
    if len(body.to) > settings.MAX_RECIPIENTS:
        raise invalid(["body", "to"], f"at most {settings.MAX_RECIPIENTS} recipients per request, got {len(body.to)}")
    for name in ("context", "metadata"):
        try:
            size = len(json.dumps(getattr(body, name), separators=(",", ":"), allow_nan=False).encode())
        except ValueError:
            raise invalid(["body", name], f"{name} must be plain JSON: NaN and Infinity are not allowed") from None
        if size > settings.MAX_CONTEXT_BYTES:
            raise invalid(["body", name], f"{name} is {size} bytes as JSON; the limit is {settings.MAX_CONTEXT_BYTES}")
    for index, recipient in enumerate(body.to):
        if recipient.channel == Channel.SMS.value and not settings.sms_enabled:
            raise invalid(
                ["body", "to", index, "channel"],
                "the sms channel is disabled on this server: SMS_ACCOUNT_SID, SMS_AUTH_TOKEN and SMS_FROM are not set",
            )
        if recipient.channel != Channel.WEBHOOK.value:
            continue
        if settings.WEBHOOK_SECRET is None:
            raise invalid(
                ["body", "to", index, "channel"],
                "the webhook channel is disabled on this server: WEBHOOK_SECRET is not set",
            )
        if not settings.WEBHOOK_ALLOW_PRIVATE:
            reason = _forbidden_literal(webhook_host(recipient.address))
            if reason is not None:
                raise invalid(["body", "to", index, "address"], f"webhooks may not target {reason}")


def _check_sms_length(text: str, template: str | None, settings: Settings) -> None:
    """422 when the SMS body (what will be sent, as it is) takes more than SMS_MAX_SEGMENTS segments, or is empty."""
    problem = length_problem(text, settings.SMS_MAX_SEGMENTS)
    if problem is None:
        return
    if template is None:
        raise invalid(["body", "text"], problem)
    raise invalid(["body", "context"], f"template {template!r} (sms.txt): {problem}", kind="template_error")


@lru_cache(maxsize=ADDRESS_CACHE_SIZE)
def _forbidden_literal(host: str) -> str | None:
    """Why a webhook may not target ``host`` if it spells an IP address; names are checked when connecting."""
    address = parse_ip_literal(host)
    return forbidden_reason(address) if address is not None else None


def _fingerprint(body: NotifyRequest) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
