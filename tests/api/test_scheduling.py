"""send_at and DELETE /notifications/{id}, the same in both backends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.support.receiver import Receiver
from tests.support.waiting import eventually


def _body(receiver: Receiver, send_at: str | None, path: str = "/later") -> dict[str, Any]:
    body: dict[str, Any] = {
        "to": [{"channel": "webhook", "address": receiver.url(path)}],
        "subject": "later",
        "text": "scheduled",
    }
    if send_at is not None:
        body["send_at"] = send_at
    return body


def _in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


async def _get(client: httpx.AsyncClient, notification_id: str) -> dict[str, Any]:
    response = await client.get(f"/notifications/{notification_id}")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


async def test_send_at_waits_then_delivers(
    client_for: Any, backend_settings: dict[str, Any], receiver: Receiver
) -> None:
    async with client_for(**backend_settings) as client:
        send_at = datetime.now(UTC) + timedelta(seconds=0.6)
        accepted = (await client.post("/notify", json=_body(receiver, send_at.isoformat()))).json()
        assert accepted["status"] == "scheduled"
        assert accepted["deliveries"][0]["status"] == "scheduled"
        assert accepted["deliveries"][0]["next_attempt_at"] is not None

        async def delivered() -> bool:
            return bool((await _get(client, accepted["id"]))["status"] == "delivered")

        await eventually(delivered, what="the scheduled delivery")
        [delivery] = (await _get(client, accepted["id"]))["deliveries"]
    assert len(receiver.received("/later")) == 1
    assert datetime.fromisoformat(delivery["finished_at"]) >= send_at, "not sent before send_at"


async def test_send_at_in_the_past_sends_now(
    client_for: Any, backend_settings: dict[str, Any], receiver: Receiver
) -> None:
    async with client_for(**backend_settings) as client:
        response = await client.post("/notify", json=_body(receiver, _in(-3600)))
        assert response.status_code == 202
        assert response.json()["deliveries"][0]["status"] == "queued"
        await eventually(lambda: len(receiver.received("/later")) == 1, what="the delivery")


async def test_send_at_needs_a_timezone(client_for: Any, backend_settings: dict[str, Any], receiver: Receiver) -> None:
    naive = (datetime.now(UTC) + timedelta(minutes=5)).replace(tzinfo=None).isoformat()
    async with client_for(**backend_settings) as client:
        response = await client.post("/notify", json=_body(receiver, naive))
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "send_at"]
    assert "timezone" in response.json()["detail"][0]["msg"]


async def test_send_at_beyond_the_inline_limit_is_refused_with_the_way_out(client_for: Any, receiver: Receiver) -> None:
    async with client_for(INLINE_MAX_DEFER_S=60) as client:
        response = await client.post("/notify", json=_body(receiver, _in(120)))
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "send_at"]
    assert "TASK_BACKEND=arq" in error["msg"]


async def test_delete_cancels_scheduled_deliveries_and_nothing_is_sent(
    client_for: Any, backend_settings: dict[str, Any], receiver: Receiver
) -> None:
    async with client_for(**backend_settings) as client:
        accepted = (await client.post("/notify", json=_body(receiver, _in(0.5), "/cancelled"))).json()
        cancelled = await client.delete(f"/notifications/{accepted['id']}")
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "cancelled"
        assert cancelled.json()["deliveries"][0]["status"] == "cancelled"
        # A later notification to the same receiver arrives; the cancelled one, due earlier, never does.
        later = (await client.post("/notify", json=_body(receiver, _in(0.8), "/after"))).json()

        async def later_delivered() -> bool:
            return bool((await _get(client, later["id"]))["status"] == "delivered")

        await eventually(later_delivered, what="the later delivery")
    assert receiver.received("/cancelled") == []


async def test_delete_leaves_delivered_ones_alone(
    client_for: Any, backend_settings: dict[str, Any], receiver: Receiver
) -> None:
    async with client_for(**backend_settings) as client:
        accepted = (await client.post("/notify", json=_body(receiver, None, "/done"))).json()

        async def delivered() -> bool:
            return bool((await _get(client, accepted["id"]))["status"] == "delivered")

        await eventually(delivered, what="the delivery")
        response = await client.delete(f"/notifications/{accepted['id']}")
    assert response.status_code == 200
    assert response.json()["deliveries"][0]["status"] == "delivered"


async def test_delete_unknown_is_404(client_for: Any, backend_settings: dict[str, Any]) -> None:
    async with client_for(**backend_settings) as client:
        response = await client.delete("/notifications/ntf_missing")
    assert response.status_code == 404


async def test_arq_send_at_further_ahead_than_the_record_ttl_is_still_sent(
    client_for: Any, redis_url: str, receiver: Receiver
) -> None:
    settings = {
        "TASK_BACKEND": "arq",
        "REDIS_URL": redis_url,
        "WORKER_MODE": "embedded",
        "WORKER_POLL_DELAY_S": 0.02,
        "RECORD_TTL_S": 0.5,
    }
    async with client_for(**settings) as client:
        response = await client.post("/notify", json=_body(receiver, _in(1.5), "/far"))
        assert response.status_code == 202
        await eventually(lambda: len(receiver.received("/far")) == 1, timeout_s=10, what="the far-off send")
