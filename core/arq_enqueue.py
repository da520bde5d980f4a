"""Writing jobs to arq's queue in Redis: one Lua script per enqueue, all or nothing.

The script writes everything an enqueue needs — the idempotency claim, the documents, each job's
record and arq's own job key — in one round trip, so a request is stored whole or not at all and
two instances racing on one claim cannot both win. It can also finish the job that led to this one
(a chain's step) in the same write, so a crash never leaves a step done without its successor.

Concurrent enqueues share round trips: the scripts that callers ask for during one turn of the event
loop go to Redis in one pipeline (:class:`ScriptBatch`). Each is still its own atomic script with its own
answer; fifty requests arriving together cost one write and one read instead of fifty of each.

Priorities on one arq queue: arq picks due jobs in the order of their score, which is also the ms
they are due. A job due now goes on arq's queue scored ``due - priority band`` (core/jobs.py), so
every urgent job sorts before every high one and so on, FIFO within a band. A job due later (a
scheduled send, a back-off) waits in ``herald:deferred`` scored by its due time instead, and
:class:`Promoter` moves it onto arq's queue, banded, when its time comes: one worker, one queue,
every level.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

from arq.constants import default_queue_name, job_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from core.backend import Enqueued
from core.codec import json_dumps
from core.documents import Claim, Document
from core.errors import BackendUnavailableError, DuplicateJobError, NotRetryableError
from core.jobs import (
    CANCELLABLE,
    EXPIRED_NOTE,
    PRIORITY_BAND_MS,
    JobRecord,
    JobSpec,
    JobState,
    Priority,
)
from core.redis_stores import DOC_PREFIX, INDEX_LUA, JOB_PREFIX, KEY_PREFIX, RedisJobStore, score_of, unavailable
from core.registry import TaskRegistry

DEFERRED_KEY = KEY_PREFIX + "deferred"  # job id -> ms it is due; not on arq's queue until then
EXPIRING_KEY = KEY_PREFIX + "expiring"  # job id -> its expires_at in ms
# Past the last possible attempt, a job key lives this much longer (arq's own default margin).
EXPIRY_MARGIN_MS = 86_400_000
# A retried job is handed back to arq this far in the future, out of its reach, and promoted from
# herald:deferred at its due time with its band; a score this far out marks it as handed back.
FAR_FUTURE_MS = 10 * 365 * 86_400_000

# KEYS: claim, finishing record, document keys, record keys, arq job keys, arq queue, deferred, expiring.
# ARGV: mode ('0' plain, '1' with claim, '2' re-run of failed jobs), claim value, claim TTL ms,
#       #documents, document TTL ms, #jobs, record TTL ms, finishing record JSON ('' none), its index score,
#       its id, guard document key ('' none: if it says cancelled, only the finishing record is written),
#       then document values, then per job: record JSON, arq job, arq job TTL ms,
#       priority band ms ('' = deferred), due ms, job id, state, index score, expires_at ms ('' none).
_ENQUEUE = (
    INDEX_LUA
    + """
local n_docs, n_jobs = tonumber(ARGV[4]), tonumber(ARGV[6])
local first_job = 11 + n_docs
local function job_arg(j, i) return ARGV[first_job + (j - 1) * 9 + i] end
if ARGV[1] == '1' then
  local existing = redis.call('GET', KEYS[1])
  if existing then return {'claimed', existing} end
end
if ARGV[8] ~= '' then  -- finishing the job this one follows: only if it is still running here
  local current = redis.call('GET', KEYS[2])
  if not current or cjson.decode(current)['state'] ~= 'running' then return {'changed', ARGV[10]} end
  if ARGV[11] ~= '' then  -- its chain was cancelled: record the step, queue nothing after it
    local guard = redis.call('GET', ARGV[11])
    if guard and cjson.decode(guard)['cancelled'] then
      redis.call('SET', KEYS[2], ARGV[8], 'PX', ARGV[7])
      herald_index(ARGV[10], 'succeeded', ARGV[9])
      return {'stopped'}
    end
  end
end
for j = 1, n_jobs do
  if redis.call('EXISTS', KEYS[2 + n_docs + n_jobs + j]) == 1 then return {'duplicate', job_arg(j, 6)} end
  if ARGV[1] == '2' then  -- a re-run: only over a record that is failed right now
    local current = redis.call('GET', KEYS[2 + n_docs + j])
    if not current or cjson.decode(current)['state'] ~= 'failed' then return {'not_failed', job_arg(j, 6)} end
  end
