"""Worker drain: one Herald arq worker delivering pre-queued webhooks vs raw arq draining no-op jobs, same run.

    .venv/bin/python -m bench.worker_drain [--jobs 20000] [--default-jobs 4000] [--email-jobs N] [--arq-cli]

Everything on 127.0.0.1: a redis-server started here (no persistence), a webhook receiver that answers 200 at
once (``bench.fast_receiver``, its own uvicorn process), an SMTP server that accepts every message
(``bench.smtp_sink``, its own process), and each worker in its own process. Raw arq runs ``arq --burst`` on
no-op jobs twice: with Herald's default max_jobs/poll_delay and with arq's defaults (max_jobs 10,
poll_delay 0.5 s; that one drains ~200 jobs/s, so ``--default-jobs`` of them will do). Herald's worker is
``python -m tasks.worker`` with its defaults, delivering signed webhooks, then emails (``SMTP_TLS=none``).
Pre-queueing is not timed; a rate is counted from the first finished job to the last, so process start-up
is left out of every figure alike.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass

from arq import create_pool
from arq.connections import RedisSettings
from arq.constants import default_queue_name
from redis.asyncio import Redis

from bench import herald_noop
from bench.arq_noop import HERALD_MAX_JOBS, HERALD_POLL_DELAY_S
from bench.report import Section, Target, ratio, run_alone, times
from bench.support import (
    ARQ_CLI,
    PYTHON,
    WORKER_MODULE,
    Child,
    Server,
    child_env,
    delivery_payload,
    fast_receiver,
    herald_workers,
    redis_server,
    spawned,
    wait_tcp,
    wait_until,
)
from core.arq_backend import ArqBackend
from core.config import Settings
from core.jobs import JobSpec, JobState
from core.redis_stores import STATE_INDEX_PREFIX
from tasks.messages import Channel
from tasks.registry import TASK_FOR_CHANNEL, build_registry
from tests.support.smtp import free_port

BATCH = 200
ARQ_DEFAULT_MAX_JOBS, ARQ_DEFAULT_POLL_DELAY_S = 10, 0.5


@dataclass(frozen=True)
class Workload:
    """What is pre-queued for Herald's worker: job ``n``, and the settings the worker needs to run it."""

    job: Callable[[int], JobSpec]
    worker_settings: dict[str, str]


def deliveries(channel: Channel, address: Callable[[int], str], worker_settings: dict[str, str]) -> Workload:
    def job(n: int) -> JobSpec:
        payload = delivery_payload(n, channel, address(n))
        return JobSpec(task=TASK_FOR_CHANNEL[channel], job_id=f"dlv_{n:06d}", args=(payload,))

    return Workload(job, worker_settings)


def webhooks_to(receiver: Server) -> Workload:
    return deliveries(Channel.WEBHOOK, lambda n: f"{receiver.url}/hook", {})


def emails_to(smtp_port: int) -> Workload:
    settings = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp_port), "SMTP_TLS": "none"}
    return deliveries(Channel.EMAIL, lambda n: f"user{n}@example.com", settings)


NOOP_JOBS = Workload(
    lambda n: JobSpec(task=herald_noop.noop.name, job_id=f"job_{n:06d}"), {"TASK_MODULES": "bench.herald_noop:jobs"}
)


async def drain_rate(count_done: Callable[[], Awaitable[int]], jobs: int, children: list[Child]) -> float:
    """Jobs per second from the first finished job to the last (start-up not counted)."""
    first: tuple[float, int] | None = None

    async def all_done() -> bool:
        nonlocal first
        done = await count_done()
        if first is None and done > 0:
            first = (time.perf_counter(), done)
        return done >= jobs

    await wait_until(all_done, timeout_s=60 + jobs / 20, what=f"{jobs} jobs to finish", children=children)
    finished = time.perf_counter()
    if first is None:  # only when jobs == 0
        raise ValueError("nothing to drain")
    return ratio(jobs - first[1], finished - first[0])


async def raw_arq_rate(redis_url: str, jobs: int, settings_class: str, *, workers: int = 1) -> float:
    """Raw arq, ``workers`` processes of it, draining ``jobs`` pre-queued no-op jobs (``bench.arq_noop``)."""
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    try:
        await pool.flushall()
        for start in range(0, jobs, BATCH):
            await asyncio.gather(*(pool.enqueue_job("noop") for _ in range(start, min(jobs, start + BATCH))))

        async def finished() -> int:
            return jobs - int(await pool.zcard(default_queue_name))  # arq removes a job from its queue when done

        args = [PYTHON, "-m", "arq", "--burst", f"bench.arq_noop.{settings_class}"]
        env = child_env(REDIS_URL=redis_url)
        with ExitStack() as stack:
            children = [stack.enter_context(spawned(f"arq-{n}", args, env, may_exit=True)) for n in range(workers)]
            return await drain_rate(finished, jobs, children)
    finally:
        await pool.aclose()


async def prequeue(redis: Redis, jobs: int, workload: Workload) -> None:
    """Queue ``jobs`` jobs the way POST /notify does (ArqBackend.enqueue), in batches."""
    registry = build_registry(Settings(), [herald_noop.jobs])
    backend = ArqBackend(registry, redis, record_ttl_s=3600, heartbeat_interval_s=10)
    await backend.start()
    try:
        for start in range(0, jobs, BATCH):
            await backend.enqueue([workload.job(n) for n in range(start, min(jobs, start + BATCH))])
    finally:
        await backend.stop(1)


