"""The app factory. Settings come in as an argument (tests) or from the environment."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from redis.asyncio import Redis

from api.errors import install_error_handlers
from api.limits import BodySizeLimit
from api.request_id import RequestId
from api.routers import dashboard, deliveries, health, metrics, notifications
from api.routers.metrics import WebMetrics
from core.arq_backend import ArqBackend
from core.arq_worker import EmbeddedWorker
from core.backend import TaskBackend
from core.config import Settings, get_settings
from core.cron import CronScheduler
from core.documents import MemoryDocumentStore
from core.inline import InlineBackend
from core.metrics import arq_queue_probe, inline_queue_probe
from core.store import MemoryJobStore
from tasks.cron import CronContext, inline_cron
from tasks.notifications import NotificationService
from tasks.registry import build_registry
from tasks.resources import delivery_resources
from tasks.worker import build_worker_options

logger = logging.getLogger("herald.app")

REDIS_CONNECT_TIMEOUT_S = 2.0
REDIS_COMMAND_TIMEOUT_S = 5.0


# What the lifespan runs: the backend, and the cron scheduler when this process owns one (in-process
# mode; in arq mode each worker runs its own, the embedded one included).
Opened = tuple[TaskBackend, CronScheduler[CronContext] | None]


@asynccontextmanager
async def inline_backend(settings: Settings, web_metrics: WebMetrics) -> AsyncIterator[Opened]:
    store = MemoryJobStore(max_finished=settings.RECORD_MAX_COUNT, ttl_s=settings.RECORD_TTL_S)
    documents = MemoryDocumentStore(max_documents=settings.RECORD_MAX_COUNT * 2, ttl_s=settings.RECORD_TTL_S)
    async with delivery_resources(settings) as resources:
        backend = InlineBackend(
            build_registry(settings),
            store,
            resources,
            concurrency=settings.TASK_CONCURRENCY,
            max_unfinished=settings.TASK_QUEUE_MAX,
            documents=documents,
            observers=[web_metrics.jobs],
        )
        web_metrics.queue.watch(inline_queue_probe(backend))
        yield backend, inline_cron(store, documents) if settings.CRON_ENABLED else None


@asynccontextmanager
async def arq_backend(settings: Settings, web_metrics: WebMetrics) -> AsyncIterator[Opened]:
    assert settings.REDIS_URL is not None  # guaranteed by Settings' validation
    redis = Redis.from_url(
        settings.REDIS_URL.get_secret_value(),
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        socket_timeout=REDIS_COMMAND_TIMEOUT_S,
    )
    embedded = (
        EmbeddedWorker(build_worker_options(settings, observers=[web_metrics.jobs]))
        if settings.WORKER_MODE == "embedded"
        else None
    )
    web_metrics.queue.watch(arq_queue_probe(redis))
    try:
        backend = ArqBackend(
            build_registry(settings),
            redis,
            record_ttl_s=settings.RECORD_TTL_S,
            heartbeat_interval_s=settings.HEARTBEAT_INTERVAL_S,
            worker=embedded,
        )
        yield backend, None
    finally:
        await redis.aclose()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    if settings.API_KEY is None:
        logger.warning("API_KEY is not set: every endpoint is open to anyone who can reach this server")
    open_backend = arq_backend if settings.TASK_BACKEND == "arq" else inline_backend
    app.state.metrics = WebMetrics()
    async with open_backend(settings, app.state.metrics) as (backend, cron):
        app.state.backend = backend
        app.state.cron = cron
        app.state.notifications = NotificationService(backend, idempotency_ttl_s=settings.IDEMPOTENCY_TTL_S)
        await backend.start()
        try:
            if cron is not None:  # after the backend starts, stopped before it stops
                await cron.start()
            logger.info(
                "herald ready: backend=%s worker=%s email=%s",
                settings.TASK_BACKEND,
                settings.WORKER_MODE if settings.TASK_BACKEND == "arq" else f"in-process x{settings.TASK_CONCURRENCY}",
                f"smtp {settings.SMTP_HOST}:{settings.SMTP_PORT}" if settings.SMTP_HOST else "console",
            )
            yield
        finally:
            if cron is not None:
                await cron.stop()
            logger.info("shutting down: draining jobs for up to %gs", settings.SHUTDOWN_GRACE_S)
            unfinished = await backend.stop(settings.SHUTDOWN_GRACE_S)
            logger.info("drain complete: %d jobs left unfinished", len(unfinished))


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the ASGI app; reads the environment only if ``settings`` is not given."""
    settings = settings or get_settings()
    app = FastAPI(
        title="Herald",
        summary="Notifications sent in the background: email and signed webhooks, retried and tracked.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.add_middleware(BodySizeLimit, max_bytes=settings.MAX_BODY_BYTES)
    app.add_middleware(RequestId)  # outermost of ours: a 413 carries X-Request-ID too
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(notifications.router)
    app.include_router(deliveries.router)
    app.include_router(metrics.router, dependencies=metrics.access(settings))
    app.include_router(dashboard.router)
    app.mount("/static/dashboard", dashboard.static_files(), name="dashboard-static")
    return app
