"""Webhook client cost: CPU per signed POST with Herald's sharded pool vs one httpcore pool, same run.

    .venv/bin/python -m bench.webhook_client [--requests 4000] [--concurrency 5 50]

A fast receiver (bench/fast_receiver.py) runs in its own process on 127.0.0.1; this process sends
``post_webhook`` (Herald's signed POST) through two clients built like ``build_webhook_client``: one
whose connections are split over shards (what Herald ships) and one with a single httpcore pool (what
it had before). The figure is this process's CPU time (user + system) per request, so the receiver's
share of the machine does not count; wall-clock requests/s is printed beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpcore
import httpx
import uvloop
from standardwebhooks import Webhook

from core.config import Settings
from tasks.channels.netguard import GuardedNetworkBackend
from tasks.channels.webhook import post_webhook
from tasks.messages import DeliveryPayload
from tasks.resources import build_webhook_client
from tests.support.smtp import free_port

ROOT = Path(__file__).resolve().parents[1]
SECRET = "whsec_" + base64.b64encode(b"herald-bench-secret-0123456789abcdef").decode()
WARMUP = 200


def payload(n: int, url: str) -> DeliveryPayload:
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


def single_pool_client(settings: Settings) -> httpx.AsyncClient:
    """Herald's client before sharding: one pool of 100 connections, 20 kept alive."""
    client = build_webhook_client(settings)
    client._transport._pool = httpcore.AsyncConnectionPool(  # type: ignore[attr-defined]
        max_connections=100,
        max_keepalive_connections=20,
        network_backend=GuardedNetworkBackend(allow_private=True),
    )
    return client


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(send: Callable[[int], Awaitable[int]], requests: int, concurrency: int) -> tuple[float, float]:
    """(CPU ms per request, requests/s) for ``requests`` sends, ``concurrency`` at a time."""
    slots = asyncio.Semaphore(concurrency)

    async def one(n: int) -> None:
        async with slots:
            await send(n)

    await asyncio.gather(*(one(n) for n in range(WARMUP)))
    cpu, began = cpu_s(), time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(requests)))
    return 1000 * (cpu_s() - cpu) / requests, requests / (time.perf_counter() - began)


async def compare(url: str, requests: int, concurrency: int) -> None:
    values: dict[str, Any] = {"WEBHOOK_SECRET": SECRET, "WEBHOOK_ALLOW_PRIVATE": True}
    settings = Settings(**values)
    signer = Webhook(SECRET)
    clients = {"sharded (Herald)": build_webhook_client(settings), "one pool (before)": single_pool_client(settings)}
    figures: dict[str, tuple[float, float]] = {}
    for name, client in clients.items():
        async with client:

            async def send(n: int, client: httpx.AsyncClient = client) -> int:
                return await post_webhook(client, signer, payload(n, url))

            figures[name] = await measure(send, requests, concurrency)
    for name, (cpu_ms, rate) in figures.items():
        print(f"  concurrency {concurrency:3d}  {name:18s} {cpu_ms:6.3f} ms CPU/request  {rate:6.0f} requests/s")
    ratio = figures["one pool (before)"][0] / figures["sharded (Herald)"][0]
    print(f"  concurrency {concurrency:3d}  CPU per request, before / sharded: {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[5, 50])
    args = parser.parse_args()
    port = free_port()
    receiver = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bench.fast_receiver:app", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT,
    )
    try:
        url = f"http://127.0.0.1:{port}/hook"
        uvloop.run(_wait_then_compare(url, args.requests, args.concurrency))
    finally:
        receiver.terminate()
        receiver.wait(timeout=30)


async def _wait_then_compare(url: str, requests: int, levels: list[int]) -> None:
    deadline = time.monotonic() + 20
    async with httpx.AsyncClient() as probe:
        while True:
            try:
                await probe.get(url)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
    print(f"python {platform.python_version()}, httpx {httpx.__version__}, httpcore {httpcore.__version__}")
    for concurrency in levels:
        await compare(url, requests, concurrency)


if __name__ == "__main__":
    main()
