from __future__ import annotations

from typing import Any

from tests.support.receiver import Receiver
from tests.support.waiting import eventually


def _body(receiver: Receiver, text: str = "hello") -> dict[str, Any]:
    return {"to": [{"channel": "webhook", "address": receiver.url("/idem")}], "subject": "s", "text": text}


async def test_same_key_same_body_returns_same_notification_and_sends_once(
    client_for: Any, backend_settings: dict[str, Any], receiver: Receiver
) -> None:
    async with client_for(**backend_settings) as client:
        first = await client.post("/notify", json=_body(receiver), headers={"Idempotency-Key": "order-1"})
        await eventually(lambda: len(receiver.received("/idem")) == 1, what="first delivery")
        second = await client.post("/notify", json=_body(receiver), headers={"Idempotency-Key": "order-1"})
        other = await client.post("/notify", json=_body(receiver), headers={"Idempotency-Key": "order-2"})
        await eventually(lambda: len(receiver.received("/idem")) == 2, what="the other key's delivery")
    assert first.status_code == second.status_code == 202
    assert second.json()["id"] == first.json()["id"]
    assert second.headers["location"] == first.headers["location"]
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert other.json()["id"] != first.json()["id"]
    ids = [r.headers["webhook-id"] for r in receiver.received("/idem")]
    assert ids == [first.json()["deliveries"][0]["id"], other.json()["deliveries"][0]["id"]]


async def test_same_key_different_body_is_409(
    client_for: Any, backend_settings: dict[str, Any], receiver: Receiver
) -> None:
    async with client_for(**backend_settings) as client:
        first = await client.post("/notify", json=_body(receiver, "a"), headers={"Idempotency-Key": "k"})
        second = await client.post("/notify", json=_body(receiver, "b"), headers={"Idempotency-Key": "k"})
    assert first.status_code == 202
    assert second.status_code == 409
    assert "different request body" in second.json()["detail"]


async def test_key_expires_after_its_ttl(client_for: Any, backend_settings: dict[str, Any], receiver: Receiver) -> None:
    async with client_for(**backend_settings, IDEMPOTENCY_TTL_S=0.2) as client:
        first = await client.post("/notify", json=_body(receiver), headers={"Idempotency-Key": "short"})

        async def fresh_after_ttl() -> bool:
            again = await client.post("/notify", json=_body(receiver), headers={"Idempotency-Key": "short"})
            return bool(again.json()["id"] != first.json()["id"])

        await eventually(fresh_after_ttl, what="the key to expire")


async def test_a_burst_of_documents_never_pushes_out_a_live_key(client_for: Any, receiver: Receiver) -> None:
    many = [{"channel": "webhook", "address": receiver.url(f"/burst/{n}")} for n in range(5)]
    async with client_for(RECORD_MAX_COUNT=10) as client:
        first = await client.post("/notify", json=_body(receiver), headers={"Idempotency-Key": "kept"})
        for _ in range(10):
            burst = await client.post("/notify", json={"to": many, "subject": "s", "text": "t"})
            assert burst.status_code == 202
        again = await client.post("/notify", json=_body(receiver), headers={"Idempotency-Key": "kept"})
    # The notification itself may be evicted by RECORD_MAX_COUNT, but the key is not: the request is
    # never accepted a second time (a replay, or a 409 saying the original is no longer kept).
    assert again.status_code in (202, 409), again.text
    if again.status_code == 202:
        assert again.json()["id"] == first.json()["id"]
    else:
        assert "no longer kept" in again.json()["detail"]
    assert len(receiver.received("/idem")) <= 1
