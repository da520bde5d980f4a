"""Durable-mode drills on a real redis-server: worker processes started, stopped and killed under load."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from arq.constants import default_queue_name, job_key_prefix
from redis.asyncio import Redis

from core.arq_enqueue import DEFERRED_KEY
from tests.conftest import WEBHOOK_SECRET
from tests.support.processes import WORKER_COMMANDS, Process, Processes, child_env
from tests.support.receiver import Receiver, Reply
from tests.support.redis_server import RedisServer
from tests.support.smtp import SmtpSink
from tests.support.waiting import eventually

HEARTBEAT_S = 0.5
ENTRY_POINTS = sorted(WORKER_COMMANDS)

StartWorker = Callable[..., Process]


def _arq_app(redis_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "TASK_BACKEND": "arq",
        "REDIS_URL": redis_url,
        "WORKER_MODE": "separate",
        "HEARTBEAT_INTERVAL_S": HEARTBEAT_S,
        **extra,
    }


@pytest.fixture
def start_worker(processes: Processes, redis_url: str) -> StartWorker:
    """``start_worker(entry_point, **env)``: a worker process on the test's Redis; killed at teardown."""

    def start(entry: str = "arq-cli", **env: str) -> Process:
        values = {
            "REDIS_URL": redis_url,
            "WEBHOOK_SECRET": WEBHOOK_SECRET,
            "WEBHOOK_ALLOW_PRIVATE": "true",
            "RETRY_BASE_DELAY_S": "0.05",
            "RETRY_MAX_DELAY_S": "5",
            "WORKER_POLL_DELAY_S": "0.05",
            "HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S),
            "EMAIL_FROM": "Herald Test <herald@example.org>",
            **env,
        }
        return processes.start(f"worker-{entry}", WORKER_COMMANDS[entry], child_env(**values))

    return start


