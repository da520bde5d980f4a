"""Notifications: one message to many recipients, one delivery job per recipient.

A notification record (a document in the backend's store, written atomically with its jobs) holds
what was asked; each delivery's live status is its job's record. Both expire after ``RECORD_TTL_S``;
in memory they are also bounded by count, so memory stays flat.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from core.backend import AfterResponse, TaskBackend
from core.documents import Claim, Document
from core.errors import HeraldError
from core.jobs import JobRecord, JobSpec, JobState, Priority, spec_key, utcnow
from core.rerun import rerun
from core.store import JobStore
from tasks.messages import Channel, DeliveryPayload
from tasks.registry import TASK_FOR_CHANNEL
from tasks.rendering import RenderedMessage
from tasks.template_info import TemplateInfo


class DeliveryStatus(StrEnum):
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    SENDING = "sending"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    FAILED = "failed"
    SKIPPED = "skipped"  # the user opted out of it (last_error says how); never sent, not a failure
    CANCELLED = "cancelled"
    EXPIRED = "expired"


_STATUS_OF_JOB = {
    JobState.QUEUED: DeliveryStatus.QUEUED,
    JobState.SCHEDULED: DeliveryStatus.SCHEDULED,
    JobState.RUNNING: DeliveryStatus.SENDING,
    JobState.RETRYING: DeliveryStatus.RETRYING,
    JobState.SUCCEEDED: DeliveryStatus.DELIVERED,
    JobState.FAILED: DeliveryStatus.FAILED,
    JobState.SKIPPED: DeliveryStatus.SKIPPED,
    JobState.CANCELLED: DeliveryStatus.CANCELLED,
    JobState.EXPIRED: DeliveryStatus.EXPIRED,
}


NotificationStatus = Literal[
    "queued",
    "scheduled",
    "in_progress",
    "delivered",
    "failed",
    "partially_delivered",
    "skipped",
    "cancelled",
    "expired",
]


_JOB_STATE_OF = {status: state for state, status in _STATUS_OF_JOB.items()}
_CHANNEL_OF_TASK = {task: channel for channel, task in TASK_FOR_CHANNEL.items()}


class UnknownDeliveryError(LookupError):
    """No delivery with this id is kept."""


class IdempotencyConflictError(HeraldError):
    """The Idempotency-Key was already used with a different request body."""


@dataclass(frozen=True, slots=True)
class Recipient:
    channel: Channel
    address: str


@dataclass(frozen=True, slots=True)
class DeliveryRef:
    id: str
    channel: Channel
    address: str


@dataclass(frozen=True, slots=True)
class NotificationRecord:
    id: str
    created_at: datetime
    event_type: str
    template: str | None
    subject: str
    metadata: dict[str, Any]
    deliveries: tuple[DeliveryRef, ...]
    send_at: datetime | None = None
    priority: Priority = Priority.NORMAL
    expires_at: datetime | None = None
    user_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": self.created_at.isoformat(),
            "event_type": self.event_type,
            "template": self.template,
            "subject": self.subject,
            "metadata": self.metadata,
            "deliveries": [[d.id, d.channel.value, d.address] for d in self.deliveries],
            "send_at": self.send_at.isoformat() if self.send_at else None,
            "priority": self.priority.value,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "user_id": self.user_id,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NotificationRecord:
        return cls(
            id=data["id"],
            created_at=datetime.fromisoformat(data["created_at"]),
            event_type=data["event_type"],
            template=data["template"],
            subject=data["subject"],
            metadata=data["metadata"],
            deliveries=tuple(DeliveryRef(i, Channel(c), a) for i, c, a in data["deliveries"]),
            send_at=datetime.fromisoformat(data["send_at"]) if data.get("send_at") else None,
            priority=Priority(data.get("priority", Priority.NORMAL)),
            expires_at=datetime.fromisoformat(data["expires_at"]) if data.get("expires_at") else None,
            user_id=data.get("user_id"),
        )


@dataclass(frozen=True, slots=True)
class DeliveryView:
    id: str
    channel: Channel
    address: str
    status: DeliveryStatus
    attempts: int
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    next_attempt_at: datetime | None
    finished_at: datetime | None
    provider_message_id: str | None = None  # an SMS provider's message sid, once delivered


@dataclass(frozen=True, slots=True)
class DeliveryItem:
    """A delivery on its own (listings), with the notification it belongs to."""

    notification_id: str
    delivery: DeliveryView


@dataclass(frozen=True, slots=True)
class DeliveryPage:
    items: list[DeliveryItem]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class NotificationView:
    id: str
    status: NotificationStatus
    created_at: datetime
    event_type: str
    template: str | None
    subject: str
    metadata: dict[str, Any]
    send_at: datetime | None = None
    priority: Priority = Priority.NORMAL
    expires_at: datetime | None = None
    user_id: str | None = None
    deliveries: list[DeliveryView] = field(default_factory=list)


def new_id(prefix: str) -> str:
    # 128 random bits as 32 hex digits, like uuid4().hex without building a UUID (a third of the cost)
    return f"{prefix}_{secrets.token_hex(16)}"


def _notification_key(notification_id: str) -> str:
    return f"ntf:{notification_id}"


def _idempotency_key(key: str) -> str:
    return f"idem:{key}"


class NotificationService:
    def __init__(self, backend: TaskBackend, *, idempotency_ttl_s: float) -> None:
        self._backend = backend
        self._idempotency_ttl_s = idempotency_ttl_s

    @property
    def jobs(self) -> JobStore:
        return self._backend.store

    def check_room(self) -> None:
        """Raise now what ``submit`` would for a notification of one delivery (QueueFullError, QueueClosedError),
        before the caller spends anything on it. A backend without ``check_room`` is always taken to have room."""
        check: Callable[[], None] | None = getattr(self._backend, "check_room", None)
        if check is not None:
            check()

    async def submit(
        self,
        *,
        recipients: list[Recipient],
        message: RenderedMessage,
        template: str | None,
        context: dict[str, Any],
        metadata: dict[str, Any],
        send_at: datetime | None = None,
        priority: Priority = Priority.NORMAL,
        expires_at: datetime | None = None,
        idempotency: tuple[str, str] | None = None,
        after_response: AfterResponse | None = None,
        user_id: str | None = None,
        template_info: TemplateInfo | None = None,
    ) -> tuple[NotificationView, bool]:
        """Accept a notification and queue one delivery per recipient, all in one atomic write.

        ``idempotency`` is ``(key, request fingerprint)``. Returns the view and whether it is a
        replay of an earlier request with the same key. Each delivery for ``user_id`` (an inapp one: for the user
        it names) checks that user's preferences before it is sent, with ``template_info``'s category and
        critical mark. An SMS recipient is sent ``message.sms`` and an
        inapp recipient ``message.inapp``, which must then be given (ValueError otherwise). Raises
        IdempotencyConflictError or an EnqueueError; in all these cases nothing was written.
        """
        if message.sms is None and any(r.channel is Channel.SMS for r in recipients):
            raise ValueError("an sms recipient needs message.sms, the SMS body checked at the API")
        if message.inapp is None and any(r.channel is Channel.INAPP for r in recipients):
            raise ValueError("an inapp recipient needs message.inapp, the inbox message checked at the API")
        notification_id = new_id("ntf")
        created_at = utcnow()
        event_type = f"notification.{template}" if template else "notification.message"
        refs = tuple(DeliveryRef(new_id("dlv"), r.channel, r.address) for r in recipients)
        record = NotificationRecord(
            id=notification_id,
            created_at=created_at,
            event_type=event_type,
            template=template,
            subject=message.subject,
            metadata=metadata,
            deliveries=refs,
            send_at=send_at,
            priority=priority,
            expires_at=expires_at,
            user_id=user_id,
        )
        info = template_info or TemplateInfo()
        specs = [
            JobSpec(
                task=TASK_FOR_CHANNEL[ref.channel],
                job_id=ref.id,
                args=(_payload(record, ref, message, context, info),),
                defer_until=send_at,
                priority=priority,
                expires_at=expires_at,
            )
            for ref in refs
        ]
        claim = None
        if idempotency is not None:
            key, fingerprint = idempotency
            claim = Claim(
                _idempotency_key(key),
                {"fingerprint": fingerprint, "notification_id": notification_id},
                self._idempotency_ttl_s,
            )
        enqueued = await self._backend.enqueue(
            specs,
            after_response=after_response,
            documents=[Document(_notification_key(notification_id), record.to_json())],
            claim=claim,
        )
        if enqueued.existing_claim is not None and idempotency is not None:
            return await self._replay(enqueued.existing_claim, idempotency[1]), True
        return _view(record, {job.id: job for job in enqueued.records}), False

    async def get(self, notification_id: str) -> NotificationView | None:
        record = await self._record(notification_id)
        if record is None:
            return None
        jobs = await self.jobs.get_many(ref.id for ref in record.deliveries)
        return _view(record, jobs)

    async def cancel(self, notification_id: str) -> NotificationView | None:
        """Cancel the deliveries not yet sent; sending ones finish. None if the id is unknown."""
        record = await self._record(notification_id)
        if record is None:
            return None
        await self._backend.cancel([ref.id for ref in record.deliveries])
        return await self.get(notification_id)

    async def list_deliveries(
        self,
        *,
        status: DeliveryStatus | None = None,
        channel: Channel | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> DeliveryPage:
        """Deliveries newest first; ``cursor`` is the ``next_cursor`` of the previous page."""
        records = await self.jobs.list_records(
            state=_JOB_STATE_OF[status] if status else None,
            tasks={TASK_FOR_CHANNEL[channel]} if channel else None,
            after=_parse_cursor(cursor),
            limit=limit,
        )
        items = await self._items(records)
        next_cursor = _cursor(records[-1]) if len(records) == limit else None
        return DeliveryPage(items=items, next_cursor=next_cursor)

    async def counts(self) -> dict[DeliveryStatus, int]:
        by_state = await self.jobs.count_by_state()
        return {_STATUS_OF_JOB[state]: count for state, count in by_state.items()}

    async def recent(self, limit: int = 20) -> list[NotificationView]:
        """The notifications of the newest deliveries, newest first."""
        records = await self.jobs.list_records(limit=limit * 10)
        payloads = await self._backend.documents.get_many([spec_key(r.id) for r in records])
        ids: dict[str, None] = {}
        for payload in payloads:
            if payload is not None and payload.get("args"):
                ids[payload["args"][0]["notification_id"]] = None
        views = [await self.get(notification_id) for notification_id in list(ids)[:limit]]
        return [view for view in views if view is not None]

    async def retry_delivery(self, delivery_id: str) -> DeliveryItem:
        """Send a failed delivery again (same id, so the same webhook-id / Message-ID)."""
        if await self.jobs.get(delivery_id) is None:
            raise UnknownDeliveryError(delivery_id)
        [record] = await rerun(self._backend, [delivery_id])
        [item] = await self._items([record])
        return item

    async def retry_notification(self, notification_id: str) -> NotificationView | None:
        """Send the notification's failed deliveries again; None if the id is unknown."""
        record = await self._record(notification_id)
        if record is None:
            return None
        jobs = await self.jobs.get_many(ref.id for ref in record.deliveries)
        failed = [ref.id for ref in record.deliveries if (job := jobs.get(ref.id)) and job.state is JobState.FAILED]
        await rerun(self._backend, failed)
        return await self.get(notification_id)

    async def _items(self, records: list[JobRecord]) -> list[DeliveryItem]:
        payloads = await self._backend.documents.get_many([spec_key(r.id) for r in records])
        items = []
        for record, kept in zip(records, payloads, strict=True):
            if kept is None or not kept.get("args"):
                continue
            payload = kept["args"][0]
            ref = DeliveryRef(
                record.id, _CHANNEL_OF_TASK.get(record.task, Channel(payload["channel"])), payload["address"]
            )
            items.append(DeliveryItem(notification_id=payload["notification_id"], delivery=_delivery_view(ref, record)))
        return items

    async def _record(self, notification_id: str) -> NotificationRecord | None:
        data = await self._backend.documents.get(_notification_key(notification_id))
        return NotificationRecord.from_json(data) if data is not None else None

    async def _replay(self, claim: dict[str, Any], fingerprint: str) -> NotificationView:
        if claim.get("fingerprint") != fingerprint:
            raise IdempotencyConflictError("this Idempotency-Key was already used with a different request body")
        view = await self.get(str(claim.get("notification_id")))
        if view is None:
            raise IdempotencyConflictError("the notification of this Idempotency-Key is no longer kept")
        return view


