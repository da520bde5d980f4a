"""The app factory. Settings come in as an argument (tests) or from the environment."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.errors import install_error_handlers
from api.limits import BodySizeLimit
from api.routers import health, notifications
from core.config import Settings, get_settings
from core.documents import MemoryDocumentStore
from core.inline import InlineBackend
from core.store import MemoryJobStore
from tasks.notifications import NotificationService
from tasks.registry import build_registry
from tasks.resources import delivery_resources

logger = logging.getLogger("herald.app")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    if settings.API_KEY is None:
        logger.warning("API_KEY is not set: every endpoint is open to anyone who can reach this server")
    async with delivery_resources(settings) as resources:
        backend = InlineBackend(
            build_registry(settings),
            MemoryJobStore(max_finished=settings.RECORD_MAX_COUNT, ttl_s=settings.RECORD_TTL_S),
            resources,
            concurrency=settings.TASK_CONCURRENCY,
            max_unfinished=settings.TASK_QUEUE_MAX,
            documents=MemoryDocumentStore(max_documents=settings.RECORD_MAX_COUNT * 2, ttl_s=settings.RECORD_TTL_S),
        )
        app.state.backend = backend
        app.state.notifications = NotificationService(backend, idempotency_ttl_s=settings.IDEMPOTENCY_TTL_S)
        await backend.start()
        logger.info(
            "herald ready: backend=%s concurrency=%d email=%s",
            settings.TASK_BACKEND,
            settings.TASK_CONCURRENCY,
            f"smtp {settings.SMTP_HOST}:{settings.SMTP_PORT}" if settings.SMTP_HOST else "console",
        )
        try:
            yield
        finally:
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
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(notifications.router)
    return app
