"""GET /metrics through the app, and a worker process's own metrics endpoint."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from tests.conftest import API_KEY, WEBHOOK_SECRET
from tests.support.processes import WORKER_COMMANDS, Process, Processes, child_env
from tests.support.receiver import Receiver, Reply
from tests.support.smtp import free_port
from tests.support.waiting import eventually

# Every label a scrape may carry, and every value: bounded, never an id or an address.
LABEL_VALUES = {
    "channel": {"email", "webhook", "sms", "inapp"},
    "outcome": {"delivered", "failed", "skipped"},
    "state": {"due", "scheduled"},
}


def value(text: str, name: str, **labels: str) -> float | None:
    """The sample ``name{labels}`` in a scrape, None if absent."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def assert_labels_bounded(text: str) -> None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for label, label_value in sample.labels.items():
                if label == "le":
                    continue
                assert label_value in LABEL_VALUES.get(label, set()), (sample.name, label, label_value)


async def _scrape(client: httpx.AsyncClient, **headers: str) -> str:
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return response.text


async def _notify(client: httpx.AsyncClient, address: str, **extra: Any) -> dict[str, Any]:
    response = await client.post(
        "/notify", json={"to": [{"channel": "webhook", "address": address}], "subject": "s", "text": "t", **extra}
    )
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


async def _status(client: httpx.AsyncClient, notification_id: str) -> str:
    response = await client.get(f"/notifications/{notification_id}")
    assert response.status_code == 200, response.text
    status: str = response.json()["status"]
    return status


async def test_outcomes_retries_and_attempts_by_channel(
    client_for: Any, backend_settings: dict[str, Any], receiver: Receiver
) -> None:
    receiver.script("/bad", Reply(status=400, body=b"rejected"))
    receiver.script("/flaky", Reply(status=503), Reply(status=200))
    async with client_for(**backend_settings) as client:
        accepted = [await _notify(client, receiver.url(path)) for path in ("/ok", "/bad", "/flaky")]

        async def all_final() -> bool:
            return [await _status(client, n["id"]) for n in accepted] == ["delivered", "failed", "delivered"]

        await eventually(all_final, timeout_s=10, what="one failed and two delivered")
        text = await _scrape(client)

    assert value(text, "herald_notifications_accepted_total") == 3
    assert value(text, "herald_deliveries_total", channel="webhook", outcome="delivered") == 2
    assert value(text, "herald_deliveries_total", channel="webhook", outcome="failed") == 1
    assert value(text, "herald_delivery_retries_total", channel="webhook") == 1
    assert value(text, "herald_delivery_duration_seconds_count", channel="webhook") == 4  # attempts
    assert value(text, "herald_deliveries_total", channel="email", outcome="delivered") == 0
    assert value(text, "herald_jobs_in_flight") == 0
    assert value(text, "herald_queue_depth", state="due") == 0
    assert value(text, "herald_queue_depth", state="scheduled") == 0
    assert value(text, "herald_queue_oldest_age_seconds") == 0
    assert_labels_bounded(text)
    for notification in accepted:
        assert notification["id"] not in text
        assert notification["deliveries"][0]["id"] not in text
    assert "127.0.0.1" not in text


async def test_an_idempotent_replay_is_not_accepted_twice(client_for: Any, receiver: Receiver) -> None:
    async with client_for() as client:
        for _ in range(2):
            response = await client.post(
                "/notify",
                json={"to": [{"channel": "webhook", "address": receiver.url()}], "subject": "s", "text": "t"},
                headers={"Idempotency-Key": "order-1"},
            )
            assert response.status_code == 202
        text = await _scrape(client)
    assert value(text, "herald_notifications_accepted_total") == 1


async def test_arq_backlog_without_a_worker_shows_depth_and_age(client_for: Any, redis_url: str) -> None:
    settings = {"TASK_BACKEND": "arq", "REDIS_URL": redis_url, "WORKER_MODE": "separate"}
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    async with client_for(**settings) as client:
        for _ in range(3):
            await _notify(client, "https://example.com/hook")
        await _notify(client, "https://example.com/hook", send_at=later)

        async def aged() -> bool:
            return (value(await _scrape(client), "herald_queue_oldest_age_seconds") or 0) >= 0.05

        await eventually(aged, what="the oldest queued job to age")
        text = await _scrape(client)
    assert value(text, "herald_queue_depth", state="due") == 3
    assert value(text, "herald_queue_depth", state="scheduled") == 1
    assert value(text, "herald_deliveries_total", channel="webhook", outcome="delivered") == 0
    assert value(text, "herald_notifications_accepted_total") == 4


