"""priority and expires_at on POST /notify, the same in both backends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.support.receiver import Receiver, Reply
from tests.support.waiting import eventually

ONE_SLOT = {"TASK_CONCURRENCY": 1, "WORKER_MAX_JOBS": 1}
BLOCKER_S = 1.5  # the one worker slot is busy this long: far longer than posting the rest takes


def _in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def _body(receiver: Receiver, path: str, **fields: Any) -> dict[str, Any]:
    return {"to": [{"channel": "webhook", "address": receiver.url(path)}], "subject": "s", "text": "t", **fields}


async def _notify(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/notify", json=body)
    assert response.status_code == 202, response.text
    accepted: dict[str, Any] = response.json()
    return accepted


async def _occupy_the_only_slot(client: httpx.AsyncClient, receiver: Receiver) -> None:
    receiver.script("/blocker", Reply(delay_s=BLOCKER_S))
    await _notify(client, _body(receiver, "/blocker"))
    await eventually(lambda: len(receiver.received("/blocker")) == 1, what="the blocker to hold the slot")


@pytest.mark.parametrize(
    ("fields", "where", "says"),
    [
        ({"priority": "asap"}, ["body", "priority"], "urgent"),
        ({"expires_at": "2030-01-01T00:00:00"}, ["body", "expires_at"], "timezone"),
        ({"expires_at": "2000-01-01T00:00:00Z"}, ["body", "expires_at"], "already past"),
        ({"send_at": "PLUS(60)", "expires_at": "PLUS(30)"}, ["body", "expires_at"], "after send_at"),
    ],
)
async def test_bad_priority_or_expiry_is_a_422_that_says_where(
    client_for: Any, receiver: Receiver, fields: dict[str, Any], where: list[str], says: str
) -> None:
    fields = {k: _in(float(v[5:-1])) if str(v).startswith("PLUS(") else v for k, v in fields.items()}
    async with client_for() as client:
        response = await client.post("/notify", json=_body(receiver, "/never", **fields))
        listed = (await client.get("/deliveries")).json()["items"]
    assert response.status_code == 422, response.text
    [problem] = response.json()["detail"]
    assert problem["loc"] == where
    assert says in problem["msg"].lower()
    assert listed == [], "nothing was queued"


async def test_the_response_shows_priority_and_expiry(client_for: Any, receiver: Receiver) -> None:
    expires_at = _in(60)
    async with client_for() as client:
        accepted = await _notify(client, _body(receiver, "/shown", priority="high", expires_at=expires_at))
        fetched = (await client.get(f"/notifications/{accepted['id']}")).json()
    assert accepted["priority"] == fetched["priority"] == "high"
    assert datetime.fromisoformat(fetched["expires_at"]) == datetime.fromisoformat(expires_at)
    assert (await _notify_default(client_for, receiver))["priority"] == "normal"


async def _notify_default(client_for: Any, receiver: Receiver) -> dict[str, Any]:
    async with client_for() as client:
        return await _notify(client, _body(receiver, "/default"))


async def test_an_urgent_notification_overtakes_waiting_normal_ones(
    client_for: Any, backend_settings: dict[str, Any], receiver: Receiver
) -> None:
    async with client_for(**backend_settings, **ONE_SLOT) as client:
        await _occupy_the_only_slot(client, receiver)
        for n in range(3):
            await _notify(client, _body(receiver, f"/normal-{n}"))
        await _notify(client, _body(receiver, "/low", priority="low"))
        await _notify(client, _body(receiver, "/urgent", priority="urgent"))
        await _notify(client, _body(receiver, "/high", priority="high"))
        await eventually(lambda: len(receiver.received()) == 7, timeout_s=20, what="all seven deliveries")
    order = [r.path for r in receiver.received()]
    assert order == ["/blocker", "/urgent", "/high", "/normal-0", "/normal-1", "/normal-2", "/low"]


async def test_a_delivery_not_started_by_expires_at_is_never_sent(
    client_for: Any, backend_settings: dict[str, Any], receiver: Receiver
) -> None:
    async with client_for(**backend_settings, **ONE_SLOT) as client:
        await _occupy_the_only_slot(client, receiver)
        late = await _notify(client, _body(receiver, "/late", expires_at=_in(0.3)))
        on_time = await _notify(client, _body(receiver, "/on-time", expires_at=_in(30)))

        async def status(notification_id: str) -> str:
            return str((await client.get(f"/notifications/{notification_id}")).json()["status"])

        async def both_done() -> bool:
            return await status(late["id"]) == "expired" and await status(on_time["id"]) == "delivered"

        await eventually(both_done, timeout_s=20, what="one expired, one delivered")
        [delivery] = (await client.get(f"/notifications/{late['id']}")).json()["deliveries"]
    assert receiver.received("/late") == [], "an expired delivery is never sent"
    assert len(receiver.received("/on-time")) == 1
    assert delivery["status"] == "expired"
    assert delivery["attempts"] == 0
    assert "expires_at" in delivery["last_error"]
