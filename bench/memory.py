"""Memory of the in-process server: RSS holding queued deliveries, and after they finish.

    .venv/bin/python -m bench.memory [--queued 10000]

One ``python -m api`` (``TASK_BACKEND=inline``) and ``bench.probe_receiver``, on 127.0.0.1. RSS is VmRSS from
/proc/<pid>/status (KiB). After a short warm-up (the baseline), two rounds of: the receiver's gate closes,
``--queued`` notifications (one webhook each) are accepted, RSS is read; the first ``TASK_CONCURRENCY``
deliveries wait at the receiver, the rest in Herald's queue with status ``queued`` (a ``send_at`` would
measure timers instead); then the gate opens, every delivery finishes, RSS is read again.

- per queued delivery: (round 1 holding - baseline) / ``--queued``. It includes the delivery's job, its
  record and content and its notification's record (one recipient per notification, the costliest shape).
- after they finish: Herald keeps the records of the last ``RECORD_MAX_COUNT`` deliveries by design, set here
  to ``--queued`` (10,000, its default), so round 1 fills that store; round 2 shows whether memory then
  stays flat: after round 2 vs after round 1. After round 1 vs the baseline is shown too.

``WEBHOOK_TIMEOUT_S`` is raised so that the held deliveries do not time out while the rest are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import httpx

from bench.report import Section, Target, ratio, run_alone
from bench.support import (
    METRICS_POLL_S,
    WEBHOOKS_DELIVERED,
    Server,
    herald_api,
    herald_metrics,
    rss_kb,
    uvicorn_app,
    wait_until,
    welcome_webhook,
)

SENDERS = 16  # concurrent POSTs while filling the queue
SETTLE_S = 1.0  # after the last change, before reading RSS
WARMUP = 200  # notifications delivered before the baseline: lazy imports, first connections


async def post_many(server: Server, body: dict[str, Any], count: int) -> None:
    """POST /notify ``count`` times, ``SENDERS`` at a time; every answer must be 202."""
    remaining = iter(range(count))
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:

        async def sender() -> None:
            for _ in remaining:
                response = await client.post("/notify", json=body)
                if response.status_code != 202:
                    raise RuntimeError(f"POST /notify answered {response.status_code}: {response.text[:200]}")

        async with asyncio.TaskGroup() as group:
            for _ in range(SENDERS):
                group.create_task(sender())


async def delivered(server: Server, count: int) -> None:
    async def done() -> bool:
        return (await herald_metrics(server))[WEBHOOKS_DELIVERED] >= count

    await wait_until(
        done, timeout_s=60 + count / 20, what=f"{count} deliveries", children=[server.child], poll_s=METRICS_POLL_S
    )


async def settled_rss(server: Server) -> int:
    await asyncio.sleep(SETTLE_S)
    return rss_kb(server.child.pid)


def server_settings(records: int) -> dict[str, str]:
    return {"TASK_BACKEND": "inline", "WEBHOOK_TIMEOUT_S": "600", "RECORD_MAX_COUNT": str(records)}


async def read_rss(queued: int, records: int) -> list[tuple[str, int]]:
    """(where the deliveries wait, RSS KiB) at the baseline and at each round's holding and after."""
    async with uvicorn_app("probe-receiver", "bench.probe_receiver:app") as receiver:
        body = welcome_webhook(receiver)
        async with herald_api(**server_settings(records)) as server, httpx.AsyncClient() as client:
            await post_many(server, body, WARMUP)
            await delivered(server, WARMUP)
            readings = [("", await settled_rss(server))]
            for round_ in (1, 2):
                await client.post(receiver.url + "/gate/close")
                try:
                    await post_many(server, body, queued)
                    held = int((await client.get(receiver.url + "/held")).text)
                    where = f"{held} at the receiver, {queued - held:,} in Herald's queue"
                    readings.append((where, await settled_rss(server)))
                finally:
                    await client.post(receiver.url + "/gate/open")
                await delivered(server, WARMUP + round_ * queued)
                readings.append(("", await settled_rss(server)))
            return readings


async def measure(queued: int, records: int | None = None) -> Section:
    records = queued if records is None else records
    readings = await read_rss(queued, records)
    (_, baseline), (_, holding), (_, after_1), (_, holding_2), (_, after_2) = readings
    names = [
        f"baseline: started, {WARMUP} notifications delivered",
        f"round 1: {queued:,} deliveries accepted, not sent",
        "round 1: all delivered",
        f"round 2: {queued:,} more accepted, not sent",
        "round 2: all delivered",
    ]
    rows = [
        [name, f"{kb / 1024:.1f}", f"{(kb - baseline) / 1024:+.1f}", detail]
        for name, (detail, kb) in zip(names, readings, strict=True)
    ]
    return Section(
        title="Memory: the in-process server holding queued deliveries",
        command=f".venv/bin/python -m bench.memory --queued {queued} --records {records}",
        header=["Phase", "RSS MiB", "vs baseline MiB", "Where the deliveries wait"],
        rows=rows,
        notes=[
            "RSS from /proc/<pid>/status (VmRSS) of the one uvicorn process. Each notification has one webhook "
            "recipient (the `welcome` template), so each queued delivery also carries its notification's records. "
            "Deliveries were held by a receiver that does not answer until told to (`bench.probe_receiver`). "
            f"Server settings: {', '.join(f'{k}={v}' for k, v in server_settings(records).items())}. "
            "Read literally, the issue's 'back to baseline' compares after round 1 with the baseline; that includes "
            "the finished records Herald keeps by design (the newest RECORD_MAX_COUNT), so the flat test is round 2 "
            f"vs round 1. Round 2 holding vs after round 1: {(holding_2 - after_1) / queued:.2f} KB per queued "
            "delivery (memory freed by round 1 is reused).",
        ],
        targets=[
            Target("RSS per queued delivery (round 1)", (holding - baseline) / queued, high=5, unit=" KB"),
            Target("RSS after round 2 vs after round 1 (flat)", ratio(after_2, after_1), low=0.9, high=1.1),
            Target("RSS after round 1 vs baseline (records kept)", ratio(after_1, baseline), low=0.9, high=1.1),
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queued", type=int, default=10_000, help="deliveries held queued")
    parser.add_argument("--records", type=int, help="RECORD_MAX_COUNT, finished records kept (default: --queued)")
    args = parser.parse_args()
    run_alone(measure(args.queued, args.records))


if __name__ == "__main__":
    main()
