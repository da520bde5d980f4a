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
import time
from collections.abc import Awaitable, Callable
from email.headerregistry import Address
from email.message import EmailMessage
from typing import Any

import aiosmtplib
from aiosmtpd.controller import Controller

from bench.report import Section, Target, ratio, run_alone
from bench.smtp_sink import Counter
from bench.support import delivery_payload
from tasks.channels.email import SmtpMailer, build_message
from tests.support.smtp import free_port

SENDER = Address("Herald Bench", "bench", "example.org")


def message(n: int) -> EmailMessage:
    payload = delivery_payload(n, "email", f"user{n}@example.com", html="<p>Hello, this is a benchmark message.</p>")
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


async def measure(messages: int, concurrency: int) -> Section:
    counter = Counter()
    port = free_port()  # aiosmtpd's Controller checks its port by connecting: no port 0
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
        try:
            pooled = await rate(mailer.send, messages, concurrency)
        finally:
            await mailer.aclose()
    finally:
        controller.stop()
    return Section(
        title="Email: pooled SMTP connections vs one connection per message",
        command=f".venv/bin/python -m bench.smtp_pool --messages {messages} --concurrency {concurrency}",
        header=["Sender", "Rate"],
        rows=[
            ["one connection per message (`aiosmtplib.send`)", f"{baseline:,.0f} msg/s"],
            [f"`SmtpMailer`, pool of {concurrency} (`SMTP_POOL_SIZE`)", f"{pooled:,.0f} msg/s"],
        ],
        notes=[
            f"aiosmtplib {aiosmtplib.__version__}; aiosmtpd on 127.0.0.1 in a thread of the same process; "
            f"{messages:,} messages each, {concurrency} at a time; the server received {counter.received:,}; "
            f"the pool opened {mailer.connections_opened} connections (each retired after 100 messages). "
            "Plain SMTP on loopback, the cheapest handshake: with STARTTLS and AUTH the gain is larger."
        ],
        targets=[Target("pooled msg/s vs a connection per message", ratio(pooled, baseline), low=1)],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    run_alone(measure(args.messages, args.concurrency))


if __name__ == "__main__":
    main()
