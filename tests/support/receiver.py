"""A real HTTP webhook receiver on 127.0.0.1 (uvicorn in a thread), scriptable per path."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from standardwebhooks import Webhook, WebhookVerificationError


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b"ok"
    delay_s: float = 0.0


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool | None
    at: float
    client: tuple[str, int] | None = None  # the sender's address: one port per TCP connection


@dataclass
class Receiver:
    """Records every request; answers from a per-path script (then ``Reply()`` = 200)."""

    secret: str | None = None
    requests: list[Received] = field(default_factory=list)
    default: Reply = field(default_factory=Reply)
    port: int = 0
    _scripts: dict[str, deque[Reply]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def script(self, path: str, *replies: Reply) -> None:
        with self._lock:
            self._scripts[path] = deque(replies)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def received(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the sender died mid-request (a SIGKILL drill): no receiver would act on half a body
            body.extend(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        with self._lock:
            queue = self._scripts.get(scope["path"])
            reply = queue.popleft() if queue else self.default
            self.requests.append(
                Received(
                    scope["path"],
                    headers,
                    bytes(body),
                    self._verify(bytes(body), headers),
                    time.monotonic(),
                    tuple(scope["client"]) if scope.get("client") else None,
                )
            )
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        raw_headers = [(k.encode(), v.encode()) for k, v in reply.headers]
        await send({"type": "http.response.start", "status": reply.status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": reply.body})

    def _verify(self, body: bytes, headers: dict[str, str]) -> bool | None:
        if self.secret is None:
            return None
        try:
            Webhook(self.secret).verify(body, headers)
        except WebhookVerificationError:
            return False
        return True


@contextmanager
def serve_in_thread(app: Any, *, host: str = "127.0.0.1") -> Iterator[int]:
    """Run ``app`` with uvicorn on a free port in a background thread; yields the port."""
    config = uvicorn.Config(app, host=host, port=0, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-receiver", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test receiver did not start")
        time.sleep(0.01)
    port: int = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)
