"""Job records and documents in Redis, shared by every web and worker instance.

Each job record is a JSON string under ``herald:job:<id>`` and each document a JSON string under
``herald:doc:<key>``, all with a TTL (``RECORD_TTL_S``). State changes that race with another
instance (a worker starting a job while an API instance cancels it) go through a compare-and-set
script, so exactly one of them wins.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError, RedisError

from core.errors import BackendUnavailableError
from core.jobs import JobRecord, JobState
from core.store import Position

KEY_PREFIX = "herald:"
JOB_PREFIX = KEY_PREFIX + "job:"
DOC_PREFIX = KEY_PREFIX + "doc:"
ALL_JOBS_INDEX = KEY_PREFIX + "jobs"
STATE_INDEX_PREFIX = KEY_PREFIX + "state:"

# Every script that writes a record keeps two indexes in step with it: herald:jobs (all jobs) and
# herald:state:<state> (jobs now in that state), both scored by creation time in ms, so listings are
# newest first without scanning keys. Entries older than RECORD_TTL_S are pruned when read.
INDEX_LUA = """
local function herald_index(id, state, score)
  score = score or redis.call('ZSCORE', '{all}', id)
  if not score then
    local now = redis.call('TIME')
    score = now[1] * 1000 + math.floor(now[2] / 1000)
  end
  for _, s in ipairs({{{states}}}) do
    if s ~= state then redis.call('ZREM', '{prefix}' .. s, id) end
  end
  redis.call('ZADD', '{prefix}' .. state, score, id)
  redis.call('ZADD', '{all}', score, id)
end
""".format(
    all=ALL_JOBS_INDEX,
    prefix=STATE_INDEX_PREFIX,
    states=", ".join(f"'{state.value}'" for state in JobState),
)

# A write may also add the job's id to sorted sets (with a score) and remove it from others, in the
# same step: KEYS[2..] are the sets to add to, then the sets to remove from; ARGV[6] is how many to add
# to and ARGV[7..] their scores. Returns the index of the first ARGV after those.
MEMBERSHIP_LUA = """
local function herald_memberships(id)
  local adds = tonumber(ARGV[6])
  for i = 1, adds do redis.call('ZADD', KEYS[1 + i], ARGV[6 + i], id) end
  for i = 2 + adds, #KEYS do redis.call('ZREM', KEYS[i], id) end
  return 7 + adds
end
"""

# KEYS[1] record key; ARGV[1] new JSON, ARGV[2] TTL ms, ARGV[3] job id, ARGV[4] new state, ARGV[5] score.
_SAVE = (
    INDEX_LUA
    + MEMBERSHIP_LUA
    + """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
herald_index(ARGV[3], ARGV[4], ARGV[5])
herald_memberships(ARGV[3])
return 1
"""
)

# As _SAVE, and the ARGVs after the memberships are the states the current record must be in.
_SET_IF_STATE = (
    INDEX_LUA
    + MEMBERSHIP_LUA
    + """
local current = redis.call('GET', KEYS[1])
if not current then return false end
local state = cjson.decode(current)['state']
local adds = tonumber(ARGV[6])
for i = 7 + adds, #ARGV do
  if ARGV[i] == state then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    herald_index(ARGV[3], ARGV[4], ARGV[5])
    herald_memberships(ARGV[3])
    return 1
  end
end
return current
"""
)


@dataclass(frozen=True, slots=True)
class Membership:
    """Sorted sets a record's write also adds its job id to (id -> score) or removes it from, atomically."""

    join: Mapping[str, int] = field(default_factory=dict)
    leave: Sequence[str] = ()

    def keys(self) -> list[str]:
        return [*self.join, *self.leave]

    def args(self) -> list[Any]:
        return [len(self.join), *self.join.values()]


NO_MEMBERSHIP = Membership()


def score_of(record: JobRecord) -> int:
    return int(record.created_at.timestamp() * 1000)


SCAN_BATCH = 200
OOM_MESSAGE = "command not allowed when used memory > 'maxmemory'"


def unavailable(exc: RedisError) -> BackendUnavailableError:
    """The error to raise for a Redis failure; a full Redis (maxmemory under noeviction) says so."""
    # A script's refused write arrives as a plain ResponseError carrying Redis's OOM message.
    if isinstance(exc, OutOfMemoryError) or OOM_MESSAGE in str(exc):
        return BackendUnavailableError("Redis is out of memory (maxmemory reached) and refuses new writes")
    return BackendUnavailableError(f"Redis is unavailable ({type(exc).__name__})")


