"""Putting back jobs that a lost arq worker left ``running``, and pruning Herald's own bookkeeping.

``run_job`` (core/arq_worker.py) adds each job to the ``herald:running`` sorted set while it runs,
scored with the time after which it counts as stuck (job timeout + margins), and removes it on
every way out. An entry still there past its score means the worker died mid-attempt (SIGKILL,
OOM, lost host). For each such job, atomically in one script:

- if a worker holds it (arq's ``arq:in-progress:<id>`` key exists), leave it alone;
- if arq's job key ``arq:job:<id>`` still exists, put the job back on the queue (due now) and its
  record back to ``queued``; the lost attempt still counts;
- otherwise nothing can run it again: mark the record ``failed`` with the reason.

The script also checks the record is byte for byte what was read, so a worker that picked the job
up again meanwhile (same ``running`` state, new ``updated_at``) is never overwritten.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, fields

from arq.constants import default_queue_name, in_progress_key_prefix, job_key_prefix
from redis.asyncio import Redis

from core.arq_enqueue import queue_score
from core.arq_worker import HEARTBEATS_KEY, RUNNING_KEY
from core.jobs import JobRecord, JobState, Priority
from core.redis_stores import INDEX_LUA, JOB_PREFIX

BATCH = 500  # stuck jobs handled per call; the rest wait for the next one
REQUEUED_NOTE = "its worker stopped during an attempt; re-queued"
LOST_REASON = (
    "lost: its worker stopped during an attempt and its queue entry expired (or is gone), so it cannot run again"
)

# KEYS: record, arq in-progress key, arq job key, arq queue, herald:running.
# ARGV: job id, the record as read ('' if none), record to write if re-queued ('' = only untrack),
#       record to write if lost, queue score (now, banded by the job's priority).
_RECOVER = (
    INDEX_LUA
    + """
local current = redis.call('GET', KEYS[1]) or ''
if current ~= ARGV[2] then return 'changed' end
if redis.call('EXISTS', KEYS[2]) == 1 then return 'held' end
redis.call('ZREM', KEYS[5], ARGV[1])
if ARGV[3] == '' then return 'untracked' end
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
  redis.call('SET', KEYS[1], ARGV[3], 'KEEPTTL')
  herald_index(ARGV[1], 'queued', false)
  return 'requeued'
end
redis.call('SET', KEYS[1], ARGV[4], 'KEEPTTL')
herald_index(ARGV[1], 'failed', false)
return 'failed'
"""
)


@dataclass(slots=True)
class RecoveryReport:
    """What one pass did, by job id. ``untracked``: entries whose record was no longer running."""

    requeued: list[str]
    failed: list[str]
    held: list[str]
    changed: list[str]
    untracked: list[str]

    def summary(self) -> dict[str, int]:
        return {f.name: len(getattr(self, f.name)) for f in fields(self)}


async def requeue_stuck(
    redis: Redis, *, queue_name: str = default_queue_name, now_ms: int | None = None, batch: int = BATCH
) -> RecoveryReport:
    """Re-queue (or fail, if arq lost them) jobs left ``running`` past their deadline. See the module docstring.

    Raises redis' RedisError if Redis cannot be reached.
    """
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    report = RecoveryReport(requeued=[], failed=[], held=[], changed=[], untracked=[])
    due = [raw.decode() for raw in await redis.zrangebyscore(RUNNING_KEY, "-inf", now_ms, start=0, num=batch)]
    if not due:
        return report
    raws = await redis.mget([JOB_PREFIX + job_id for job_id in due])
    script = redis.register_script(_RECOVER)
    for job_id, raw in zip(due, raws, strict=True):
        requeued = lost = ""
        score = queue_score(now_ms, Priority.NORMAL)
        if raw:
            record = JobRecord.from_json(json.loads(raw))
            score = queue_score(now_ms, record.priority)
            if record.state is JobState.RUNNING:
                record.move_to(JobState.QUEUED, error=REQUEUED_NOTE)
                requeued = json.dumps(record.to_json())
                record.move_to(JobState.FAILED, error=LOST_REASON)
                lost = json.dumps(record.to_json())
        verdict = await script(
            keys=[
                JOB_PREFIX + job_id,
                in_progress_key_prefix + job_id,
                job_key_prefix + job_id,
                queue_name,
                RUNNING_KEY,
            ],
            args=[job_id, raw or "", requeued, lost, score],
        )
        getattr(report, verdict.decode()).append(job_id)
    return report


async def prune_heartbeats(redis: Redis, *, max_age_s: float) -> int:
    """Drop worker heartbeats older than ``max_age_s`` from ``herald:workers``; how many went."""
    oldest_ms = int((time.time() - max_age_s) * 1000)
    return int(await redis.zremrangebyscore(HEARTBEATS_KEY, "-inf", oldest_ms))
