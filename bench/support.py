"""What the benchmarks share: child processes, servers on 127.0.0.1, Redis, and waiting with a deadline.

Every child runs in its own process group and is stopped with it (SIGTERM, then SIGKILL) when its
context exits, whether the benchmark finished or failed. Children write their output to a log file in
one temporary directory per run, so a child that dies says why.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import ExitStack, asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

from tasks.messages import DeliveryPayload
from tests.support.redis_server import RedisServer
from tests.support.smtp import free_port

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"herald-bench-secret-0123456789abcdef").decode()
STOP_WAIT_S = 15.0

# Every Herald process of the benchmarks: quiet, no cron ticks in the measurements, webhooks to loopback
# allowed (the receivers are on 127.0.0.1), short shutdown so a stopped child goes at once. The one local
# receiver stands in for many receivers, so the per-host limit (10 in flight) is lifted: it would measure the limit.
HERALD_ENV = {
    "LOG_LEVEL": "WARNING",
    "CRON_ENABLED": "false",
    "WEBHOOK_SECRET": WEBHOOK_SECRET,
    "WEBHOOK_ALLOW_PRIVATE": "true",
    "WEBHOOK_MAX_PER_HOST": "10000",
    "SHUTDOWN_GRACE_S": "2",
    "WORKER_METRICS_PORT": "0",
}


@cache
def log_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="herald-bench-"))


def child_env(**values: str) -> dict[str, str]:
    """A clean environment for a child: no settings leak in from the caller's shell."""
    keep = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "TMPDIR"}}
    return {**keep, "PYTHONPATH": str(ROOT), **values}


@dataclass(frozen=True)
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    may_exit: bool = False  # e.g. ``arq --burst``: exiting 0 is its way to say it is done

    @property
    def pid(self) -> int:
        return self.process.pid

    def ensure_running(self) -> None:
        """Raise, with the end of its log, if the child has exited (or failed, for one that ``may_exit``)."""
        returncode = self.process.poll()
        if returncode is not None and (returncode != 0 or not self.may_exit):
            tail = self.log.read_text(errors="replace").splitlines()[-20:]
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n" + "\n".join(tail))


@contextmanager
def spawned(name: str, args: Sequence[str], env: dict[str, str], *, may_exit: bool = False) -> Iterator[Child]:
    """Run ``args`` in its own process group for the duration of the block."""
    log = log_dir() / f"{name}-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(args), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield Child(name, process, log, may_exit)
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL it if it is still there after STOP_WAIT_S."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=STOP_WAIT_S)
            return
        except subprocess.TimeoutExpired:
            continue