class RedisJobStore:
    def __init__(self, redis: Redis, *, ttl_s: float) -> None:
        self._redis = redis
        self._ttl_ms = int(ttl_s * 1000)
        self._ttl_s = ttl_s
        self._save = redis.register_script(_SAVE)
        self._set_if_state = redis.register_script(_SET_IF_STATE)

    def _write_args(self, record: JobRecord, membership: Membership) -> list[Any]:
        return [
            json.dumps(record.to_json()),
            self._ttl_ms,
            record.id,
            record.state.value,
            score_of(record),
            *membership.args(),
        ]

    async def save(self, record: JobRecord, membership: Membership = NO_MEMBERSHIP) -> None:
        try:
            await self._save(
                keys=[JOB_PREFIX + record.id, *membership.keys()], args=self._write_args(record, membership)
            )
        except RedisError as exc:
            raise unavailable(exc) from exc

    async def save_if(
        self, record: JobRecord, expected: Iterable[JobState], membership: Membership = NO_MEMBERSHIP
    ) -> bool:
        """Save ``record`` only if the stored one is in one of the ``expected`` states."""
        try:
            result = await self._set_if_state(
                keys=[JOB_PREFIX + record.id, *membership.keys()],
                args=[*self._write_args(record, membership), *(state.value for state in expected)],
            )
        except RedisError as exc:
            raise unavailable(exc) from exc
        return bool(result == 1)

    async def get(self, job_id: str) -> JobRecord | None:
        try:
            raw = await self._redis.get(JOB_PREFIX + job_id)
        except RedisError as exc:
            raise unavailable(exc) from exc
        return JobRecord.from_json(json.loads(raw)) if raw else None

    async def get_many(self, job_ids: Iterable[str]) -> dict[str, JobRecord]:
        ids = list(job_ids)
        if not ids:
            return {}
        try:
            raws = await self._redis.mget([JOB_PREFIX + job_id for job_id in ids])
        except RedisError as exc:
            raise unavailable(exc) from exc
        return {job_id: JobRecord.from_json(json.loads(raw)) for job_id, raw in zip(ids, raws, strict=True) if raw}

    async def delete(self, job_ids: Iterable[str]) -> None:
        ids = list(job_ids)
        if ids:
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.delete(*(JOB_PREFIX + job_id for job_id in ids))
                    for index in self._indexes():
                        pipe.zrem(index, *ids)
                    await pipe.execute()
            except RedisError as exc:
                raise unavailable(exc) from exc

    async def list_records(
        self,
        *,
        state: JobState | None = None,
        tasks: Collection[str] | None = None,
        after: Position | None = None,
        limit: int = 50,
    ) -> list[JobRecord]:
        index = STATE_INDEX_PREFIX + state.value if state is not None else ALL_JOBS_INDEX
        found: list[JobRecord] = []
        skip = 0  # rows tied with ``after``'s score that were all listed already: step over them
        try:
            await self._prune()
            while len(found) < limit:
                upper = str(after[0]) if after is not None else "+inf"  # inclusive: ties are split by id below
                rows = await self._redis.zrevrangebyscore(
                    index, upper, "-inf", start=skip, num=SCAN_BATCH, withscores=True
                )
                page = [(int(score), raw.decode()) for raw, score in rows]
                if after is not None:
                    page = [row for row in page if row < after]
                if not page:
                    if len(rows) < SCAN_BATCH:
                        break
                    skip += SCAN_BATCH  # a whole batch of one millisecond, all before the cursor
                    continue
                records = await self.get_many(job_id for _, job_id in page)
                for _, job_id in page:
                    record = records.get(job_id)
                    wanted = record is not None and (state is None or record.state is state)  # it may have moved
                    if wanted and record is not None and (tasks is None or record.task in tasks):
                        found.append(record)
                        if len(found) == limit:
                            break
                if len(rows) < SCAN_BATCH:
                    break
                after, skip = page[-1], 0
        except RedisError as exc:
            raise unavailable(exc) from exc
        return found

    async def count_by_state(self) -> dict[JobState, int]:
        try:
            await self._prune()
            async with self._redis.pipeline(transaction=False) as pipe:
                for state in JobState:
                    pipe.zcard(STATE_INDEX_PREFIX + state.value)
                counts = await pipe.execute()
        except RedisError as exc:
            raise unavailable(exc) from exc
        return {state: int(count) for state, count in zip(JobState, counts, strict=True)}

    def _indexes(self) -> list[str]:
        return [ALL_JOBS_INDEX, *(STATE_INDEX_PREFIX + state.value for state in JobState)]

    async def _prune(self) -> None:
        oldest_ms = int((time.time() - self._ttl_s) * 1000)
        async with self._redis.pipeline(transaction=False) as pipe:
            for index in self._indexes():
                pipe.zremrangebyscore(index, "-inf", oldest_ms)
            await pipe.execute()


class RedisDocumentStore:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def get(self, key: str) -> dict[str, Any] | None:
        try:
            raw = await self._redis.get(DOC_PREFIX + key)
        except RedisError as exc:
            raise unavailable(exc) from exc
        value: dict[str, Any] | None = json.loads(raw) if raw else None
        return value

    async def get_many(self, keys: list[str]) -> list[dict[str, Any] | None]:
        if not keys:
            return []
        try:
            raws = await self._redis.mget([DOC_PREFIX + key for key in keys])
        except RedisError as exc:
            raise unavailable(exc) from exc
        return [json.loads(raw) if raw else None for raw in raws]

    async def delete(self, *keys: str) -> None:
        if keys:
            try:
                await self._redis.delete(*(DOC_PREFIX + key for key in keys))
            except RedisError as exc:
                raise unavailable(exc) from exc

    async def replace(self, key: str, value: dict[str, Any]) -> bool:
        try:
            return bool(await self._redis.set(DOC_PREFIX + key, json.dumps(value), xx=True, keepttl=True))
        except RedisError as exc:
            raise unavailable(exc) from exc
