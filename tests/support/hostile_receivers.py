"""Hostile webhook receivers (raw asyncio servers on 127.0.0.1) and the seams the SSRF and receiver drills use.

A receiver reads one request, then plays a ``Behaviour``: never answer, drip bytes, blast megabytes, send an
endless header block... Each connection counts the bytes its socket took, so a test can show how much of a
huge answer the sender made it write. ``LoopbackDialler`` sits under the SSRF guard: it records every address
the guard asks it to dial, counts the bytes read back, and refuses (without a packet) anything but loopback,
so a drill whose guard has been broken on purpose still sends nothing off the machine.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import httpcore

from core.config import Settings
from tasks.channels.netguard import GuardedNetworkBackend, IPAddress, Resolver, resolve
from tasks.channels.webhook_client import WebhookClient


@dataclass
class Connection:
    """One TCP connection a hostile receiver accepted."""

    request_head: bytes = b""
    bytes_sent: int = 0  # taken by the kernel: written and drained
    finished: bool = False  # the behaviour wrote everything it meant to
    opened_at: float = field(default_factory=time.monotonic)
    peer_gone_at: float | None = None  # when writing failed or EOF came: the sender hung up


Behaviour = Callable[["Writer", Connection], Awaitable[None]]


class Writer:
    """Writes and drains, counting what the socket took; ``PeerGone`` once the sender has hung up."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: Connection) -> None:
        self.reader = reader
        self._writer = writer
        self._connection = connection

    async def send(self, data: bytes) -> None:
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            self._connection.peer_gone_at = time.monotonic()
            raise PeerGone from exc
        self._connection.bytes_sent += len(data)

    async def wait_for_eof(self) -> None:
        """Until the sender closes its side (the request was read already, so any read is EOF or junk)."""
        with suppress(ConnectionError, OSError):
            while await self.reader.read(65536):
                pass
        self._connection.peer_gone_at = time.monotonic()


class PeerGone(Exception):
    """The sender closed the connection while the receiver was still writing."""


