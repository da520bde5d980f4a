"""Closed-loop HTTP load: N keep-alive connections POSTing one JSON body for a fixed time.

wrk (Debian's, C, `make bench` installs it) when it is on PATH: it costs the shared 2 cores little, so
the servers, not the client, set the pace. Otherwise a small asyncio client over raw sockets (no HTTP
library: an httpx client would saturate a core before a bare endpoint does); it competes harder for the
CPU, so its ratios are less sharp, and the results say which tool made them.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

WRK_TIMEOUT_S = 10
PYTHON_TOOL = "python (asyncio, raw sockets; bench/loadgen.py)"


@dataclass(frozen=True)
class LoadResult:
    tool: str
    requests: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    bad_status: int  # answers other than 2xx/3xx
    socket_errors: int

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.duration_s


def load_tool() -> str:
    wrk = shutil.which("wrk")
    if wrk is None:
        return PYTHON_TOOL
    banner = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"wrk (\S+)", banner)
    return f"wrk {found.group(1) if found else ''}".strip()


async def post_load(url: str, body: dict[str, Any], *, connections: int, duration_s: float) -> LoadResult:
    """POST ``body`` to ``url`` over ``connections`` keep-alive connections for ``duration_s``."""
    payload = json.dumps(body, separators=(",", ":"))
    if shutil.which("wrk"):
        return await asyncio.to_thread(_wrk, url, payload, connections, duration_s)
    return await _python_load(url, payload.encode(), connections, duration_s)


# done() prints one line the parser below reads; latency is in microseconds.
_WRK_SCRIPT = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[{body}]==]
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("HERALD-BENCH %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.status, e.connect + e.read + e.write + e.timeout))
end
"""


def _wrk(url: str, payload: str, connections: int, duration_s: float) -> LoadResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(_WRK_SCRIPT.format(body=payload))
        script.flush()
        # One thread: at these rates one wrk thread is idle most of the time, leaving the cores to the servers.
        args = ["wrk", "-t1", f"-c{connections}", f"-d{duration_s:g}s", f"--timeout={WRK_TIMEOUT_S}s", "-s"]
        out = subprocess.run([*args, script.name, url], capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("HERALD-BENCH "))
    requests, duration_us, p50_us, p99_us, bad, errors = (int(part) for part in line.split()[1:])
    return LoadResult(load_tool(), requests, duration_us / 1e6, p50_us / 1000, p99_us / 1000, bad, errors)


async def _python_load(url: str, payload: bytes, connections: int, duration_s: float) -> LoadResult:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
    request = f"{head}Content-Length: {len(payload)}\r\n\r\n".encode() + payload
    latencies: list[float] = []
    bad = errors = 0
    deadline = time.monotonic() + duration_s

    async def one_connection() -> None:
        nonlocal bad, errors
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            errors += 1
            return
        try:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                writer.write(request)
                status_line = await reader.readline()
                await reader.readexactly(await _content_length(reader))
                latencies.append(time.perf_counter() - started)
                bad += not status_line.startswith((b"HTTP/1.1 2", b"HTTP/1.1 3"))
        except (OSError, asyncio.IncompleteReadError):
            errors += 1
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(one_connection() for _ in range(connections)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    p50, p99 = (latencies[int(q * (len(latencies) - 1))] * 1000 if latencies else float("nan") for q in (0.5, 0.99))
    return LoadResult(PYTHON_TOOL, len(latencies), elapsed, p50, p99, bad, errors)


async def _content_length(reader: asyncio.StreamReader) -> int:
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return length
