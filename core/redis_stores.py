"""Job records and documents in Redis, shared by every web and worker instance.

Each job record is a JSON string under ``herald:job:<id>`` and each document a JSON string under
``herald:doc:<key>``, all with a TTL (``RECORD_TTL_S``). State changes that race with another
instance (a worker starting a job while an API instance cancels it) go through a compare-and-set
script, so exactly one of them wins.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.errors import BackendUnavailableError
from core.jobs import JobRecord, JobState

KEY_PREFIX = "herald:"
JOB_PREFIX = KEY_PREFIX + "job:"
DOC_PREFIX = KEY_PREFIX + "doc:"

# KEYS[1] record key; ARGV[1] new JSON, ARGV[2] TTL ms, ARGV[3..] states the current one must be in.
_SET_IF_STATE = """
local current = redis.call('GET', KEYS[1])
if not current then return false end
local state = cjson.decode(current)['state']
for i = 3, #ARGV do
  if ARGV[i] == state then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
  end
end
return current
"""


def unavailable(exc: RedisError) -> BackendUnavailableError:
    return BackendUnavailableError(f"Redis is unavailable ({type(exc).__name__})")


class RedisJobStore:
    def __init__(self, redis: Redis, *, ttl_s: float) -> None:
        self._redis = redis
        self._ttl_ms = int(ttl_s * 1000)
        self._set_if_state = redis.register_script(_SET_IF_STATE)

    async def save(self, record: JobRecord) -> None:
        try:
            await self._redis.set(JOB_PREFIX + record.id, json.dumps(record.to_json()), px=self._ttl_ms)
        except RedisError as exc:
            raise unavailable(exc) from exc

    async def save_if(self, record: JobRecord, expected: Iterable[JobState]) -> bool:
        """Save ``record`` only if the stored one is in one of the ``expected`` states."""
        try:
            result = await self._set_if_state(
                keys=[JOB_PREFIX + record.id],
                args=[json.dumps(record.to_json()), self._ttl_ms, *(state.value for state in expected)],
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
        keys = [JOB_PREFIX + job_id for job_id in job_ids]
        if keys:
            try:
                await self._redis.delete(*keys)
            except RedisError as exc:
                raise unavailable(exc) from exc


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

    async def delete(self, *keys: str) -> None:
        if keys:
            try:
                await self._redis.delete(*(DOC_PREFIX + key for key in keys))
            except RedisError as exc:
                raise unavailable(exc) from exc
