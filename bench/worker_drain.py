"""Worker drain: one Herald arq worker delivering pre-queued webhooks vs raw arq draining no-op jobs, same run.

    .venv/bin/python -m bench.worker_drain [--jobs 20000]

Everything on 127.0.0.1: a redis-server started here, a webhook receiver that answers 200 at once (uvicorn,
its own process), and each worker in its own process. Raw arq runs with ``--burst`` twice: tuned like Herald
(max_jobs 50, poll_delay 0.1) and with arq's defaults (max_jobs 10, poll_delay 0.5). Herald's worker is
``python -m tasks.worker`` with its defaults; its rate is counted from its start until every delivery's record
is ``succeeded``. Pre-queueing is not timed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from arq import create_pool
from arq.connections import RedisSettings
from redis.asyncio import Redis

from core.arq_backend import ArqBackend
from core.config import Settings
from core.jobs import JobSpec
from core.redis_stores import STATE_INDEX_PREFIX
from tasks.registry import build_registry
from tests.support.redis_server import RedisServer
from tests.support.smtp import free_port

ROOT = Path(__file__).resolve().parents[1]
SECRET = "whsec_" + base64.b64encode(b"herald-bench-secret-0123456789abcdef").decode()
BATCH = 200


def child_env(**values: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "TMPDIR"}}
    return {**keep, "PYTHONPATH": str(ROOT), **values}


async def wait_http(url: str) -> None:
    deadline = time.monotonic() + 20
    async with httpx.AsyncClient() as client:
        while True:
            try:
                await client.get(url)
                return
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)


async def raw_arq(redis_url: str, jobs: int, settings_class: str) -> float:
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    await pool.flushdb()
    for start in range(0, jobs, BATCH):
        await asyncio.gather(*(pool.enqueue_job("noop") for _ in range(start, min(jobs, start + BATCH))))
    await pool.aclose()
    began = time.perf_counter()
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "arq",
        "--burst",
        f"bench.arq_noop.{settings_class}",
        cwd=ROOT,
        env=child_env(REDIS_URL=redis_url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if await worker.wait() != 0:
        raise RuntimeError(f"arq exited with {worker.returncode}")
    return jobs / (time.perf_counter() - began)


WORKER_COMMANDS = {
    "python-m": ["-m", "tasks.worker"],  # Herald's own Worker subclass (reads past the running jobs)
    "arq-cli": ["-m", "arq", "tasks.worker.WorkerSettings"],  # arq's Worker, arq's fixed read batch
}


async def herald(redis_url: str, receiver_url: str, jobs: int, worker_command: str = "python-m") -> float:
    values: dict[str, Any] = {"REDIS_URL": redis_url, "WEBHOOK_SECRET": SECRET, "WEBHOOK_ALLOW_PRIVATE": True}
    settings = Settings(TASK_BACKEND="arq", **values)
    redis = Redis.from_url(redis_url)
    await redis.flushdb()
    backend = ArqBackend(build_registry(settings), redis, record_ttl_s=3600, heartbeat_interval_s=10)
    await backend.start()
    for start in range(0, jobs, BATCH):
        specs = [
            JobSpec(task="send_webhook", job_id=f"dlv_{n:06d}", args=(payload(n, receiver_url),))
            for n in range(start, min(jobs, start + BATCH))
        ]
        await backend.enqueue(specs)
    env = child_env(
        TASK_BACKEND="arq",
        REDIS_URL=redis_url,
        WEBHOOK_SECRET=SECRET,
        WEBHOOK_ALLOW_PRIVATE="true",
        CRON_ENABLED="false",
        WORKER_METRICS_PORT="0",
        LOG_LEVEL="WARNING",
    )
    began = time.perf_counter()
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        *WORKER_COMMANDS[worker_command],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while await redis.zcard(STATE_INDEX_PREFIX + "succeeded") < jobs:
            if worker.returncode is not None:
                raise RuntimeError(f"the worker exited with {worker.returncode}")
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - began
    finally:
        worker.terminate()
        await asyncio.wait_for(worker.wait(), timeout=30)
        await backend.stop(1)
        await redis.aclose()
    return jobs / elapsed


def payload(n: int, url: str) -> dict[str, object]:
    return {
        "delivery_id": f"dlv_{n:06d}",
        "notification_id": "ntf_bench",
        "channel": "webhook",
        "address": url,
        "event_type": "notification.bench",
        "created_at": "2026-11-23T00:00:00+00:00",
        "subject": "Benchmark",
        "text": "Hello, this is a benchmark delivery.",
        "html": None,
        "template": None,
        "context": {},
        "metadata": {},
    }


async def main(jobs: int) -> None:
    server = RedisServer(Path(tempfile.mkdtemp(prefix="herald-bench-")))
    server.start()
    port = free_port()
    receiver = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "uvicorn", "bench.fast_receiver:app", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT,
        env=child_env(),
    )
    try:
        await wait_http(f"http://127.0.0.1:{port}/")
        tuned = await raw_arq(server.url, jobs, "TunedSettings")
        default = await raw_arq(server.url, min(jobs, 4000), "DefaultSettings")  # ~200/s: a smaller batch will do
        ours = await herald(server.url, f"http://127.0.0.1:{port}/hook", jobs)
        via_cli = await herald(server.url, f"http://127.0.0.1:{port}/hook", jobs, "arq-cli")
    finally:
        receiver.terminate()
        await asyncio.wait_for(receiver.wait(), timeout=30)
        server.stop()
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, {jobs} jobs")
    print(f"raw arq, no-op jobs, tuned (max_jobs 50, poll 0.1 s): {tuned:8.0f} jobs/s")
    print(f"raw arq, no-op jobs, arq defaults (10, 0.5 s):         {default:8.0f} jobs/s")
    print(f"Herald worker, signed webhook deliveries:              {ours:8.0f} deliveries/s")
    print(f"  same, under arq's CLI (arq's Worker, fixed read):    {via_cli:8.0f} deliveries/s")
    print(f"Herald / raw tuned: {ours / tuned:.2f}x   Herald / raw defaults: {ours / default:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20_000)
    asyncio.run(main(parser.parse_args().jobs))
