"""Issue 6: slow receivers must not starve fast ones (WEBHOOK_MAX_PER_HOST, docs/guarantees.md).

The drill, in both modes (in-process, and arq with the embedded worker on the suite's real Redis): deliveries
to a receiver that never answers and as many to a healthy one, 20 runner slots. Without a per-host limit the
hanging host takes every slot until WEBHOOK_TIMEOUT_S (30 s here) and the healthy deliveries wait behind it.
With it, the healthy ones are all delivered within seconds while the hanging host holds at most
WEBHOOK_MAX_PER_HOST connections; then the hanging receiver answers and each of its deliveries arrives once,
as attempt 1 (the deferrals that kept it waiting are not attempts). Both receivers are raw asyncio servers
on 127.0.0.1 that count open connections and every ``webhook-id`` they were sent.

The smaller tests pin the slot itself: refused at once when the host is full, given back however a send ends.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import pytest

from core.config import Settings
from core.errors import DeferJob, PermanentError, RetryableError, TaskError
from tasks.channels.webhook_client import WebhookClient, host_key
from tasks.delivery import send_webhook
from tests.support.drills import drill_size
from tests.support.hostile_receivers import (
    Behaviour,
    LoopbackDialler,
    answer,
    drill_client,
    endless_headers,
    held,
    hostile_receiver,
    in_turn,
    never_answer,
)
from tests.support.smtp import free_port
from tests.support.waiting import eventually
from tests.tasks.helpers import delivery_context, make_payload

pytestmark = pytest.mark.drill

SettingsFactory = Callable[..., Settings]
ClientFor = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]

DELIVERIES = drill_size(50, 200)  # to each receiver
BATCH = 50  # MAX_RECIPIENTS: one notification carries at most this many deliveries
CONCURRENCY = 20
MAX_PER_HOST = 10
HANGING_TIMEOUT_S = 30.0  # WEBHOOK_TIMEOUT_S: no hanging send gives up during the drill
HEALTHY_DEADLINE_S = 10.0  # well under HANGING_TIMEOUT_S: healthy deliveries never waited for a hanging one
RELEASED_DEADLINE_S = 15.0
DEFERRALS_EACH = 3  # how often, on average, each waiting delivery is deferred before the host answers
QUICK_S = 0.5  # "at once" on a shared 2-core machine; a send that waited for a slot would hang for seconds


async def _notify(client: httpx.AsyncClient, urls: list[str]) -> list[str]:
    """One notification per BATCH urls; the ids of every delivery, in order."""
    ids: list[str] = []
    for start in range(0, len(urls), BATCH):
        response = await client.post(
            "/notify",
            json={
                "to": [{"channel": "webhook", "address": url} for url in urls[start : start + BATCH]],
                "subject": "per-host drill",
                "text": "t",
            },
        )
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


async def _deliveries(client: httpx.AsyncClient, notification_ids: list[str]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for notification_id in notification_ids:
        response = await client.get(f"/notifications/{notification_id}")
        assert response.status_code == 200, response.text
        found.extend(response.json()["deliveries"])
    return found


async def _all_delivered(client: httpx.AsyncClient, notification_ids: list[str]) -> bool:
    return all(d["status"] == "delivered" for d in await _deliveries(client, notification_ids))


async def _deferrals(client: httpx.AsyncClient, *, at_least: float) -> bool:
    return _metric((await client.get("/metrics")).text, "herald_delivery_deferrals_total") >= at_least


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and 'channel="webhook"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} for webhooks is not in the scrape")


async def test_a_hanging_host_does_not_starve_a_healthy_one_and_loses_nothing_once_it_answers(
    client_for: ClientFor, backend_settings: dict[str, Any]
) -> None:
    mode = backend_settings["TASK_BACKEND"]
    release = asyncio.Event()
    settings = {
        **backend_settings,
        "TASK_CONCURRENCY": CONCURRENCY,
        "WORKER_MAX_JOBS": CONCURRENCY,
        "WEBHOOK_TIMEOUT_S": HANGING_TIMEOUT_S,
        "WEBHOOK_MAX_PER_HOST": MAX_PER_HOST,
        "TASK_QUEUE_MAX": 4 * DELIVERIES,
    }
    async with (
        hostile_receiver(held(release, then=answer(200))) as hanging,
        hostile_receiver(answer(200)) as healthy,
        client_for(**settings) as client,
    ):
        # The hanging host's deliveries first, so they are first to the slots.
        hanging_ids = await _notify(client, [hanging.url(f"/hook/{n}") for n in range(DELIVERIES)])
        began = time.monotonic()
        healthy_ids = await _notify(client, [healthy.url(f"/hook/{n}") for n in range(DELIVERIES)])
        await eventually(
            lambda: _all_delivered(client, healthy_ids),
            timeout_s=HEALTHY_DEADLINE_S,
            what=f"all {DELIVERIES} healthy deliveries to be delivered while the other host hangs",
        )
        healthy_by_s = time.monotonic() - began
        hanging_open, hanging_most_open = hanging.open_now, hanging.most_open
        # Still hanging: nothing of that host was answered, and it held its share of the slots.
        assert not any(connection.finished for connection in hanging.connections)
        assert 1 <= hanging_open <= hanging_most_open <= MAX_PER_HOST, (hanging_open, hanging_most_open)
        # Keep it hanging until its waiting deliveries have each been deferred a few times over.
        await eventually(
            lambda: _deferrals(client, at_least=DEFERRALS_EACH * (DELIVERIES - MAX_PER_HOST)),
            timeout_s=HEALTHY_DEADLINE_S,
            what=f"the waiting deliveries to be deferred {DEFERRALS_EACH} times each",
        )
        assert not any(connection.finished for connection in hanging.connections)

        release.set()
        released_at = time.monotonic()
        await eventually(
            lambda: _all_delivered(client, hanging_ids),
            timeout_s=RELEASED_DEADLINE_S,
            what=f"all {DELIVERIES} deliveries to the released host to be delivered",
        )
        released_by_s = time.monotonic() - released_at
        to_hanging, to_healthy = await _deliveries(client, hanging_ids), await _deliveries(client, healthy_ids)
        scrape = (await client.get("/metrics")).text

    assert hanging.most_open <= MAX_PER_HOST, f"the hanging host held {hanging.most_open} connections at once"
    for receiver, deliveries in ((hanging, to_hanging), (healthy, to_healthy)):
        assert len(deliveries) == DELIVERIES
        assert [d["attempts"] for d in deliveries] == [1] * DELIVERIES, "a deferral was counted as an attempt"
        sent = Counter(receiver.webhook_ids())
        assert set(sent) == {d["id"] for d in deliveries}, "a delivery was lost (or one arrived never sent)"
        assert [n for n in sent.values() if n > 1] == [], "a delivery arrived twice"
    deferrals = _metric(scrape, "herald_delivery_deferrals_total")
    assert _metric(scrape, "herald_delivery_retries_total") == 0, "a deferral was counted as a retry"
    assert _metric(scrape, "herald_delivery_duration_seconds_count") == 2 * DELIVERIES, "one per attempt only"
    print(
        f"\nper-host drill [{mode}]: {DELIVERIES} healthy delivered in {healthy_by_s:.2f}s; the hanging host held "
        f"{hanging_open} connections then, {hanging.most_open} at most; once it answered, its {DELIVERIES} delivered "
        f"in {released_by_s:.2f}s; {2 * DELIVERIES} delivered, 0 lost, 0 duplicated, each as attempt 1; "
        f"{deferrals:.0f} deferrals"
    )


# --- the slot itself ------------------------------------------------------------------------------------


def test_hosts_are_counted_by_scheme_host_and_port_whatever_the_case() -> None:
    assert host_key("HTTPS://Hooks.Example.COM/a?b=1") == "https://hooks.example.com:443"
    assert host_key("https://hooks.example.com:443/other") == "https://hooks.example.com:443"
    assert host_key("http://hooks.example.com/") == "http://hooks.example.com:80"
    assert host_key("http://127.0.0.1:8080/") != host_key("http://127.0.0.1:8081/")
    assert host_key("http://[::1]:8080/x") == "http://[::1]:8080"
    assert host_key("https://Bücher.example/") == "https://xn--bcher-kva.example:443"


async def _send(settings: Settings, client: WebhookClient, url: str) -> int:
    async with delivery_context(settings) as ctx:
        ctx["webhooks"] = client
        return await send_webhook(ctx, make_payload(address=url))


async def _outcome(settings: Settings, client: WebhookClient, url: str) -> int | TaskError:
    try:
        return await _send(settings, client, url)
    except TaskError as exc:
        return exc


async def test_a_send_to_a_full_host_is_deferred_at_once_and_sends_nothing(make_settings: SettingsFactory) -> None:
    settings = make_settings(WEBHOOK_ALLOW_PRIVATE=True, WEBHOOK_TIMEOUT_S=HANGING_TIMEOUT_S, WEBHOOK_MAX_PER_HOST=2)
    async with (
        hostile_receiver(never_answer()) as hanging,
        hostile_receiver(answer(200)) as healthy,
        drill_client(settings, LoopbackDialler()) as client,
    ):
        holding = [asyncio.create_task(_send(settings, client, hanging.url(f"/{n}"))) for n in range(2)]
        try:
            await eventually(lambda: len(hanging.connections) == 2, what="two sends to hang")
            started = time.monotonic()
            with pytest.raises(DeferJob) as deferred:
                await _send(settings, client, hanging.url("/third"))
            assert time.monotonic() - started < QUICK_S
            # Another host is not held up by this one.
            assert await _send(settings, client, healthy.url()) == 200
        finally:
            for task in holding:
                task.cancel()
            await asyncio.gather(*holding, return_exceptions=True)
        assert client.in_flight(hanging.url()) == 0, "cancelled sends gave their slots back"
    assert deferred.value.reason == (
        f"webhook host http://127.0.0.1:{hanging.port} has 2 sends in flight (WEBHOOK_MAX_PER_HOST)"
    )
    assert deferred.value.channel == "webhook"
    assert 0 < deferred.value.delay_s <= 1.0
    assert len(hanging.connections) == 2, "the deferred send never connected"


ENDINGS: list[tuple[str, Behaviour, type[object]]] = [
    ("a 2xx", answer(200), int),
    ("a retryable 503", answer(503), RetryableError),
    ("a permanent 410", answer(410), PermanentError),
    ("a timeout", never_answer(), RetryableError),
    ("a protocol error", endless_headers(), RetryableError),
]


async def test_the_slot_is_given_back_however_the_send_ends(make_settings: SettingsFactory) -> None:
    """With one slot per host, each send can only start if the one before gave its slot back."""
    settings = make_settings(WEBHOOK_ALLOW_PRIVATE=True, WEBHOOK_TIMEOUT_S=0.3, WEBHOOK_MAX_PER_HOST=1)
    behaviours = [behaviour for _, behaviour, _ in ENDINGS]
    async with (
        hostile_receiver(in_turn(*behaviours, never_answer())) as server,
        drill_client(settings, LoopbackDialler()) as client,
    ):
        url = server.url()
        for ending, _, expected in ENDINGS:
            # A DeferJob here says the slot of the send before was never given back.
            outcome = await _outcome(settings, client, url)
            assert isinstance(outcome, expected), (ending, outcome)
            assert client.in_flight(url) == 0, f"the slot was not given back after {ending}"
        # A connection refused (nothing listens on this port), then a send cancelled while it waits.
        closed = f"http://127.0.0.1:{free_port()}/"
        with pytest.raises(RetryableError, match="connection failed"):
            await _send(settings, client, closed)
        assert client.in_flight(closed) == 0, "the slot was not given back after a refused connection"
        waiting = asyncio.create_task(_send(settings, client, url))
        await eventually(lambda: len(server.connections) == len(ENDINGS) + 1, what="the last send to connect")
        assert client.in_flight(url) == 1
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert client.in_flight(url) == 0, "the slot was not given back after a cancellation"
