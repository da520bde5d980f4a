"""The inbox in the web process's memory (in-process mode): lost on restart, like the job records."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from core.errors import BackendUnavailableError
from tasks.inbox.feed import Fanout, Subscription
from tasks.inbox.message import InboxMessage, InboxPage, Messages, parse_cursor, position_of

SWEEP_EVERY_S = 60.0


@dataclass
class _Box:
    messages: dict[str, InboxMessage] = field(default_factory=dict)  # oldest first: positions only grow
    by_delivery: dict[str, str] = field(default_factory=dict)
    last_position: int = 0


class MemoryInbox:
    """Each user's newest ``max_per_user`` messages, none older than ``ttl_s``.

    Nothing here awaits, so each method is atomic on the event loop. Users whose messages have all expired
    are swept out every minute (on a delivery), so memory follows the active users, not all users ever seen.
    """

    def __init__(self, *, max_per_user: int, ttl_s: float, subscriber_buffer: int | None = None) -> None:
        self._max = max_per_user
        self._ttl = timedelta(seconds=ttl_s)
        self._boxes: dict[str, _Box] = {}
        self._fanout = Fanout() if subscriber_buffer is None else Fanout(buffer=subscriber_buffer)
        self._next_sweep = time.monotonic() + SWEEP_EVERY_S

    async def deliver(self, message: InboxMessage) -> InboxMessage:
        self._sweep()
        box = self._boxes.setdefault(message.user_id, _Box())
        self._prune(box)
        existing = box.by_delivery.get(message.delivery_id)
        if existing is not None and existing in box.messages:
            return box.messages[existing]
        stored = message.at(max(position_of(message.created_at), box.last_position + 1))
        box.last_position = stored.position
        box.messages[stored.id] = stored
        box.by_delivery[stored.delivery_id] = stored.id
        while len(box.messages) > self._max:
            self._drop_oldest(box)
        self._fanout.publish(stored)
        return stored

    async def list(
        self, user_id: str, *, cursor: str | None = None, limit: int = 50, unread_only: bool = False
    ) -> InboxPage:
        before = parse_cursor(cursor)
        box = self._box(user_id)
        found: list[InboxMessage] = []
        for message in reversed(box.messages.values()) if box else ():
            if before is not None and message.position >= before:
                continue
            if unread_only and message.read_at is not None:
                continue
            found.append(message)
            if len(found) > limit:
                break
        more = len(found) > limit
        items = found[:limit]
        return InboxPage(
            items=items,
            next_cursor=str(items[-1].position) if more else None,
            unread=await self.unread_count(user_id),
        )

    async def mark_read(self, user_id: str, message_id: str) -> InboxMessage | None:
        box = self._box(user_id)
        message = box.messages.get(message_id) if box else None
        if box is None or message is None:
            return None
        box.messages[message_id] = message = message.read(datetime.now(UTC))
        return message

    async def mark_all_read(self, user_id: str) -> int:
        box = self._box(user_id)
        if box is None:
            return 0
        now = datetime.now(UTC)
        unread = [message for message in box.messages.values() if message.read_at is None]
        for message in unread:
            box.messages[message.id] = message.read(now)
        return len(unread)

    async def unread_count(self, user_id: str) -> int:
        box = self._box(user_id)
        return sum(message.read_at is None for message in box.messages.values()) if box else 0

    async def since(self, user_id: str, position: int) -> Messages:
        box = self._box(user_id)
        return [message for message in box.messages.values() if message.position > position] if box else []

    async def subscribe(self, user_id: str) -> Subscription:
        if self._fanout.closed:
            raise BackendUnavailableError("the server is shutting down")
        return self._fanout.add(user_id)

    def close_streams(self) -> None:
        self._fanout.closed = True
        self._fanout.close_all()

    async def aclose(self) -> None:
        self.close_streams()

    def subscribers(self) -> int:
        """Open feeds in all (for tests and metrics)."""
        return self._fanout.count()

    def _box(self, user_id: str) -> _Box | None:
        box = self._boxes.get(user_id)
        if box is not None:
            self._prune(box)
        return box

    def _prune(self, box: _Box) -> None:
        oldest_kept = datetime.now(UTC) - self._ttl
        while box.messages and next(iter(box.messages.values())).created_at < oldest_kept:
            self._drop_oldest(box)

    def _drop_oldest(self, box: _Box) -> None:
        oldest = box.messages.pop(next(iter(box.messages)))
        box.by_delivery.pop(oldest.delivery_id, None)

    def _sweep(self) -> None:
        if time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + SWEEP_EVERY_S
        for user_id, box in list(self._boxes.items()):
            self._prune(box)
            if not box.messages:
                del self._boxes[user_id]
