"""Email through SMTP (aiosmtplib), or printed to the console when no SMTP_HOST is set.

SMTP replies decide retries: 4xx and connection problems are transient, 5xx are final and the
server's reply is kept as the delivery's last error.
"""

from __future__ import annotations

import asyncio
import sys
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from typing import Literal, Protocol, TextIO

import aiosmtplib

from core.errors import PermanentError, RetryableError
from tasks.messages import DeliveryPayload

CHANNEL = "email"


def build_message(payload: DeliveryPayload, sender: Address) -> EmailMessage:
    """A multipart (text + optional HTML) message whose Message-ID is fixed by the delivery id."""
    message = EmailMessage(policy=SMTP)
    message["From"] = sender
    try:
        message["To"] = payload["address"]
        message["Subject"] = payload["subject"]
    except ValueError as exc:  # a line break (any str.splitlines() knows) would split the header
        raise PermanentError(f"cannot build the email headers: {exc}", channel=CHANNEL) from exc
    message["Message-ID"] = f"<{payload['delivery_id']}@{sender.domain or 'herald.invalid'}>"
    message["X-Herald-Notification-ID"] = payload["notification_id"]
    # quoted-printable keeps the body readable in the console and in raw mail sources
    message.set_content(payload["text"], cte="quoted-printable")
    if payload["html"] is not None:
        message.add_alternative(payload["html"], subtype="html", cte="quoted-printable")
    return message


class Mailer(Protocol):
    async def send(self, message: EmailMessage) -> None: ...


class SmtpMailer:
    def __init__(
        self,
        *,
        host: str,
        port: int,
        tls: Literal["starttls", "tls", "none"],
        username: str | None,
        password: str | None,
        timeout_s: float,
    ) -> None:
        self._host = host
        self._port = port
        self._tls = tls
        self._username = username
        self._password = password
        self._timeout_s = timeout_s

    async def send(self, message: EmailMessage) -> None:
        try:
            await aiosmtplib.send(
                message,
                hostname=self._host,
                port=self._port,
                use_tls=self._tls == "tls",
                start_tls=self._tls == "starttls",
                username=self._username,
                password=self._password,
                timeout=self._timeout_s,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            worst = max(exc.recipients, key=lambda refused: refused.code)
            raise _from_reply(worst.code, worst.message) from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise _from_reply(exc.code, exc.message) from exc
        except aiosmtplib.SMTPNotSupported as exc:
            raise PermanentError(f"SMTP server does not support what we asked: {exc}", channel=CHANNEL) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise RetryableError(f"SMTP connection problem: {type(exc).__name__}: {exc}", channel=CHANNEL) from exc


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
