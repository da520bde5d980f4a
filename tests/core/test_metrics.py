from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from arq.constants import default_queue_name
from prometheus_client import CollectorRegistry, generate_latest
from redis.asyncio import Redis

from core.arq_backend import ArqBackend
from core.arq_worker import RUNNING_KEY
from core.errors import PermanentError, RetryableError
from core.inline import InlineBackend
from core.jobs import JobContext, JobSpec, utcnow
from core.metrics import (
    JobMetrics,
    MetricsServer,
    QueueMetrics,
    QueueSnapshot,
    arq_queue_probe,
    inline_queue_probe,
)
from core.observe import AttemptReport
from core.registry import TaskRegistry
from core.retry import RetryPolicy
from core.store import MemoryJobStore
from tests.support.smtp import free_port
from tests.support.waiting import eventually

FAST = RetryPolicy(max_attempts=3, timeout_s=5.0, base_delay_s=0.01, max_delay_s=0.02)
SLOW_BACK_OFF = RetryPolicy(max_attempts=3, timeout_s=5.0, base_delay_s=60.0, max_delay_s=60.0)
_ids = itertools.count()


def job(task: str, **extra: Any) -> JobSpec:
    return JobSpec(task=task, job_id=f"job-{next(_ids)}", **extra)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def job_metrics(registry: CollectorRegistry) -> JobMetrics:
    return JobMetrics(registry, label="kind", label_of=lambda task: task.removeprefix("send_"), known=["sms"])


# --- JobMetrics, fed reports directly ------------------------------------------------------------


def test_attempts_and_final_outcomes_are_counted_under_the_mapped_label() -> None:
    registry = CollectorRegistry()
    observe = job_metrics(registry)
    for phase, duration_s in [("retry", 0.2), ("succeeded", 0.3), ("failed", 1.5)]:
        observe(AttemptReport("job-1", "send_fax", 1, "started"))
        assert sample(registry, "herald_jobs_in_flight") == 1
        observe(AttemptReport("job-1", "send_fax", 1, phase, duration_s))  # type: ignore[arg-type]

    assert sample(registry, "herald_jobs_in_flight") == 0
    assert sample(registry, "herald_deliveries_total", kind="fax", outcome="delivered") == 1
    assert sample(registry, "herald_deliveries_total", kind="fax", outcome="failed") == 1
    assert sample(registry, "herald_delivery_retries_total", kind="fax") == 1
    assert sample(registry, "herald_delivery_duration_seconds_count", kind="fax") == 3
    assert sample(registry, "herald_delivery_duration_seconds_sum", kind="fax") == pytest.approx(2.0)
    assert sample(registry, "herald_delivery_duration_seconds_bucket", kind="fax", le="1.0") == 2
    # Known label values exist at zero before anything happened to them.
    assert sample(registry, "herald_deliveries_total", kind="sms", outcome="delivered") == 0
    assert sample(registry, "herald_delivery_retries_total", kind="sms") == 0


def test_a_cancelled_attempt_only_leaves_the_in_flight_gauge() -> None:
    registry = CollectorRegistry()
    observe = job_metrics(registry)
    observe(AttemptReport("job-1", "send_sms", 1, "started"))
    observe(AttemptReport("job-1", "send_sms", 1, "cancelled", 0.5))

    assert sample(registry, "herald_jobs_in_flight") == 0
    assert sample(registry, "herald_delivery_duration_seconds_count", kind="sms") == 0
    assert sample(registry, "herald_deliveries_total", kind="sms", outcome="failed") == 0


def test_ids_never_reach_the_output() -> None:
    registry = CollectorRegistry()
    observe = job_metrics(registry)
    observe(AttemptReport("dlv_secret", "send_sms", 1, "started"))
    observe(AttemptReport("dlv_secret", "send_sms", 1, "failed", 0.1, error="HTTP 400 from https://x.example"))
    text = generate_latest(registry).decode()
    assert "dlv_secret" not in text
    assert "x.example" not in text


def test_two_registries_in_one_process_do_not_collide() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    job_metrics(first)(AttemptReport("a", "send_sms", 1, "started"))
    job_metrics(second)
    assert sample(first, "herald_jobs_in_flight") == 1
    assert sample(second, "herald_jobs_in_flight") == 0


