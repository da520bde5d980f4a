"""POST /notify latency of Herald (in-process) against a bare FastAPI endpoint, one request at a time, same run.

    .venv/bin/python -m bench.notify_latency [--requests 2000]

Each server is one uvicorn process on 127.0.0.1; the client sends requests one at a time over one
keep-alive connection, so the figures are per-request service latency, not throughput (that is
``bench.http_throughput``). Herald's body: one email recipient, template ``welcome``; emails go to the
console backend (the child's log file).
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx

from bench.report import Section, percentile_ms, ratio, run_alone, times
from bench.support import Server, herald_api, uvicorn_app

BODY = {"to": [{"channel": "email", "address": "ada@example.com"}], "template": "welcome", "context": {"name": "Ada"}}


async def latencies(server: Server, requests: int) -> list[float]:
    """Seconds per request for ``requests`` sequential POSTs, after a tenth as many discarded."""
    measured = []
    async with httpx.AsyncClient(base_url=server.url) as client:
        for n in range(requests // 10 + requests):
            started = time.perf_counter()
            response = await client.post("/notify", json=BODY)
            elapsed = time.perf_counter() - started
            if response.status_code != 202:
                raise RuntimeError(f"unexpected {response.status_code}: {response.text}")
            if n >= requests // 10:
                measured.append(elapsed)
    return measured


async def measure(requests: int) -> Section:
    async with uvicorn_app("bare-app", "bench.bare_app:create_app", factory=True) as bare:
        baseline = await latencies(bare, requests)
    async with herald_api(TASK_BACKEND="inline") as herald:
        ours = await latencies(herald, requests)
    rows = [
        [name, f"{percentile_ms(values, 50):.2f}", f"{percentile_ms(values, 99):.2f}",
         f"{statistics.mean(values) * 1000:.2f}"]
        for name, values in [("bare FastAPI endpoint", baseline), ("Herald POST /notify (in-process)", ours)]
    ]  # fmt: skip
    p50, p99 = (ratio(percentile_ms(ours, q), percentile_ms(baseline, q)) for q in (50, 99))
    return Section(
        title="POST /notify latency, one request at a time",
        command=f".venv/bin/python -m bench.notify_latency --requests {requests}",
        header=["Server", "p50 ms", "p99 ms", "mean ms"],
        rows=rows,
        notes=[f"Ratio Herald/bare: p50 {times(p50)}, p99 {times(p99)}. Issue 7 sets no target for this one."],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    run_alone(measure(parser.parse_args().requests))


if __name__ == "__main__":
    main()
