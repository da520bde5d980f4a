"""Live feeds in one process: each subscriber gets a bounded buffer of the user's new messages.

A subscriber that falls ``buffer`` messages behind is dropped rather than its oldest messages: its feed
ends after what it buffered, so an SSE client reconnects with ``Last-Event-ID`` and replays what it missed
from the store, instead of silently having a hole. Memory stays bounded by subscribers x ``buffer``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.inbox.message import InboxMessage

SUBSCRIBER_BUFFER = 100


class Subscription:
    """One subscriber's feed: ``async for message in subscription`` or ``await next(timeout_s)``.

    ``close()`` (or leaving ``with subscription:``) is synchronous, so it also works while the task
    that owns the feed is being cancelled.
    """

    def __init__(self, user_id: str, *, buffer: int, on_close: Callable[[Subscription], None]) -> None:
        self.user_id = user_id
        self.overflowed = False
        self._buffer = buffer
        self._items: deque[InboxMessage] = deque()
        self._ready = asyncio.Event()
        self._closed = False
        self._on_close = on_close

    @property
    def ended(self) -> bool:
        """Closed, and everything it buffered has been taken."""
        return self._closed and not self._items

    def push(self, message: InboxMessage) -> None:
        if self._closed:
            return
        if len(self._items) >= self._buffer:
            self.overflowed = True
            self.close()
            return
        self._items.append(message)
        self._ready.set()

    async def next(self, timeout_s: float) -> InboxMessage | None:
        """The next message, or None after ``timeout_s`` without one or once the feed has ended."""
        if not self._items and not self._closed:
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout_s)
            except TimeoutError:
                return None
        return self._items.popleft() if self._items else None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._ready.set()
            self._on_close(self)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> InboxMessage:
        while not self.ended:
            message = await self.next(3600.0)
            if message is not None:
                return message
        raise StopAsyncIteration

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


class Fanout:
    """The subscribers of this process, by user; ``publish`` hands a message to each of the user's."""

    def __init__(self, *, buffer: int = SUBSCRIBER_BUFFER, on_last_left: Callable[[str], None] | None = None) -> None:
        self._buffer = buffer
        self._by_user: dict[str, set[Subscription]] = {}
        self._on_last_left = on_last_left
        self.closed = False

    def add(self, user_id: str) -> Subscription:
        subscription = Subscription(user_id, buffer=self._buffer, on_close=self._remove)
        self._by_user.setdefault(user_id, set()).add(subscription)
        return subscription

    def has(self, user_id: str) -> bool:
        return bool(self._by_user.get(user_id))

    def users(self) -> list[str]:
        return list(self._by_user)

    def count(self) -> int:
        return sum(len(subscriptions) for subscriptions in self._by_user.values())

    def publish(self, message: InboxMessage) -> None:
        for subscription in list(self._by_user.get(message.user_id, ())):
            subscription.push(message)

    def close_all(self) -> None:
        for subscriptions in list(self._by_user.values()):
            for subscription in list(subscriptions):
                subscription.close()

    def _remove(self, subscription: Subscription) -> None:
        subscriptions = self._by_user.get(subscription.user_id)
        if subscriptions is None:
            return
        subscriptions.discard(subscription)
        if not subscriptions:
            del self._by_user[subscription.user_id]
            if self._on_last_left is not None:
                self._on_last_left(subscription.user_id)