async def herald_rate(
    redis_url: str, jobs: int, workload: Workload, *, workers: int = 1, command: Sequence[str] = WORKER_MODULE
) -> float:
    """``workers`` Herald worker processes (``command``) running ``jobs`` pre-queued jobs of ``workload``."""
    redis = Redis.from_url(redis_url)
    try:
        await redis.flushall()
        await prequeue(redis, jobs, workload)

        async def succeeded() -> int:
            failed = await redis.zcard(STATE_INDEX_PREFIX + JobState.FAILED.value)
            if failed:
                raise RuntimeError(f"{failed} deliveries failed: see the worker's log")
            return int(await redis.zcard(STATE_INDEX_PREFIX + JobState.SUCCEEDED.value))

        with herald_workers(workers, redis_url, command=command, **workload.worker_settings) as children:
            return await drain_rate(succeeded, jobs, children)
    finally:
        await redis.aclose()


@asynccontextmanager
async def smtp_sink() -> AsyncIterator[int]:
    port = free_port()
    with spawned("smtp-sink", [PYTHON, "-m", "bench.smtp_sink", "--port", str(port)], child_env()) as child:
        await wait_tcp(port, child)
        yield port


async def measure(jobs: int, default_jobs: int, email_jobs: int, arq_cli: bool = False) -> Section:
    async with redis_server() as redis_url, fast_receiver() as receiver, smtp_sink() as smtp_port:
        tuned = await raw_arq_rate(redis_url, jobs, "TunedSettings")
        default = await raw_arq_rate(redis_url, default_jobs, "DefaultSettings")
        noops = await herald_rate(redis_url, jobs, NOOP_JOBS)
        webhooks = await herald_rate(redis_url, jobs, webhooks_to(receiver))
        via_cli = await herald_rate(redis_url, jobs, webhooks_to(receiver), command=ARQ_CLI) if arq_cli else None
        emails = await herald_rate(redis_url, email_jobs, emails_to(smtp_port))
    command = f".venv/bin/python -m bench.worker_drain --jobs {jobs} --default-jobs {default_jobs}"
    command += f" --email-jobs {email_jobs}" + (" --arq-cli" if arq_cli else "")
    rows = [
        [f"raw arq, no-op jobs, Herald's settings (max_jobs {HERALD_MAX_JOBS}, poll {HERALD_POLL_DELAY_S:g} s)",
         f"{jobs:,}", f"{tuned:,.0f} jobs/s"],
        [f"raw arq, no-op jobs, arq's defaults (max_jobs {ARQ_DEFAULT_MAX_JOBS}, poll {ARQ_DEFAULT_POLL_DELAY_S:g} s)",
         f"{default_jobs:,}", f"{default:,.0f} jobs/s"],
        ["Herald `python -m tasks.worker`, no-op jobs (`bench.herald_noop`)", f"{jobs:,}", f"{noops:,.0f} jobs/s"],
        ["Herald `python -m tasks.worker`, signed webhooks", f"{jobs:,}", f"{webhooks:,.0f} deliveries/s"],
    ]  # fmt: skip
    if via_cli is not None:
        rows.append(["Herald under arq's CLI (arq's Worker), signed webhooks", f"{jobs:,}", f"{via_cli:,.0f}/s"])
    rows.append(["Herald `python -m tasks.worker`, emails (SMTP, pool of 4)", f"{email_jobs:,}", f"{emails:,.0f}/s"])
    return Section(
        title="Worker drain: Herald's worker vs raw arq",
        command=command,
        header=["Worker", "Jobs", "Rate"],
        rows=rows,
        notes=[
            "One worker process each; Redis, the receiver / SMTP server and the worker share the 2 cores. "
            "Rates run from the first finished job to the last (start-up not counted). Emails go to "
            f"`bench.smtp_sink` (aiosmtpd, plain SMTP on loopback): {times(ratio(emails, tuned))} raw arq tuned, "
            f"{times(ratio(emails, webhooks))} the webhook rate.",
            f"Herald's worker on no-op jobs, the same work as raw arq's plus Herald's records: "
            f"{times(ratio(noops, tuned))} raw arq tuned. The rest of the gap to webhooks is the signed HTTP POST "
            "itself (`bench.webhook_client` measures its CPU cost).",
        ],
        targets=[
            Target("webhook deliveries/s vs raw arq, Herald's settings", ratio(webhooks, tuned), low=0.7),
            Target("webhook deliveries/s vs raw arq, arq's defaults", ratio(webhooks, default), low=3),
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20_000, help="webhook deliveries and no-op jobs (tuned)")
    parser.add_argument(
        "--default-jobs", type=int, default=4_000, help="no-op jobs for arq's defaults (~200/s; at most --jobs)"
    )
    parser.add_argument("--email-jobs", type=int, help="email deliveries (default: --jobs)")
    parser.add_argument("--arq-cli", action="store_true", help="also run Herald's worker under arq's CLI")
    args = parser.parse_args()
    run_alone(measure(args.jobs, min(args.default_jobs, args.jobs), args.email_jobs or args.jobs, args.arq_cli))


if __name__ == "__main__":
    main()
