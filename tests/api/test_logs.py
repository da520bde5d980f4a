"""Herald's logs: JSON lines from real processes, request and job ids on them, never a secret or a message body."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword

from api.app import create_app
from core.logging import ContextFilter
from tests.conftest import WEBHOOK_SECRET
from tests.support.processes import ROOT, WORKER_COMMANDS, Process, Processes, child_env
from tests.support.receiver import Receiver, Reply
from tests.support.sms_provider import ACCOUNT_SID, SmsProvider, sms_provider
from tests.support.sms_provider import AUTH_TOKEN as SMS_AUTH_TOKEN
from tests.support.smtp import SmtpSink, free_port, smtp_server
from tests.support.waiting import eventually

API_KEY = "api-key-marker-" + "k" * 24
SMTP_USERNAME = "herald-mailer"
SMTP_PASSWORD = "smtp-password-marker-" + "p" * 12
SUBJECT_MARKER = "subject-marker-88aa"
TEXT_MARKER = "text-marker-5b1e9"
HTML_MARKER = "html-marker-c07d2"
RECIPIENT = "recipient-marker@example.org"
PHONE = "+14155550188"
URL_TOKEN = "url-token-marker-3f9d"
SENT_REQUEST_ID = "client-request-0042"
INSANE_REQUEST_ID = "r" * 129
GENERATED_ID = re.compile(r"[0-9a-f]{32}")


# --- X-Request-ID, in-process ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "echoed"),
    [
        (b"abc-123", True),
        (b"Root=1-5759e988;Parent=53995c3f", True),
        (b"x" * 128, True),
        (b"x" * 129, False),
        (b"has space", False),
        (b"tab\tinside", False),
        ("caf\xe9".encode("latin-1"), False),
        (b"", False),
    ],
)
async def test_a_sane_request_id_is_echoed_and_any_other_replaced(client_for: Any, sent: bytes, echoed: bool) -> None:
    async with client_for() as client:
        response = await client.get("/healthz", headers={"X-Request-ID": sent})
    returned = response.headers["x-request-id"]
    if echoed:
        assert returned == sent.decode()
    else:
        assert GENERATED_ID.fullmatch(returned), returned


async def test_every_response_gets_a_request_id_even_a_refused_one(client_for: Any) -> None:
    async with client_for(API_KEY=API_KEY, MAX_BODY_BYTES=1024) as client:
        ok, unauthorized, too_large = (
            await client.get("/healthz"),
            await client.get("/notifications/ntf_x"),
            await client.post("/notify", content=b"{" * 2048, headers={"Authorization": f"Bearer {API_KEY}"}),
        )
    assert [r.status_code for r in (ok, unauthorized, too_large)] == [200, 401, 413]
    ids = [r.headers["x-request-id"] for r in (ok, unauthorized, too_large)]
    assert all(GENERATED_ID.fullmatch(i) for i in ids)
    assert len(set(ids)) == 3


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(ContextFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_lines_logged_while_handling_a_request_carry_its_id(make_settings: Any) -> None:
    app = create_app(make_settings())
    log = logging.getLogger("herald.test.request")

    @app.get("/log-something")
    async def log_something() -> dict[str, str]:
        log.warning("inside the request")
        return {}

    records = _Records()
    log.addHandler(records)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://herald.test") as client:
            sent = await client.get("/log-something", headers={"X-Request-ID": SENT_REQUEST_ID})
            generated = await client.get("/log-something")
        log.warning("outside any request")
    finally:
        log.removeHandler(records)
    ids = [getattr(record, "request_id", None) for record in records.records]
    assert ids == [SENT_REQUEST_ID, generated.headers["x-request-id"], None]
    assert sent.headers["x-request-id"] == SENT_REQUEST_ID


# --- Real processes -------------------------------------------------------------------------------------------


class _Authenticator:
    """Accepts only Herald's SMTP credentials, counting the logins."""

    def __init__(self) -> None:
        self.logins = 0

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = auth_data == LoginPassword(SMTP_USERNAME.encode(), SMTP_PASSWORD.encode())
        self.logins += ok
        return AuthResult(success=ok, handled=False)


@contextmanager
def _smtp_with_login() -> Iterator[tuple[SmtpSink, _Authenticator]]:
    authenticator = _Authenticator()
    with smtp_server(authenticator=authenticator) as sink:
        yield sink, authenticator


def _herald_env(port: int, smtp_port: int, sms: SmsProvider | None = None, **extra: str) -> dict[str, str]:
    sms_settings = {name: str(value) for name, value in sms.settings().items()} if sms is not None else {}
    return child_env(
        HOST="127.0.0.1",
        PORT=str(port),
        LOG_LEVEL="INFO",
        API_KEY=API_KEY,
        WEBHOOK_SECRET=WEBHOOK_SECRET,
        WEBHOOK_ALLOW_PRIVATE="true",
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(smtp_port),
        SMTP_TLS="none",
        SMTP_USERNAME=SMTP_USERNAME,
        SMTP_PASSWORD=SMTP_PASSWORD,
        EMAIL_FROM="Herald Test <herald@example.org>",
        RETRY_BASE_DELAY_S="0.05",
        RETRY_MAX_DELAY_S="0.2",
        WORKER_POLL_DELAY_S="0.05",
        WORKER_METRICS_PORT="0",
        **sms_settings,
        **extra,
    )


