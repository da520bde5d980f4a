"""The durable backend: jobs on arq's queue in Redis, records and documents beside them.

One Lua script writes everything an enqueue needs — the idempotency claim, the documents, each
job's record and arq's own job key and queue entry — so a request is stored whole or not at all,
in one round trip, and two instances racing on one claim cannot both win. Jobs are JSON (arq
pickles by default).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from arq.constants import default_queue_name, job_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.arq_worker import EmbeddedWorker, live_workers
from core.backend import AfterResponse, Enqueued
from core.codec import json_dumps
from core.documents import Claim, Document
from core.errors import BackendUnavailableError, DuplicateJobError, NotRetryableError, QueueClosedError
from core.jobs import CANCELLABLE, JobRecord, JobSpec, JobState
from core.redis_stores import (
    DOC_PREFIX,
    INDEX_LUA,
    JOB_PREFIX,
    RedisDocumentStore,
    RedisJobStore,
    score_of,
    unavailable,
)
from core.registry import TaskRegistry

# Past the last possible attempt, a job key lives this much longer (arq's own default margin).
EXPIRY_MARGIN_MS = 86_400_000

# KEYS: claim key, document keys, record keys, arq job keys, queue key.
# ARGV: mode ('0' plain, '1' with claim, '2' re-run of failed jobs), claim value, claim TTL ms,
#       #documents, document TTL ms, #jobs, record TTL ms,
#       document values, then per job: record JSON, arq job, arq job TTL ms, score, job id, state,
#       index score (creation ms).
_ENQUEUE = (
    INDEX_LUA
    + """
local n_docs, n_jobs = tonumber(ARGV[4]), tonumber(ARGV[6])
if ARGV[1] == '1' then
  local existing = redis.call('GET', KEYS[1])
  if existing then return {'claimed', existing} end
end
for j = 1, n_jobs do
  if redis.call('EXISTS', KEYS[1 + n_docs + n_jobs + j]) == 1 then
    return {'duplicate', ARGV[7 + n_docs + (j - 1) * 7 + 5]}
  end
  if ARGV[1] == '2' then  -- a re-run: only over a record that is failed right now
    local current = redis.call('GET', KEYS[1 + n_docs + j])
    if not current or cjson.decode(current)['state'] ~= 'failed' then
      return {'not_failed', ARGV[7 + n_docs + (j - 1) * 7 + 5]}
    end
  end