# --- through the in-process runner ---------------------------------------------------------------


@pytest.fixture
async def backends() -> AsyncIterator[list[InlineBackend]]:
    started: list[InlineBackend] = []
    yield started
    for backend in started:
        await backend.stop(grace_s=0.2)


async def start_inline(
    started: list[InlineBackend], registry: TaskRegistry, *, concurrency: int, registry_metrics: CollectorRegistry
) -> InlineBackend:
    backend = InlineBackend(
        registry,
        MemoryJobStore(max_finished=100, ttl_s=60),
        {},
        concurrency=concurrency,
        max_unfinished=100,
        observers=[job_metrics(registry_metrics)],
    )
    await backend.start()
    started.append(backend)
    return backend


async def test_the_inline_runner_reports_every_attempt(backends: list[InlineBackend]) -> None:
    async def send_ok(ctx: JobContext) -> None:
        return None

    async def send_flaky(ctx: JobContext) -> None:
        if ctx["job_try"] == 1:
            raise RetryableError("busy")

    async def send_refused(ctx: JobContext) -> None:
        raise PermanentError("no")

    tasks = TaskRegistry()
    for function in (send_ok, send_flaky, send_refused):
        tasks.register(function, policy=FAST)
    registry = CollectorRegistry()
    backend = await start_inline(backends, tasks, concurrency=2, registry_metrics=registry)
    await backend.enqueue([job("send_ok"), job("send_flaky"), job("send_refused")])
    await eventually(lambda: backend.unfinished == 0, what="every job to finish")

    assert sample(registry, "herald_deliveries_total", kind="ok", outcome="delivered") == 1
    assert sample(registry, "herald_deliveries_total", kind="flaky", outcome="delivered") == 1
    assert sample(registry, "herald_delivery_retries_total", kind="flaky") == 1
    assert sample(registry, "herald_deliveries_total", kind="refused", outcome="failed") == 1
    assert sample(registry, "herald_jobs_in_flight") == 0


async def test_inline_queue_counts_waiting_and_timed_jobs_apart_from_running_ones(
    backends: list[InlineBackend],
) -> None:
    release = asyncio.Event()

    async def send_blocking(ctx: JobContext) -> None:
        await release.wait()

    async def send_later(ctx: JobContext) -> None:
        raise RetryableError("back off")

    tasks = TaskRegistry()
    tasks.register(send_blocking, policy=FAST)
    tasks.register(send_later, policy=SLOW_BACK_OFF)
    registry = CollectorRegistry()
    backend = await start_inline(backends, tasks, concurrency=1, registry_metrics=registry)
    probe = inline_queue_probe(backend)

    await backend.enqueue([job("send_later")])  # runs once, then waits 60 s on a back-off timer
    await eventually(lambda: sample(registry, "herald_delivery_retries_total", kind="later") == 1, what="a retry")
    await backend.enqueue([job("send_blocking")])  # holds the only worker
    await eventually(lambda: sample(registry, "herald_jobs_in_flight") == 1, what="the blocker to run")
    await backend.enqueue([job("send_blocking"), job("send_blocking")])  # wait for the worker
    await backend.enqueue([job("send_blocking", defer_until=utcnow() + timedelta(minutes=5))])

    snapshot = await probe()
    assert (snapshot.due, snapshot.scheduled) == (2, 2)
    await eventually(lambda: backend.backlog()[2] >= 0.05, what="the oldest waiting job to age")
    assert (await probe()).oldest_due_age_s >= 0.05

    release.set()
    await eventually(lambda: backend.backlog()[0] == 0, what="the waiting jobs to run")
    assert await probe() == QueueSnapshot(due=0, scheduled=2, oldest_due_age_s=0.0)


