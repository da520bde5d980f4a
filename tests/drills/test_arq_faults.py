"""Durable-mode faults on real redis-servers: a worker SIGKILLed mid-batch, Redis crashing with and without
persistence, Redis out of memory.

The claims are the README's "Three ways to run" table and "Retries, shutdown and what can be lost".
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from arq.constants import default_queue_name, job_key_prefix
from redis.asyncio import Redis

from core.config import Settings
from tasks.worker import build_worker_options
from tests.conftest import WEBHOOK_SECRET
from tests.drills.conftest import FAST_TIMEOUTS, HEARTBEAT_S, OwnRedis, StartWorker
from tests.drills.tally import Tally, arrivals, counts, ids_of, post_all, webhook_bodies
from tests.support.drills import drill_size
from tests.support.processes import Process
from tests.support.receiver import Receiver, Reply
from tests.support.redis_server import RedisServer
from tests.support.waiting import eventually

pytestmark = [pytest.mark.drill, pytest.mark.slow]

MAX_JOBS = 10
LOST_REDIS = "worker lost Redis"


def in_progress_ttl_s() -> float:
    """How long arq keeps a started job's in-progress key: its longest task timeout + 10 s (arq 0.28)."""
    settings = Settings.model_validate(
        {"REDIS_URL": "redis://127.0.0.1:1/0", "WEBHOOK_SECRET": WEBHOOK_SECRET, **FAST_TIMEOUTS}
    )
    functions = build_worker_options(settings, task_sets=[])["functions"]
    return float(max(f.timeout_s for f in functions)) + 10


def _arq_app(redis_url: str) -> dict[str, Any]:
    return {"TASK_BACKEND": "arq", "REDIS_URL": redis_url, "HEARTBEAT_INTERVAL_S": HEARTBEAT_S}


async def _wait_for_worker(client: httpx.AsyncClient, worker: Process) -> None:
    async def alive() -> bool:
        assert worker.running, f"the worker exited:\n{worker.log()}"
        response = await client.get("/readyz")
        return response.status_code == 200 and bool(response.json()["checks"]["workers_alive"] >= 1)

    await eventually(alive, timeout_s=30, what="/readyz to show a live worker")


async def _all_delivered(client: httpx.AsyncClient, worker: Process, sent: int, *, timeout_s: float) -> None:
    async def done() -> bool:
        assert worker.running, worker.log()
        return (await counts(client))["delivered"] == sent

    await eventually(done, timeout_s=timeout_s, what=f"all {sent} deliveries to end delivered")


async def _statuses(client: httpx.AsyncClient, notification_ids: list[str]) -> dict[str, str]:
    """Delivery id -> status."""
    found: dict[str, str] = {}
    for notification_id in notification_ids:
        response = await client.get(f"/notifications/{notification_id}")
        assert response.status_code == 200, response.text
        found.update({d["id"]: d["status"] for d in response.json()["deliveries"]})
    return found


def _check_duplicates(tally: Tally, receiver: Receiver, could_repeat: set[str]) -> None:
    """Only a delivery that was running at the fault arrives twice, once more at most, with the same body."""
    assert set(tally.duplicated) <= could_repeat, set(tally.duplicated) - could_repeat
    assert all(n == 2 for n in tally.duplicated.values()), tally.duplicated
    for webhook_id in tally.duplicated:
        original, again = (r for r in receiver.received() if r.headers["webhook-id"] == webhook_id)
        assert again.body == original.body, "a re-run sends the same body: receivers can dedupe on webhook-id"


