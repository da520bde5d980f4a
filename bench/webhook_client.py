"""Webhook client cost: CPU per signed POST with Herald's webhook client vs httpx as it was, same run.

    .venv/bin/python -m bench.webhook_client [--requests 4000] [--concurrency 5 50]

A fast receiver (bench/fast_receiver.py) runs in its own process on 127.0.0.1; this process sends the same
signed POSTs three ways: Herald's ``WebhookClient`` (httpcore pools, sharded, no httpx client layer), an
httpx.AsyncClient over the same sharded pools, and an httpx.AsyncClient over one httpcore pool of 100 with 20
kept alive (what Herald used before). The figure is this process's CPU time (user + system) per request, so
the receiver's share of the machine does not count; wall-clock requests/s is printed beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import platform
import resource
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpcore
import httpx
import uvloop
from standardwebhooks import Webhook

from bench.support import WEBHOOK_SECRET, delivery_payload, fast_receiver
from core.config import Settings
from tasks.channels.netguard import GuardedNetworkBackend
from tasks.channels.webhook import post_webhook, signed_headers, webhook_body
from tasks.messages import DeliveryPayload
from tasks.resources import build_webhook_client, build_webhook_sender

WARMUP = 200


def single_pool_client(settings: Settings) -> httpx.AsyncClient:
    """The httpx client Herald used before: one pool of 100 connections, 20 kept alive."""
    client = build_webhook_client(settings)
    client._transport._pool = httpcore.AsyncConnectionPool(  # type: ignore[attr-defined]
        max_connections=100,
        max_keepalive_connections=20,
        network_backend=GuardedNetworkBackend(allow_private=True),
    )
    return client


async def httpx_post(client: httpx.AsyncClient, signer: Webhook, payload: DeliveryPayload) -> int:
    """The signed POST as Herald sent it through httpx: body streamed and read up to the same bound."""
    body = webhook_body(payload)
    headers = signed_headers(signer, payload["delivery_id"], body)
    async with client.stream("POST", payload["address"], content=body.encode(), headers=headers) as response:
        async for _ in response.aiter_raw():
            pass
        return response.status_code


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
    # one local receiver, many requests in flight: the per-host limit would measure itself
    values: dict[str, Any] = {
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "WEBHOOK_ALLOW_PRIVATE": True,
        "WEBHOOK_MAX_PER_HOST": 10_000,
    }
    settings = Settings(**values)
    signer = Webhook(WEBHOOK_SECRET)
    senders: dict[str, Callable[[int], Awaitable[int]]] = {}
    async with (
        build_webhook_sender(settings) as herald,
        build_webhook_client(settings) as sharded_httpx,
        single_pool_client(settings) as one_pool_httpx,
    ):
        senders["Herald WebhookClient"] = lambda n: post_webhook(herald, signer, delivery_payload(n, "webhook", url))
        for name, client in (("httpx, sharded pool", sharded_httpx), ("httpx, one pool", one_pool_httpx)):
            senders[name] = functools.partial(_via_httpx, client, signer, url)
        figures = {name: await measure(send, requests, concurrency) for name, send in senders.items()}
    for name, (cpu_ms, rate) in figures.items():
        print(f"  concurrency {concurrency:3d}  {name:21s} {cpu_ms:6.3f} ms CPU/request  {rate:6.0f} requests/s")
    before = figures["httpx, one pool"][0] / figures["Herald WebhookClient"][0]
    print(f"  concurrency {concurrency:3d}  CPU per request, httpx one pool / Herald: {before:.2f}x")


async def _via_httpx(client: httpx.AsyncClient, signer: Webhook, url: str, n: int) -> int:
    return await httpx_post(client, signer, delivery_payload(n, "webhook", url))


async def main(requests: int, levels: list[int]) -> None:
    print(f"python {platform.python_version()}, httpx {httpx.__version__}, httpcore {httpcore.__version__}")
    async with fast_receiver() as receiver:
        for concurrency in levels:
            await compare(f"{receiver.url}/hook", requests, concurrency)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[5, 50])
    arguments = parser.parse_args()
    uvloop.run(main(arguments.requests, arguments.concurrency))
