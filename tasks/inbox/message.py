"""An inbox message, a page of them, and what every inbox store does."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from tasks.inbox.feed import Subscription

# Also the shape of the Redis keys (herald:inbox:{<user_id>}:…): no braces, no spaces.
USER_ID_PATTERN = r"^[A-Za-z0-9._@:-]{1,128}$"
MESSAGE_ID_PATTERN = r"^msg_[0-9a-f]{32}$"


def position_of(created_at: datetime) -> int:
    """Microseconds since the epoch: where a message created then goes, unless the inbox is already past it."""
    return int(created_at.timestamp() * 1_000_000)


@dataclass(frozen=True, slots=True)
class InboxMessage:
    """One message in one user's inbox.

    ``position`` is given by the store: strictly increasing within a user's inbox (microseconds of
    ``created_at``, or one more than the newest if the clock is behind it). Cursors and SSE ids are positions.
    """

    id: str
    user_id: str
    title: str
    body: str
    url: str | None
    created_at: datetime
    delivery_id: str
    notification_id: str | None = None
    read_at: datetime | None = None
    position: int = 0

    @classmethod
    def new(
        cls,
        *,
        user_id: str,
        title: str,
        body: str,
        delivery_id: str,
        url: str | None = None,
        notification_id: str | None = None,
    ) -> InboxMessage:
        """A message created now with a fresh ``msg_…`` id, for ``InboxStore.deliver``."""
        return cls(
            id=f"msg_{uuid.uuid4().hex}",
            user_id=user_id,
            title=title,
            body=body,
            url=url,
            created_at=datetime.now(UTC),
            delivery_id=delivery_id,
            notification_id=notification_id,
        )

    def at(self, position: int) -> InboxMessage:
        return replace(self, position=position)

    def read(self, when: datetime) -> InboxMessage:
        return self if self.read_at is not None else replace(self, read_at=when)

    def to_json(self) -> dict[str, Any]:
        """What is stored: everything but ``read_at`` and ``position``, which the store keeps beside it."""
        return {
            "id": self.id,
            "user_id": self.user_id,
            "title": self.title,
            "body": self.body,
            "url": self.url,
            "created_at": self.created_at.isoformat(),
            "delivery_id": self.delivery_id,
            "notification_id": self.notification_id,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], *, position: int, read_at: datetime | None = None) -> InboxMessage:
        return cls(
            id=data["id"],
            user_id=data["user_id"],
            title=data["title"],
            body=data["body"],
            url=data["url"],
            created_at=datetime.fromisoformat(data["created_at"]),
            delivery_id=data["delivery_id"],
            notification_id=data["notification_id"],
            read_at=read_at,
            position=position,
        )


Messages = list[InboxMessage]  # a name of its own: in the stores, ``list`` is a method


@dataclass(frozen=True, slots=True)
class InboxPage:
    items: list[InboxMessage]
    next_cursor: str | None  # null on the last page
    unread: int  # the user's unread messages in all, not only on this page


class InboxStore(Protocol):
    """Each user's newest messages (at most ``max_per_user``, none older than ``ttl_s``) and a live feed."""

    async def deliver(self, message: InboxMessage) -> InboxMessage:
        """Store ``message`` and announce it to the user's live subscribers; returns it with its position.

        Idempotent on ``message.delivery_id``: a retried delivery stores nothing and returns the first copy.
        The oldest messages beyond the bound are dropped. Raises BackendUnavailableError if Redis is down.
        """
        ...

    async def list(
        self, user_id: str, *, cursor: str | None = None, limit: int = 50, unread_only: bool = False
    ) -> InboxPage:
        """Newest first, ``limit`` at a time, after ``cursor`` (a previous page's ``next_cursor``).

        Raises ValueError for a cursor this store never gave out.
        """
        ...

    async def mark_read(self, user_id: str, message_id: str) -> InboxMessage | None:
        """Mark one message read (again is a no-op); None if the user has no such message."""
        ...

    async def mark_all_read(self, user_id: str) -> int:
        """Mark every unread message read; how many were unread."""
        ...

    async def unread_count(self, user_id: str) -> int: ...

    async def since(self, user_id: str, position: int) -> Messages:
        """Messages kept with a position after ``position``, oldest first (an SSE ``Last-Event-ID`` replay)."""
        ...

    async def subscribe(self, user_id: str) -> Subscription:
        """A live feed of the user's new messages, receiving from when this returns; ``close()`` it when done.

        Raises BackendUnavailableError when the feed cannot be opened (Redis down, or streams closed).
        """
        ...

    def subscribers(self) -> int:
        """Live feeds open in this process."""
        ...

    def close_streams(self) -> None:
        """End every live feed now and refuse new ones: the server is shutting down."""
        ...

    async def aclose(self) -> None:
        """``close_streams`` and release what the store holds (not the Redis client it was given)."""
        ...


def parse_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not cursor.isdigit() or len(cursor) > 19:
        raise ValueError(f"not a cursor of this inbox: {cursor!r}")
    return int(cursor)
