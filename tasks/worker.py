"""The arq worker for Herald's delivery tasks.

Run it as its own process with either of::

    arq tasks.worker.WorkerSettings     # arq's CLI
    python -m tasks.worker              # same worker; also rides out a Redis outage instead of exiting

``WorkerSettings`` reads the environment only when arq asks for its contents, not at import time.
Every worker also runs Herald's cron scheduler (tasks/cron.py) unless ``CRON_ENABLED=false``; a Redis
lease lets one of them run each tick. Each worker process serves its own Prometheus metrics on
``WORKER_METRICS_PORT`` (0 = off); a second worker on the same machine and port runs without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from arq.connections import RedisSettings
from prometheus_client import CollectorRegistry

from core.arq_backend import ArqBackend
from core.arq_worker import EmbeddedWorker, event_loop_factory, worker_options
from core.config import Settings, get_settings
from core.cron import CronScheduler, RedisCronHistory, RedisLease
from core.errors import ConfigError
from core.loading import load_task_sets
from core.logging import configure_logging
from core.metrics import MetricsServer
from core.observe import Observer
from core.queue import TaskQueue
from core.registry import TaskRegistry
from core.taskset import TaskSet, opened_resources, task_set_cron
from tasks.cron import arq_cron
from tasks.inbox import RedisInbox
from tasks.metrics import delivery_metrics
from tasks.preferences import RedisPreferences
from tasks.registry import build_registry
from tasks.resources import delivery_resources

logger = logging.getLogger("herald.worker")

WorkerHook = Callable[[dict[str, Any]], Awaitable[None]]
CRON_CTX_KEY = "herald_cron"
HEARTBEAT_MAX_AGE_INTERVALS = 3  # as /readyz counts live workers


def build_worker_options(
    settings: Settings,
    *,
    task_sets: Sequence[TaskSet] | None = None,
    bind_task_sets: bool = True,
    observers: Sequence[Observer] = (),
    metrics_server: MetricsServer | None = None,
) -> dict[str, Any]:
    """arq Worker options; ``observers`` see every attempt, ``metrics_server`` starts with the worker.

    ``task_sets`` default to those named in TASK_MODULES. With ``bind_task_sets`` (a worker in its
    own process), their ``.enqueue()`` goes to this worker's Redis, so a job can enqueue another;
    an embedded worker leaves them bound to the web app's backend.
    """
    if settings.REDIS_URL is None:
        raise ConfigError("invalid configuration: REDIS_URL: the worker needs Redis")
    if task_sets is None:
        task_sets = load_task_sets(settings.TASK_MODULES)
    registry = build_registry(settings, task_sets)
    start, stop = _cron_hooks(settings, task_sets) if settings.CRON_ENABLED else (None, None)
    start, stop = _user_stores(settings, then=(start, stop))
    if bind_task_sets and task_sets:
        start, stop = _binding(settings, registry, task_sets, then=(start, stop))
    if metrics_server is not None:
        start = _serving_metrics(metrics_server, then=start)
    return worker_options(
        registry,
        functools.partial(_worker_resources, settings, task_sets),
        redis_settings=RedisSettings.from_dsn(settings.REDIS_URL.get_secret_value()),
        max_jobs=settings.WORKER_MAX_JOBS,
        poll_delay_s=settings.WORKER_POLL_DELAY_S,
        completion_wait_s=settings.SHUTDOWN_GRACE_S,
        heartbeat_interval_s=settings.HEARTBEAT_INTERVAL_S,
        record_ttl_s=settings.RECORD_TTL_S,
        extra_startup=start,
        extra_shutdown=stop,
        observers=observers,
    )


@contextlib.asynccontextmanager
async def _worker_resources(settings: Settings, task_sets: Sequence[TaskSet]) -> AsyncIterator[Mapping[str, Any]]:
    """Herald's delivery clients and every TaskSet's own, for one worker's lifetime."""
    async with delivery_resources(settings) as shared, opened_resources(shared, task_sets) as resources:
        yield resources


def process_worker_options(settings: Settings) -> tuple[dict[str, Any], MetricsServer | None]:
    """Options for a worker in its own process: its own metrics registry, served on WORKER_METRICS_PORT."""
    if settings.WORKER_METRICS_PORT == 0:
        return build_worker_options(settings), None
    registry = CollectorRegistry()
    server = MetricsServer(registry, host=settings.HOST, port=settings.WORKER_METRICS_PORT)
    return build_worker_options(settings, observers=[delivery_metrics(registry)], metrics_server=server), server


def _serving_metrics(server: MetricsServer, *, then: WorkerHook | None) -> WorkerHook:
    async def start(ctx: dict[str, Any]) -> None:
        server.start()  # once per process: a worker restarted after a Redis outage keeps serving
        if then is not None:
            await then(ctx)

    return start