end
-- A script error does not undo the writes before it, and ZADD is the only write here that can fail.
local queue_type = redis.call('TYPE', KEYS[3 + n_docs + 2 * n_jobs])['ok']
if queue_type ~= 'zset' and queue_type ~= 'none' then return {'not_a_queue', queue_type} end
if ARGV[1] == '1' then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
if ARGV[8] ~= '' then
  redis.call('SET', KEYS[2], ARGV[8], 'PX', ARGV[7])
  herald_index(ARGV[10], 'succeeded', ARGV[9])
end
for d = 1, n_docs do redis.call('SET', KEYS[2 + d], ARGV[11 + d], 'PX', ARGV[5]) end
local queue, deferred, expiring = KEYS[#KEYS - 2], KEYS[#KEYS - 1], KEYS[#KEYS]
-- A job due now is scored by Redis's own clock to the microsecond, each job of this script 1 us after the one
-- before: scripts run one at a time, so jobs of one priority keep the order they were queued in, even within
-- one millisecond (in ms scores they would tie, and a tie is ordered by job id).
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
for j = 1, n_jobs do
  local id = job_arg(j, 6)
  redis.call('SET', KEYS[2 + n_docs + j], job_arg(j, 1), 'PX', ARGV[7])
  herald_index(id, job_arg(j, 7), job_arg(j, 8))
  redis.call('SET', KEYS[2 + n_docs + n_jobs + j], job_arg(j, 2), 'PX', job_arg(j, 3))
  if job_arg(j, 4) ~= '' then
    redis.call('ZADD', queue, string.format('%.3f', now_ms + (j - 1) / 1000 - tonumber(job_arg(j, 4))), id)
  else
    redis.call('ZADD', deferred, job_arg(j, 5), id)
  end
  if job_arg(j, 9) ~= '' then redis.call('ZADD', expiring, job_arg(j, 9), id) end
end
return {'ok'}
"""
)

# KEYS: deferred, arq queue. ARGV: now ms, batch, far-future threshold ms, then 'priority=band' pairs.
# Moves due deferred jobs onto arq's queue with their band; drops entries whose arq job is gone
# (cancelled); leaves a retried job until arq has handed it back (its score is far in the future).
_PROMOTE = (
    """
local bands = {}
for i = 4, #ARGV do
  local name, band = string.match(ARGV[i], '(%a+)=(%d+)')
  bands[name] = tonumber(band)
end
local now = tonumber(ARGV[1])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local moved = 0
for i = 1, #due, 2 do
  local id, due_ms = due[i], tonumber(due[i + 1])
  if redis.call('EXISTS', '"""
    + job_key_prefix
    + """' .. id) == 0 then
    redis.call('ZREM', KEYS[1], id)
  else
    local score = redis.call('ZSCORE', KEYS[2], id)
    if not score or tonumber(score) > now + tonumber(ARGV[3]) then
      local raw = redis.call('GET', '"""
    + JOB_PREFIX
    + """' .. id)
      local priority = raw and cjson.decode(raw)['priority'] or 'normal'
      redis.call('ZADD', KEYS[2], due_ms - (bands[priority] or bands['normal']), id)
      redis.call('ZREM', KEYS[1], id)
      moved = moved + 1
    end
  end
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {moved, nxt[2] or false}
"""
)

_BAND_ARGS = [f"{priority.value}={priority.band_ms}" for priority in Priority]


def queue_score(due_ms: int, priority: Priority) -> int:
    """A job's score on arq's queue: when it is due, moved back by its priority band."""
    return due_ms - priority.band_ms


def unbanded_due_ms(score: float, now_ms: int) -> float:
    """The due time of a queue score (the inverse of queue_score, for waits shorter than a band)."""
    bands_back = round((now_ms - score) / PRIORITY_BAND_MS) if score < now_ms - PRIORITY_BAND_MS / 2 else 0
    return score + bands_back * PRIORITY_BAND_MS


class ScriptBatch:
    """Runs one Lua script for many concurrent callers: one pipeline of EVALSHAs per event-loop turn.

    A caller's script runs on its own, atomically, and it gets its own answer or error (a script's error is
    raised to that caller only). A connection error fails the whole pipeline, so every caller in it gets
    it, as each would have alone. A caller that is cancelled while waiting may still have been written,
    as with a single command already on the wire.
    """

    def __init__(self, redis: Redis, source: str) -> None:
        self._redis = redis
        self._script = redis.register_script(source)  # its sha; SCRIPT LOAD only when Redis lacks it
        self._waiting: list[tuple[list[Any], list[Any], asyncio.Future[Any]]] = []
        self._running: set[asyncio.Task[None]] = set()

    async def __call__(self, keys: list[Any], args: list[Any]) -> Any:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Any] = loop.create_future()
        if not self._waiting:
            # Runs after every task that is ready now: each request that arrived with this one joins it.
            loop.call_soon(self._flush)
        self._waiting.append((keys, args, answer))
        return await answer

    def _flush(self) -> None:
        calls, self._waiting = self._waiting, []
        task = asyncio.ensure_future(self._run(calls))
        self._running.add(task)  # a reference until it ends, or the loop may collect it
        task.add_done_callback(self._running.discard)

    async def _run(self, calls: list[tuple[list[Any], list[Any], asyncio.Future[Any]]]) -> None:
        try:
            results = await self._pipeline(calls)
            missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
            if missing:  # Redis restarted or was flushed since: load it, then run those (they did not run)
                await self._redis.script_load(self._script.script)
                for i, result in zip(missing, await self._pipeline([calls[i] for i in missing]), strict=True):
                    results[i] = result
        except Exception as exc:  # Redis unreachable, say: every caller raises it
            for _, _, answer in calls:
                if not answer.done():
                    answer.set_exception(exc)
            return
        except BaseException:  # cancelled (the loop is closing): so are the callers
            for _, _, answer in calls:
                answer.cancel()
            raise
        for (_, _, answer), result in zip(calls, results, strict=True):
            if answer.done():  # its caller was cancelled
                continue
            if isinstance(result, Exception):
                answer.set_exception(result)
            else:
                answer.set_result(result)

    async def _pipeline(self, calls: list[tuple[list[Any], list[Any], asyncio.Future[Any]]]) -> list[Any]:
        # EVALSHA by hand: a registered Script in a pipeline makes redis-py ask SCRIPT EXISTS first, every time.
        async with self._redis.pipeline(transaction=False) as pipe:
            for keys, args, _ in calls:
                pipe.evalsha(self._script.sha, len(keys), *keys, *args)
            results: list[Any] = await pipe.execute(raise_on_error=False)
        return results


