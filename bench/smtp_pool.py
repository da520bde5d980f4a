"""Email sends per second: Herald's pooled SmtpMailer against one connection per message, in the same run.

    .venv/bin/python -m bench.smtp_pool [--messages 1000] [--concurrency 4]

Both send the same messages to one local SMTP server (aiosmtpd on 127.0.0.1, in a thread), with the
same concurrency. "per message" is what Herald did before the pool: ``aiosmtplib.send`` (connect, EHLO,
MAIL, RCPT, DATA, QUIT) for each message. Plain SMTP on loopback: with TLS and AUTH, as real providers
require, every connection costs more, so the pool's gain is larger there.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import socket
import time
from collections.abc import Awaitable, Callable
from email.headerregistry import Address
from email.message import EmailMessage
from typing import Any

import aiosmtplib
from aiosmtpd.controller import Controller

from tasks.channels.email import SmtpMailer, build_message
from tasks.messages import DeliveryPayload

SENDER = Address("Herald Bench", "bench", "example.org")


class Counter:
    def __init__(self) -> None:
        self.received = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received += 1
        return "250 OK"


def message(n: int) -> EmailMessage:
    payload: DeliveryPayload = {
        "delivery_id": f"dlv_{n}",
        "notification_id": "ntf_bench",
        "channel": "email",
        "address": f"user{n}@example.com",
        "event_type": "notification.bench",
        "created_at": "2026-11-23T00:00:00+00:00",
        "subject": "Benchmark",
        "text": "Hello,\nthis is a benchmark message.\n",
        "html": "<p>Hello, this is a benchmark message.</p>",
        "template": None,
        "context": {},
        "metadata": {},
    }
    return build_message(payload, SENDER)


async def rate(send: Callable[[EmailMessage], Awaitable[Any]], messages: int, concurrency: int) -> float:
    queue = [message(n) for n in range(messages)]
    slots = asyncio.Semaphore(concurrency)

    async def one(item: EmailMessage) -> None:
        async with slots:
            await send(item)

    started = time.perf_counter()
    await asyncio.gather(*(one(item) for item in queue))
    return messages / (time.perf_counter() - started)


async def main(messages: int, concurrency: int) -> None:
    counter = Counter()
    with socket.socket() as probe:  # aiosmtpd's Controller checks its port by connecting: no port 0
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    controller = Controller(counter, hostname="127.0.0.1", port=port)
    controller.start()
    try:

        async def per_message(item: EmailMessage) -> None:
            await aiosmtplib.send(item, hostname="127.0.0.1", port=port, timeout=10)

        mailer = SmtpMailer(
            host="127.0.0.1", port=port, tls="none", username=None, password=None, timeout_s=10, pool_size=concurrency
        )
        await rate(per_message, 50, concurrency)  # warm-up
        baseline = await rate(per_message, messages, concurrency)
        pooled = await rate(mailer.send, messages, concurrency)
        await mailer.aclose()
    finally:
        controller.stop()
    print(f"python {platform.python_version()}, aiosmtplib {aiosmtplib.__version__}, {platform.machine()}")
    print(f"{messages} messages, concurrency {concurrency}; server received {counter.received}")
    print(f"one connection per message: {baseline:8.0f} msg/s")
    print(
        f"pooled ({concurrency} connections):  {pooled:8.0f} msg/s   ({mailer.connections_opened} connections opened)"
    )
    print(f"ratio pooled / per message: {pooled / baseline:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    asyncio.run(main(args.messages, args.concurrency))
