"""tasks/cron.py: the two cron jobs in both modes, against a real Redis and a real worker, and their wiring."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from arq.constants import default_queue_name, in_progress_key_prefix, job_key_prefix
from redis.asyncio import Redis

from api.app import create_app
from core.arq_enqueue import unbanded_due_ms
from core.arq_recovery import LOST_REASON, REQUEUED_NOTE
from core.arq_worker import HEARTBEATS_KEY, RUNNING_KEY, EmbeddedWorker
from core.config import Settings
from core.context import TaskContext
from core.cron import CronScheduler, RedisCronHistory
from core.documents import MemoryDocumentStore
from core.jobs import PRIORITY_BAND_MS, JobRecord, JobState
from core.redis_stores import JOB_PREFIX, RedisJobStore
from core.store import MemoryJobStore
from core.taskset import TaskSet
from tasks.cron import (
    ArqCronContext,
    InlineCronContext,
    build_cron_schedule,
    purge_expired_records,
    requeue_stuck_deliveries,
)
from tasks.worker import CRON_CTX_KEY, build_worker_options
from tests.support.receiver import Receiver, Reply
from tests.support.waiting import eventually

MakeSettings = Callable[..., Settings]


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


def arq_ctx(redis: Redis, *, heartbeat_max_age_s: float = 30.0) -> ArqCronContext:
    return {"mode": "arq", "redis": redis, "queue_name": default_queue_name, "heartbeat_max_age_s": heartbeat_max_age_s}


def inline_ctx(store: MemoryJobStore, documents: MemoryDocumentStore) -> InlineCronContext:
    return {"mode": "inline", "store": store, "documents": documents}


def test_the_schedule_is_purge_hourly_and_requeue_every_minute() -> None:
    assert [(job.name, job.cron) for job in build_cron_schedule()] == [
        ("purge_expired_records", "0 * * * *"),
        ("requeue_stuck_deliveries", "* * * * *"),
    ]


# --- purge ------------------------------------------------------------------------------------------


async def test_purge_in_memory_evicts_expired_records_and_documents_now() -> None:
    store = MemoryJobStore(max_finished=100, ttl_s=0.2)
    documents = MemoryDocumentStore(max_documents=100, ttl_s=3600)
    done = JobRecord(id="done", task="t", max_attempts=1)
    done.move_to(JobState.SUCCEEDED)
    waiting = JobRecord(id="waiting", task="t", max_attempts=1)
    await store.save(done)
    await store.save(waiting)
    documents.put("long-lived", {"v": 1})
    documents.put("claim", {"v": 2}, ttl_s=0.2)  # behind a younger-expiring neighbour: put() cannot reach it

    await eventually(
        lambda: store._live("done") is None and documents._live("claim") is None, what="the short TTLs to pass"
    )
    assert (len(store), len(documents)) == (2, 2), "expired entries linger until something is written"
    removed = await purge_expired_records(inline_ctx(store, documents))

    assert removed == {"records": 1, "documents": 1}
    assert (len(store), len(documents)) == (1, 1)
    assert await store.get("waiting") is not None, "unfinished jobs are never evicted"
    assert await documents.get("long-lived") == {"v": 1}
    assert await purge_expired_records(inline_ctx(store, documents)) == {"records": 0, "documents": 0}


async def test_purge_in_redis_mode_drops_stale_worker_heartbeats(redis: Redis) -> None:
    now_ms = int(time.time() * 1000)
    await redis.zadd(HEARTBEATS_KEY, {"gone:1": now_ms - 120_000, "gone:2": now_ms - 31_000, "alive": now_ms})
    assert await purge_expired_records(arq_ctx(redis, heartbeat_max_age_s=30)) == {"heartbeats": 2}
    assert await redis.zrange(HEARTBEATS_KEY, 0, -1) == [b"alive"]


# --- requeue ----------------------------------------------------------------------------------------


async def test_requeue_in_memory_mode_has_nothing_to_do() -> None:
    ctx = inline_ctx(MemoryJobStore(max_finished=10, ttl_s=60), MemoryDocumentStore(max_documents=10, ttl_s=60))
    assert await requeue_stuck_deliveries(ctx) == {}


async def _notify(client: httpx.AsyncClient, receiver: Receiver, *paths: str) -> list[str]:
    to = [{"channel": "webhook", "address": receiver.url(path)} for path in paths]
    response = await client.post("/notify", json={"to": to, "subject": "stuck", "text": "x"})
    assert response.status_code == 202, response.text
    return [delivery["id"] for delivery in response.json()["deliveries"]]


async def _lost_by_its_worker(redis: Redis, store: RedisJobStore, job_id: str) -> JobRecord:
    """What a worker killed mid-attempt leaves: record running, still tracked, past its deadline."""
    record = await store.get(job_id)
    assert record is not None
    record.attempts += 1
    record.move_to(JobState.RUNNING)
    assert await store.save_if(record, [JobState.QUEUED])
    await redis.zadd(RUNNING_KEY, {job_id: int(time.time() * 1000) - 1})
    # Taken off arq's queue too, so nothing but the cron job can bring it back.
    await redis.zrem(default_queue_name, job_id)
    return record


async def test_requeue_puts_back_a_stuck_delivery_that_a_real_worker_then_delivers(
    client_for: Any, make_settings: MakeSettings, redis_url: str, redis: Redis, receiver: Receiver
) -> None:
    arq_app = {"TASK_BACKEND": "arq", "REDIS_URL": redis_url, "WORKER_MODE": "separate"}
    store = RedisJobStore(redis, ttl_s=3600)
    async with client_for(**arq_app) as client:
        stuck, held, lost = await _notify(client, receiver, "/stuck", "/held", "/lost")
        for job_id in (stuck, held, lost):
            await _lost_by_its_worker(redis, store, job_id)
        await redis.set(in_progress_key_prefix + held, b"1", px=60_000)  # a live worker still runs it
        await redis.delete(job_key_prefix + lost)  # arq's copy expired
        held_before = await redis.get(JOB_PREFIX + held)

        report = await requeue_stuck_deliveries(arq_ctx(redis))

        assert report == {"requeued": 1, "failed": 1, "held": 1, "changed": 0, "untracked": 0}
        requeued = await store.get(stuck)
        assert requeued is not None
        assert (requeued.state, requeued.attempts, requeued.last_error) == (JobState.QUEUED, 1, REQUEUED_NOTE)
        score = await redis.zscore(default_queue_name, stuck)
        assert score is not None
        now_ms = int(time.time() * 1000)
        assert abs(unbanded_due_ms(score, now_ms) - now_ms) < 5_000, "due now"
        assert score < now_ms - PRIORITY_BAND_MS / 2, "in the normal band, ahead of low ones"
        failed = await store.get(lost)
        assert failed is not None
        assert (failed.state, failed.last_error) == (JobState.FAILED, LOST_REASON)
        assert LOST_REASON.startswith("lost: ")
        assert failed.finished_at is not None
        assert await redis.get(JOB_PREFIX + held) == held_before, "a held job is left exactly as it was"
        assert await redis.zscore(default_queue_name, held) is None
        assert await redis.zrange(RUNNING_KEY, 0, -1) == [held.encode()]
        for job_id in (stuck, lost):
            assert await redis.pttl(JOB_PREFIX + job_id) > 0, "the record keeps its TTL"

        worker = EmbeddedWorker(build_worker_options(make_settings(**arq_app, WORKER_POLL_DELAY_S=0.02)))
        await worker.start()
        try:

            async def delivered() -> bool:
                record = await store.get(stuck)
                return record is not None and record.state is JobState.SUCCEEDED

            await eventually(delivered, timeout_s=10, what="the re-queued delivery to be sent")
        finally:
            await worker.stop(1.0)
    [hook] = receiver.received("/stuck")
    assert hook.verified is True
    assert hook.headers["webhook-id"] == stuck
    done = await store.get(stuck)
    assert done is not None
    assert done.attempts == 2, "the lost attempt counts"
    assert receiver.received("/held") == []
    assert receiver.received("/lost") == []


class RacingRedis(Redis):
    """Runs ``race`` right after the cron job reads the records, before it acts on them."""

    race: Callable[[], Awaitable[None]] | None = None

    async def mget(self, keys: Any, *args: Any) -> Any:
        values = await super().mget(keys, *args)
        if self.race is not None:
            await self.race()
        return values


async def test_a_delivery_that_finishes_meanwhile_is_never_overwritten(redis_url: str, redis: Redis) -> None:
    store = RedisJobStore(redis, ttl_s=3600)
    record = JobRecord(id="dlv_race", task="send_webhook", max_attempts=3, attempts=1)
    record.move_to(JobState.RUNNING)
    record.updated_at -= timedelta(minutes=5)
    await store.save(record)
    await redis.set(job_key_prefix + record.id, b"job", px=60_000)
    await redis.zadd(RUNNING_KEY, {record.id: int(time.time() * 1000) - 1})

    async def the_slow_worker_finishes() -> None:
        finished = JobRecord.from_json(record.to_json())
        finished.move_to(JobState.SUCCEEDED)
        await store.save(finished)
        await redis.delete(job_key_prefix + record.id)  # arq's finish_job

    racing = RacingRedis.from_url(redis_url)
    racing.race = the_slow_worker_finishes
    try:
        report = await requeue_stuck_deliveries(arq_ctx(racing))
    finally:
        await racing.aclose()
    assert report["changed"] == 1
    after = await store.get(record.id)
    assert after is not None
    assert after.state is JobState.SUCCEEDED


async def test_tracking_entries_of_jobs_no_longer_running_are_dropped(redis: Redis) -> None:
    store = RedisJobStore(redis, ttl_s=3600)
    finished = JobRecord(id="dlv_done", task="send_webhook", max_attempts=3)
    finished.move_to(JobState.SUCCEEDED)
    await store.save(finished)
    now_ms = int(time.time() * 1000)
    await redis.zadd(RUNNING_KEY, {"dlv_done": now_ms - 1, "dlv_expired": now_ms - 1, "dlv_later": now_ms + 60_000})
    report = await requeue_stuck_deliveries(arq_ctx(redis))
    assert report == {"requeued": 0, "failed": 0, "held": 0, "changed": 0, "untracked": 2}
    assert await redis.zrange(RUNNING_KEY, 0, -1) == [b"dlv_later"], "not past its deadline: not looked at"
    after = await store.get("dlv_done")
    assert after is not None
    assert after.state is JobState.SUCCEEDED


async def test_a_running_job_is_tracked_until_it_ends(
    client_for: Any, redis_url: str, redis: Redis, receiver: Receiver
) -> None:
    receiver.script("/slow", Reply(delay_s=0.5))
    settings = {"TASK_BACKEND": "arq", "REDIS_URL": redis_url, "WORKER_MODE": "embedded", "WORKER_POLL_DELAY_S": 0.02}
    async with client_for(**settings) as client:
        [job_id] = await _notify(client, receiver, "/slow")
        await eventually(lambda: len(receiver.received("/slow")) == 1, what="the slow request")
        score = await redis.zscore(RUNNING_KEY, job_id)
        store = RedisJobStore(redis, ttl_s=3600)

        async def done() -> bool:
            record = await store.get(job_id)
            return record is not None and record.state is JobState.SUCCEEDED

        async def untracked() -> bool:
            return await redis.zscore(RUNNING_KEY, job_id) is None

        await eventually(done, what="the delivery")
        await eventually(untracked, what="the job to be untracked")
    assert score is not None
    # WEBHOOK_TIMEOUT_S=2 (+5 s task timeout) + 5 s arq margin + 10 s: stuck 22 s after it started.
    assert 20_000 < score - time.time() * 1000 < 23_000


# --- wiring -----------------------------------------------------------------------------------------


async def test_in_process_mode_runs_a_scheduler_for_the_lifespan(make_settings: MakeSettings) -> None:
    app = create_app(make_settings())
    async with app.router.lifespan_context(app):
        cron = app.state.cron
        assert isinstance(cron, CronScheduler)
        running_inside = cron.running
    assert running_inside
    assert not cron.running


@pytest.mark.parametrize("settings", [{"CRON_ENABLED": False}, {"TASK_BACKEND": "arq", "WORKER_MODE": "separate"}])
async def test_no_scheduler_in_the_web_process_when_disabled_or_in_arq_mode(
    make_settings: MakeSettings, redis_url: str, settings: dict[str, Any]
) -> None:
    app = create_app(make_settings(REDIS_URL=redis_url, **settings))
    async with app.router.lifespan_context(app):
        assert app.state.cron is None


async def test_each_arq_worker_runs_a_scheduler_from_startup_to_shutdown(
    make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    options = build_worker_options(make_settings(TASK_BACKEND="arq", REDIS_URL=redis_url))
    ctx: dict[str, Any] = {"redis": redis}
    await options["on_startup"](ctx)
    try:
        [scheduler] = ctx[CRON_CTX_KEY]  # Herald's own; no TaskSet declares cron jobs here
        assert isinstance(scheduler, CronScheduler)
        running_inside = scheduler.running
    finally:
        await options["on_shutdown"](ctx)
    assert running_inside
    assert not scheduler.running
    assert CRON_CTX_KEY not in ctx


async def test_an_arq_worker_runs_no_scheduler_when_disabled(
    make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    options = build_worker_options(make_settings(TASK_BACKEND="arq", REDIS_URL=redis_url, CRON_ENABLED=False))
    ctx: dict[str, Any] = {"redis": redis}
    await options["on_startup"](ctx)
    await options["on_shutdown"](ctx)
    assert CRON_CTX_KEY not in ctx


async def test_a_task_sets_cron_job_runs_once_per_tick_however_many_workers_run_it(
    make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    """Two arq workers both schedule the app's ``@cron`` job; the Redis lease lets one run each tick."""
    app_jobs = TaskSet()
    runs: list[str] = []

    @app_jobs.cron("* * * * * *", name="every_second")
    async def every_second(ctx: TaskContext) -> None:
        runs.append(ctx.job_id)

    settings = make_settings(TASK_BACKEND="arq", REDIS_URL=redis_url)
    workers = [build_worker_options(settings, task_sets=[app_jobs]) for _ in range(2)]
    contexts: list[dict[str, Any]] = [{"redis": Redis.from_url(redis_url)} for _ in workers]
    try:
        for options, ctx in zip(workers, contexts, strict=True):
            await options["on_startup"](ctx)
        assert all(len(ctx[CRON_CTX_KEY]) == 2 for ctx in contexts), "Herald's scheduler and the app's, in each"
        await eventually(lambda: len(runs) >= 3, timeout_s=10, what="three ticks of the app's cron job")
    finally:
        for options, ctx in zip(workers, contexts, strict=True):
            await options["on_shutdown"](ctx)
            await ctx["redis"].aclose()
    ticks = await redis.keys("herald:cron:every_second:*")
    assert len(ticks) - 1 <= len(runs) <= len(ticks), "one run per tick (the last may be cut by the shutdown)"
    assert set(runs) == {"cron"}
    latest = await RedisCronHistory(redis).latest()
    assert latest["every_second"].outcome == "succeeded"