class ArqEnqueuer:
    """Puts jobs on arq's queue (see the module docstring); shared by the web app and the workers."""

    def __init__(
        self, registry: TaskRegistry, redis: Redis, *, record_ttl_s: float, queue_name: str = default_queue_name
    ) -> None:
        self._registry = registry
        self._record_ttl_ms = int(record_ttl_s * 1000)
        self.queue_name = queue_name
        self._script = ScriptBatch(redis, _ENQUEUE)
        self._span_ms: dict[str, int] = {}  # per task: its whole retry schedule, computed once

    async def enqueue(
        self,
        specs: Sequence[JobSpec],
        *,
        documents: Sequence[Document] = (),
        claim: Claim | None = None,
        only_if_failed: bool = False,
        finishing: JobRecord | None = None,
        guard: str | None = None,
    ) -> Enqueued:
        """Write the jobs (and ``finishing``, now succeeded, if given) or nothing; see TaskBackend.enqueue.

        With ``guard`` (a document key, e.g. a chain's) saying ``cancelled``, only ``finishing`` is written
        and no job is: the answer has no records.
        """
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
            due_ms = int(due.timestamp() * 1000) if due is not None else now_ms
            records.append(record)
            arq_job = serialize_job(task.name, spec.args, spec.kwargs, None, now_ms, serializer=json_dumps)
            span_ms = self._span_ms.get(task.name)
            if span_ms is None:
                span_ms = self._span_ms[task.name] = int(task.policy.span_s() * 1000)
            expires_ms = due_ms - now_ms + span_ms + EXPIRY_MARGIN_MS
            job_args += [
                json.dumps(record.to_json()),
                arq_job,
                expires_ms,
                spec.priority.band_ms if due is None else "",
                due_ms,
                spec.job_id,
                record.state.value,
                score_of(record),
                int(spec.expires_at.timestamp() * 1000) if spec.expires_at else "",
            ]
        keys = [
            DOC_PREFIX + claim.key if claim else DOC_PREFIX + "-",
            JOB_PREFIX + finishing.id if finishing else JOB_PREFIX + "-",
            *(DOC_PREFIX + d.key for d in documents),
            *(JOB_PREFIX + spec.job_id for spec in specs),
            *(job_key_prefix + spec.job_id for spec in specs),
            self.queue_name,
            DEFERRED_KEY,
            EXPIRING_KEY,
        ]
        args: list[Any] = [
            "2" if only_if_failed else "1" if claim else "0",
            json.dumps(claim.value) if claim else "",
            int(claim.ttl_s * 1000) if claim else 0,
            len(documents),
            keep_ms,
            len(specs),
            keep_ms,
            json.dumps(finishing.to_json()) if finishing else "",
            score_of(finishing) if finishing else 0,
            finishing.id if finishing else "",
            DOC_PREFIX + guard if guard else "",
            *(json.dumps(d.value) for d in documents),
            *job_args,
        ]
        try:
            result = await self._script(keys, args)
        except RedisError as exc:
            raise unavailable(exc) from exc
        verdict = result[0].decode()
        if verdict == "stopped":
            return Enqueued()
        if verdict == "claimed":
            existing: dict[str, Any] = json.loads(result[1])
            return Enqueued(existing_claim=existing)
        if verdict == "not_failed":
            raise NotRetryableError(f"job {result[1].decode()!r} is not failed; only failed jobs can be retried")
        if verdict == "duplicate":
            raise DuplicateJobError(f"a job is already queued under id {result[1].decode()!r}")
        if verdict == "changed":
            raise DuplicateJobError(
                f"job {result[1].decode()!r} is no longer running here; its successor was not queued"
            )
        if verdict == "not_a_queue":
            raise BackendUnavailableError(
                f"Redis key {self.queue_name!r} holds a {result[1].decode()}, not arq's queue (a sorted set)"
            )
        return Enqueued(records=records)