async def _notification(client: httpx.AsyncClient, notification_id: str) -> dict[str, Any]:
    response = await client.get(f"/notifications/{notification_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _delivery(client: httpx.AsyncClient, notification_id: str) -> dict[str, Any]:
    [delivery] = (await _notification(client, notification_id))["deliveries"]
    assert isinstance(delivery, dict)
    return delivery


async def _readiness(client: httpx.AsyncClient) -> httpx.Response:
    return await client.get("/readyz")


async def _wait_for_worker(client: httpx.AsyncClient, worker: Process) -> None:
    """Until the worker's heartbeat shows in /readyz (it beats once its on_startup is done)."""

    async def alive() -> bool:
        assert worker.running, f"the worker exited early:\n{worker.log()}"
        return bool((await _readiness(client)).json()["checks"]["workers_alive"] >= 1)

    await eventually(alive, timeout_s=20, what="the worker's heartbeat in /readyz")


async def _stop(worker: Process, *, timeout_s: float = 15) -> None:
    worker.send(signal.SIGTERM)
    returncode = await worker.exited(timeout_s=timeout_s)
    assert returncode == 0, f"worker exit code {returncode}:\n{worker.log()}"


def _webhook(receiver: Receiver, path: str, **extra: Any) -> dict[str, Any]:
    return {"to": [{"channel": "webhook", "address": receiver.url(path)}], "subject": "drill", "text": "x", **extra}


@pytest.mark.slow
@pytest.mark.parametrize("entry", ENTRY_POINTS)
async def test_worker_process_delivers_email_and_webhook(
    entry: str, client_for: Any, redis_url: str, smtp: SmtpSink, receiver: Receiver, start_worker: StartWorker
) -> None:
    async with client_for(**_arq_app(redis_url)) as client:
        idle = (await _readiness(client)).json()["checks"]
        worker = start_worker(entry, SMTP_HOST="127.0.0.1", SMTP_PORT=str(smtp.port), SMTP_TLS="none")
        await _wait_for_worker(client, worker)
        response = await client.post(
            "/notify",
            json={
                "to": [
                    {"channel": "email", "address": "ada@example.com"},
                    {"channel": "webhook", "address": receiver.url("/separate")},
                ],
                "template": "welcome",
                "context": {"name": "Ada"},
            },
        )
        assert response.status_code == 202, response.text
        accepted = response.json()

        async def delivered() -> bool:
            assert worker.running, worker.log()
            return bool((await _notification(client, accepted["id"]))["status"] == "delivered")

        await eventually(delivered, timeout_s=15, what="both deliveries via the worker process")
        alive = (await _readiness(client)).json()["checks"]
        await _stop(worker)
        after = (await _readiness(client)).json()["checks"]
    assert idle["workers_alive"] == 0
    assert alive["workers_alive"] >= 1
    assert after["workers_alive"] == 0, "a clean shutdown takes the worker's heartbeat away at once"
    email_id, webhook_id = (d["id"] for d in accepted["deliveries"])
    assert [m["Message-ID"] for m in smtp.messages] == [f"<{email_id}@example.org>"]
    [hook] = receiver.received("/separate")
    assert hook.verified is True
    assert hook.headers["webhook-id"] == webhook_id


@pytest.mark.slow
async def test_retries_continue_across_a_worker_restart(
    client_for: Any, redis_url: str, receiver: Receiver, start_worker: StartWorker
) -> None:
    receiver.script("/flaky", Reply(status=503), Reply(status=503))
    async with client_for(**_arq_app(redis_url)) as client:
        first = start_worker(RETRY_BASE_DELAY_S="1")
        await _wait_for_worker(client, first)
        accepted = (await client.post("/notify", json=_webhook(receiver, "/flaky"))).json()

        async def first_attempt_failed() -> bool:
            delivery = await _delivery(client, accepted["id"])
            return bool(delivery["status"] == "retrying" and delivery["attempts"] == 1)

        await eventually(first_attempt_failed, timeout_s=10, what="the first attempt to fail")
        await _stop(first)
        assert len(receiver.received("/flaky")) == 1, "stopped during the back-off, before attempt 2"
        assert (await _delivery(client, accepted["id"]))["status"] == "retrying"

        second = start_worker(RETRY_BASE_DELAY_S="1")

        async def delivered() -> bool:
            assert second.running, second.log()
            return bool((await _delivery(client, accepted["id"]))["status"] == "delivered")

        await eventually(delivered, timeout_s=20, what="the retries to finish on the new worker")
        delivery = await _delivery(client, accepted["id"])
    assert delivery["attempts"] == 3
    assert delivery["last_error"].startswith("HTTP 503")
    ids = [r.headers["webhook-id"] for r in receiver.received("/flaky")]
    assert ids == [delivery["id"]] * 3


@pytest.mark.slow
@pytest.mark.parametrize("entry", ENTRY_POINTS)
async def test_sigterm_cancelling_a_running_delivery_gives_its_attempt_back(
    entry: str, client_for: Any, redis_url: str, receiver: Receiver, start_worker: StartWorker
) -> None:
    receiver.script("/slow", Reply(delay_s=1.5))
    async with client_for(**_arq_app(redis_url)) as client:
        first = start_worker(entry, SHUTDOWN_GRACE_S="0.2")
        await _wait_for_worker(client, first)
        accepted = (await client.post("/notify", json=_webhook(receiver, "/slow"))).json()
        await eventually(lambda: len(receiver.received("/slow")) == 1, timeout_s=10, what="the slow request")
        sending = await _delivery(client, accepted["id"])
        await _stop(first)
        given_back = await _delivery(client, accepted["id"])

        second = start_worker(entry)

        async def delivered() -> bool:
            assert second.running, second.log()
            return bool((await _delivery(client, accepted["id"]))["status"] == "delivered")

        await eventually(delivered, timeout_s=15, what="the re-queued delivery")
        delivery = await _delivery(client, accepted["id"])
    assert (sending["status"], sending["attempts"]) == ("sending", 1)
    # run_job gives a cancelled attempt back before arq re-queues the job: only the attempt that
    # got an answer counts, however many requests the receiver saw.
    assert (given_back["status"], given_back["attempts"]) == ("queued", 0)
    assert delivery["attempts"] == 1
    assert delivery["last_error"] is None
    ids = [r.headers["webhook-id"] for r in receiver.received("/slow")]
    assert ids == [delivery["id"]] * 2, "the cancelled request was sent again, under the same webhook-id"


@pytest.mark.slow
@pytest.mark.parametrize("entry", ENTRY_POINTS)
async def test_sigterm_lets_a_running_delivery_finish_within_the_grace(
    entry: str, client_for: Any, redis_url: str, receiver: Receiver, start_worker: StartWorker
) -> None:
    receiver.script("/finishing", Reply(delay_s=0.4))
    async with client_for(**_arq_app(redis_url)) as client:
        worker = start_worker(entry, SHUTDOWN_GRACE_S="0.9")
        await _wait_for_worker(client, worker)
        accepted = (await client.post("/notify", json=_webhook(receiver, "/finishing"))).json()
        await eventually(lambda: len(receiver.received("/finishing")) == 1, timeout_s=10, what="the request")
        await _stop(worker)
        delivery = await _delivery(client, accepted["id"])
    assert (delivery["status"], delivery["attempts"]) == ("delivered", 1), worker.log()
    assert len(receiver.received("/finishing")) == 1


async def test_redis_down_is_a_503_and_the_same_request_succeeds_once_it_is_back(
    client_for: Any, redis_server: RedisServer, redis_url: str, receiver: Receiver
) -> None:
    body = _webhook(receiver, "/outage")
    key = {"Idempotency-Key": "during-outage"}
    async with client_for(**_arq_app(redis_url)) as client:
        assert (await _readiness(client)).status_code == 200
        port = redis_server.port
        redis_server.stop()
        try:
            refused = await client.post("/notify", json=body, headers=key)
            not_ready = await _readiness(client)
        finally:
            redis_server.start()
        assert redis_server.port == port, "restarted on the same port, as the app's REDIS_URL says"
        retried = await client.post("/notify", json=body, headers=key)
        ready = await _readiness(client)
    assert refused.status_code == 503
    assert int(refused.headers["retry-after"]) > 0
    assert "Redis" in refused.json()["detail"]
    assert "nothing was stored" in refused.json()["detail"]
    assert not_ready.status_code == 503
    assert not_ready.json()["checks"]["redis"].startswith("down")
    assert retried.status_code == 202, retried.text
    assert "idempotent-replayed" not in retried.headers
    assert ready.status_code == 200
    assert ready.json()["checks"]["redis"] == "up"


async def test_an_enqueue_failing_inside_redis_writes_nothing(
    client_for: Any, redis_url: str, receiver: Receiver, redis_client: Redis
) -> None:
    body = {
        "to": [
            {"channel": "webhook", "address": receiver.url("/atomic")},
            {"channel": "email", "address": "ada@example.com"},
        ],
        "subject": "atomic",
        "text": "all or nothing",
    }
    key = {"Idempotency-Key": "atomic-1"}
    # Something else owns arq's queue key with another type: the queue write must fail, and with
    # it the whole enqueue, claim and documents included.
    await redis_client.set(default_queue_name, "not a queue")
    async with client_for(**_arq_app(redis_url)) as client:
        refused = await client.post("/notify", json=body, headers=key)
        left_behind = sorted([k.decode() async for k in redis_client.scan_iter("*")])
        await redis_client.delete(default_queue_name)
        accepted = await client.post("/notify", json=body, headers=key)
    assert refused.status_code == 503, refused.text
    assert "nothing was stored" in refused.json()["detail"]
    assert left_behind == [default_queue_name], "no claim, document, record or job"
    assert accepted.status_code == 202, accepted.text
    assert "idempotent-replayed" not in accepted.headers, "the failed request did not take the key"
    queued = {m.decode() for m in await redis_client.zrange(default_queue_name, 0, -1)}
    assert queued == {d["id"] for d in accepted.json()["deliveries"]}


async def test_idempotency_holds_across_two_instances(
    client_for: Any, redis_url: str, receiver: Receiver, redis_client: Redis
) -> None:
    rounds = 20
    async with client_for(**_arq_app(redis_url)) as one, client_for(**_arq_app(redis_url)) as two:
        pairs = await asyncio.gather(
            *(
                asyncio.gather(
                    one.post("/notify", json=_webhook(receiver, "/idem"), headers={"Idempotency-Key": f"k-{n}"}),
                    two.post("/notify", json=_webhook(receiver, "/idem"), headers={"Idempotency-Key": f"k-{n}"}),
                )
                for n in range(rounds)
            )
        )
        conflict = await two.post(
            "/notify", json=_webhook(receiver, "/idem", text="other"), headers={"Idempotency-Key": "k-0"}
        )
    for first, second in pairs:
        assert first.status_code == second.status_code == 202
        assert first.json()["id"] == second.json()["id"]
        assert first.json()["deliveries"] == second.json()["deliveries"]
        replays = sorted(r.headers.get("idempotent-replayed", "") for r in (first, second))
        assert replays == ["", "true"], "exactly one of the two created it"
    assert conflict.status_code == 409
    notifications = [k async for k in redis_client.scan_iter("herald:doc:ntf:*")]
    assert len(notifications) == rounds, "the losing instance stored nothing"
    assert await redis_client.zcard(default_queue_name) == rounds


async def test_scheduled_send_and_cancel_with_the_embedded_worker(
    client_for: Any, redis_url: str, receiver: Receiver, redis_client: Redis
) -> None:
    embedded = _arq_app(redis_url, WORKER_MODE="embedded", WORKER_POLL_DELAY_S=0.05)
    async with client_for(**embedded) as client:
        send_at = datetime.now(UTC) + timedelta(seconds=1.5)
        kept = await client.post("/notify", json=_webhook(receiver, "/kept", send_at=send_at.isoformat()))
        # Due a little before the kept one: once the kept one has arrived, this one had its chance.
        doomed_at = send_at - timedelta(seconds=0.2)
        doomed = await client.post("/notify", json=_webhook(receiver, "/doomed", send_at=doomed_at.isoformat()))
        cancelled = await client.delete(f"/notifications/{doomed.json()['id']}")

        async def delivered() -> bool:
            return bool((await _notification(client, kept.json()["id"]))["status"] == "delivered")

        await eventually(delivered, timeout_s=10, what="the scheduled delivery")
        [sent] = (await _notification(client, kept.json()["id"]))["deliveries"]
        doomed_after = await _notification(client, doomed.json()["id"])

        far = datetime.now(UTC) + timedelta(days=2)
        later = await client.post("/notify", json=_webhook(receiver, "/later", send_at=far.isoformat()))
    async with client_for() as inline:
        inline_later = await inline.post("/notify", json=_webhook(receiver, "/later", send_at=far.isoformat()))

    assert kept.status_code == doomed.status_code == 202
    assert kept.json()["status"] == doomed.json()["status"] == "scheduled"
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert datetime.fromisoformat(sent["finished_at"]) >= send_at, "not sent before send_at"
    assert len(receiver.received("/kept")) == 1
    assert receiver.received("/doomed") == []
    assert doomed_after["status"] == "cancelled"

    assert later.status_code == 202, later.text
    assert later.json()["status"] == "scheduled"
    [far_delivery] = later.json()["deliveries"]
    assert await redis_client.zscore(default_queue_name, far_delivery["id"]) is None, "not on arq's queue yet"
    due_ms = await redis_client.zscore(DEFERRED_KEY, far_delivery["id"])
    assert due_ms is not None
    assert abs(due_ms / 1000 - far.timestamp()) < 1, "deferred until send_at, not before"
    assert await redis_client.pttl(job_key_prefix + far_delivery["id"]) > 2 * 86_400_000, "outlives its send_at"
    assert inline_later.status_code == 422
    assert "TASK_BACKEND=arq" in inline_later.json()["detail"][0]["msg"]
