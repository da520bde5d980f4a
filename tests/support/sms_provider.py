"""A real SMS provider on 127.0.0.1 (uvicorn in a thread) speaking Twilio's Messages API, scriptable per call.

``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` with HTTP Basic auth and a form-encoded ``To``,
``From`` (or ``MessagingServiceSid``) and ``Body``. Checks what Twilio checks first (credentials, the account in
the path, the required fields, an E.164 ``To``) and answers with Twilio's error JSON
(``{"code", "message", "more_info", "status"}``). A valid request is answered from the script, one reply per
call, then with ``201`` and a Twilio-like message (sid ``SM`` + 32 hex digits).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl

from tests.support.receiver import serve_in_thread

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
# Recognisable, so that an error or log line echoing it is easy to spot.
AUTH_TOKEN = "leaky-sms-token-4242-" + "f" * 11
MESSAGES_PATH = re.compile(r"/2010-04-01/Accounts/([^/]+)/Messages\.json")
_E164 = re.compile(r"\+[1-9][0-9]{7,14}")  # the provider's own check, independent of Herald's
MAX_BODY_CHARS = 1600


@dataclass(frozen=True)
class ProviderReply:
    """One scripted answer. ``body`` None: Twilio's message JSON (2xx); a dict is sent as JSON, bytes as they are."""

    status: int = 201
    body: dict[str, Any] | bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0

    @classmethod
    def error(cls, status: int, code: int, message: str, *, headers: tuple[tuple[str, str], ...] = ()) -> ProviderReply:
        """Twilio's error answer, e.g. ``error(400, 21211, "The 'To' number +1555 is not a valid phone number.")``."""
        return cls(status, _error_body(status, code, message), headers)


@dataclass(frozen=True)
class ProviderRequest:
    """A request as the provider saw it, and how it answered."""

    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, str]  # a repeated field keeps its last value
    status: int
    sid: str | None  # the message sid, when a message was created
    client: tuple[str, int] | None  # the sender's address: one port per TCP connection
    at: float

    @property
    def credentials(self) -> tuple[str, str] | None:
        """The Basic auth (user, password) sent, if any could be decoded."""
        scheme, _, encoded = self.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, colon, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return (user, password) if colon else None


@dataclass
class SmsProvider:
    """Records every request (``received``) and the messages it accepted (``messages``)."""

    account_sid: str = ACCOUNT_SID
    auth_token: str = AUTH_TOKEN
    port: int = 0
    requests: list[ProviderRequest] = field(default_factory=list)
    _script: deque[ProviderReply] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """The SMS_* settings that point Herald at this provider."""
        values: dict[str, Any] = {
            "SMS_API_BASE_URL": self.base_url,
            "SMS_ACCOUNT_SID": self.account_sid,
            "SMS_AUTH_TOKEN": self.auth_token,
            "SMS_FROM": "+14155550100",
            "SMS_TIMEOUT_S": 2.0,
        }
        values.update(overrides)
        return values

    def script(self, *replies: ProviderReply) -> None:
        """Answer the next valid requests with ``replies``, in order; then with ``201`` again."""
        with self._lock:
            self._script.extend(replies)

    def received(self) -> list[ProviderRequest]:
        with self._lock:
            return list(self.requests)

    def messages(self) -> list[ProviderRequest]:
        """The requests that created a message."""
        return [request for request in self.received() if request.sid is not None]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raw = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            raw.extend(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        form = {}
        if headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            form = dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
        request = ProviderRequest(
            scope["method"],
            scope["path"],
            headers,
            form,
            status=0,
            sid=None,
            client=tuple(scope["client"]) if scope.get("client") else None,
            at=time.monotonic(),
        )
        with self._lock:
            reply = self._check(request)
            if reply is None:
                reply = self._script.popleft() if self._script else ProviderReply()
            body = reply.body
            sid = None
            if body is None and 200 <= reply.status < 300:
                sid = "SM" + secrets.token_hex(16)
                body = self._message(sid, form)
            self.requests.append(replace(request, status=reply.status, sid=sid))
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        content_type = "text/html" if isinstance(body, bytes) else "application/json; charset=utf-8"
        response_headers = [("content-type", content_type), *reply.headers]
        await send(
            {
                "type": "http.response.start",
                "status": reply.status,
                "headers": [(k.encode(), v.encode()) for k, v in response_headers],
            }
        )
        await send({"type": "http.response.body", "body": content})

    def _check(self, request: ProviderRequest) -> ProviderReply | None:
        """Twilio's own refusals, before any scripted reply."""
        if request.credentials != (self.account_sid, self.auth_token):
            return ProviderReply.error(
                401, 20003, "Authenticate", headers=(("www-authenticate", 'Basic realm="Twilio API"'),)
            )
        matched = MESSAGES_PATH.fullmatch(request.path)
        if matched is None or matched[1] != self.account_sid:
            return ProviderReply.error(404, 20404, f"The requested resource {request.path} was not found")
        if request.method != "POST":
            return ProviderReply.error(405, 20004, "Method not allowed")
        form = request.form
        if not form.get("To"):
            return ProviderReply.error(400, 21604, "A 'To' phone number is required.")
        if not form.get("From") and not form.get("MessagingServiceSid"):
            return ProviderReply.error(400, 21603, "A 'From' phone number is required.")
        if not form.get("Body"):
            return ProviderReply.error(400, 21602, "Message body is required.")
        if not _E164.fullmatch(form["To"]):
            return ProviderReply.error(400, 21211, f"The 'To' number {form['To']} is not a valid phone number.")
        if len(form["Body"]) > MAX_BODY_CHARS:
            return ProviderReply.error(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
        return None

    def _message(self, sid: str, form: dict[str, str]) -> dict[str, Any]:
        now = format_datetime(datetime.now(UTC))  # Twilio's "Thu, 30 Jul 2015 20:12:31 +0000"
        uri = f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}"
        service = form.get("MessagingServiceSid")
        return {
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": form["Body"],
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": form.get("From"),
            "messaging_service_sid": service,
            "num_media": "0",
            "num_segments": "1",  # not computed: Herald does not read it
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "accepted" if service else "queued",
            "subresource_uris": {"media": f"{uri}/Media.json"},
            "to": form["To"],
            "uri": f"{uri}.json",
        }


def _error_body(status: int, code: int, message: str) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


@contextmanager
def sms_provider(**kwargs: Any) -> Iterator[SmsProvider]:
    """Serve an :class:`SmsProvider` on a free port of 127.0.0.1 for the duration of the block."""
    provider = SmsProvider(**kwargs)
    with serve_in_thread(provider) as port:
        provider.port = port
        yield provider