async def wait_until(
    check: Callable[[], Awaitable[bool]],
    *,
    timeout_s: float,
    what: str,
    children: Sequence[Child] = (),
    poll_s: float = 0.01,
) -> None:
    """Poll ``check`` until it is true; fail after ``timeout_s`` or as soon as one of ``children`` dies."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        for child in children:
            child.ensure_running()
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout_s:g}s waiting for {what}")
        await asyncio.sleep(poll_s)


async def wait_http(url: str, child: Child, timeout_s: float = 30) -> None:
    async with httpx.AsyncClient() as client:

        async def answers() -> bool:
            try:
                await client.get(url)
            except httpx.TransportError:
                return False
            return True

        await wait_until(answers, timeout_s=timeout_s, what=f"{child.name} at {url}", children=[child])


async def wait_tcp(port: int, child: Child, timeout_s: float = 30) -> None:
    async def accepts() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        await writer.wait_closed()
        return True

    await wait_until(accepts, timeout_s=timeout_s, what=f"{child.name} on port {port}", children=[child])


@dataclass(frozen=True)
class Server:
    child: Child
    url: str  # base URL, no trailing slash


@asynccontextmanager
async def uvicorn_app(name: str, app: str, *, factory: bool = False) -> AsyncIterator[Server]:
    """``uvicorn app`` in its own process on a free port of 127.0.0.1 (uvloop and httptools, as Herald)."""
    port = free_port()
    args = [PYTHON, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    args += ["--log-level", "warning", "--no-access-log", *(["--factory"] if factory else [])]
    with spawned(name, args, child_env()) as child:
        url = f"http://127.0.0.1:{port}"
        await wait_http(url + "/", child)
        yield Server(child, url)


@asynccontextmanager
async def fast_receiver() -> AsyncIterator[Server]:
    """``bench.fast_receiver``: a webhook receiver that answers 200 at once."""
    async with uvicorn_app("fast-receiver", "bench.fast_receiver:app") as server:
        yield server


def welcome_webhook(receiver: Server) -> dict[str, Any]:
    """A POST /notify body: the ``welcome`` template to one webhook recipient at ``receiver``."""
    return {
        "to": [{"channel": "webhook", "address": f"{receiver.url}/hook"}],
        "template": "welcome",
        "context": {"name": "Ada"},
    }


def delivery_payload(n: int, channel: str, address: str, *, html: str | None = None) -> DeliveryPayload:
    """What a delivery job carries (as POST /notify would queue it), for delivery number ``n``."""
    return {
        "delivery_id": f"dlv_{n:06d}",
        "notification_id": "ntf_bench",
        "channel": channel,
        "address": address,
        "event_type": "notification.bench",
        "created_at": "2026-11-23T00:00:00+00:00",
        "subject": "Benchmark",
        "text": "Hello,\nthis is a benchmark delivery.\n",
        "html": html,
        "template": None,
        "context": {},
        "metadata": {},
    }


@asynccontextmanager
async def herald_api(name: str = "herald-api", **settings: str) -> AsyncIterator[Server]:
    """``python -m api`` with HERALD_ENV plus ``settings``, on a free port, ready to answer."""
    port = free_port()
    env = child_env(**HERALD_ENV, HOST="127.0.0.1", PORT=str(port), **settings)
    with spawned(name, [PYTHON, "-m", "api"], env) as child:
        url = f"http://127.0.0.1:{port}"
        await wait_http(url + "/healthz", child)
        yield Server(child, url)


WORKER_MODULE = ("-m", "tasks.worker")  # Herald's own Worker subclass (reads past the running jobs)
ARQ_CLI = ("-m", "arq", "tasks.worker.WorkerSettings")  # arq's Worker, arq's fixed read batch


@contextmanager
def herald_workers(
    count: int, redis_url: str, *, command: Sequence[str] = WORKER_MODULE, **settings: str
) -> Iterator[list[Child]]:
    """``count`` Herald worker processes (``python -m tasks.worker`` unless ``command`` says) on ``redis_url``."""
    env = child_env(**HERALD_ENV, TASK_BACKEND="arq", REDIS_URL=redis_url, **settings)
    with ExitStack() as stack:
        yield [stack.enter_context(spawned(f"herald-worker-{n}", [PYTHON, *command], env)) for n in range(count)]


@asynccontextmanager
async def redis_server() -> AsyncIterator[str]:
    """A throwaway redis-server on 127.0.0.1 (no persistence); yields its URL."""
    directory = Path(tempfile.mkdtemp(prefix="herald-bench-redis-"))
    server = RedisServer(directory)
    try:
        server.start()
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


async def flush_redis(url: str) -> None:
    redis = Redis.from_url(url)
    try:
        await redis.flushall()
    finally:
        await redis.aclose()


def rss_kb(pid: int) -> int:
    """Resident set size of ``pid`` (VmRSS in /proc/<pid>/status), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


# Samples of Herald's /metrics, as written there.
WEBHOOKS_DELIVERED = 'herald_deliveries_total{channel="webhook",outcome="delivered"}'
WEBHOOKS_FAILED = 'herald_deliveries_total{channel="webhook",outcome="failed"}'
NOTIFICATIONS_ACCEPTED = "herald_notifications_accepted_total"
METRICS_POLL_S = 0.2  # /metrics walks the in-process queue: polled often, it would slow the server it watches


async def herald_metrics(server: Server) -> dict[str, float]:
    """Every sample of the server's ``/metrics``, keyed by its name and labels as written there."""
    async with httpx.AsyncClient() as client:
        response = await client.get(server.url + "/metrics")
        response.raise_for_status()
    samples = (line.rpartition(" ") for line in response.text.splitlines() if line and not line.startswith("#"))
    return {name: float(value) for name, _, value in samples}


async def wait_workers_alive(server: Server, count: int, workers: Sequence[Child]) -> None:
    """Until the web process's ``/readyz`` counts ``count`` live arq workers (their heartbeats)."""
    async with httpx.AsyncClient() as client:

        async def alive() -> bool:
            checks = (await client.get(server.url + "/readyz")).json().get("checks", {})
            return int(checks.get("workers_alive", 0)) >= count

        await wait_until(alive, timeout_s=30, what=f"{count} arq workers alive", children=[server.child, *workers])
