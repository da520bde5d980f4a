"""Drain drills against a real `python -m api` process: SIGTERM with work in flight."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import WEBHOOK_SECRET
from tests.support.receiver import Receiver, Reply
from tests.support.smtp import free_port
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _server_env(port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "SYSTEMROOT"}}
    env.update(
        PORT=str(port),
        HOST="127.0.0.1",
        WEBHOOK_SECRET=WEBHOOK_SECRET,
        WEBHOOK_ALLOW_PRIVATE="true",
        RETRY_BASE_DELAY_S="0.05",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Any]:
    started: list[tuple[subprocess.Popen[bytes], Any]] = []

    def start(**env: str) -> tuple[subprocess.Popen[bytes], Path, int]:
        port = free_port()
        log_path = tmp_path / f"server-{port}.log"
        log = log_path.open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "api"], cwd=ROOT, env=_server_env(port, **env), stdout=log, stderr=log
        )
        started.append((proc, log))
        return proc, log_path, port

    yield start
    for proc, log in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


async def _wait_ready(client: httpx.AsyncClient, proc: subprocess.Popen[bytes]) -> None:
    async def ready() -> bool:
        assert proc.poll() is None, "the server exited during start-up"
        try:
            return (await client.get("/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    await eventually(ready, timeout_s=20, what="the server to start")


async def _post_many(client: httpx.AsyncClient, url: str, count: int) -> list[str]:
    body = {"to": [{"channel": "webhook", "address": url}], "subject": "drain", "text": "drill"}
    responses = await asyncio.gather(*(client.post("/notify", json=body) for _ in range(count)))
    assert {r.status_code for r in responses} == {202}
    return [r.json()["deliveries"][0]["id"] for r in responses]


async def _wait_clean_exit(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    await eventually(lambda: proc.poll() is not None, timeout_s=timeout_s, what="the server to exit")
    # uvicorn re-raises the SIGTERM it handled once shutdown is complete.
    assert proc.returncode in (0, -signal.SIGTERM), proc.returncode


async def test_sigterm_drains_every_accepted_delivery_before_exit(start_server: Any, receiver: Receiver) -> None:
    receiver.default = Reply(delay_s=0.1)
    proc, log_path, port = start_server(TASK_CONCURRENCY="5", SHUTDOWN_GRACE_S="25")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        await _wait_ready(client, proc)
        delivery_ids = await _post_many(client, receiver.url("/slow"), 200)
    in_flight_at_sigterm = 200 - len(receiver.received("/slow"))
    proc.send_signal(signal.SIGTERM)
    await _wait_clean_exit(proc, timeout_s=40)
    received = [r.headers["webhook-id"] for r in receiver.received("/slow")]
    assert in_flight_at_sigterm > 100, "the drill must SIGTERM with most deliveries still pending"
    assert sorted(received) == sorted(delivery_ids), "every accepted delivery arrived exactly once"
    assert "drain complete: 0 jobs left unfinished" in log_path.read_text()


async def test_sigterm_past_the_grace_names_every_unfinished_delivery(start_server: Any, receiver: Receiver) -> None:
    receiver.default = Reply(delay_s=0.5)
    proc, log_path, port = start_server(TASK_CONCURRENCY="2", SHUTDOWN_GRACE_S="1")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        await _wait_ready(client, proc)
        delivery_ids = await _post_many(client, receiver.url("/slower"), 20)
    proc.send_signal(signal.SIGTERM)
    await _wait_clean_exit(proc, timeout_s=30)
    log = log_path.read_text()
    messages = "\n".join(json.loads(line)["message"] for line in log.splitlines())  # JSON lines by default
    match = re.search(r"shutdown left (\d+) jobs unfinished: (.+)", messages)
    assert match, log
    named = set(match.group(2).split(", "))
    arrived = {r.headers["webhook-id"] for r in receiver.received("/slower")}
    assert int(match.group(1)) == len(named) > 0
    # Nothing silently dropped: every accepted delivery either arrived or is named in the log.
    assert set(delivery_ids) <= arrived | named
