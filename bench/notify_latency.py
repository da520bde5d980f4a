"""POST /notify latency of Herald (in-process) against a bare FastAPI endpoint, in the same run.

    .venv/bin/python -m bench.notify_latency [--requests 2000]

Each server is one uvicorn process on 127.0.0.1; the client sends requests one at a time over one
keep-alive connection, so the figures are per-request service latency, not throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
BODY = {"to": [{"channel": "email", "address": "ada@example.com"}], "template": "welcome", "context": {"name": "Ada"}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start(command: list[str], port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "LOG_LEVEL": "WARNING"}
    return subprocess.Popen(
        [part.format(port=port) for part in command],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def measure(port: int, requests: int, warmup: int) -> list[float]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        deadline = time.monotonic() + 20
        while True:
            try:
                if (await client.get("/healthz")).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.05)
        latencies = []
        for n in range(warmup + requests):
            started = time.perf_counter()
            response = await client.post("/notify", json=BODY)
            elapsed = time.perf_counter() - started
            if response.status_code != 202:
                raise RuntimeError(f"unexpected {response.status_code}: {response.text}")
            if n >= warmup:
                latencies.append(elapsed)
        return latencies


def run(command: list[str], requests: int) -> list[float]:
    port = free_port()
    proc = start(command, port)
    try:
        return asyncio.run(measure(port, requests, warmup=max(1, requests // 10)))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000


SERVERS = {
    "bare FastAPI endpoint": [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "bench.bare_app:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--log-level",
        "warning",
    ],
    "Herald POST /notify (inline)": [sys.executable, "-m", "api"],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    results = {name: run(command, args.requests) for name, command in SERVERS.items()}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"command: .venv/bin/python -m bench.notify_latency --requests {args.requests}\n")
    print("| server | p50 ms | p99 ms | mean ms |")
    print("|---|---|---|---|")
    for name, values in results.items():
        print(f"| {name} | {pct(values, 50):.2f} | {pct(values, 99):.2f} | {statistics.mean(values) * 1000:.2f} |")
    base, herald = results["bare FastAPI endpoint"], results["Herald POST /notify (inline)"]
    print(
        f"\nratio Herald/bare: p50 {pct(herald, 50) / pct(base, 50):.2f}x, p99 {pct(herald, 99) / pct(base, 99):.2f}x"
    )


if __name__ == "__main__":
    main()
