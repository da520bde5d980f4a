"""End-to-end latency: from POST /notify to the receiver having the webhook, p50/p99, both modes, same run.

    .venv/bin/python -m bench.e2e_latency [--rate 20] [--duration 15]

A low steady rate, open loop: a request is sent every 1/rate s whatever the earlier ones are doing. Each
notification carries ``metadata.probe``; ``bench.probe_receiver`` timestamps its arrival on the clock the
sender reads just before POSTing (CLOCK_MONOTONIC, shared by every process). The first second is a
warm-up, discarded. Modes: in-process (``TASK_BACKEND=inline``), and arq mode (the web process enqueues,
one ``python -m tasks.worker`` delivers, both on a redis-server started here). Baseline, same run: the same
client POSTing a webhook-shaped body straight to the receiver, one HTTP hop: the floor any mode pays.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import httpx

from bench.report import Section, percentile_ms, ratio, run_alone, times
from bench.support import Server, herald_api, herald_workers, redis_server, uvicorn_app, wait_until, wait_workers_alive

WARMUP_S = 1.0
ARRIVAL_TIMEOUT_S = 30


def notify_body(receiver: Server, probe: str) -> dict[str, Any]:
    return {
        "to": [{"channel": "webhook", "address": f"{receiver.url}/hook"}],
        "subject": "Latency probe",
        "text": "Hello",
        "metadata": {"probe": probe},
    }


def webhook_shaped_body(receiver: Server, probe: str) -> dict[str, Any]:
    return {"type": "notification.probe", "data": {"metadata": {"probe": probe}}}


async def latencies(
    target_url: str, receiver: Server, mode: str, rate: float, duration_s: float, *, direct: bool = False
) -> list[float]:
    """Send probes at ``rate`` for ``duration_s`` (after a warm-up); seconds from each send to its arrival."""
    sent: dict[str, float] = {}
    warmup = round(WARMUP_S * rate)
    count = warmup + round(duration_s * rate)
    make_body = webhook_shaped_body if direct else notify_body
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=100), timeout=30) as client:

        async def send(probe: str) -> None:
            body = make_body(receiver, probe)
            sent[probe] = time.monotonic()
            response = await client.post(target_url, json=body)
            if response.status_code not in (200, 202):
                raise RuntimeError(f"{mode}: {response.status_code} {response.text[:200]}")

        began = time.monotonic()
        async with asyncio.TaskGroup() as group:
            for n in range(count):
                await asyncio.sleep(max(0.0, began + n / rate - time.monotonic()))
                group.create_task(send(f"{mode}-{n}"))
        arrivals: dict[str, float] = {}

        async def all_arrived() -> bool:
            arrivals.update((await client.get(receiver.url + "/arrivals")).json())
            return all(probe in arrivals for probe in sent)

        await wait_until(all_arrived, timeout_s=ARRIVAL_TIMEOUT_S, what=f"{mode}: every probe at the receiver")
    return [arrivals[f"{mode}-{n}"] - sent[f"{mode}-{n}"] for n in range(warmup, count)]


async def measure(rate: float, duration_s: float) -> Section:
    async with uvicorn_app("probe-receiver", "bench.probe_receiver:app") as receiver:
        direct = await latencies(receiver.url + "/hook", receiver, "direct", rate, duration_s, direct=True)
        async with herald_api(TASK_BACKEND="inline") as server:
            inline = await latencies(server.url + "/notify", receiver, "inline", rate, duration_s)
        async with (
            redis_server() as redis_url,
            herald_api(TASK_BACKEND="arq", REDIS_URL=redis_url, WORKER_MODE="separate") as server,
        ):
            with herald_workers(1, redis_url) as workers:
                await wait_workers_alive(server, 1, workers)
                arq = await latencies(server.url + "/notify", receiver, "arq", rate, duration_s)
    floor = percentile_ms(direct, 50)
    rows = [
        [name, f"{percentile_ms(values, 50):.1f}", f"{percentile_ms(values, 99):.1f}", f"{max(values) * 1000:.1f}",
         times(ratio(percentile_ms(values, 50), floor))]
        for name, values in [
            ("direct POST to the receiver (baseline)", direct),
            ("Herald, in-process", inline),
            ("Herald, arq mode, one `python -m tasks.worker`", arq),
        ]
    ]  # fmt: skip
    return Section(
        title="End-to-end latency: POST /notify until the receiver has it",
        command=f".venv/bin/python -m bench.e2e_latency --rate {rate:g} --duration {duration_s:g}",
        header=["Path", "p50 ms", "p99 ms", "max ms", "p50 vs direct"],
        rows=rows,
        notes=[
            f"{round(duration_s * rate)} probes per path at {rate:g}/s (open loop), after {WARMUP_S:g} s of warm-up; "
            "receiver: `bench.probe_receiver` (uvicorn, its own process). Issue 7 sets no target here. In arq mode "
            "the worker has Herald's defaults (max_jobs 50, poll_delay 0.1 s)."
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=20, help="notifications per second")
    parser.add_argument("--duration", type=float, default=15, help="seconds measured per path")
    args = parser.parse_args()
    run_alone(measure(args.rate, args.duration))


if __name__ == "__main__":
    main()
