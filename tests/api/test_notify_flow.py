from __future__ import annotations

from typing import Any

import httpx

from tests.support.receiver import Receiver
from tests.support.smtp import SmtpSink
from tests.support.waiting import eventually


async def _status(client: httpx.AsyncClient, notification_id: str) -> dict[str, Any]:
    response = await client.get(f"/notifications/{notification_id}")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


async def test_notify_sends_email_and_webhook_then_reports_delivered(
    client_for: Any, backend_settings: dict[str, Any], smtp: SmtpSink, receiver: Receiver
) -> None:
    async with client_for(**backend_settings, SMTP_HOST="127.0.0.1", SMTP_PORT=smtp.port, SMTP_TLS="none") as client:
        response = await client.post(
            "/notify",
            json={
                "to": [
                    {"channel": "email", "address": "ada@example.com"},
                    {"channel": "webhook", "address": receiver.url("/hook")},
                ],
                "template": "welcome",
                "context": {"name": "Ada"},
                "metadata": {"user_id": "42"},
            },
        )
        assert response.status_code == 202
        accepted = response.json()
        assert response.headers["location"] == f"/notifications/{accepted['id']}"
        assert accepted["status"] == "queued"
        assert [(d["channel"], d["status"]) for d in accepted["deliveries"]] == [
            ("email", "queued"),
            ("webhook", "queued"),
        ]

        async def all_delivered() -> bool:
            return bool((await _status(client, accepted["id"]))["status"] == "delivered")

        await eventually(all_delivered, what="both deliveries delivered")
        final = await _status(client, accepted["id"])
        assert all(d["attempts"] == 1 and d["finished_at"] for d in final["deliveries"])
    assert smtp.messages[0]["Subject"] == "Welcome to Herald, Ada!"
    [hook] = receiver.received("/hook")
    assert hook.verified is True
    assert hook.headers["webhook-id"] == accepted["deliveries"][1]["id"]


async def test_unknown_notification_is_404(client_for: Any, backend_settings: dict[str, Any]) -> None:
    async with client_for(**backend_settings) as client:
        response = await client.get("/notifications/ntf_nope")
    assert response.status_code == 404
    assert "ntf_nope" in response.json()["detail"]


async def test_literal_content_is_sent_as_given_never_rendered(
    client_for: Any, backend_settings: dict[str, Any], receiver: Receiver
) -> None:
    async with client_for(**backend_settings) as client:
        response = await client.post(
            "/notify",
            json={
                "to": [{"channel": "webhook", "address": receiver.url()}],
                "subject": "Total {{ 7 * 7 }}",
                "text": "{{ config }} stays literal",
            },
        )
        assert response.status_code == 202
        await eventually(lambda: len(receiver.received()) == 1, what="the webhook")
    body = receiver.received()[0].body.decode()
    assert "Total {{ 7 * 7 }}" in body
    assert "{{ config }} stays literal" in body


async def test_failed_delivery_shows_attempts_and_last_error(
    client_for: Any, backend_settings: dict[str, Any], receiver: Receiver
) -> None:
    from tests.support.receiver import Reply

    receiver.script("/gone", Reply(status=410, body=b"endpoint removed"))
    async with client_for(**backend_settings) as client:
        accepted = (
            await client.post(
                "/notify",
                json={"to": [{"channel": "webhook", "address": receiver.url("/gone")}], "subject": "s", "text": "t"},
            )
        ).json()

        async def failed() -> bool:
            return bool((await _status(client, accepted["id"]))["status"] == "failed")

        await eventually(failed, what="the delivery to fail")
        [delivery] = (await _status(client, accepted["id"]))["deliveries"]
    assert delivery["status"] == "failed"
    assert delivery["attempts"] == 1
    assert delivery["last_error"] == "HTTP 410: endpoint removed"
