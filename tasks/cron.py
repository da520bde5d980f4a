"""Herald's cron jobs, scheduled in one place (:func:`build_cron_schedule`), times in UTC.

- ``purge_expired_records``, hourly: in-process mode, evicts expired job records and documents
  from memory now instead of on the next write; in arq mode, where Redis expires them by TTL, drops
  stale worker heartbeats from ``herald:workers``.
- ``requeue_stuck_deliveries``, every minute: in arq mode, re-queues deliveries a lost worker left
  ``sending`` (or fails them if arq has lost them too; see core/arq_recovery.py). In-process, jobs
  live in the runner and die with it, so nothing can be stuck: it does nothing.

In arq mode every worker runs the scheduler and a Redis lease lets exactly one of them run each tick.
"""

from __future__ import annotations

import logging
from typing import Literal, TypedDict

from arq.constants import default_queue_name
from redis.asyncio import Redis

from core.arq_recovery import prune_heartbeats, requeue_stuck
from core.cron import CronHistory, CronSchedule, CronScheduler, MemoryLease, RedisLease
from core.documents import MemoryDocumentStore
from core.store import MemoryJobStore

logger = logging.getLogger("herald.cron")

PURGE_CRON = "0 * * * *"
REQUEUE_CRON = "* * * * *"


class InlineCronContext(TypedDict):
    mode: Literal["inline"]
    store: MemoryJobStore
    documents: MemoryDocumentStore


class ArqCronContext(TypedDict):
    mode: Literal["arq"]
    redis: Redis
    queue_name: str
    heartbeat_max_age_s: float


CronContext = InlineCronContext | ArqCronContext


async def purge_expired_records(ctx: CronContext) -> dict[str, int]:
    """Evict expired records and documents (in-process) or stale worker heartbeats (arq); counts removed."""
    if ctx["mode"] == "inline":
        return {"records": ctx["store"].purge(), "documents": ctx["documents"].purge()}
    return {"heartbeats": await prune_heartbeats(ctx["redis"], max_age_s=ctx["heartbeat_max_age_s"])}


async def requeue_stuck_deliveries(ctx: CronContext) -> dict[str, int]:
    """Re-queue deliveries left ``sending`` by a lost worker (arq mode); counts by outcome."""
    if ctx["mode"] == "inline":
        logger.debug("in-process mode: jobs live in the runner, none can be stuck")
        return {}
    report = await requeue_stuck(ctx["redis"], queue_name=ctx["queue_name"])
    if report.requeued or report.failed:
        logger.warning("re-queued stuck deliveries %s; failed lost ones %s", report.requeued, report.failed)
    return report.summary()


def build_cron_schedule() -> CronSchedule[CronContext]:
    schedule = CronSchedule[CronContext]()
    schedule.add(purge_expired_records, cron=PURGE_CRON)
    schedule.add(requeue_stuck_deliveries, cron=REQUEUE_CRON, timeout_s=55)
    return schedule


def inline_cron(
    store: MemoryJobStore, documents: MemoryDocumentStore, *, history: CronHistory | None = None
) -> CronScheduler[CronContext]:
    """The in-process scheduler: one process, so an in-memory lease."""
    ctx: InlineCronContext = {"mode": "inline", "store": store, "documents": documents}
    return CronScheduler(build_cron_schedule(), MemoryLease(), lambda: ctx, history=history)


def arq_cron(
    redis: Redis,
    *,
    heartbeat_max_age_s: float,
    queue_name: str = default_queue_name,
    history: CronHistory | None = None,
) -> CronScheduler[CronContext]:
    """A worker's scheduler: every worker runs one, and the Redis lease picks one per tick."""
    ctx: ArqCronContext = {
        "mode": "arq",
        "redis": redis,
        "queue_name": queue_name,
        "heartbeat_max_age_s": heartbeat_max_age_s,
    }
    return CronScheduler(build_cron_schedule(), RedisLease(redis), lambda: ctx, history=history)
