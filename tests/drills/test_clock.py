"""Clock drills on ``send_at``: a time in the past sends now (both modes); far ahead, in-process refuses beyond
INLINE_MAX_DEFER_S with a 422 saying so, and arq mode keeps it in Redis however far ahead.

README, "Scheduled sends" and the "Three ways to run" table.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from arq.constants import default_queue_name, job_key_prefix
from redis.asyncio import Redis

from core.arq_enqueue import DEFERRED_KEY
from tests.drills.tally import Tally, arrivals, counts, ids_of, webhook_bodies
from tests.support.drills import drill_size
from tests.support.receiver import Receiver
from tests.support.waiting import eventually

pytestmark = [pytest.mark.drill, pytest.mark.timeout(60)]


def _past() -> list[datetime]:
    now = datetime.now(UTC)
    return [
        now - timedelta(seconds=1),
        now - timedelta(days=1),
        datetime(2000, 1, 1, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
    ]


async def _post_at(client: httpx.AsyncClient, receiver: Receiver, when: datetime) -> httpx.Response:
    """One webhook notification with ``send_at=when``, to a path under ``/far/``."""
    [body] = webhook_bodies(receiver, f"far/{when.timestamp()}", 1, send_at=when.isoformat())
    return await client.post("/notify", json=body)


async def test_send_at_in_the_past_sends_now(
    client_for: Any, backend_settings: dict[str, Any], receiver: Receiver
) -> None:
    per_time = drill_size(10, 50)
    async with client_for(**backend_settings) as client:
        bodies = [
            body
            for n, when in enumerate(_past())
            for body in webhook_bodies(receiver, f"past/{n}", per_time, send_at=when.isoformat())
        ]
        responses = await asyncio.gather(*(client.post("/notify", json=body) for body in bodies))
        for response in responses:
            assert response.status_code == 202, response.text
            assert response.json()["status"] == "queued", "a past send_at is due now, not scheduled"
        accepted = {r.json()["id"]: [d["id"] for d in r.json()["deliveries"]] for r in responses}

        async def all_delivered() -> bool:
            return (await counts(client))["delivered"] == len(ids_of(accepted))

        await eventually(all_delivered, timeout_s=20, what="every past-dated delivery")
    tally = Tally.of(ids_of(accepted), arrivals(receiver, "past"))
    print(tally.line(f"send_at in the past ({backend_settings['TASK_BACKEND']})"))
    assert not tally.lost, sorted(tally.lost)
    tally.assert_exact()


async def test_in_process_refuses_send_at_beyond_inline_max_defer(client_for: Any, receiver: Receiver) -> None:
    limit_s = 3600.0  # INLINE_MAX_DEFER_S's default
    now = datetime.now(UTC)
    # A scheduled send keeps the in-process drain waiting its whole grace: keep it short here.
    async with client_for(SHUTDOWN_GRACE_S=0.2) as client:
        within = await _post_at(client, receiver, now + timedelta(seconds=limit_s - 60))
        beyond = await _post_at(client, receiver, now + timedelta(seconds=limit_s + 60))
        far = await _post_at(client, receiver, datetime(9999, 12, 31, tzinfo=UTC))
        states = await counts(client)
    assert within.status_code == 202, within.text
    assert within.json()["status"] == "scheduled"
    for refused in (beyond, far):
        assert refused.status_code == 422, refused.text
        [error] = refused.json()["detail"]
        assert error["loc"] == ["body", "send_at"]
        assert "3600s ahead (INLINE_MAX_DEFER_S)" in error["msg"]
        assert "TASK_BACKEND=arq" in error["msg"]
    assert states["scheduled"] == sum(states.values()) == 1, "the refused ones stored nothing"


async def test_arq_keeps_send_at_however_far_ahead(
    client_for: Any, redis_url: str, redis_client: Redis, receiver: Receiver
) -> None:
    settings = {"TASK_BACKEND": "arq", "REDIS_URL": redis_url, "WORKER_MODE": "embedded", "WORKER_POLL_DELAY_S": 0.05}
    now = datetime.now(UTC)
    far = [now + timedelta(seconds=3700), now + timedelta(days=400), datetime(9999, 12, 31, tzinfo=UTC)]
    async with client_for(**settings) as client:
        responses = [await _post_at(client, receiver, when) for when in far]
        for response in responses:
            assert response.status_code == 202, response.text
        readable = [(await client.get(f"/notifications/{r.json()['id']}")).json()["status"] for r in responses]
        delivery_ids = [r.json()["deliveries"][0]["id"] for r in responses]
        deferred = [await redis_client.zscore(DEFERRED_KEY, i) for i in delivery_ids]
        on_queue = [await redis_client.zscore(default_queue_name, i) for i in delivery_ids]
        job_ttls_ms = [await redis_client.pttl(job_key_prefix + i) for i in delivery_ids]
        cancelled = await client.delete(f"/notifications/{responses[-1].json()['id']}")
    assert readable == ["scheduled"] * len(far)
    assert on_queue == [None] * len(far), "not on arq's queue before its time"
    for when, due_ms, ttl_ms in zip(far, deferred, job_ttls_ms, strict=True):
        assert due_ms is not None
        assert abs(due_ms / 1000 - when.timestamp()) < 1, "deferred until send_at"
        assert ttl_ms / 1000 > when.timestamp() - now.timestamp(), "the job outlives its send_at"
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert arrivals(receiver, "far") == []
