"""More arq workers on one Redis means more jobs at once, and an urgent job still starts within the next slots."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from arq.connections import RedisSettings
from redis.asyncio import Redis

from core.arq_backend import ArqBackend
from core.arq_worker import EmbeddedWorker, no_resources, worker_options
from core.context import TaskContext
from core.queue import TaskQueue
from core.registry import TaskRegistry
from core.taskset import TaskSet
from tests.support.waiting import eventually

SLOTS_PER_WORKER = 2
WORKERS = 3

jobs = TaskSet()
running: set[str] = set()
peak = [0]
gate = asyncio.Event()


@jobs.task(retries=0, timeout=10)
async def held(ctx: TaskContext) -> None:
    running.add(ctx.job_id)
    peak[0] = max(peak[0], len(running))
    try:
        await gate.wait()
    finally:
        running.discard(ctx.job_id)


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[TaskQueue]:
    registry = TaskRegistry()
    jobs.register(registry)
    redis = Redis.from_url(redis_url)
    backend = ArqBackend(registry, redis, record_ttl_s=600, heartbeat_interval_s=1)
    await backend.start()
    tasks = TaskQueue(backend, registry, key_ttl_s=600)
    jobs.bind(tasks)
    running.clear()
    peak[0] = 0
    gate.clear()
    try:
        yield tasks
    finally:
        gate.set()
        jobs.bind(None)
        await backend.stop(1)
        await redis.aclose()


async def test_each_worker_adds_its_slots(queue: TaskQueue, redis_url: str) -> None:
    options = worker_options(
        queue.registry,
        no_resources,
        redis_settings=RedisSettings.from_dsn(redis_url),
        max_jobs=SLOTS_PER_WORKER,
        poll_delay_s=0.02,
        completion_wait_s=1,
        heartbeat_interval_s=1,
        record_ttl_s=600,
    )
    workers = [EmbeddedWorker(options) for _ in range(WORKERS)]
    for _ in range(4 * WORKERS * SLOTS_PER_WORKER):
        await held.enqueue()
    try:
        for worker in workers:
            await worker.start()
        await eventually(
            lambda: len(running) == WORKERS * SLOTS_PER_WORKER,
            timeout_s=10,
            what=f"{WORKERS} workers x {SLOTS_PER_WORKER} slots all busy",
        )
    finally:
        gate.set()
        for worker in workers:
            await worker.stop(1)
    assert peak[0] == WORKERS * SLOTS_PER_WORKER, "never more than the slots there are"
