"""Live feeds of a web instance fed by Redis pub/sub: one connection for all of its open streams.

Each user has a channel (``herald:inbox:{<user_id>}:events``), and an instance SUBSCRIBEs to a user's
channel while at least one of its streams is open for that user. So Redis sends an instance only the
messages of users connected to it — one global channel would send every instance every message — and
PUBLISH costs one delivery per instance with a stream open for that user. One connection per instance, not
per stream: a thousand open streams hold one Redis connection, not a thousand.

If the pub/sub connection fails, every feed ends: SSE clients reconnect with ``Last-Event-ID`` and replay
what they missed from the store, rather than stay open on a connection that no longer receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from core.errors import BackendUnavailableError
from core.redis_stores import unavailable
from tasks.inbox.feed import Fanout, Subscription

if TYPE_CHECKING:
    from tasks.inbox.message import InboxMessage

logger = logging.getLogger("herald.inbox")

READ_TIMEOUT_S = 1.0
CONFIRM_TIMEOUT_S = 5.0


class RedisFeed:
    def __init__(
        self,
        redis: Redis,
        *,
        channel_of: Callable[[str], str],
        decode: Callable[[bytes], InboxMessage],
        subscriber_buffer: int,
    ) -> None:
        self._redis = redis
        self._channel_of = channel_of
        self._decode = decode
        self._fanout = Fanout(buffer=subscriber_buffer, on_last_left=self._last_left)
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._confirmed: dict[str, asyncio.Event] = {}  # channel -> set once Redis acknowledged SUBSCRIBE
        self._chores: set[asyncio.Task[None]] = set()
        self._closed = False

    async def subscribe(self, user_id: str) -> Subscription:
        """A feed that receives every message published after this returns (Redis has confirmed)."""
        if self._closed:
            raise BackendUnavailableError("the server is shutting down")
        channel = self._channel_of(user_id)
        subscription = self._fanout.add(user_id)
        try:
            confirmed = self._confirmed.get(channel)
            if confirmed is None:
                confirmed = self._confirmed[channel] = asyncio.Event()
                pubsub = self._connection()
                await pubsub.subscribe(channel)
                if self._reader is None or self._reader.done():
                    self._reader = asyncio.create_task(self._read(pubsub), name="herald-inbox-pubsub")
            await asyncio.wait_for(confirmed.wait(), CONFIRM_TIMEOUT_S)
        except RedisError as exc:
            subscription.close()
            raise unavailable(exc) from exc
        except TimeoutError:
            subscription.close()
            raise BackendUnavailableError("Redis did not confirm the subscription") from None
        except BaseException:
            subscription.close()
            raise
        return subscription

    def close_streams(self) -> None:
        self._closed = True
        self._fanout.close_all()

    async def aclose(self) -> None:
        self.close_streams()
        await self._reset()
        for chore in list(self._chores):
            chore.cancel()
        await asyncio.gather(*self._chores, return_exceptions=True)

    def subscribers(self) -> int:
        return self._fanout.count()

    def _connection(self) -> PubSub:
        if self._pubsub is None:
            self._pubsub = self._redis.pubsub()
        return self._pubsub

    async def _read(self, pubsub: PubSub) -> None:
        try:
            while True:
                message = await pubsub.get_message(timeout=READ_TIMEOUT_S)
                if message is not None:
                    self._handle(message)
        except RedisError as exc:
            logger.warning("inbox pub/sub connection lost (%s): ending the open streams", type(exc).__name__)
            self._fanout.close_all()  # they reconnect with Last-Event-ID; no one waits on a dead connection
            self._task(self._reset())

    def _handle(self, message: dict[str, Any]) -> None:
        channel = message["channel"].decode()
        if message["type"] == "subscribe":
            confirmed = self._confirmed.get(channel)
            if confirmed is not None:
                confirmed.set()
        elif message["type"] == "message":
            try:
                decoded = self._decode(message["data"])
            except (ValueError, KeyError, TypeError):
                logger.warning("inbox event on %s is not a message; ignored", channel)
                return
            self._fanout.publish(decoded)

    def _last_left(self, user_id: str) -> None:
        # Called from Subscription.close(), which is synchronous (it may run in a task being cancelled):
        # the UNSUBSCRIBE goes out from a task of its own.
        channel = self._channel_of(user_id)
        was_subscribed = self._confirmed.pop(channel, None) is not None
        if was_subscribed and self._pubsub is not None and not self._closed:
            self._task(self._unsubscribe(self._pubsub, channel))

    async def _unsubscribe(self, pubsub: PubSub, channel: str) -> None:
        if channel in self._confirmed:  # someone subscribed again meanwhile
            return
        with contextlib.suppress(RedisError):
            await pubsub.unsubscribe(channel)

    async def _reset(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        reader, self._reader = self._reader, None
        self._confirmed.clear()
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if pubsub is not None:
            with contextlib.suppress(RedisError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _task(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)
