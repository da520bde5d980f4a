from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from api.app import create_app
from api.deps import get_templates
from core.config import Settings
from tasks.rendering import TemplateLibrary
from tests.support.processes import Processes
from tests.support.receiver import Receiver, serve_in_thread
from tests.support.redis_server import RedisServer
from tests.support.smtp import SmtpSink, smtp_server

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"herald-test-secret-0123456789abcdef").decode()
API_KEY = "test-key-" + "x" * 24


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from each test, never from the machine running the suite."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def make_settings() -> Callable[..., Settings]:
    """Settings with fast retries and loopback webhooks allowed; override anything."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "WEBHOOK_SECRET": WEBHOOK_SECRET,
            "WEBHOOK_ALLOW_PRIVATE": True,
            "RETRY_BASE_DELAY_S": 0.02,
            "RETRY_MAX_DELAY_S": 0.2,
            "WEBHOOK_TIMEOUT_S": 2.0,
            "SMTP_TIMEOUT_S": 2.0,
            "SHUTDOWN_GRACE_S": 5.0,
            "EMAIL_FROM": "Herald Test <herald@example.org>",
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver(secret=WEBHOOK_SECRET)
    with serve_in_thread(rec) as port:
        rec.port = port
        yield rec


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    with smtp_server() as sink:
        yield sink


@pytest.fixture
def client_for(make_settings: Callable[..., Settings]) -> Callable[..., Any]:
    """``async with client_for(**settings) as client``: the app with its lifespan, over ASGITransport.

    ``templates=`` renders from that TemplateLibrary instead of tasks/templates/.
    """

    @asynccontextmanager
    async def open_client(
        *, templates: TemplateLibrary | None = None, **overrides: Any
    ) -> AsyncIterator[httpx.AsyncClient]:
        app = create_app(make_settings(**overrides))
        if templates is not None:

            async def own_templates() -> TemplateLibrary:
                return templates

            app.dependency_overrides[get_templates] = own_templates
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://herald.test") as client:
                yield client

    return open_client


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A clean database on the suite's shared redis-server (restarted if a test stopped it)."""
    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()
    redis_server.flush()
    return redis_server.url


@pytest.fixture(params=["inline", "arq"])
def backend_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Run a test once per backend: in-process, and arq on a real Redis with the embedded worker."""
    if request.param == "inline":
        return {"TASK_BACKEND": "inline"}
    return {
        "TASK_BACKEND": "arq",
        "REDIS_URL": request.getfixturevalue("redis_url"),
        "WORKER_MODE": "embedded",
        "WORKER_POLL_DELAY_S": 0.02,
    }


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    """A client of the suite's redis-server, on a clean database."""
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Real Herald processes for drills, each with its own log file, killed at the end."""
    with Processes(tmp_path) as started:
        yield started