def _notification(receiver: Receiver) -> dict[str, Any]:
    return {
        "to": [
            {"channel": "email", "address": RECIPIENT},
            {"channel": "webhook", "address": receiver.url(f"/hook?token={URL_TOKEN}")},
            {"channel": "webhook", "address": receiver.url("/gone")},
            {"channel": "sms", "address": PHONE},
        ],
        "subject": f"Hello {SUBJECT_MARKER}",
        "text": f"The body: {TEXT_MARKER}",
        "html": f"<p>The body: {HTML_MARKER}</p>",
    }


def _json_lines(text: str) -> list[dict[str, Any]]:
    records = []
    for line in text.splitlines():
        record = json.loads(line)  # fails the test on any line that is not JSON
        assert isinstance(record, dict), line
        assert {"level", "logger", "message", "timestamp"} <= record.keys(), line
        records.append(record)
    return records


async def _wait_ready(client: httpx.AsyncClient, processes: list[Process]) -> None:
    async def ready() -> bool:
        for process in processes:
            assert process.running, f"{process.name} exited during start-up:\n{process.log()}"
        try:
            return (await client.get("/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    await eventually(ready, timeout_s=20, what="the server to start")


async def _poll_until_settled(client: httpx.AsyncClient, location: str) -> set[str]:
    """GET the notification (with an X-Request-ID that must be replaced) until it settles; the ids returned."""
    returned: set[str] = set()

    async def settled() -> bool:
        response = await client.get(location, headers={"X-Request-ID": INSANE_REQUEST_ID})
        assert response.status_code == 200, response.text
        returned.add(response.headers["x-request-id"])
        return bool(response.json()["status"] == "partially_delivered")

    await eventually(settled, timeout_s=30, what="every delivery to settle")
    return returned


MODES: dict[str, dict[str, str]] = {
    "inline": {},
    "arq-embedded": {"TASK_BACKEND": "arq", "WORKER_MODE": "embedded"},
    "arq-worker-cli": {"TASK_BACKEND": "arq", "WORKER_MODE": "separate"},
}


@pytest.mark.slow
@pytest.mark.parametrize("mode", sorted(MODES))
async def test_real_processes_log_json_lines_with_ids_and_no_secret_or_body(
    mode: str, request: pytest.FixtureRequest, receiver: Receiver, tmp_path: Path
) -> None:
    extra = dict(MODES[mode])
    if extra.get("TASK_BACKEND") == "arq":
        extra["REDIS_URL"] = request.getfixturevalue("redis_url")
    receiver.script("/hook", Reply(status=503), Reply())
    receiver.script("/gone", Reply(status=410, body=b"gone for good"))
    port = free_port()
    with _smtp_with_login() as (smtp, authenticator), sms_provider() as sms, Processes(tmp_path) as processes:
        smtp.replies.append("451 4.3.0 try again later")
        env = _herald_env(port, smtp.port, sms, **extra)
        started = [processes.start("api", [sys.executable, "-m", "api"], env)]
        if mode == "arq-worker-cli":  # arq's CLI installs its own log handler first
            started.append(processes.start("worker", WORKER_COMMANDS["arq-cli"], env))
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=10) as client:
            await _wait_ready(client, started)
            posted = await client.post(
                "/notify", json=_notification(receiver), headers={"X-Request-ID": SENT_REQUEST_ID}
            )
            assert posted.status_code == 202, posted.text
            polled_ids = await _poll_until_settled(client, posted.headers["location"])
        for process in started:
            process.send(signal.SIGTERM)
        for process in started:
            await process.exited(timeout_s=20)
        logs = {process.name: process.log() for process in started}

    # The secrets and the content really went through: so their absence from the logs means something.
    assert authenticator.logins >= 1  # one per SMTP connection: the pool may carry both emails on one
    assert TEXT_MARKER in smtp.messages[0].get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert TEXT_MARKER in receiver.received("/hook")[-1].body.decode()
    signatures = [
        signature.partition(",")[2]
        for received in receiver.received()
        for signature in received.headers["webhook-signature"].split()
    ]
    assert len(signatures) == 3
    [sms_message] = sms.messages()
    assert (sms_message.form["To"], sms_message.form["Body"]) == (PHONE, f"The body: {TEXT_MARKER}")
    assert sms_message.credentials == (ACCOUNT_SID, SMS_AUTH_TOKEN)

    records = {name: _json_lines(text) for name, text in logs.items()}
    everything = [record for lines in records.values() for record in lines]

    # Request lines carry the id that came back in X-Request-ID: the client's when sane, else a new one.
    accepted = posted.json()
    assert posted.headers["x-request-id"] == SENT_REQUEST_ID
    access = [r for r in records["api"] if r["logger"] == "uvicorn.access"]
    assert all("request_id" in r for r in access)
    [post_line] = [r for r in access if '"POST /notify HTTP/1.1" 202' in r["message"]]
    assert post_line["request_id"] == SENT_REQUEST_ID
    polls = [r for r in access if f"GET {posted.headers['location']} " in r["message"]]
    assert {r["request_id"] for r in polls} == polled_ids
    assert all(GENERATED_ID.fullmatch(request_id) for request_id in polled_ids)

    # Job outcome lines carry the delivery's ids, channel, attempt, outcome and duration.
    channel_of = {d["id"]: d["channel"] for d in accepted["deliveries"]}
    email_id, hook_id, gone_id, sms_id = channel_of
    outcomes = [r for r in everything if "outcome" in r]
    for line in outcomes:
        assert line["notification_id"] == accepted["id"], line
        assert line["job_id"] == line["delivery_id"], line
        assert line["channel"] == channel_of[line["delivery_id"]], line
        assert isinstance(line["duration_s"], float), line
        assert line["duration_s"] >= 0, line
    assert sorted((r["delivery_id"], r["attempt"], r["outcome"]) for r in outcomes) == sorted(
        [
            (email_id, 1, "retry"),
            (email_id, 2, "succeeded"),
            (hook_id, 1, "retry"),
            (hook_id, 2, "succeeded"),
            (gone_id, 1, "failed"),
            (sms_id, 1, "succeeded"),
        ]
    )

    # arq's own job-start lines keep the job id and function, not the payload.
    arq_starts = [r["message"] for r in everything if r["logger"] == "arq.worker" and " → " in r["message"]]
    assert len(arq_starts) == (6 if mode != "inline" else 0)
    assert all(re.search(r"→ dlv_[0-9a-f]+:send_(email|webhook|sms)\(…\)", m) for m in arq_starts), arq_starts

    # Nothing secret, no content, no address: checked on the raw text, whatever line or field it would be in.
    raw = "\n".join(logs.values())
    forbidden = {
        "API key": API_KEY,
        "SMTP password": SMTP_PASSWORD,
        "webhook secret": WEBHOOK_SECRET.removeprefix("whsec_"),
        "subject": SUBJECT_MARKER,
        "text": TEXT_MARKER,
        "html": HTML_MARKER,
        "email address": RECIPIENT,
        "phone number": PHONE,
        "SMS auth token": SMS_AUTH_TOKEN,
        "webhook URL token": URL_TOKEN,
        "refused X-Request-ID": INSANE_REQUEST_ID,
        **{f"webhook-signature {n}": signature for n, signature in enumerate(signatures)},
    }
    leaked = {what for what, value in forbidden.items() if value in raw}
    assert not leaked, f"{leaked} found in the logs:\n{raw}"
    assert "HTTP Request" not in raw


def _start_api_with_separate_streams(tmp_path: Path, env: dict[str, str]) -> tuple[Process, Path]:
    """`python -m api` with stdout and stderr (the logs, as ``Process.log()``) in two files."""
    stdout_path, stderr_path = tmp_path / "stdout", tmp_path / "stderr"
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        popen = subprocess.Popen([sys.executable, "-m", "api"], cwd=ROOT, env=env, stdout=stdout, stderr=stderr)
    return Process("api", popen, stderr_path), stdout_path


@pytest.mark.slow
async def test_console_mailer_prints_the_message_on_stdout_never_in_the_logs(tmp_path: Path) -> None:
    port = free_port()
    env = child_env(HOST="127.0.0.1", PORT=str(port), LOG_LEVEL="INFO")  # no SMTP_HOST: the console mailer
    process, stdout_path = _start_api_with_separate_streams(tmp_path, env)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            await _wait_ready(client, [process])
            body = {"to": [{"channel": "email", "address": RECIPIENT}], "subject": "s", "text": TEXT_MARKER}
            posted = await client.post("/notify", json=body)
            assert posted.status_code == 202, posted.text

            async def delivered() -> bool:
                return bool((await client.get(posted.headers["location"])).json()["status"] == "delivered")

            await eventually(delivered, timeout_s=10, what="the email to be printed")
        process.send(signal.SIGTERM)
        await process.exited(timeout_s=20)
    finally:
        process.kill()
    printed, logged = stdout_path.read_text(), process.log()
    assert TEXT_MARKER in printed, "the console mailer prints messages: that is its job"
    assert TEXT_MARKER not in logged
    assert RECIPIENT not in logged
    assert any(r["logger"] == "herald.jobs" and r.get("outcome") == "succeeded" for r in _json_lines(logged))