def _payload(
    record: NotificationRecord,
    ref: DeliveryRef,
    message: RenderedMessage,
    context: dict[str, Any],
    info: TemplateInfo,
) -> DeliveryPayload:
    subject, text, html = message.subject, message.text, message.html
    if ref.channel is Channel.SMS:
        text, html = message.sms or "", None  # submit() made sure an SMS has its text
    inapp = message.inapp if ref.channel is Channel.INAPP else None  # submit() made sure an inapp one has it
    if inapp is not None:
        subject, text, html = inapp.title, inapp.body, None
    payload = DeliveryPayload(
        delivery_id=ref.id,
        notification_id=record.id,
        channel=ref.channel.value,
        address=ref.address,
        event_type=record.event_type,
        created_at=record.created_at.isoformat(),
        subject=subject,
        text=text,
        html=html,
        template=record.template,
        context=context,
        metadata=record.metadata,
    )
    if inapp is not None:
        payload["url"] = inapp.url
    user_id = ref.address if ref.channel is Channel.INAPP else record.user_id  # an inbox's owner decides for it
    if user_id is not None:
        payload["user_id"], payload["category"], payload["critical"] = user_id, info.category, info.critical
    return payload


def _view(record: NotificationRecord, jobs: dict[str, JobRecord]) -> NotificationView:
    deliveries = [_delivery_view(ref, job) for ref in record.deliveries if (job := jobs.get(ref.id)) is not None]
    return NotificationView(
        id=record.id,
        status=overall_status([d.status for d in deliveries]),
        created_at=record.created_at,
        event_type=record.event_type,
        template=record.template,
        subject=record.subject,
        metadata=record.metadata,
        send_at=record.send_at,
        priority=record.priority,
        expires_at=record.expires_at,
        user_id=record.user_id,
        deliveries=deliveries,
    )