# --- arq's queue in Redis ------------------------------------------------------------------------


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def test_arq_queue_counts_due_and_scheduled_and_skips_running_jobs(redis: Redis) -> None:
    now_ms = int(time.time() * 1000)
    await redis.zadd(
        default_queue_name,
        {"old": now_ms - 5000, "middle": now_ms - 3000, "new": now_ms - 1000, "later": now_ms + 60_000},
    )
    probe = arq_queue_probe(redis)

    snapshot = await probe()
    assert (snapshot.due, snapshot.scheduled) == (3, 1)
    assert 5.0 <= snapshot.oldest_due_age_s < 6.0

    # arq keeps a running job in its queue; Herald lists it in herald:running, so it is not waiting.
    await redis.zadd(RUNNING_KEY, {"old": now_ms + 30_000, "gone": now_ms + 30_000})
    snapshot = await probe()
    assert (snapshot.due, snapshot.scheduled) == (2, 1)
    assert 3.0 <= snapshot.oldest_due_age_s < 4.0

    await redis.delete(RUNNING_KEY)
    await redis.zadd(RUNNING_KEY, {"new": now_ms + 30_000})  # running, but not the oldest
    snapshot = await probe()
    assert (snapshot.due, snapshot.scheduled) == (2, 1)
    assert 5.0 <= snapshot.oldest_due_age_s < 6.0


async def test_arq_queue_when_empty(redis: Redis) -> None:
    assert await arq_queue_probe(redis)() == QueueSnapshot(due=0, scheduled=0, oldest_due_age_s=0.0)


async def test_arq_queue_sees_what_the_backend_enqueued(redis: Redis) -> None:
    async def send_x(ctx: JobContext) -> None:
        return None

    tasks = TaskRegistry()
    tasks.register(send_x, policy=FAST)
    backend = ArqBackend(tasks, redis, record_ttl_s=60, heartbeat_interval_s=1)
    await backend.start()
    await backend.enqueue([job("send_x"), job("send_x"), job("send_x", defer_until=utcnow() + timedelta(hours=1))])

    snapshot = await arq_queue_probe(redis)()
    assert (snapshot.due, snapshot.scheduled) == (2, 1)
    await backend.stop(0.1)


# --- QueueMetrics --------------------------------------------------------------------------------


async def test_queue_gauges_show_what_the_probe_read() -> None:
    registry = CollectorRegistry()
    queue = QueueMetrics(registry)

    async def probe() -> QueueSnapshot:
        return QueueSnapshot(due=4, scheduled=7, oldest_due_age_s=12.5)

    queue.watch(probe)
    await queue.refresh()
    assert sample(registry, "herald_queue_depth", state="due") == 4
    assert sample(registry, "herald_queue_depth", state="scheduled") == 7
    assert sample(registry, "herald_queue_oldest_age_seconds") == 12.5


async def test_queue_gauges_are_left_out_when_the_probe_fails(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    queue = QueueMetrics(registry)
    JobMetrics(registry, label="kind", label_of=str)
    answers: list[QueueSnapshot | Exception] = [QueueSnapshot(1, 0, 1.0), ConnectionError("redis is down")]

    async def probe() -> QueueSnapshot:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    queue.watch(probe)
    await queue.refresh()
    assert sample(registry, "herald_queue_depth", state="due") == 1
    caplog.set_level(logging.WARNING, logger="herald.metrics")
    await queue.refresh()

    text = generate_latest(registry).decode()
    assert "herald_queue_depth{" not in text  # no stale number from the earlier read
    assert "herald_jobs_in_flight 0.0" in text  # the rest of the scrape still works
    assert any("ConnectionError" in r.getMessage() for r in caplog.records)


# --- MetricsServer -------------------------------------------------------------------------------


def test_metrics_server_serves_its_registry_and_a_taken_port_is_only_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    job_metrics(registry)(AttemptReport("a", "send_sms", 1, "started"))
    port = free_port()
    first = MetricsServer(registry, host="127.0.0.1", port=port)
    second = MetricsServer(CollectorRegistry(), host="127.0.0.1", port=port)
    caplog.set_level(logging.WARNING, logger="herald.metrics")
    try:
        first.start()
        first.start()  # a restarted worker calls it again: still one server
        second.start()
        assert (first.serving, second.serving) == (True, False)
        response = httpx.get(f"http://127.0.0.1:{port}/metrics")
    finally:
        first.close()
        second.close()

    assert response.status_code == 200
    assert "herald_jobs_in_flight 1.0" in response.text
    assert [r.getMessage() for r in caplog.records if "worker metrics are off" in r.getMessage()]
