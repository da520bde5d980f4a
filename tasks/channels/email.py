"""Email through SMTP (aiosmtplib), or printed to the console when no SMTP_HOST is set.

SMTP replies decide retries: 4xx and connection problems are transient, 5xx are final and the
server's reply is kept as the delivery's last error.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from typing import Literal, Protocol, TextIO

import aiosmtplib

from core.errors import PermanentError, RetryableError
from tasks.messages import CONTROL_CHARACTERS, DeliveryPayload

CHANNEL = "email"


def build_message(payload: DeliveryPayload, sender: Address) -> EmailMessage:
    """A multipart (text + optional HTML) message whose Message-ID is fixed by the delivery id.

    Raises PermanentError when a header could not be written as given (a line break, a second address).
    """
    address = payload["address"]
    # Refused at the API already; here too, since such an address would not read back from the header as given.
    if CONTROL_CHARACTERS.search(address) or "=?" in address:
        raise PermanentError(
            "cannot build the email headers: the address has a control character or an RFC 2047 encoded word",
            channel=CHANNEL,
        )
    message = EmailMessage(policy=SMTP)
    message["From"] = sender
    try:
        message["To"] = payload["address"]
        message["Subject"] = payload["subject"]
        message["Message-ID"] = f"<{payload['delivery_id']}@{sender.domain or 'herald.invalid'}>"
        message["X-Herald-Notification-ID"] = payload["notification_id"]
        addresses = [address.addr_spec for address in message["To"].addresses]
    # a line break (any str.splitlines() knows) would split the header; CPython's address parser fails on
    # some garbage ('<', 'a@', 'a@[') with these instead of recording a defect
    except (ValueError, HeaderParseError, IndexError, AttributeError) as exc:
        raise PermanentError(f"cannot build the email headers: {exc}", channel=CHANNEL) from exc
    # The email package decodes RFC 2047 encoded words in what it is given and writes the decoded text
    # back out: '=?utf-8?q?=0D=0ABcc:...?=' would add a header, '=?us-ascii?q?eve=40evil.example?=@x' another To.
    problem = subject_problem(payload["subject"])
    if problem is not None:
        raise PermanentError(f"cannot build the email headers: the subject {problem}", channel=CHANNEL)
    if addresses != [payload["address"]]:
        raise PermanentError(
            f"cannot build the email headers: the To header would read {addresses!r}, "
            f"not the one address {payload['address']!r}",
            channel=CHANNEL,
        )
    # quoted-printable keeps the body readable in the console and in raw mail sources
    message.set_content(payload["text"], cte="quoted-printable")
    if payload["html"] is not None:
        message.add_alternative(payload["html"], subtype="html", cte="quoted-printable")
    return message


def subject_problem(subject: str) -> str | None:
    """What keeps ``subject`` from being one email Subject line, or None; the text completes "the subject ...".

    A line break, also one hidden in an RFC 2047 encoded word (``=?utf-8?q?=0D=0A?=``): the email package
    decodes those in a header it is given and would write the line break out, starting a new header.
    """
    if _has_line_break(subject):
        return "must be a single line"
    if "=?" not in subject:  # no encoded word to decode: parsing the header (~0.1 ms a request) would find nothing
        return None
    try:
        decoded = str(SMTP.header_factory("Subject", subject))
    except ValueError:  # UnicodeEncodeError: a lone surrogate
        return "must be valid Unicode text"
    if _has_line_break(decoded):
        return "must be a single line, also once its RFC 2047 encoded words ('=?charset?q?...?=') are decoded"
    return None


def _has_line_break(text: str) -> bool:
    return "".join(text.splitlines()) != text  # also a single one at the end, which splitlines() hides


class Mailer(Protocol):
    async def send(self, message: EmailMessage) -> None: ...

    async def aclose(self) -> None: ...


class SmtpMailer:
    """Sends through a small pool of SMTP connections, each reused for many messages.

    A TCP (+ TLS + AUTH) handshake per message costs more than the message itself; here at most
    ``pool_size`` connections are open, each sends one message at a time, and an idle one is reused.
    A connection is dropped after ``max_messages`` (servers cap them), after ``idle_s`` unused (servers
    close idle ones), or after any error. A reused connection that the server had already closed is
    replaced once, at once: that is not the message's fault. A refused message (4xx/5xx) leaves its
    connection usable after RSET.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        tls: Literal["starttls", "tls", "none"],
        username: str | None,
        password: str | None,
        timeout_s: float,
        pool_size: int = 4,
        idle_s: float = 30.0,
        max_messages: int = 100,
    ) -> None:
        self._host = host
        self._port = port
        self._tls = tls
        self._username = username
        self._password = password
        self._timeout_s = timeout_s
        self._slots = asyncio.Semaphore(pool_size)
        self._idle: list[_Pooled] = []  # newest last: reuse the warmest
        self._idle_s = idle_s
        self._max_messages = max_messages
        self.connections_opened = 0

    async def send(self, message: EmailMessage) -> None:
        async with self._slots:
            pooled = self._take_idle()
            reused = pooled is not None
            try:
                if pooled is None:
                    pooled = await self._connect()
                try:
                    await pooled.client.send_message(message)
                except aiosmtplib.SMTPServerDisconnected:
                    if not reused:
                        raise
                    await _close(pooled)  # the server had closed it while idle: a fresh one, once
                    pooled = None
                    pooled = await self._connect()
                    await pooled.client.send_message(message)
            except aiosmtplib.SMTPRecipientsRefused as exc:
                await self._reset_or_close(pooled)
                worst = max(exc.recipients, key=lambda refused: refused.code)
                raise _from_reply(worst.code, worst.message) from exc
            except aiosmtplib.SMTPResponseException as exc:
                await self._reset_or_close(pooled)
                raise _from_reply(exc.code, exc.message) from exc
            except aiosmtplib.SMTPNotSupported as exc:
                await _close(pooled)
                raise PermanentError(f"SMTP server does not support what we asked: {exc}", channel=CHANNEL) from exc
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                await _close(pooled)
                raise RetryableError(f"SMTP connection problem: {type(exc).__name__}: {exc}", channel=CHANNEL) from exc
            except BaseException:  # cancelled mid-conversation: the connection's state is unknown
                await _close(pooled)
                raise
            pooled.sent += 1
            await self._give_back(pooled)

    async def aclose(self) -> None:
        """Say QUIT on every idle connection (shutdown)."""
        idle, self._idle = self._idle, []
        await asyncio.gather(*(_close(pooled, polite=True) for pooled in idle))

    async def _connect(self) -> _Pooled:
        client = aiosmtplib.SMTP(
            hostname=self._host,
            port=self._port,
            use_tls=self._tls == "tls",
            start_tls=self._tls == "starttls",
            username=self._username,
            password=self._password,
            timeout=self._timeout_s,
        )
        await client.connect()
        self.connections_opened += 1
        return _Pooled(client)

    def _take_idle(self) -> _Pooled | None:
        now = time.monotonic()
        while self._idle:
            pooled = self._idle.pop()
            if now - pooled.idle_since < self._idle_s and pooled.client.is_connected:
                return pooled
            pooled.client.close()  # idle too long: the server may have dropped it already
        return None

    async def _give_back(self, pooled: _Pooled) -> None:
        if pooled.sent >= self._max_messages or not pooled.client.is_connected:
            await _close(pooled, polite=True)
            return
        pooled.idle_since = time.monotonic()
        self._idle.append(pooled)

    async def _reset_or_close(self, pooled: _Pooled | None) -> None:
        if pooled is None:
            return
        try:
            await pooled.client.rset()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            await _close(pooled)
            return
        await self._give_back(pooled)


@dataclass(slots=True)
class _Pooled:
    client: aiosmtplib.SMTP
    sent: int = 0
    idle_since: float = 0.0


async def _close(pooled: _Pooled | None, *, polite: bool = False) -> None:
    if pooled is None:
        return
    if polite and pooled.client.is_connected:
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            await pooled.client.quit()
            return
    pooled.client.close()


def _from_reply(code: int, reply: str) -> RetryableError | PermanentError:
    reason = f"SMTP {code} {reply}".strip()
    if 400 <= code < 500:
        return RetryableError(reason, channel=CHANNEL, status_code=code)
    return PermanentError(reason, channel=CHANNEL, status_code=code)


class ConsoleMailer:
    """Prints each message instead of sending it: the default when SMTP_HOST is not set."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lock = asyncio.Lock()

    async def send(self, message: EmailMessage) -> None:
        stream = self._stream or sys.stdout
        rule = "-" * 72
        async with self._lock:
            text = message.as_string(policy=message.policy.clone(linesep="\n"))
            stream.write(f"{rule}\n{text}\n{rule}\n")
            stream.flush()

    async def aclose(self) -> None:
        return None