async def test_inline_backlog_counts_jobs_waiting_for_the_worker(client_for: Any, receiver: Receiver) -> None:
    receiver.script("/slow", Reply(delay_s=3))
    later = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
    async with client_for(TASK_CONCURRENCY=1, SHUTDOWN_GRACE_S=0.2) as client:
        await _notify(client, receiver.url("/slow"))
        await eventually(lambda: len(receiver.received("/slow")) == 1, what="the slow delivery to hold the worker")
        await _notify(client, receiver.url("/a"))
        await _notify(client, receiver.url("/b"))
        await _notify(client, receiver.url("/c"), send_at=later)
        text = await _scrape(client)
    assert value(text, "herald_jobs_in_flight") == 1
    assert value(text, "herald_queue_depth", state="due") == 2
    assert value(text, "herald_queue_depth", state="scheduled") == 1
    assert (value(text, "herald_queue_oldest_age_seconds") or 0) > 0


async def test_metrics_need_the_key_unless_public(client_for: Any) -> None:
    async with client_for(API_KEY=API_KEY) as client:
        refused = await client.get("/metrics")
        allowed = await client.get("/metrics", headers={"Authorization": f"Bearer {API_KEY}"})
    async with client_for(API_KEY=API_KEY, METRICS_PUBLIC=True) as client:
        public = await client.get("/metrics")
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"
    assert allowed.status_code == 200
    assert public.status_code == 200
    assert "herald_deliveries_total" in public.text


def test_the_schema_says_which_way_metrics_are_guarded(make_settings: Any) -> None:
    guarded = create_app(make_settings()).openapi()["paths"]["/metrics"]["get"]
    public = create_app(make_settings(METRICS_PUBLIC=True)).openapi()["paths"]["/metrics"]["get"]
    assert guarded["security"] == [{"HTTPBearer": []}]
    assert "security" not in public


async def test_openmetrics_when_the_scraper_asks(client_for: Any) -> None:
    async with client_for() as client:
        response = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


# --- a worker process ----------------------------------------------------------------------------


def _start_worker(processes: Processes, entry: str, redis_url: str, metrics_port: int) -> Process:
    env = child_env(
        REDIS_URL=redis_url,
        WEBHOOK_SECRET=WEBHOOK_SECRET,
        WEBHOOK_ALLOW_PRIVATE="true",
        WORKER_POLL_DELAY_S="0.05",
        HEARTBEAT_INTERVAL_S="0.5",
        CRON_ENABLED="false",
        WORKER_METRICS_PORT=str(metrics_port),
    )
    return processes.start(f"worker-{entry}", WORKER_COMMANDS[entry], env)


async def _workers_alive(client: httpx.AsyncClient) -> int:
    alive: int = (await client.get("/readyz")).json()["checks"]["workers_alive"]
    return alive


@pytest.mark.slow
@pytest.mark.parametrize("entry", sorted(WORKER_COMMANDS))
async def test_a_worker_process_serves_its_own_metrics(
    entry: str, client_for: Any, redis_url: str, receiver: Receiver, processes: Processes
) -> None:
    port = free_port()
    settings = {"TASK_BACKEND": "arq", "REDIS_URL": redis_url, "WORKER_MODE": "separate", "HEARTBEAT_INTERVAL_S": 0.5}
    async with client_for(**settings) as client, httpx.AsyncClient(timeout=5) as scraper:
        worker = _start_worker(processes, entry, redis_url, port)

        async def alive(count: int) -> bool:
            assert worker.running, worker.log()
            return await _workers_alive(client) == count

        await eventually(lambda: alive(1), timeout_s=20, what="the worker's heartbeat")
        accepted = await _notify(client, receiver.url("/from-worker"))

        async def delivered() -> bool:
            return await _status(client, accepted["id"]) == "delivered"

        await eventually(delivered, timeout_s=10, what="the worker to deliver")
        response = await scraper.get(f"http://127.0.0.1:{port}/metrics")
        web = await _scrape(client)

        # A second worker on the same machine and port runs on, without metrics.
        second = _start_worker(processes, entry, redis_url, port)
        await eventually(lambda: alive(2), timeout_s=20, what="the second worker's heartbeat")
        await eventually(lambda: "worker metrics are off" in second.log(), what="the second worker's warning")
        assert (await scraper.get(f"http://127.0.0.1:{port}/metrics")).status_code == 200
        for process in (worker, second):
            process.send(signal.SIGTERM)
            assert await process.exited(timeout_s=15) == 0, process.log()

    assert response.status_code == 200
    text = response.text
    assert value(text, "herald_deliveries_total", channel="webhook", outcome="delivered") == 1
    assert value(text, "herald_delivery_duration_seconds_count", channel="webhook") == 1
    assert value(text, "herald_jobs_in_flight") == 0
    assert value(text, "herald_notifications_accepted_total") is None  # the web's, not the worker's
    assert value(text, "herald_queue_depth", state="due") is None  # the web reports the queue, once
    assert_labels_bounded(text)
    assert accepted["deliveries"][0]["id"] not in text
    # The web process delivered nothing itself; it counts what it accepted.
    assert value(web, "herald_deliveries_total", channel="webhook", outcome="delivered") == 0
    assert value(web, "herald_notifications_accepted_total") == 1
