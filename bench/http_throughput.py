"""POST /notify throughput: Herald in-process and in arq mode vs a bare FastAPI endpoint, same run.

    .venv/bin/python -m bench.http_throughput [--duration 10] [--warmup 3] [--connections 50]

Each server is one uvicorn process on 127.0.0.1 (uvloop, httptools). The body has one webhook recipient,
the ``welcome`` template and its context; ``bench/bare_app.py`` validates a similar body and answers 202.
Load: ``--connections`` keep-alive connections POSTing back to back (wrk when installed, see
bench/loadgen.py), a warm-up that is discarded, then ``--duration`` seconds measured. The bare endpoint
runs first and last; the baseline is the mean of both, so drift on the shared machine shows.

- in-process (``TASK_BACKEND=inline``): the deliveries run in the same process, to a receiver that
  answers 200 at once, competing for the CPU with the requests; how many were done when the load stopped
  is reported beside the requests.
- arq mode (``TASK_BACKEND=arq``, ``WORKER_MODE=separate``, no worker running): the web process only
  enqueues into Redis. Then the same with ``WORKER_MODE=embedded`` (the worker in the web process),
  shown for comparison, without a target.
"""

from __future__ import annotations

import argparse
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from bench.loadgen import LoadResult, load_tool, post_load
from bench.report import EN_DASH, Section, Target, ratio, run_alone
from bench.support import (
    NOTIFICATIONS_ACCEPTED,
    WEBHOOKS_DELIVERED,
    WEBHOOKS_FAILED,
    Server,
    fast_receiver,
    flush_redis,
    herald_api,
    herald_metrics,
    redis_server,
    uvicorn_app,
    welcome_webhook,
)

HEADER = [
    "Server", "202/s", "all answers/s", "p50 ms", "p99 ms", "non-2xx / socket errors",
    "Deliveries done when the load stopped",
]  # fmt: skip


@dataclass(frozen=True)
class Run:
    name: str
    load: LoadResult
    deliveries: str

    @property
    def accepted_per_s(self) -> float:
        """Only the 202s: a server that answers 503 fast must not look faster for it."""
        return (self.load.requests - self.load.bad_status) / self.load.duration_s

    def row(self) -> list[str]:
        load = self.load
        errors = f"{load.bad_status:,} / {load.socket_errors:,}"
        return [self.name, f"{self.accepted_per_s:,.0f}", f"{load.requests_per_s:,.0f}", f"{load.p50_ms:.2f}",
                f"{load.p99_ms:.2f}", errors, self.deliveries]  # fmt: skip


async def loaded(server: Server, body: dict[str, Any], options: argparse.Namespace) -> LoadResult:
    url = server.url + "/notify"
    await post_load(url, body, connections=options.connections, duration_s=options.warmup)
    return await post_load(url, body, connections=options.connections, duration_s=options.duration)


async def deliveries_done(server: Server) -> str:
    """Deliveries finished when the load stopped, of the notifications accepted (warm-up included)."""
    metrics = await herald_metrics(server)
    accepted, done = metrics[NOTIFICATIONS_ACCEPTED], metrics[WEBHOOKS_DELIVERED] + metrics[WEBHOOKS_FAILED]
    return f"{done:,.0f} of {accepted:,.0f} ({ratio(done, accepted):.0%})"


async def run_server(
    name: str,
    started: AbstractAsyncContextManager[Server],
    body: dict[str, Any],
    options: argparse.Namespace,
    *,
    delivers: bool = True,
) -> Run:
    async with started as server:
        load = await loaded(server, body, options)
        return Run(name, load, await deliveries_done(server) if delivers else EN_DASH)


async def measure(options: argparse.Namespace) -> Section:
    async with redis_server() as redis_url, fast_receiver() as receiver:
        body = welcome_webhook(receiver)

        def bare() -> AbstractAsyncContextManager[Server]:
            return uvicorn_app("bare-app", "bench.bare_app:create_app", factory=True)

        first = await run_server("bare endpoint (first)", bare(), body, options, delivers=False)
        inline = await run_server("Herald, in-process", herald_api(TASK_BACKEND="inline"), body, options)
        await flush_redis(redis_url)
        arq = herald_api(TASK_BACKEND="arq", REDIS_URL=redis_url, WORKER_MODE="separate")
        separate = await run_server("Herald, arq mode (no worker in the web process)", arq, body, options)
        await flush_redis(redis_url)
        arq = herald_api(TASK_BACKEND="arq", REDIS_URL=redis_url, WORKER_MODE="embedded")
        embedded = await run_server("Herald, arq mode, embedded worker", arq, body, options)
        last = await run_server("bare endpoint (last)", bare(), body, options, delivers=False)
    runs = [first, inline, separate, embedded, last]
    bare_rate = (first.accepted_per_s + last.accepted_per_s) / 2
    bare_p99 = (first.load.p99_ms + last.load.p99_ms) / 2
    notes = [
        f"Load: {load_tool()}, {options.connections} keep-alive connections, {options.warmup:g} s warm-up "
        f"discarded, {options.duration:g} s measured. Baseline: the mean of both bare runs "
        f"({bare_rate:,.0f}/s, p99 {bare_p99:.2f} ms). Deliveries go to `bench.fast_receiver` on 127.0.0.1 "
        "(its own process, on the same 2 cores as the server and the load generator). The targets use 202/s, "
        "the requests accepted; all answers/s includes errors."
    ]
    if inline.load.bad_status:
        notes.append(
            f"The in-process server answered {inline.load.bad_status:,} requests with an error (503 once its queue "
            "holds TASK_QUEUE_MAX unfinished jobs, 10,000 by default): it accepts faster than it delivers while "
            "both share its CPU, so under sustained load its accepted rate falls to its delivery rate."
        )
    return Section(
        title="HTTP: POST /notify vs a bare FastAPI endpoint",
        command=(
            f".venv/bin/python -m bench.http_throughput --duration {options.duration:g} "
            f"--warmup {options.warmup:g} --connections {options.connections}"
        ),
        header=HEADER,
        rows=[run.row() for run in runs],
        notes=notes,
        targets=[
            Target("in-process requests/s vs bare", ratio(inline.accepted_per_s, bare_rate), low=0.8),
            Target("in-process p99 vs bare p99", ratio(inline.load.p99_ms, bare_p99), high=2),
            Target("arq-mode requests/s vs bare", ratio(separate.accepted_per_s, bare_rate), low=0.6),
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10, help="seconds measured per server")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of load discarded first")
    parser.add_argument("--connections", type=int, default=50)
    run_alone(measure(parser.parse_args()))


if __name__ == "__main__":
    main()
