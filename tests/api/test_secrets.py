"""Secrets never reach a response body, a header, `/metrics`, the OpenAPI document or a log line.

Every secret Herald holds is set to a recognisable marker, and the paths where one could slip out are
driven through the real app: a wrong key, an SMTP server refusing the login, an SMS provider refusing the
token, a webhook receiver failing, Redis out of reach behind a password in REDIS_URL, the dashboard. Then
everything that came out is searched for the markers (their distinctive parts, so a truncated or
re-encoded copy is caught too). The secrets demonstrably went in: the SMTP server saw the password, the
provider the token, the receiver a signature made with the webhook secret.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import httpx
import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.support.receiver import Receiver, Reply
from tests.support.sms_provider import ProviderReply, sms_provider
from tests.support.smtp import free_port, smtp_server
from tests.support.waiting import eventually

pytestmark = pytest.mark.drill

API_KEY = "apikey-MARK-1f6b2c9d3e4a"
SMTP_PASSWORD = "smtppass-MARK-7a1c0e5d"
SMS_AUTH_TOKEN = "smstoken-MARK-9d2e4f6a8b"
REDIS_PASSWORD = "redispass-MARK-3c5e7a9b"
WEBHOOK_KEY = b"webhook-key-MARK-0123456789abcdef"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(WEBHOOK_KEY).decode()
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _markers() -> dict[str, str]:
    """Each secret, and the base64 of the webhook key (how WEBHOOK_SECRET spells it)."""
    return {
        "API key": API_KEY,
        "SMTP password": SMTP_PASSWORD,
        "SMS auth token": SMS_AUTH_TOKEN,
        "Redis password": REDIS_PASSWORD,
        "webhook secret": WEBHOOK_SECRET.removeprefix("whsec_"),
        "webhook key": WEBHOOK_KEY.decode(),
        "Basic credentials": base64.b64encode(f"AC0123:{SMS_AUTH_TOKEN}".encode()).decode(),
    }


class Transcript:
    """Every response the test saw, as text: status line, headers and body."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def add(self, response: httpx.Response) -> httpx.Response:
        headers = "\n".join(f"{name}: {value}" for name, value in response.headers.items())
        self.parts.append(f"{response.request.method} {response.request.url} -> {response.status_code}\n{headers}")
        self.parts.append(response.text)
        return response


def assert_no_secret(what: str, text: str) -> None:
    leaked = [name for name, value in _markers().items() if value in text]
    assert not leaked, f"{leaked} found in {what}"
    assert "MARK-" not in text, f"a secret's marker found in {what}: ...{_around(text, 'MARK-')}..."


def _around(text: str, needle: str) -> str:
    at = text.index(needle)
    return text[max(0, at - 80) : at + 40]


class _RefusingAuthenticator:
    """An SMTP server's AUTH that refuses everyone, noting the password it was sent."""

    def __init__(self) -> None:
        self.passwords: list[bytes] = []

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            self.passwords.append(auth_data.password)
        return AuthResult(success=False, handled=False)


async def test_no_secret_in_responses_metrics_or_logs_in_process(
    client_for: Any, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    receiver.default = Reply(status=500, body=b"receiver broke")
    seen = Transcript()
    authenticator = _RefusingAuthenticator()
    with smtp_server(authenticator=authenticator) as smtp, sms_provider(account_sid="AC0123") as sms:
        sms.script(ProviderReply.error(401, 20003, "Authenticate"))
        settings = {
            "API_KEY": API_KEY,
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": smtp.port,
            "SMTP_TLS": "none",
            "SMTP_USERNAME": "herald",
            "SMTP_PASSWORD": SMTP_PASSWORD,
            "WEBHOOK_SECRET": WEBHOOK_SECRET,
            "WEBHOOK_MAX_ATTEMPTS": 1,
            **sms.settings(SMS_AUTH_TOKEN=SMS_AUTH_TOKEN),
        }
        async with client_for(**settings) as client:
            seen.add(await client.post("/notify", json={"to": []}))  # no key
            seen.add(await client.post("/notify", json={}, headers={"Authorization": "Bearer " + API_KEY[:-1]}))
            body = {
                "to": [
                    {"channel": "email", "address": "ada@example.com"},
                    {"channel": "webhook", "address": receiver.url()},
                    {"channel": "sms", "address": "+14155550123"},
                ],
                "subject": "Hello",
                "text": "Hi",
            }
            accepted = seen.add(await client.post("/notify", json=body, headers=AUTH)).json()
            view: dict[str, Any] = {}

            async def failed() -> bool:
                view.update(seen.add(await client.get(f"/notifications/{accepted['id']}", headers=AUTH)).json())
                return bool(view["status"] == "failed")

            await eventually(failed, timeout_s=15, what="every delivery to fail")
            for path in ("/deliveries?status=failed", "/deliveries/counts", "/metrics", "/openapi.json", "/readyz"):
                seen.add(await client.get(path, headers=AUTH))
            for delivery in accepted["deliveries"]:
                seen.add(await client.get(f"/tasks/{delivery['id']}", headers=AUTH))
            dashboard = {"Origin": "http://herald.test"}
            seen.add(await client.post("/dashboard/login", data={"api_key": "wrong"}, headers=dashboard))
            seen.add(await client.post("/dashboard/login", data={"api_key": API_KEY}, headers=dashboard))
            seen.add(await client.get("/dashboard"))
            seen.add(await client.get("/dashboard/fragment"))

    # The secrets went out where they belong: so their absence everywhere else means something.
    assert authenticator.passwords == [SMTP_PASSWORD.encode()] * len(authenticator.passwords) != []
    assert [request.credentials for request in sms.received()] == [("AC0123", SMS_AUTH_TOKEN)]
    assert receiver.received() != []
    errors = {d["channel"]: d["last_error"] for d in view["deliveries"]}
    assert all(errors.values()), errors  # each failure says why, and that text is searched below
    assert_no_secret("the responses", "\n".join(seen.parts))
    assert_no_secret("the logs", caplog.text)


async def test_no_secret_in_responses_or_logs_when_redis_behind_a_password_is_out_of_reach(
    client_for: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    seen = Transcript()
    redis_url = f"redis://herald:{REDIS_PASSWORD}@127.0.0.1:{free_port()}/0"
    async with client_for(API_KEY=API_KEY, TASK_BACKEND="arq", REDIS_URL=redis_url, WORKER_MODE="separate") as client:
        body = {"to": [{"channel": "inapp", "address": "user_42"}], "subject": "Hello", "text": "Hi"}
        posted = seen.add(await client.post("/notify", json=body, headers=AUTH))
        for path in ("/readyz", "/metrics", "/deliveries", "/users/user_42/inbox", "/users/user_42/preferences"):
            seen.add(await client.get(path, headers=AUTH))
        seen.add(await client.put("/users/user_42/preferences", json={}, headers=AUTH))

    assert posted.status_code == 503, posted.text
    assert "Redis is unavailable" in posted.json()["detail"]
    assert_no_secret("the responses", "\n".join(seen.parts))
    assert_no_secret("the logs", caplog.text)
