"""Scaling: the worker drain with 1 and then 2 ``python -m tasks.worker`` processes, same run.

    .venv/bin/python -m bench.scaling [--jobs 20000]

Same setup as ``bench.worker_drain`` (pre-queued signed webhooks, a receiver that answers 200 at once,
a redis-server started here), and raw arq's no-op drain with 1 and 2 processes beside it for comparison.
The machine has 2 cores, shared by Redis, the receiver and the workers: a second worker can only win what
one worker leaves idle (its waits on Redis and on the receiver).
"""

from __future__ import annotations

import argparse

from bench.report import Section, ratio, run_alone, times
from bench.support import fast_receiver, redis_server
from bench.worker_drain import herald_rate, raw_arq_rate, webhooks_to

WORKER_COUNTS = (1, 2)


async def measure(jobs: int) -> Section:
    async with redis_server() as redis_url, fast_receiver() as receiver:
        raw = [await raw_arq_rate(redis_url, jobs, "TunedSettings", workers=n) for n in WORKER_COUNTS]
        herald = [await herald_rate(redis_url, jobs, webhooks_to(receiver), workers=n) for n in WORKER_COUNTS]
    rows = [
        [str(n), f"{ours:,.0f}", times(ratio(ours, herald[0])), f"{theirs:,.0f}", times(ratio(theirs, raw[0]))]
        for n, ours, theirs in zip(WORKER_COUNTS, herald, raw, strict=True)
    ]
    return Section(
        title="Scaling: 1 vs 2 worker processes",
        command=f".venv/bin/python -m bench.scaling --jobs {jobs}",
        header=["Workers", "Herald deliveries/s", "vs 1 worker", "raw arq no-op jobs/s (Herald's settings)", "vs 1"],
        rows=rows,
        notes=[
            f"{jobs:,} pre-queued signed webhooks each time, to `bench.fast_receiver`, and for comparison raw arq "
            "draining as many no-op jobs with as many `arq --burst` processes; rates from the first finished job to "
            "the last. 2 cores shared by Redis, the receiver and the workers, so doubling is out of reach "
            "here; issue 7 sets no target."
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20_000)
    run_alone(measure(parser.parse_args().jobs))


if __name__ == "__main__":
    main()
