"""Fixtures of the fault drills: real `python -m api` and worker processes, redis-servers of their own."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import WEBHOOK_SECRET
from tests.support.processes import WORKER_COMMANDS, Process, Processes, child_env
from tests.support.redis_server import RedisServer
from tests.support.smtp import free_port

HEARTBEAT_S = 0.5
# Channel timeouts of 1 s keep arq's in-progress key (longest task timeout + 15 s) near its floor, so a
# drill that kills a worker waits ~25 s for the killed jobs, not the 50 s the defaults give.
FAST_TIMEOUTS = {"WEBHOOK_TIMEOUT_S": "1", "SMTP_TIMEOUT_S": "1", "SMS_TIMEOUT_S": "1"}

StartWorker = Callable[..., Process]
StartApi = Callable[..., tuple[Process, str]]
OwnRedis = Callable[..., RedisServer]


@pytest.fixture
def start_api(processes: Processes) -> StartApi:
    """``start_api(**env)``: a real ``python -m api`` on a free port; (process, base URL). Killed at teardown."""

    def start(**env: str) -> tuple[Process, str]:
        port = free_port()
        values = {
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "WEBHOOK_SECRET": WEBHOOK_SECRET,
            "WEBHOOK_ALLOW_PRIVATE": "true",
            "RETRY_BASE_DELAY_S": "0.05",
            **env,
        }
        process = processes.start("api", [sys.executable, "-m", "api"], child_env(**values))
        return process, f"http://127.0.0.1:{port}"

    return start


@pytest.fixture
def start_worker(processes: Processes) -> StartWorker:
    """``start_worker(redis_url, **env)``: a ``python -m tasks.worker`` process (it rides out Redis outages)."""

    def start(redis_url: str, **env: str) -> Process:
        values = {
            "REDIS_URL": redis_url,
            "WEBHOOK_SECRET": WEBHOOK_SECRET,
            "WEBHOOK_ALLOW_PRIVATE": "true",
            "RETRY_BASE_DELAY_S": "0.05",
            "RETRY_MAX_DELAY_S": "1",
            "WORKER_POLL_DELAY_S": "0.05",
            "WORKER_METRICS_PORT": "0",
            "HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S),
            **FAST_TIMEOUTS,
            **env,
        }
        return processes.start("worker", WORKER_COMMANDS["python-m"], child_env(**values))

    return start


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """``own_redis(**options)``: a redis-server of the test's own (see RedisServer), started; stopped at teardown."""
    servers: list[RedisServer] = []

    def start(**options: Any) -> RedisServer:
        directory = tmp_path / f"redis-{len(servers)}"
        directory.mkdir()
        server = RedisServer(directory, **options)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.kill()
