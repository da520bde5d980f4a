"""Notifications: one message to many recipients, one delivery job per recipient.

A notification record holds what was asked; each delivery's live status is its job's record in
the task module's store. The in-memory store keeps the newest ``RECORD_MAX_COUNT`` deliveries'
notifications (and drops older ones and those past ``RECORD_TTL_S``), so memory stays flat.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from core.backend import AfterResponse, TaskBackend
from core.errors import HeraldError
from core.jobs import JobRecord, JobSpec, JobState, utcnow
from core.store import JobStore
from tasks.messages import Channel, DeliveryPayload
from tasks.registry import TASK_FOR_CHANNEL
from tasks.rendering import RenderedMessage


class DeliveryStatus(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"


_STATUS_OF_JOB = {
    JobState.QUEUED: DeliveryStatus.QUEUED,
    JobState.RUNNING: DeliveryStatus.SENDING,
    JobState.RETRYING: DeliveryStatus.RETRYING,
    JobState.SUCCEEDED: DeliveryStatus.DELIVERED,
    JobState.FAILED: DeliveryStatus.FAILED,
    JobState.CANCELLED: DeliveryStatus.CANCELLED,
}


NotificationStatus = Literal["queued", "in_progress", "delivered", "failed", "partially_delivered", "cancelled"]


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


@dataclass(frozen=True, slots=True)
class NotificationView:
    id: str
    status: NotificationStatus
    created_at: datetime
    event_type: str
    template: str | None
    subject: str
    metadata: dict[str, Any]
    deliveries: list[DeliveryView] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _KeyClaim:
    fingerprint: str
    notification_id: str
    expires_at: datetime


class MemoryNotificationStore:
    def __init__(self, *, max_deliveries: int, ttl_s: float, idempotency_ttl_s: float) -> None:
        self._records: OrderedDict[str, NotificationRecord] = OrderedDict()
        self._keys: OrderedDict[str, _KeyClaim] = OrderedDict()
        self._delivery_count = 0
        self._max_deliveries = max_deliveries
        self._max_keys = max_deliveries * 10
        self._ttl = timedelta(seconds=ttl_s)
        self._key_ttl = timedelta(seconds=idempotency_ttl_s)

    async def claim_key(self, key: str, fingerprint: str, notification_id: str) -> _KeyClaim | None:
        """Claim ``key`` for ``notification_id`` unless a live claim exists; return that claim."""
        now = utcnow()
        existing = self._keys.get(key)
        if existing is not None and existing.expires_at > now:
            return existing
        self._keys.pop(key, None)
        self._keys[key] = _KeyClaim(fingerprint, notification_id, now + self._key_ttl)
        while self._keys and (len(self._keys) > self._max_keys or next(iter(self._keys.values())).expires_at <= now):
            self._keys.popitem(last=False)
        return None

    async def release_key(self, key: str) -> None:
        self._keys.pop(key, None)

    async def save(self, record: NotificationRecord) -> list[str]:
        """Store ``record``; return the delivery ids of notifications evicted to make room."""
        self._records[record.id] = record
        self._delivery_count += len(record.deliveries)
        evicted: list[str] = []
        oldest_kept = utcnow() - self._ttl
        while self._records:
            oldest = next(iter(self._records.values()))
            if self._delivery_count <= self._max_deliveries and oldest.created_at >= oldest_kept:
                break
            self._records.popitem(last=False)
            self._delivery_count -= len(oldest.deliveries)
            evicted.extend(ref.id for ref in oldest.deliveries)
        return evicted

    async def get(self, notification_id: str) -> NotificationRecord | None:
        return self._records.get(notification_id)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class NotificationService:
    def __init__(self, store: MemoryNotificationStore, backend: TaskBackend) -> None:
        self._store = store
        self._backend = backend

    @property
    def jobs(self) -> JobStore:
        return self._backend.store

    async def submit(
        self,
        *,
        recipients: list[Recipient],
        message: RenderedMessage,
        template: str | None,
        context: dict[str, Any],
        metadata: dict[str, Any],
        idempotency: tuple[str, str] | None = None,
        after_response: AfterResponse | None = None,
    ) -> tuple[NotificationView, bool]:
        """Accept a notification and queue one delivery per recipient.

        ``idempotency`` is ``(key, request fingerprint)``. Returns the view and whether it is a
        replay of an earlier request with the same key. Raises IdempotencyConflictError or an
        EnqueueError; in both cases nothing was queued.
        """
        notification_id = new_id("ntf")
        if idempotency is not None:
            key, fingerprint = idempotency
            claim = await self._store.claim_key(key, fingerprint, notification_id)
            if claim is not None:
                return await self._replay(claim, fingerprint), True
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
        )
        specs = [
            JobSpec(
                task=TASK_FOR_CHANNEL[ref.channel],
                job_id=ref.id,
                args=(_payload(record, ref, message, context),),
            )
            for ref in refs
        ]
        try:
            jobs = await self._backend.enqueue(specs, after_response=after_response)
        except BaseException:
            if idempotency is not None:
                await self._store.release_key(idempotency[0])
            raise
        evicted = await self._store.save(record)
        if evicted:
            await self.jobs.delete(evicted)
        return _view(record, {job.id: job for job in jobs}), False

    async def get(self, notification_id: str) -> NotificationView | None:
        record = await self._store.get(notification_id)
        if record is None:
            return None
        jobs = await self.jobs.get_many(ref.id for ref in record.deliveries)
        return _view(record, jobs)

    async def _replay(self, claim: _KeyClaim, fingerprint: str) -> NotificationView:
        if claim.fingerprint != fingerprint:
            raise IdempotencyConflictError("this Idempotency-Key was already used with a different request body")
        view = await self.get(claim.notification_id)
        if view is None:
            raise IdempotencyConflictError(
                "this Idempotency-Key belongs to a request still in progress or no longer kept"
            )
        return view


def _payload(
    record: NotificationRecord, ref: DeliveryRef, message: RenderedMessage, context: dict[str, Any]
) -> DeliveryPayload:
    return DeliveryPayload(
        delivery_id=ref.id,
        notification_id=record.id,
        channel=ref.channel.value,
        address=ref.address,
        event_type=record.event_type,
        created_at=record.created_at.isoformat(),
        subject=message.subject,
        text=message.text,
        html=message.html,
        template=record.template,
        context=context,
        metadata=record.metadata,
    )


def _view(record: NotificationRecord, jobs: dict[str, JobRecord]) -> NotificationView:
    deliveries = []
    for ref in record.deliveries:
        job = jobs.get(ref.id)
        if job is None:  # evicted under load; the notification itself goes next
            continue
        deliveries.append(
            DeliveryView(
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
            )
        )
    return NotificationView(
        id=record.id,
        status=overall_status([d.status for d in deliveries]),
        created_at=record.created_at,
        event_type=record.event_type,
        template=record.template,
        subject=record.subject,
        metadata=record.metadata,
        deliveries=deliveries,
    )


def overall_status(statuses: list[DeliveryStatus]) -> NotificationStatus:
    unique = set(statuses)
    if not unique or unique == {DeliveryStatus.QUEUED}:
        return "queued"
    if unique & {DeliveryStatus.QUEUED, DeliveryStatus.SENDING, DeliveryStatus.RETRYING}:
        return "in_progress"
    if unique == {DeliveryStatus.DELIVERED}:
        return "delivered"
    if unique == {DeliveryStatus.CANCELLED}:
        return "cancelled"
    if DeliveryStatus.DELIVERED in unique:
        return "partially_delivered"
    return "failed"