end
-- A script error does not undo the writes before it, and ZADD is the only write here that can fail.
local queue_type = redis.call('TYPE', KEYS[#KEYS])['ok']
if queue_type ~= 'zset' and queue_type ~= 'none' then return {'not_a_queue', queue_type} end
if ARGV[1] == '1' then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
for d = 1, n_docs do redis.call('SET', KEYS[1 + d], ARGV[7 + d], 'PX', ARGV[5]) end
for j = 1, n_jobs do
  local a = 7 + n_docs + (j - 1) * 7
  redis.call('SET', KEYS[1 + n_docs + j], ARGV[a + 1], 'PX', ARGV[7])
  herald_index(ARGV[a + 5], ARGV[a + 6], ARGV[a + 7])
  redis.call('SET', KEYS[1 + n_docs + n_jobs + j], ARGV[a + 2], 'PX', ARGV[a + 3])
  redis.call('ZADD', KEYS[#KEYS], ARGV[a + 4], ARGV[a + 5])
end
return {'ok'}
"""
)


class ArqBackend:
    """Enqueues to arq through Redis; a worker (separate or embedded) runs the jobs."""

    name = "arq"

    def __init__(
        self,
        registry: TaskRegistry,
        redis: Redis,
        *,
        record_ttl_s: float,
        heartbeat_interval_s: float,
        worker: EmbeddedWorker | None = None,
        queue_name: str = default_queue_name,
    ) -> None:
        self._registry = registry
        self._redis = redis
        self._record_ttl_ms = int(record_ttl_s * 1000)
        self._heartbeat_interval_s = heartbeat_interval_s
        self._worker = worker
        self._queue_name = queue_name
        self._enqueue_script = redis.register_script(_ENQUEUE)
        self.store = RedisJobStore(redis, ttl_s=record_ttl_s)
        self.documents = RedisDocumentStore(redis)
        self._accepting = False

    @property
    def accepting(self) -> bool:
        return self._accepting

    async def start(self) -> None:
        self._accepting = True
        if self._worker is not None:
            await self._worker.start()

    async def stop(self, grace_s: float) -> list[str]:
        self._accepting = False
        if self._worker is not None:
            await self._worker.stop(grace_s)
        return []  # nothing is lost: what did not run stays queued in Redis

    async def enqueue(
        self,
        specs: Sequence[JobSpec],
        *,
        after_response: AfterResponse | None = None,
        documents: Sequence[Document] = (),
        claim: Claim | None = None,
        only_if_failed: bool = False,
    ) -> Enqueued:
        if not self._accepting:
            raise QueueClosedError("the server is shutting down and accepts no new jobs")
        documents = [*documents, *(spec.as_document() for spec in specs)]
        now_ms = int(time.time() * 1000)
        last_due_ms = max((int(s.defer_until.timestamp() * 1000) for s in specs if s.defer_until), default=now_ms)
        # Records and documents must outlive a far-off send_at by the usual retention, not expire before it.
        keep_ms = self._record_ttl_ms + max(0, last_due_ms - now_ms)
        records: list[JobRecord] = []
        job_args: list[Any] = []
        for spec in specs:
            task = self._registry.get(spec.task)
            record = JobRecord.accepted(spec, task=task.name, max_attempts=task.policy.max_attempts)
            due = record.next_attempt_at if record.state is JobState.SCHEDULED else None
            score = int(due.timestamp() * 1000) if due is not None else now_ms
            records.append(record)
            arq_job = serialize_job(task.name, spec.args, spec.kwargs, None, now_ms, serializer=json_dumps)
            expires_ms = score - now_ms + int(task.policy.span_s() * 1000) + EXPIRY_MARGIN_MS
            job_args += [
                json.dumps(record.to_json()),
                arq_job,
                expires_ms,
                score,
                spec.job_id,
                record.state.value,
                score_of(record),
            ]
        keys = [
            DOC_PREFIX + claim.key if claim else DOC_PREFIX + "-",
            *(DOC_PREFIX + d.key for d in documents),
            *(JOB_PREFIX + spec.job_id for spec in specs),
            *(job_key_prefix + spec.job_id for spec in specs),
            self._queue_name,
        ]
        args: list[Any] = [
            "2" if only_if_failed else "1" if claim else "0",
            json.dumps(claim.value) if claim else "",
            int(claim.ttl_s * 1000) if claim else 0,
            len(documents),
            keep_ms,
            len(specs),
            keep_ms,
            *(json.dumps(d.value) for d in documents),
            *job_args,
        ]
        try:
            result = await self._enqueue_script(keys=keys, args=args)
        except RedisError as exc:
            raise unavailable(exc) from exc
        verdict = result[0].decode()
        if verdict == "claimed":
            existing: dict[str, Any] = json.loads(result[1])
            return Enqueued(existing_claim=existing)
        if verdict == "not_failed":
            raise NotRetryableError(f"job {result[1].decode()!r} is not failed; only failed jobs can be retried")
        if verdict == "duplicate":
            raise DuplicateJobError(f"a job is already queued under id {result[1].decode()!r}")
        if verdict == "not_a_queue":
            raise BackendUnavailableError(
                f"Redis key {self._queue_name!r} holds a {result[1].decode()}, not arq's queue (a sorted set)"
            )
        return Enqueued(records=records)

    async def cancel(self, job_ids: Sequence[str]) -> list[str]:
        cancelled = []
        for job_id in job_ids:
            record = await self.store.get(job_id)
            while record is not None and record.state in CANCELLABLE:
                was = record.state
                record.move_to(JobState.CANCELLED, error="cancelled before it was sent")
                if await self.store.save_if(record, [was]):
                    cancelled.append(job_id)
                    await self._drop_from_queue(job_id)
                    break
                record = await self.store.get(job_id)  # a worker moved it meanwhile; look again
        return cancelled

    async def _drop_from_queue(self, job_id: str) -> None:
        # Tidiness only: a worker that picks the job anyway sees the record is cancelled.
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(self._queue_name, job_id)
                pipe.delete(job_key_prefix + job_id)
                await pipe.execute()
        except RedisError as exc:
            raise unavailable(exc) from exc

    async def readiness(self) -> dict[str, Any]:
        try:
            await self._redis.ping()
            workers = await live_workers(self._redis, max_age_s=3 * self._heartbeat_interval_s)
            queued = await self._redis.zcard(self._queue_name)
        except RedisError as exc:
            return {"ready": False, "redis": f"down ({type(exc).__name__})"}
        checks: dict[str, Any] = {"redis": "up", "workers_alive": workers, "queued_jobs": queued}
        ready = True
        if self._worker is not None:
            checks["embedded_worker"] = "running" if self._worker.running else "down"
            ready = self._worker.running
        return {"ready": ready, **checks}