@dataclass
class HostileReceiver:
    port: int
    connections: list[Connection] = field(default_factory=list)
    open_now: int = 0  # connections accepted and not yet closed
    most_open: int = 0  # the most that were open at once

    def webhook_ids(self) -> list[str]:
        """The ``webhook-id`` of every request received, in arrival order (repeats included)."""
        found = []
        for connection in self.connections:
            for line in connection.request_head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"webhook-id":
                    found.append(value.strip().decode("latin-1"))
        return found

    def url(self, path: str = "/hook", *, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@asynccontextmanager
async def hostile_receiver(behaviour: Behaviour, *, send_buffer_bytes: int = 4096) -> AsyncIterator[HostileReceiver]:
    """Serve ``behaviour`` on 127.0.0.1 (a free port) until the block ends; every handler is cancelled then.

    ``send_buffer_bytes`` keeps the kernel's send buffer small, so ``bytes_sent`` is close to what the sender
    really read (plus its own receive buffer).
    """
    handlers: set[asyncio.Task[None]] = set()
    receiver = HostileReceiver(port=0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            handlers.add(task)
        connection = Connection()
        receiver.connections.append(connection)
        receiver.open_now += 1
        receiver.most_open = max(receiver.most_open, receiver.open_now)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer_bytes)
        writer.transport.set_write_buffer_limits(high=0)  # drain() returns once the kernel has it all
        try:
            connection.request_head = await _read_request(reader)
            await behaviour(Writer(reader, writer, connection), connection)
        except (PeerGone, asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            # only the teardown below cancels a handler; ending cancelled would make Python 3.11's
            # StreamReaderProtocol log the CancelledError as an unhandled error
            pass
        finally:
            writer.close()
            receiver.open_now -= 1
            with suppress(ConnectionError, OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    receiver.port = server.sockets[0].getsockname()[1]
    try:
        yield receiver
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        for task in list(handlers):
            with suppress(asyncio.CancelledError):
                await task
        await server.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return head


# Behaviours -------------------------------------------------------------------------------------------


def answer(status: int, headers: Sequence[tuple[str, str]] = (), body: bytes = b"") -> Behaviour:
    """A well-formed answer, then close."""

    async def play(out: Writer, connection: Connection) -> None:
        lines = [f"HTTP/1.1 {status} X", f"content-length: {len(body)}", "connection: close", *map(": ".join, headers)]
        await out.send("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body)
        connection.finished = True

    return play


def never_answer() -> Behaviour:
    """Read the request, say nothing, and notice when the sender gives up."""

    async def play(out: Writer, connection: Connection) -> None:
        await out.wait_for_eof()

    return play


def held(release: asyncio.Event, then: Behaviour) -> Behaviour:
    """Say nothing until ``release`` is set (a hanging receiver), then play ``then`` on every connection
    still open; a sender that gave up meanwhile just finds ``then`` failing to write."""

    async def play(out: Writer, connection: Connection) -> None:
        await release.wait()
        await then(out, connection)

    return play


def drip(head: bytes, *, every_s: float, byte: bytes = b"x") -> Behaviour:
    """``head`` at once, then one byte every ``every_s`` for ever (well inside any per-read timeout)."""

    async def play(out: Writer, connection: Connection) -> None:
        await out.send(head)
        while True:
            await out.send(byte)
            await asyncio.sleep(every_s)

    return play


def blast(head: bytes, *, total_bytes: int, chunk_bytes: int = 64 * 1024, fill: bytes = b"x") -> Behaviour:
    """``head``, then ``total_bytes`` as fast as the sender takes them; ``finished`` if all were taken."""

    async def play(out: Writer, connection: Connection) -> None:
        await out.send(head)
        left = total_bytes
        chunk = fill * chunk_bytes
        while left > 0:
            await out.send(chunk[:left])
            left -= min(left, chunk_bytes)
        connection.finished = True
        await out.wait_for_eof()

    return play


def endless_headers() -> Behaviour:
    """A status line, then header lines as fast as the sender takes them, never the blank line."""

    async def play(out: Writer, connection: Connection) -> None:
        await out.send(b"HTTP/1.1 200 OK\r\n")
        n = 0
        while True:
            await out.send(b"".join(b"x-filler-%d: %s\r\n" % (n + i, b"v" * 40) for i in range(100)))
            n += 100

    return play


def in_turn(*behaviours: Behaviour) -> Behaviour:
    """The n-th connection gets the n-th behaviour (the last one repeats)."""
    count = 0

    async def play(out: Writer, connection: Connection) -> None:
        nonlocal count
        count += 1
        await behaviours[min(count, len(behaviours)) - 1](out, connection)

    return play


def status_head(status: int = 200, *, content_length: int | None = None, extra: bytes = b"") -> bytes:
    length = b"" if content_length is None else b"content-length: %d\r\n" % content_length
    return b"HTTP/1.1 %d X\r\n" % status + length + extra + b"\r\n"


# Seams under the guard --------------------------------------------------------------------------------


class LoopbackDialler(httpcore.AsyncNetworkBackend):
    """The guard's inner backend in drills: records each address asked for, dials only loopback.

    Anything else ends in ``httpcore.ConnectError`` before a socket exists, so a guard broken on purpose
    turns a refusal into a (retryable) connect error here instead of a packet to 169.254.169.254.
    """

    def __init__(self) -> None:
        self.hosts: list[str] = []
        self.bytes_read = 0
        self._real = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.hosts.append(host)
        if not ipaddress.ip_address(host).is_loopback:
            raise httpcore.ConnectError(f"test dialler: {host} is not loopback, not dialling it")
        stream = await self._real.connect_tcp(
            host, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )
        return _CountingStream(stream, self)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise AssertionError("the guard must never reach a unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._real.sleep(seconds)


class _CountingStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream, dialler: LoopbackDialler) -> None:
        self._inner = inner
        self._dialler = dialler

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        data = await self._inner.read(max_bytes, timeout=timeout)
        self._dialler.bytes_read += len(data)
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._inner.write(buffer, timeout=timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        raise AssertionError("drills speak plain HTTP on loopback")

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class ScriptedResolver:
    """Answers the n-th lookup with ``answers[n]`` (the last one repeats); names it was asked, in order."""

    def __init__(self, *answers: Sequence[str]) -> None:
        self._answers = [[ipaddress.ip_address(a) for a in answer] for answer in answers]
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.asked.append(host)
        return list(self._answers[min(len(self.asked), len(self._answers)) - 1])


def drill_client(
    settings: Settings, dialler: LoopbackDialler, *, resolver: Resolver = resolve, allow_private: bool | None = None
) -> WebhookClient:
    """A WebhookClient as ``tasks.resources`` builds it, with ``dialler`` (and ``resolver``) under the guard."""
    allowed = settings.WEBHOOK_ALLOW_PRIVATE if allow_private is None else allow_private
    return WebhookClient(
        allow_private=allowed,
        timeout_s=settings.WEBHOOK_TIMEOUT_S,
        max_connections=8,
        max_per_host=settings.WEBHOOK_MAX_PER_HOST,
        guard=GuardedNetworkBackend(allow_private=allowed, inner=dialler, resolver=resolver),
    )
