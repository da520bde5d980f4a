"""The app factory. Settings come in as an argument (tests) or from the environment."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from redis.asyncio import Redis

from api.errors import install_error_handlers
from api.limits import BodySizeLimit
from api.request_id import RequestId
from api.routers import dashboard, deliveries, health, metrics, notifications
from api.routers import inbox as inbox_endpoints
from api.routers import preferences as preference_endpoints
from api.routers import tasks as task_endpoints
from api.routers.metrics import WebMetrics
from core.arq_backend import ArqBackend
from core.arq_worker import EmbeddedWorker
from core.backend import TaskBackend
from core.config import Settings, get_settings
from core.cron import CronHistory, CronScheduler, MemoryCronHistory, MemoryLease, RedisCronHistory
from core.documents import MemoryDocumentStore
from core.inline import InlineBackend
from core.loading import load_task_sets
from core.metrics import arq_queue_probe, inline_queue_probe
from core.queue import TaskQueue
from core.registry import TaskRegistry
from core.store import MemoryJobStore
from core.taskset import TaskSet, opened_resources, task_set_cron
from tasks.cron import inline_cron
from tasks.inbox import InboxStore, MemoryInbox, RedisInbox
from tasks.notifications import NotificationService
from tasks.preferences import MemoryPreferences, PreferenceStore, RedisPreferences
from tasks.registry import build_registry
from tasks.resources import delivery_resources
from tasks.worker import build_worker_options

logger = logging.getLogger("herald.app")

REDIS_CONNECT_TIMEOUT_S = 2.0
REDIS_COMMAND_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Opened:
    """What the lifespan runs: the backend, the cron schedulers this process owns (in-process mode; in
    arq mode each worker runs its own, the embedded one included) and where cron runs are recorded."""

    backend: TaskBackend
    schedulers: list[CronScheduler[Any]]
    cron_history: CronHistory
    inbox: InboxStore
    preferences: PreferenceStore


@asynccontextmanager
async def inline_backend(
    settings: Settings, web_metrics: WebMetrics, registry: TaskRegistry, task_sets: Sequence[TaskSet]
) -> AsyncIterator[Opened]:
    store = MemoryJobStore(max_finished=settings.RECORD_MAX_COUNT, ttl_s=settings.RECORD_TTL_S)
    documents = MemoryDocumentStore(max_documents=settings.RECORD_MAX_COUNT * 2, ttl_s=settings.RECORD_TTL_S)
    history = MemoryCronHistory()
    inbox = MemoryInbox(max_per_user=settings.INBOX_MAX_PER_USER, ttl_s=settings.RECORD_TTL_S)
    preferences = MemoryPreferences(max_users=settings.PREFERENCES_MAX_USERS)
    async with (
        # send_inapp stores where the API reads and streams; deliveries see the preferences the API keeps
        delivery_resources(settings, inbox=inbox, preferences=preferences) as shared,
        opened_resources(shared, task_sets) as resources,
    ):
        backend = InlineBackend(
            registry,
            store,
            resources,
            concurrency=settings.TASK_CONCURRENCY,
            max_unfinished=settings.TASK_QUEUE_MAX,
            documents=documents,
            observers=[web_metrics.jobs],
        )
        web_metrics.queue.watch(inline_queue_probe(backend))
        schedulers: list[CronScheduler[Any]] = []
        if settings.CRON_ENABLED:
            schedulers.append(inline_cron(store, documents, history=history))
            own = task_set_cron(task_sets, MemoryLease(), resources=resources, history=history)
            if own is not None:
                schedulers.append(own)
        try:
            yield Opened(backend, schedulers, history, inbox, preferences)
        finally:
            await inbox.aclose()


@asynccontextmanager
async def arq_backend(
    settings: Settings, web_metrics: WebMetrics, registry: TaskRegistry, task_sets: Sequence[TaskSet]
) -> AsyncIterator[Opened]:
    assert settings.REDIS_URL is not None  # guaranteed by Settings' validation
    redis = Redis.from_url(
        settings.REDIS_URL.get_secret_value(),
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        socket_timeout=REDIS_COMMAND_TIMEOUT_S,
    )
    embedded = (
        EmbeddedWorker(
            build_worker_options(settings, task_sets=task_sets, bind_task_sets=False, observers=[web_metrics.jobs])
        )
        if settings.WORKER_MODE == "embedded"
        else None
    )
    web_metrics.queue.watch(arq_queue_probe(redis))
    try:
        backend = ArqBackend(
            registry,
            redis,
            record_ttl_s=settings.RECORD_TTL_S,
            heartbeat_interval_s=settings.HEARTBEAT_INTERVAL_S,
            worker=embedded,
        )
        inbox = RedisInbox(redis, max_per_user=settings.INBOX_MAX_PER_USER, ttl_s=settings.RECORD_TTL_S)
        try:
            yield Opened(backend, [], RedisCronHistory(redis), inbox, RedisPreferences(redis))
        finally:
            await inbox.aclose()  # its pub/sub connection, before the client's pool
    finally:
        await redis.aclose()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    task_sets: list[TaskSet] = app.state.task_sets
    if settings.API_KEY is None:
        logger.warning("API_KEY is not set: every endpoint is open to anyone who can reach this server")
    open_backend = arq_backend if settings.TASK_BACKEND == "arq" else inline_backend
    app.state.metrics = WebMetrics()
    registry = build_registry(settings, task_sets)
    async with open_backend(settings, app.state.metrics, registry, task_sets) as opened:
        backend = opened.backend
        app.state.backend = backend
        app.state.cron_history = opened.cron_history
        app.state.cron = opened.schedulers[0] if opened.schedulers else None
        app.state.inbox = opened.inbox
        app.state.preferences = opened.preferences
        app.state.notifications = NotificationService(backend, idempotency_ttl_s=settings.IDEMPOTENCY_TTL_S)
        app.state.tasks = TaskQueue(backend, registry, key_ttl_s=settings.IDEMPOTENCY_TTL_S)
        await backend.start()
        for task_set in task_sets:  # after the backend starts: .enqueue() works from here on
            task_set.bind(app.state.tasks)
        try:
            for scheduler in opened.schedulers:  # after the backend starts, stopped before it stops
                await scheduler.start()
            logger.info(
                "herald ready: backend=%s worker=%s email=%s tasks=%d",
                settings.TASK_BACKEND,
                settings.WORKER_MODE if settings.TASK_BACKEND == "arq" else f"in-process x{settings.TASK_CONCURRENCY}",
                f"smtp {settings.SMTP_HOST}:{settings.SMTP_PORT}" if settings.SMTP_HOST else "console",
                len(list(registry)),
            )
            yield
        finally:
            opened.inbox.close_streams()  # python -m api ends them sooner, as uvicorn's shutdown begins
            for scheduler in opened.schedulers:
                await scheduler.stop()
            logger.info("shutting down: draining jobs for up to %gs", settings.SHUTDOWN_GRACE_S)
            unfinished = await backend.stop(settings.SHUTDOWN_GRACE_S)
            logger.info("drain complete: %d jobs left unfinished", len(unfinished))
            for task_set in task_sets:
                task_set.bind(None)


def create_app(settings: Settings | None = None, *, task_sets: Sequence[TaskSet] = ()) -> FastAPI:
    """Build the ASGI app; reads the environment only if ``settings`` is not given.

    ``task_sets``: the application's own tasks and cron jobs, run beside Herald's (with those named in
    ``TASK_MODULES``). Raises ConfigError if TASK_MODULES names something that is not a TaskSet.
    """
    settings = settings or get_settings()
    named = load_task_sets(settings.TASK_MODULES)
    app = FastAPI(
        title="Herald",
        summary="Notifications sent in the background: email and signed webhooks, retried and tracked.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.task_sets = list(dict.fromkeys([*task_sets, *named]))  # one of each, in order
    app.add_middleware(BodySizeLimit, max_bytes=settings.MAX_BODY_BYTES)
    app.add_middleware(RequestId)  # outermost of ours: a 413 carries X-Request-ID too
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(notifications.router)
    app.include_router(deliveries.router)
    app.include_router(inbox_endpoints.router)
    app.include_router(preference_endpoints.router)
    app.include_router(task_endpoints.router)
    app.include_router(metrics.router, dependencies=metrics.access(settings))
    app.include_router(dashboard.router)
    app.mount("/static/dashboard", dashboard.static_files(), name="dashboard-static")
    return app
