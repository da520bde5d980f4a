"""The inbox in Redis (arq mode), shared by every web and worker instance.

Keys, per user, all under one hash tag so a script's keys share a Redis Cluster slot::

    herald:inbox:{<user_id>}:order       ZSET message id -> position (microseconds, strictly increasing)
    herald:inbox:{<user_id>}:unread      ZSET the unread ones, same scores
    herald:inbox:{<user_id>}:msgs        HASH message id -> JSON (immutable)
    herald:inbox:{<user_id>}:reads       HASH message id -> read_at (ISO 8601)
    herald:inbox:{<user_id>}:deliveries  HASH delivery id -> message id (a retried delivery stores nothing)
    herald:inbox:{<user_id>}:events      pub/sub channel: "<position> <JSON>" of each new message

Every write refreshes the five keys' TTL (``RECORD_TTL_S``): a user's inbox goes RECORD_TTL_S after its last
write. Messages older than that are dropped by the next delivery and never listed or counted before.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.redis_stores import KEY_PREFIX, unavailable
from tasks.inbox.feed import SUBSCRIBER_BUFFER, Subscription
from tasks.inbox.message import InboxMessage, InboxPage, Messages, parse_cursor, position_of
from tasks.inbox.redis_feed import RedisFeed

INBOX_PREFIX = KEY_PREFIX + "inbox:"
_Rows = list[tuple[str, int]]  # (message id, position)
_PARTS = ("order", "unread", "msgs", "reads", "deliveries")

_EXPIRE_LUA = """
local function expire_all(ttl_ms)
  for i = 1, 5 do redis.call('PEXPIRE', KEYS[i], ttl_ms) end
end
"""

# ARGV: delivery id, message id, JSON, created (us), oldest kept (us), max per user, TTL ms, channel.
# Positions go through string.format('%d'): Lua's tostring would print 1.8e+15 and lose the last digits.
_DELIVER = (
    _EXPIRE_LUA
    + """
local existing = redis.call('HGET', KEYS[5], ARGV[1])
if existing then
  local raw = redis.call('HGET', KEYS[3], existing)
  if raw then
    return {0, raw, redis.call('ZSCORE', KEYS[1], existing), redis.call('HGET', KEYS[4], existing) or false}
  end
end
local position = tonumber(ARGV[4])
local newest = redis.call('ZREVRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if newest[2] and tonumber(newest[2]) >= position then position = tonumber(newest[2]) + 1 end
local pos = string.format('%d', position)
redis.call('ZADD', KEYS[1], pos, ARGV[2])
redis.call('ZADD', KEYS[2], pos, ARGV[2])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[5], ARGV[1], ARGV[2])
local victims = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[5])
local over = redis.call('ZCARD', KEYS[1]) - #victims - tonumber(ARGV[6])
if over > 0 then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[1], #victims, #victims + over - 1)) do table.insert(victims, id) end
end
for _, id in ipairs(victims) do
  local raw = redis.call('HGET', KEYS[3], id)
  if raw then redis.call('HDEL', KEYS[5], cjson.decode(raw)['delivery_id']) end
  redis.call('HDEL', KEYS[3], id)
  redis.call('HDEL', KEYS[4], id)
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
end
expire_all(ARGV[7])
redis.call('PUBLISH', ARGV[8], pos .. ' ' .. ARGV[3])
return {1, ARGV[3], pos, false}
"""
)

# ARGV: message id, read_at, oldest kept (us), TTL ms.
_MARK_READ = (
    _EXPIRE_LUA
    + """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) < tonumber(ARGV[3]) then return false end
