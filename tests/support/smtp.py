"""A real SMTP server (aiosmtpd) on 127.0.0.1 that records messages and can answer with errors."""

from __future__ import annotations

import email
import email.policy
import socket
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller


@dataclass
class SmtpSink:
    """``handle_DATA`` answers from ``replies`` (e.g. '451 try later'), then '250 OK'."""

    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    replies: deque[str] = field(default_factory=deque)
    peers: list[Any] = field(default_factory=list)  # the client (host, port) of each DATA: one port per connection
    port: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self.peers.append(session.peer)
            if self.replies:
                return self.replies.popleft()
            parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
            assert isinstance(parsed, EmailMessage)
            self.messages.append(parsed)
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def smtp_server(*, authenticator: Any = None) -> Iterator[SmtpSink]:
    """With ``authenticator`` (aiosmtpd's callable) the server requires AUTH, over plain TCP as a test may."""
    sink = SmtpSink()
    sink.port = free_port()
    auth: dict[str, Any] = {"authenticator": authenticator, "auth_require_tls": False} if authenticator else {}
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port, **auth)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()