@pytest.mark.timeout(180)
async def test_worker_sigkill_mid_batch_loses_nothing(
    client_for: Any, redis_url: str, receiver: Receiver, start_worker: StartWorker
) -> None:
    sent = drill_size(200, 1000)
    receiver.default = Reply(delay_s=0.02)
    ttl_s = in_progress_ttl_s()
    async with client_for(**_arq_app(redis_url)) as client:
        accepted = await post_all(client, webhook_bodies(receiver, "crash", sent))
        first = start_worker(redis_url, WORKER_MAX_JOBS=str(MAX_JOBS))
        await eventually(lambda: len(receiver.received()) >= sent // 4, timeout_s=30, what="a quarter to arrive")
        first.kill()
        killed_at = time.monotonic()
        arrived_at_kill = len(receiver.received())
        at_kill = await _statuses(client, list(accepted))
        second = start_worker(redis_url, WORKER_MAX_JOBS=str(MAX_JOBS))
        await _all_delivered(client, second, sent, timeout_s=ttl_s + 60)
        after = await _statuses(client, list(accepted))
        attempts = {
            d["id"]: d["attempts"]
            for n in accepted
            for d in (await client.get(f"/notifications/{n}")).json()["deliveries"]
        }
    killed = {i for i, status in at_kill.items() if status == "sending"}
    tally = Tally.of(ids_of(accepted), receiver.received())
    rerun_at = min(r.at for r in receiver.received() if r.headers["webhook-id"] in killed and r.at > killed_at)
    recovery_s = rerun_at - killed_at
    print(
        tally.line(
            "arq worker SIGKILL",
            arrived_before_kill=arrived_at_kill,
            running_at_kill=len(killed),
            extra_requests=sum(tally.duplicated.values()) - len(tally.duplicated),
            killed_jobs_rerun_after_s=round(recovery_s, 1),
            in_progress_ttl_s=ttl_s,
        )
    )
    assert arrived_at_kill < sent * 3 // 4, "the kill must land with most of the work still queued"
    assert set(after.values()) == {"delivered"}
    assert not tally.lost, sorted(tally.lost)
    tally.assert_exact(duplicates=True)
    assert 0 < len(killed) <= MAX_JOBS, "at most WORKER_MAX_JOBS were running at the kill"
    _check_duplicates(tally, receiver, killed)
    # A SIGKILL cannot give an attempt back: the killed one counts, the re-run is the second.
    assert attempts == {i: 2 if i in killed else 1 for i in attempts}
    # The README's wait: a killed worker's running jobs run again once arq's in-progress key expires.
    assert ttl_s - 2 <= recovery_s <= ttl_s + 10, (recovery_s, ttl_s)


async def _crash_and_restart(
    client: httpx.AsyncClient, server: RedisServer, worker: Process, receiver: Receiver, sent: int
) -> tuple[int, float]:
    """SIGKILL Redis once a quarter has arrived, wait until the API and worker notice, start it again.

    Returns how many had arrived at the crash, and when it happened (monotonic).
    """
    await eventually(lambda: len(receiver.received()) >= sent // 4, timeout_s=30, what="a quarter to arrive")
    server.kill()
    crashed_at = time.monotonic()
    arrived = len(receiver.received())

    async def api_noticed() -> bool:
        return (await client.get("/readyz")).status_code == 503

    await eventually(api_noticed, timeout_s=10, what="/readyz to report Redis down")
    await eventually(lambda: LOST_REDIS in worker.log(), timeout_s=15, what="the worker to lose Redis")
    server.start()
    await _wait_for_worker(client, worker)
    return arrived, crashed_at


@asynccontextmanager
async def _new_notification_is_delivered(client: httpx.AsyncClient, receiver: Receiver) -> AsyncIterator[None]:
    """After the block: a notification posted now is accepted and delivered (the API and worker recovered)."""
    yield
    [notification_id] = await post_all(client, webhook_bodies(receiver, "after", 1))

    async def delivered() -> bool:
        return bool((await client.get(f"/notifications/{notification_id}")).json()["status"] == "delivered")

    await eventually(delivered, timeout_s=30, what="a notification posted after the restart to be delivered")
    assert len(arrivals(receiver, "after")) == 1


@pytest.mark.timeout(180)
async def test_redis_crash_with_aof_loses_nothing(
    client_for: Any, own_redis: OwnRedis, receiver: Receiver, start_worker: StartWorker
) -> None:
    sent = drill_size(200, 1000)
    receiver.default = Reply(delay_s=0.02)
    server = own_redis(appendonly=True, appendfsync="everysec")
    async with client_for(**_arq_app(server.url)) as client:
        accepted = await post_all(client, webhook_bodies(receiver, "aof", sent))
        worker = start_worker(server.url, WORKER_MAX_JOBS=str(MAX_JOBS))
        async with _new_notification_is_delivered(client, receiver):
            arrived_at_crash, crashed_at = await _crash_and_restart(client, server, worker, receiver, sent)
            await _all_delivered(client, worker, sent, timeout_s=in_progress_ttl_s() + 60)
        recovered_s = time.monotonic() - crashed_at
    tally = Tally.of(ids_of(accepted), arrivals(receiver, "aof"))
    print(
        tally.line(
            "Redis SIGKILL with AOF (everysec)",
            arrived_before_crash=arrived_at_crash,
            all_delivered_after_s=round(recovered_s, 1),
        )
    )
    assert arrived_at_crash < sent * 3 // 4, "the crash must land with most of the work still queued"
    assert not tally.lost, sorted(tally.lost)
    tally.assert_exact(duplicates=True)
    assert len(tally.duplicated) <= MAX_JOBS, "only the jobs running at the crash can arrive twice"
    _check_duplicates(tally, receiver, set(tally.duplicated))
    assert worker.running, "the worker rode out the restart"


@pytest.mark.timeout(120)
async def test_redis_restart_without_persistence_loses_what_was_queued(
    client_for: Any, own_redis: OwnRedis, receiver: Receiver, start_worker: StartWorker
) -> None:
    sent = drill_size(200, 1000)
    receiver.default = Reply(delay_s=0.02)
    server = own_redis()  # no RDB, no AOF: Render's free Key Value
    async with client_for(**_arq_app(server.url)) as client:
        accepted = await post_all(client, webhook_bodies(receiver, "volatile", sent))
        worker = start_worker(server.url, WORKER_MAX_JOBS=str(MAX_JOBS))
        async with _new_notification_is_delivered(client, receiver):
            arrived_at_crash, _ = await _crash_and_restart(client, server, worker, receiver, sent)
        after = await counts(client)
        gone = {(await client.get(f"/notifications/{n}")).status_code for n in accepted}
    # The worker reconnected with a new arq worker after closing the old one, so the requests that were
    # under way at the crash have ended: what has arrived by now is final.
    tally = Tally.of(ids_of(accepted), arrivals(receiver, "volatile"))
    queued_at_crash = sent - arrived_at_crash
    print(
        tally.line(
            "Redis restart without persistence",
            queued_at_crash=queued_at_crash,
            on_the_wire_at_crash=len(tally.delivered) - arrived_at_crash,
        )
    )
    # Lost: what was queued at the restart, less the requests already under way (at most WORKER_MAX_JOBS).
    assert 0 <= queued_at_crash - len(tally.lost) <= MAX_JOBS, (queued_at_crash, len(tally.lost))
    assert len(tally.lost) > sent // 2
    tally.assert_exact()
    assert gone == {404}, "records went with the data"
    assert after["delivered"] == sum(after.values()) == 1, after
    assert worker.running, "the worker rode out the restart"


def _refusal_is_clear(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) > 0
    assert "out of memory" in response.json()["detail"]
    assert "nothing was stored" in response.json()["detail"]


async def _consistent(redis: Redis) -> dict[str, int]:
    """Every notification has its deliveries' records, specs and arq jobs, and nothing exists without one."""
    notifications = [json.loads(v) for v in await redis.mget([k async for k in redis.scan_iter("herald:doc:ntf:*")])]
    claimed = [json.loads(v) for v in await redis.mget([k async for k in redis.scan_iter("herald:doc:idem:*")])]
    deliveries = {d[0] for n in notifications for d in n["deliveries"]}

    async def ids(pattern: str, prefix: str) -> set[str]:
        return {k.decode().removeprefix(prefix) async for k in redis.scan_iter(pattern)}

    assert await ids("herald:job:*", "herald:job:") == deliveries, "a record without its notification, or not"
    assert await ids("herald:doc:spec:*", "herald:doc:spec:") == deliveries
    assert await ids(job_key_prefix + "*", job_key_prefix) == deliveries, "an arq job without its record, or not"
    assert {m.decode() for m in await redis.zrange(default_queue_name, 0, -1)} == deliveries
    assert {c["notification_id"] for c in claimed} <= {n["id"] for n in notifications}, "a claim without its data"
    return {"notifications": len(notifications), "deliveries": len(deliveries), "keys": await redis.dbsize()}


@pytest.mark.timeout(60)
async def test_redis_full_is_a_503_and_nothing_is_half_written(
    client_for: Any, own_redis: OwnRedis, receiver: Receiver
) -> None:
    server = own_redis(extra=("--maxmemory", "4mb", "--maxmemory-policy", "noeviction"))
    redis = Redis.from_url(server.url)
    bodies = webhook_bodies(receiver, "full", 50, text="x" * 1000)
    try:
        async with client_for(**_arq_app(server.url)) as client:
            accepted = 0
            while True:
                response = await client.post("/notify", json=bodies[0], headers={"Idempotency-Key": f"k-{accepted}"})
                if response.status_code != 202:
                    break
                accepted += 1
                assert accepted < 1000, "maxmemory was never reached"
            _refusal_is_clear(response)
            at_refusal = await _consistent(redis)
            # More refusals write nothing either: not a key more.
            for n in range(5):
                _refusal_is_clear(await client.post("/notify", json=bodies[0], headers={"Idempotency-Key": f"x-{n}"}))
            after_refusals = await _consistent(redis)
            readable = {(await client.get(f"/notifications/{n}")).status_code for n in await _ntf_ids(redis)}
            await redis.config_set("maxmemory", "0")  # memory freed (or raised): writes work again
            retried = await client.post("/notify", json=bodies[0], headers={"Idempotency-Key": f"k-{accepted}"})
            after_free = await _consistent(redis)
    finally:
        await redis.aclose()
    print(f"\nRedis full: accepted={accepted} refused=6 notifications_stored={at_refusal['notifications']}")
    assert at_refusal["notifications"] == accepted
    assert at_refusal["deliveries"] == 50 * accepted
    assert after_refusals == at_refusal
    assert readable == {200}
    assert retried.status_code == 202, retried.text
    assert "idempotent-replayed" not in retried.headers, "the refused request did not take its key"
    assert after_free["notifications"] == accepted + 1


async def _ntf_ids(redis: Redis) -> list[str]:
    return [k.decode().removeprefix("herald:doc:ntf:") async for k in redis.scan_iter("herald:doc:ntf:*")]