if redis.call('ZREM', KEYS[2], ARGV[1]) == 1 then redis.call('HSET', KEYS[4], ARGV[1], ARGV[2]) end
expire_all(ARGV[4])
return {redis.call('HGET', KEYS[3], ARGV[1]), score, redis.call('HGET', KEYS[4], ARGV[1]) or false}
"""
)

# ARGV: read_at, oldest kept (us), TTL ms.
_MARK_ALL_READ = (
    _EXPIRE_LUA
    + """
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], ARGV[2], '+inf')
for _, id in ipairs(ids) do redis.call('HSET', KEYS[4], id, ARGV[1]) end
redis.call('DEL', KEYS[2])
if #ids > 0 then expire_all(ARGV[3]) end
return #ids
"""
)


def inbox_keys(user_id: str) -> list[str]:
    return [f"{INBOX_PREFIX}{{{user_id}}}:{part}" for part in _PARTS]


def events_channel(user_id: str) -> str:
    return f"{INBOX_PREFIX}{{{user_id}}}:events"


class RedisInbox:
    """The inbox of every instance sharing ``redis``; see the module docstring for the keys.

    A worker builds one on its own client to deliver (``RedisInbox(ctx["redis"], ...)``); a web instance's
    live feeds share one pub/sub connection (see RedisFeed). Redis errors raise BackendUnavailableError.
    """

    def __init__(
        self, redis: Redis, *, max_per_user: int, ttl_s: float, subscriber_buffer: int = SUBSCRIBER_BUFFER
    ) -> None:
        self._redis = redis
        self._max = max_per_user
        self._ttl_s = ttl_s
        self._deliver = redis.register_script(_DELIVER)
        self._mark_read = redis.register_script(_MARK_READ)
        self._mark_all_read = redis.register_script(_MARK_ALL_READ)
        self._feed = RedisFeed(
            redis, channel_of=events_channel, decode=decode_event, subscriber_buffer=subscriber_buffer
        )

    async def deliver(self, message: InboxMessage) -> InboxMessage:
        payload = json.dumps(message.to_json())
        args: list[str | int] = [
            message.delivery_id,
            message.id,
            payload,
            position_of(message.created_at),
            self._oldest_kept(),
            self._max,
            int(self._ttl_s * 1000),
            events_channel(message.user_id),
        ]
        try:
            _, raw, position, read_at = await self._deliver(keys=inbox_keys(message.user_id), args=args)
        except RedisError as exc:
            raise unavailable(exc) from exc
        return _message(raw, position, read_at)

    async def list(
        self, user_id: str, *, cursor: str | None = None, limit: int = 50, unread_only: bool = False
    ) -> InboxPage:
        before = parse_cursor(cursor)
        order, unread, *_ = inbox_keys(user_id)
        oldest = self._oldest_kept()
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrevrangebyscore(
                    unread if unread_only else order,
                    f"({before}" if before is not None else "+inf",
                    oldest,
                    start=0,
                    num=limit + 1,
                    withscores=True,
                )
                pipe.zcount(unread, oldest, "+inf")
                rows, unread_count = await pipe.execute()
            items = await self._load(user_id, [(raw_id.decode(), int(score)) for raw_id, score in rows])
        except RedisError as exc:
            raise unavailable(exc) from exc
        more = len(rows) > limit
        items = items[:limit]
        return InboxPage(
            items=items, next_cursor=str(items[-1].position) if more and items else None, unread=int(unread_count)
        )

    async def mark_read(self, user_id: str, message_id: str) -> InboxMessage | None:
        args: list[str | int] = [
            message_id,
            datetime.now(UTC).isoformat(),
            self._oldest_kept(),
            int(self._ttl_s * 1000),
        ]
        try:
            found = await self._mark_read(keys=inbox_keys(user_id), args=args)
        except RedisError as exc:
            raise unavailable(exc) from exc
        if not found:
            return None
        raw, position, read_at = found
        return _message(raw, position, read_at)

    async def mark_all_read(self, user_id: str) -> int:
        args: list[str | int] = [datetime.now(UTC).isoformat(), self._oldest_kept(), int(self._ttl_s * 1000)]
        try:
            return int(await self._mark_all_read(keys=inbox_keys(user_id), args=args))
        except RedisError as exc:
            raise unavailable(exc) from exc

    async def unread_count(self, user_id: str) -> int:
        try:
            return int(await self._redis.zcount(inbox_keys(user_id)[1], self._oldest_kept(), "+inf"))
        except RedisError as exc:
            raise unavailable(exc) from exc

    async def since(self, user_id: str, position: int) -> Messages:
        lowest = max(position + 1, self._oldest_kept())
        try:
            rows = await self._redis.zrangebyscore(inbox_keys(user_id)[0], lowest, "+inf", withscores=True)
            return await self._load(user_id, [(raw_id.decode(), int(score)) for raw_id, score in rows])
        except RedisError as exc:
            raise unavailable(exc) from exc

    async def subscribe(self, user_id: str) -> Subscription:
        return await self._feed.subscribe(user_id)

    def close_streams(self) -> None:
        self._feed.close_streams()

    async def aclose(self) -> None:
        await self._feed.aclose()

    def subscribers(self) -> int:
        """Open feeds in this process (for tests and metrics)."""
        return self._feed.subscribers()

    async def _load(self, user_id: str, rows: _Rows) -> Messages:
        if not rows:
            return []
        _, _, msgs, reads, _ = inbox_keys(user_id)
        ids = [message_id for message_id, _ in rows]
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hmget(msgs, ids)
            pipe.hmget(reads, ids)
            raws, read_ats = await pipe.execute()
        return [
            _message(raw, position, read_at)
            for (_, position), raw, read_at in zip(rows, raws, read_ats, strict=True)
            if raw is not None  # dropped between the two reads
        ]

    def _oldest_kept(self) -> int:
        return int((time.time() - self._ttl_s) * 1_000_000)


def _message(raw: bytes, position: bytes | int, read_at: bytes | None) -> InboxMessage:
    return InboxMessage.from_json(
        json.loads(raw),
        position=int(position),
        read_at=datetime.fromisoformat(read_at.decode()) if read_at else None,
    )


def decode_event(data: bytes) -> InboxMessage:
    """A pub/sub payload (``"<position> <JSON>"``) as the message it announces (unread: it is new)."""
    position, _, raw = data.partition(b" ")
    return _message(raw, position, None)