class Promoter:
    """Moves deferred jobs onto arq's queue when due (see the module docstring); one per worker."""

    def __init__(self, redis: Redis, *, queue_name: str = default_queue_name) -> None:
        self._script = redis.register_script(_PROMOTE)  # EVALSHA, loading the script only the first time
        self._queue_name = queue_name

    async def promote_due(self, *, now_ms: int | None = None, batch: int = 500) -> tuple[int, int | None]:
        """Move those due now, banded; (how many moved, ms the next one is due or None)."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        moved, next_due = await self._script(
            keys=[DEFERRED_KEY, self._queue_name], args=[now_ms, batch, FAR_FUTURE_MS // 2, *_BAND_ARGS]
        )
        return int(moved), int(float(next_due)) if next_due else None


async def withdraw(
    store: RedisJobStore,
    redis: Redis,
    job_ids: Sequence[str],
    *,
    state: JobState,
    note: str,
    queue_name: str = default_queue_name,
) -> list[str]:
    """End the jobs that have not started as ``state`` (cancelled, expired); return their ids.

    A compare-and-set on each record decides against a worker starting the job at the same moment.
    """
    ended = []
    for job_id in job_ids:
        record = await store.get(job_id)
        while record is not None and record.state in CANCELLABLE:
            was = record.state
            record.move_to(state, error=note)
            if await store.save_if(record, [was]):
                ended.append(job_id)
                await _drop_from_queue(redis, job_id, queue_name)
                break
            record = await store.get(job_id)  # a worker moved it meanwhile; look again
    return ended


async def expire_due(redis: Redis, store: RedisJobStore, *, queue_name: str = default_queue_name) -> list[str]:
    """End as ``expired`` the jobs past their expires_at that have not started; their ids."""
    now_ms = int(time.time() * 1000)
    due = [raw.decode() for raw in await redis.zrangebyscore(EXPIRING_KEY, "-inf", now_ms, start=0, num=500)]
    if not due:
        return []
    expired = await withdraw(store, redis, due, state=JobState.EXPIRED, note=EXPIRED_NOTE, queue_name=queue_name)
    await redis.zrem(EXPIRING_KEY, *due)  # started or finished ones are past expiring too
    return expired


async def _drop_from_queue(redis: Redis, job_id: str, queue_name: str) -> None:
    # Tidiness only: a worker that picks the job anyway sees the record is no longer waiting.
    try:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.zrem(queue_name, job_id)
            pipe.zrem(DEFERRED_KEY, job_id)
            pipe.zrem(EXPIRING_KEY, job_id)
            pipe.delete(job_key_prefix + job_id)
            await pipe.execute()
    except RedisError as exc:
        raise unavailable(exc) from exc