def _cursor(record: JobRecord) -> str:
    return f"{int(record.created_at.timestamp() * 1000)}.{record.id}"


def _parse_cursor(cursor: str | None) -> tuple[int, str] | None:
    if not cursor:
        return None
    ms, _, job_id = cursor.partition(".")
    return (int(ms), job_id) if ms.isascii() and ms.isdecimal() and job_id else None


def _delivery_view(ref: DeliveryRef, job: JobRecord) -> DeliveryView:
    return DeliveryView(
        id=ref.id,
        channel=ref.channel,
        address=ref.address,
        status=_STATUS_OF_JOB[job.state],
        attempts=job.attempts,
        last_error=job.last_error,
        created_at=job.created_at,
        updated_at=job.updated_at,
        next_attempt_at=job.next_attempt_at,
        finished_at=job.finished_at,
        # send_sms returns the provider's sid, kept as the job's result (send_webhook's is a status code)
        provider_message_id=job.result if ref.channel is Channel.SMS and isinstance(job.result, str) else None,
    )


def overall_status(statuses: list[DeliveryStatus]) -> NotificationStatus:
    unique = set(statuses)
    if not unique or unique == {DeliveryStatus.QUEUED}:
        return "queued"
    if unique == {DeliveryStatus.SCHEDULED}:
        return "scheduled"
    if unique & {DeliveryStatus.QUEUED, DeliveryStatus.SCHEDULED, DeliveryStatus.SENDING, DeliveryStatus.RETRYING}:
        return "in_progress"
    if unique == {DeliveryStatus.SKIPPED}:
        return "skipped"
    unique.discard(DeliveryStatus.SKIPPED)  # an opted-out delivery counts neither for nor against the rest
    if unique == {DeliveryStatus.DELIVERED}:
        return "delivered"
    if unique == {DeliveryStatus.CANCELLED}:
        return "cancelled"
    if unique == {DeliveryStatus.EXPIRED}:
        return "expired"
    if unique == {DeliveryStatus.CANCELLED, DeliveryStatus.EXPIRED}:
        return "cancelled"  # nothing sent, nothing failed
    if DeliveryStatus.DELIVERED in unique:
        return "partially_delivered"
    return "failed"