def _user_stores(
    settings: Settings, *, then: tuple[WorkerHook | None, WorkerHook | None]
) -> tuple[WorkerHook, WorkerHook]:
    """Open ``ctx["inbox"]`` (send_inapp's store) and ``ctx["preferences"]`` (every delivery's opt-out check), on
    the worker's Redis, before ``then[0]``; close them after ``then[1]``.

    Here rather than in delivery_resources: it needs the worker's Redis connection, made by arq before start-up.
    """
    then_start, then_stop = then

    async def start(ctx: dict[str, Any]) -> None:
        ctx["inbox"] = RedisInbox(ctx["redis"], max_per_user=settings.INBOX_MAX_PER_USER, ttl_s=settings.RECORD_TTL_S)
        ctx["preferences"] = RedisPreferences(ctx["redis"])
        if then_start is not None:
            await then_start(ctx)

    async def stop(ctx: dict[str, Any]) -> None:
        try:
            if then_stop is not None:
                await then_stop(ctx)
        finally:
            inbox: RedisInbox | None = ctx.pop("inbox", None)
            if inbox is not None:
                await inbox.aclose()

    return start, stop


def _cron_hooks(settings: Settings, task_sets: Sequence[TaskSet]) -> tuple[WorkerHook, WorkerHook]:
    """Start this worker's cron schedulers (Herald's and the app's) with the worker, stop them before
    the worker's resources close."""

    async def start(ctx: dict[str, Any]) -> None:
        history = RedisCronHistory(ctx["redis"])
        schedulers: list[CronScheduler[Any]] = [
            arq_cron(
                ctx["redis"],
                heartbeat_max_age_s=HEARTBEAT_MAX_AGE_INTERVALS * settings.HEARTBEAT_INTERVAL_S,
                history=history,
            )
        ]
        resources = {k: v for k, v in ctx.items() if k not in ("job_id", "job_try")}
        own = task_set_cron(task_sets, RedisLease(ctx["redis"]), resources=resources, history=history)
        if own is not None:
            schedulers.append(own)
        ctx[CRON_CTX_KEY] = schedulers
        for scheduler in schedulers:
            await scheduler.start()

    async def stop(ctx: dict[str, Any]) -> None:
        schedulers: list[CronScheduler[Any]] = ctx.pop(CRON_CTX_KEY, [])
        for scheduler in schedulers:
            await scheduler.stop()

    return start, stop


def _binding(
    settings: Settings,
    registry: TaskRegistry,
    task_sets: Sequence[TaskSet],
    *,
    then: tuple[WorkerHook | None, WorkerHook | None],
) -> tuple[WorkerHook, WorkerHook]:
    """Bind ``task_sets`` to this worker's Redis at start-up (after ``then[0]``), unbind at shutdown."""
    then_start, then_stop = then

    async def start(ctx: dict[str, Any]) -> None:
        backend = ArqBackend(
            registry,
            ctx["redis"],
            record_ttl_s=settings.RECORD_TTL_S,
            heartbeat_interval_s=settings.HEARTBEAT_INTERVAL_S,
        )
        await backend.start()
        queue = TaskQueue(backend, registry, key_ttl_s=settings.IDEMPOTENCY_TTL_S)
        for task_set in task_sets:
            task_set.bind(queue)
        if then_start is not None:
            await then_start(ctx)

    async def stop(ctx: dict[str, Any]) -> None:
        try:
            if then_stop is not None:
                await then_stop(ctx)
        finally:
            for task_set in task_sets:
                task_set.bind(None)

    return start, stop


class _FromEnvironment(dict[str, Any]):
    """arq reads a settings dict through ``.items()``; build it then, from the environment."""

    def items(self) -> Any:
        if not self:
            try:
                settings = get_settings()
                configure_logging(settings.LOG_LEVEL, settings.LOG_FORMAT)
                options, _ = process_worker_options(settings)  # the metrics thread lives as long as the process
            except ConfigError as exc:
                sys.stderr.write(f"herald worker: {exc}\n")
                raise SystemExit(2) from None
            self.update(options)
        return super().items()


WorkerSettings = _FromEnvironment()


async def serve(settings: Settings) -> None:
    """Run the worker until SIGTERM/SIGINT, then stop picking jobs and finish within SHUTDOWN_GRACE_S."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    options, metrics_server = process_worker_options(settings)
    worker = EmbeddedWorker(options)
    await worker.start()
    await stop.wait()
    logger.info("stopping: finishing running jobs for up to %gs", settings.SHUTDOWN_GRACE_S)
    await worker.stop(settings.SHUTDOWN_GRACE_S)
    if metrics_server is not None:
        metrics_server.close()


def main() -> None:
    try:
        settings = get_settings()
        if settings.REDIS_URL is None:
            raise ConfigError("invalid configuration: REDIS_URL: the worker needs Redis")
        load_task_sets(settings.TASK_MODULES)  # a bad TASK_MODULES stops it here, with its message
    except ConfigError as exc:
        sys.stderr.write(f"herald worker: {exc}\n")
        raise SystemExit(2) from None
    configure_logging(settings.LOG_LEVEL, settings.LOG_FORMAT)
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(serve(settings))


if __name__ == "__main__":
    main()
