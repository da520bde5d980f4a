"""Workers ride out a Redis outage: when Redis returns, new notifications are delivered again."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import WEBHOOK_SECRET
from tests.support.processes import Processes, child_env
from tests.support.receiver import Receiver
from tests.support.redis_server import RedisServer
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow
LOST_REDIS = "worker lost Redis"


async def _post_and_wait_delivered(client: httpx.AsyncClient, receiver: Receiver, path: str) -> None:
    body = {"to": [{"channel": "webhook", "address": receiver.url(path)}], "subject": "s", "text": "t"}
    response = await client.post("/notify", json=body)
    assert response.status_code == 202, response.text
    location = response.headers["location"]

    async def delivered() -> bool:
        return bool((await client.get(location)).json()["status"] == "delivered")

    await eventually(delivered, timeout_s=30, what=f"delivery to {path}")


async def _outage(client: httpx.AsyncClient, redis_server: RedisServer, worker_noticed: Callable[[], bool]) -> None:
    """Stop Redis until both the API and the worker have noticed, then start it again."""
    redis_server.stop()

    async def api_noticed() -> bool:
        return (await client.get("/readyz")).status_code == 503

    await eventually(api_noticed, what="/readyz to report Redis down")
    await eventually(worker_noticed, timeout_s=15, what="the worker to lose Redis")
    redis_server.start()


async def test_embedded_worker_reconnects_after_redis_restarts(
    client_for: Any,
    redis_server: RedisServer,
    redis_url: str,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.WARNING, logger="herald.worker")
    monkeypatch.setattr(logging.getLogger("herald"), "propagate", True)  # configure_logging turns it off
    settings = {"TASK_BACKEND": "arq", "REDIS_URL": redis_url, "WORKER_MODE": "embedded", "WORKER_POLL_DELAY_S": 0.05}
    async with client_for(**settings) as client:
        await _post_and_wait_delivered(client, receiver, "/before")
        await _outage(client, redis_server, lambda: LOST_REDIS in caplog.text)
        await _post_and_wait_delivered(client, receiver, "/after")
        ready = await client.get("/readyz")
    assert ready.json()["checks"]["embedded_worker"] == "running"
    assert [r.path for r in receiver.received()] == ["/before", "/after"]


async def test_worker_process_reconnects_after_redis_restarts(
    client_for: Any, redis_server: RedisServer, redis_url: str, receiver: Receiver, tmp_path: Path
) -> None:
    env = child_env(
        REDIS_URL=redis_url,
        WEBHOOK_SECRET=WEBHOOK_SECRET,
        WEBHOOK_ALLOW_PRIVATE="true",
        WORKER_POLL_DELAY_S="0.05",
    )
    with Processes(tmp_path) as processes:
        worker = processes.start("worker", [sys.executable, "-m", "tasks.worker"], env)
        async with client_for(TASK_BACKEND="arq", REDIS_URL=redis_url) as client:
            await _post_and_wait_delivered(client, receiver, "/before")
            await _outage(client, redis_server, lambda: LOST_REDIS in worker.log())
            await _post_and_wait_delivered(client, receiver, "/after")
        assert worker.running, "the worker rode out the outage instead of exiting"
        worker.send(signal.SIGTERM)
        assert await worker.exited(timeout_s=20) == 0, worker.log()
