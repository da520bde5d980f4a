"""A webhook receiver for benchmarks that timestamps arrivals and can hold deliveries: ``bench.probe_receiver:app``.

- any POST but the control paths is a delivery: answered 200 once the gate is open (it is at start);
  a delivery whose metadata has ``"probe"`` has its arrival time kept under that id.
- ``POST /gate/close`` / ``POST /gate/open``: hold every delivery / let them all through.
- ``GET /arrivals``: ``{probe id: arrival time}`` as ``time.monotonic()``, which on Linux is CLOCK_MONOTONIC,
  one clock for every process on the machine, so the sender's timestamps compare with it.
- ``GET /held``: how many deliveries are waiting at the closed gate.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

Scope = dict[str, Any]
Receive = Any
Send = Any


class ProbeReceiver:
    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.arrivals: dict[str, float] = {}
        self.held = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return None
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        arrived = time.monotonic()
        method, path = scope["method"], scope["path"]
        if method == "GET" and path == "/arrivals":
            return await _answer(send, json.dumps(self.arrivals).encode())
        if method == "GET" and path == "/held":
            return await _answer(send, str(self.held).encode())
        if method == "POST" and path == "/gate/close":
            self.gate.clear()
        elif method == "POST" and path == "/gate/open":
            self.gate.set()
        elif method == "POST":
            await self._deliver(bytes(body), arrived)
        return await _answer(send, b"ok")

    async def _deliver(self, body: bytes, arrived: float) -> None:
        probe = json.loads(body).get("data", {}).get("metadata", {}).get("probe")
        if probe is not None:
            self.arrivals[str(probe)] = arrived
        if not self.gate.is_set():
            self.held += 1
            try:
                await self.gate.wait()
            finally:
                self.held -= 1


async def _answer(send: Send, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


app = ProbeReceiver()
