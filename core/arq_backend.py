"""The durable backend: jobs on arq's queue in Redis, records and documents beside them.

Enqueueing is one Lua script per request (core/arq_enqueue.py): stored whole or not at all, in one
round trip. Jobs are JSON (arq pickles by default).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from arq.constants import default_queue_name
from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.arq_enqueue import ArqEnqueuer, withdraw
from core.arq_worker import EmbeddedWorker, live_workers
from core.backend import AfterResponse, Enqueued
from core.documents import Claim, Document
from core.errors import QueueClosedError
from core.jobs import CANCELLED_NOTE, JobSpec, JobState
from core.redis_stores import RedisDocumentStore, RedisJobStore
from core.registry import TaskRegistry


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
        self._heartbeat_interval_s = heartbeat_interval_s
        self._worker = worker
        self._queue_name = queue_name
        self._enqueuer = ArqEnqueuer(registry, redis, record_ttl_s=record_ttl_s, queue_name=queue_name)
        self.store = RedisJobStore(redis, ttl_s=record_ttl_s)
        self.documents = RedisDocumentStore(redis)
        self._accepting = False

    @property
    def accepting(self) -> bool:
        return self._accepting

    def check_room(self, jobs: int = 1) -> None:
        """Raise QueueClosedError while shutting down; Redis holds any number of jobs, so never QueueFullError."""
        if not self._accepting:
            raise QueueClosedError("the server is shutting down and accepts no new jobs")

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
        self.check_room(len(specs))
        return await self._enqueuer.enqueue(specs, documents=documents, claim=claim, only_if_failed=only_if_failed)

    async def cancel(self, job_ids: Sequence[str]) -> list[str]:
        return await withdraw(
            self.store, self._redis, job_ids, state=JobState.CANCELLED, note=CANCELLED_NOTE, queue_name=self._queue_name
        )

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
