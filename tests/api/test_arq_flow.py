"""POST /notify with TASK_BACKEND=arq: the web enqueues to Redis, a worker delivers."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.receiver import Receiver
from tests.support.smtp import SmtpSink
from tests.support.waiting import eventually


async def _status(client: httpx.AsyncClient, notification_id: str) -> dict[str, Any]:
    response = await client.get(f"/notifications/{notification_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_embedded_worker_delivers_email_and_webhook(
    client_for: Any, redis_url: str, smtp: SmtpSink, receiver: Receiver
) -> None:
    settings = {
        "TASK_BACKEND": "arq",
        "REDIS_URL": redis_url,
        "WORKER_MODE": "embedded",
        "WORKER_POLL_DELAY_S": 0.02,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": smtp.port,
        "SMTP_TLS": "none",
    }
    async with client_for(**settings) as client:
        response = await client.post(
            "/notify",
            json={
                "to": [
                    {"channel": "email", "address": "ada@example.com"},
                    {"channel": "webhook", "address": receiver.url("/arq")},
                ],
                "template": "welcome",
                "context": {"name": "Ada"},
            },
        )
        assert response.status_code == 202, response.text
        accepted = response.json()

        async def delivered() -> bool:
            return bool((await _status(client, accepted["id"]))["status"] == "delivered")

        await eventually(delivered, timeout_s=10, what="both deliveries via the embedded arq worker")
        ready = await client.get("/readyz")
    assert smtp.messages[0]["Message-ID"] == f"<{accepted['deliveries'][0]['id']}@example.org>"
    [hook] = receiver.received("/arq")
    assert hook.verified is True
    assert ready.json()["checks"]["redis"] == "up"
    assert ready.json()["checks"]["embedded_worker"] == "running"
