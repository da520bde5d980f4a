"""``/tasks``: jobs of the app's own TaskSet read, listed and cancelled over HTTP, chains and groups as a whole,
what is registered and scheduled — through the real app, in-process and on arq with a real Redis."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from core.config import Settings
from core.context import TaskContext
from core.cron import CronHistory, CronScheduler, MemoryLease
from core.errors import PermanentError, RetryableError
from core.jobs import CANCELLED_NOTE
from core.queue import Options
from core.taskset import TaskSet, chain, group
from tests.conftest import API_KEY
from tests.support.waiting import eventually

jobs = TaskSet()
_GATES: dict[str, asyncio.Event] = {}  # a test opens its gate to let a ``held`` job finish


@jobs.task(retries=1, timeout=5, backoff=0.5, max_backoff=2, priority="high")
async def add(ctx: TaskContext, a: int, b: int) -> int:
    """Add two numbers.

    Not part of the summary.
    """
    return a + b


@jobs.task
async def double(ctx: TaskContext, value: int) -> int:
    """Double a number (a chain's second step)."""
    return value * 2


@jobs.task(retries=0)
async def refuse(ctx: TaskContext, reason: object) -> None:
    """Always fail permanently."""
    raise PermanentError(f"refused {reason}")


@jobs.task(retries=2, backoff=0.01, max_backoff=0.05)
async def flaky(ctx: TaskContext) -> str:
    """Fail the first attempt (retryably), succeed the next."""
    if ctx.attempt == 1:
        raise RetryableError("busy, try again")
    return "ok"


@jobs.task
async def held(ctx: TaskContext, gate: str) -> str:
    """Report progress, then wait until the test opens the gate."""
    await ctx.progress(1, 2)
    await _GATES[gate].wait()
    return "released"


@jobs.cron("0 3 * * *")
async def nightly_digest(ctx: TaskContext) -> str:
    """Runs at 03:00 UTC."""
    return "sent"


@jobs.cron("0 4 * * *")
async def broken_cleanup(ctx: TaskContext) -> None:
    raise RuntimeError("disk full")


AUTH = {"Authorization": f"Bearer {API_KEY}"}
MAX_PAGES = 20
_gate_ids = itertools.count()


@dataclass
class Herald:
    app: FastAPI
    client: httpx.AsyncClient

    async def job(self, task_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/tasks/{task_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def settled(self, task_id: str, *states: str) -> dict[str, Any]:
        async def reached() -> bool:
            return (await self.job(task_id))["state"] in states

        await eventually(reached, timeout_s=10, what=f"{task_id} to become one of {states}")
        return await self.job(task_id)


OpenHerald = Callable[..., AbstractAsyncContextManager[Herald]]


@pytest.fixture
def open_herald(make_settings: Callable[..., Settings]) -> OpenHerald:
    """``async with open_herald(**settings) as herald``: the app with this module's TaskSet, over ASGITransport."""

    @asynccontextmanager
    async def open_app(**overrides: Any) -> AsyncIterator[Herald]:
        app = create_app(make_settings(**{"API_KEY": API_KEY, **overrides}), task_sets=[jobs])
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://herald.test", headers=AUTH) as client:
                yield Herald(app, client)

    return open_app


@pytest.fixture
def gate() -> Iterator[tuple[str, asyncio.Event]]:
    """A gate for ``held`` jobs: a name to enqueue with, and the event that lets them finish."""
    name = f"gate-{next(_gate_ids)}"
    event = _GATES[name] = asyncio.Event()
    yield name, event
    event.set()
    del _GATES[name]


def _at(value: str | None) -> datetime:
    assert value is not None
    return datetime.fromisoformat(value)


async def test_a_succeeded_job_shows_its_result_and_timestamps(
    open_herald: OpenHerald, backend_settings: dict[str, Any]
) -> None:
    expires_at = datetime.now(UTC) + timedelta(hours=1)
    async with open_herald(**backend_settings) as herald:
        handle = await add.enqueue(2, 3, priority="urgent", expires_at=expires_at)
        body = await herald.settled(handle.id, "succeeded", "failed")
    assert body["id"] == handle.id
    assert body["kind"] == "job"
    assert body["task"] == "add"
    assert body["state"] == "succeeded"
    assert body["result"] == 5
    assert body["error"] is None
    assert (body["attempts"], body["max_attempts"]) == (1, 2)
    assert body["priority"] == "urgent"
    assert body["progress"] is None
    assert body["parent"] is None
    assert body["next_attempt_at"] is None
    assert _at(body["expires_at"]) == expires_at
    assert _at(body["created_at"]) <= _at(body["started_at"]) <= _at(body["finished_at"])
    assert _at(body["updated_at"]) == _at(body["finished_at"])


async def test_a_failed_job_shows_its_error_and_no_result(
    open_herald: OpenHerald, backend_settings: dict[str, Any]
) -> None:
    async with open_herald(**backend_settings) as herald:
        handle = await refuse.enqueue("account 42")
        body = await herald.settled(handle.id, "failed", "succeeded")
    assert body["state"] == "failed"
    assert body["error"] == "refused account 42"
    assert body["result"] is None
    assert (body["attempts"], body["max_attempts"]) == (1, 1)
    assert body["finished_at"] is not None


async def test_a_job_that_succeeds_on_a_retry_shows_no_error(
    open_herald: OpenHerald, backend_settings: dict[str, Any]
) -> None:
    async with open_herald(**backend_settings) as herald:
        handle = await flaky.enqueue()
        body = await herald.settled(handle.id, "succeeded", "failed")
    assert (body["state"], body["result"], body["error"]) == ("succeeded", "ok", None)
    assert (body["attempts"], body["max_attempts"]) == (2, 3)
    assert _at(body["started_at"]) < _at(body["finished_at"])


async def test_a_running_job_shows_progress_and_refuses_cancelling_until_and_after_it_ends(
    open_herald: OpenHerald, backend_settings: dict[str, Any], gate: tuple[str, asyncio.Event]
) -> None:
    name, opened = gate
    async with open_herald(**backend_settings) as herald:
        handle = await held.enqueue(name)

        async def reported() -> bool:
            return (await herald.job(handle.id))["progress"] is not None

        try:
            await eventually(reported, what="progress to be recorded")
            running = await herald.job(handle.id)
            refused = await herald.client.delete(f"/tasks/{handle.id}")
        finally:
            opened.set()  # even on failure: a held job would make the app's shutdown wait out its grace
        done = await herald.settled(handle.id, "succeeded", "failed")
        refused_after = await herald.client.delete(f"/tasks/{handle.id}")
    assert running["state"] == "running"
    assert running["progress"] == {"done": 1, "total": 2}
    assert running["started_at"] is not None
    assert running["finished_at"] is None
    assert running["result"] is None
    assert refused.status_code == 409, refused.text
    assert refused.json() == {
        "detail": f"job {handle.id} is running (attempt 1); only a job not yet started can be cancelled"
    }
    assert done["state"] == "succeeded"
    assert done["result"] == "released"
    assert done["progress"] == {"done": 1, "total": 2}
    assert refused_after.status_code == 409, refused_after.text
    assert refused_after.json() == {"detail": f"job {handle.id} is already succeeded"}


async def test_a_scheduled_job_is_cancelled_once(open_herald: OpenHerald, backend_settings: dict[str, Any]) -> None:
    async with open_herald(**backend_settings) as herald:
        handle = await add.enqueue(1, 1, delay=60)
        scheduled = await herald.job(handle.id)
        cancelled = await herald.client.delete(f"/tasks/{handle.id}")
        after = await herald.job(handle.id)
        again = await herald.client.delete(f"/tasks/{handle.id}")
    assert scheduled["state"] == "scheduled"
    assert _at(scheduled["next_attempt_at"]) > datetime.now(UTC) + timedelta(seconds=50)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["id"] == handle.id
    assert cancelled.json()["finished_at"] is not None
    assert after["state"] == "cancelled"
    assert after["attempts"] == 0
    assert again.status_code == 409
    assert again.json() == {"detail": f"job {handle.id} is already cancelled"}


async def test_unknown_ids_are_404_with_the_id_in_the_message(
    open_herald: OpenHerald, backend_settings: dict[str, Any]
) -> None:
    async with open_herald(**backend_settings) as herald:
        answers = [
            await herald.client.get("/tasks/job_nope"),
            await herald.client.delete("/tasks/job_nope"),
            await herald.client.get("/tasks/chn_nope"),
            await herald.client.delete("/tasks/grp_nope"),
        ]
    assert [a.status_code for a in answers] == [404] * 4
    for answer, task_id in zip(answers, ["job_nope", "job_nope", "chn_nope", "grp_nope"], strict=True):
        assert answer.json() == {
            "detail": f"no job, chain or group with id '{task_id}' (never existed, or no longer kept)"
        }


async def _walk(client: httpx.AsyncClient, limit: int, **params: Any) -> list[list[dict[str, Any]]]:
    pages, cursor = [], None
    for _ in range(MAX_PAGES):
        query = {**params, "limit": str(limit), **({"cursor": cursor} if cursor else {})}
        response = await client.get("/tasks", params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        pages.append(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return pages
    raise AssertionError("paging never ended")


def _newest_first(items: list[dict[str, Any]]) -> list[str]:
    def position(item: dict[str, Any]) -> tuple[int, str]:
        return int(_at(item["created_at"]).timestamp() * 1000), item["id"]

    return [item["id"] for item in sorted(items, key=position, reverse=True)]


async def test_jobs_are_listed_newest_first_filtered_and_paged_each_once(
    open_herald: OpenHerald, backend_settings: dict[str, Any]
) -> None:
    async with open_herald(**backend_settings) as herald:
        added = [(await add.enqueue(n, n)).id for n in range(5)]
        refused = [(await refuse.enqueue(n)).id for n in range(2)]
        for job_id in added:
            await herald.settled(job_id, "succeeded")
        for job_id in refused:
            await herald.settled(job_id, "failed")
        everything = await _walk(herald.client, 3)
        succeeded_adds = await _walk(herald.client, 2, state="succeeded", name="add")
        failed = (await herald.client.get("/tasks", params={"state": "failed"})).json()
        both = (await herald.client.get("/tasks", params=[("name", "add"), ("name", "refuse")])).json()
        refuse_only = (await herald.client.get("/tasks", params={"name": "refuse"})).json()
        none = (await herald.client.get("/tasks", params={"state": "succeeded", "name": "refuse"})).json()
        unknown = (await herald.client.get("/tasks", params={"name": "no_such_task"})).json()
    listed = [item for page in everything for item in page]
    assert [len(page) for page in everything] == [3, 3, 1]
    assert [item["id"] for item in listed] == _newest_first(listed), "newest first"
    assert sorted(item["id"] for item in listed) == sorted(added + refused), "every job exactly once"
    assert [len(page) for page in succeeded_adds] == [2, 2, 1]
    walked = [item["id"] for page in succeeded_adds for item in page]
    assert sorted(walked) == sorted(added)
    assert walked == [job_id for job_id in _newest_first(listed) if job_id in added]
    assert {item["id"] for item in failed["items"]} == set(refused)
    assert all(item["error"].startswith("refused") for item in failed["items"])
    assert {item["id"] for item in both["items"]} == set(added + refused)
    assert {item["id"] for item in refuse_only["items"]} == set(refused)
    assert none == {"items": [], "next_cursor": None}
    assert unknown == {"items": [], "next_cursor": None}


async def test_a_delivery_is_a_job_too(open_herald: OpenHerald) -> None:
    async with open_herald() as herald:
        notify = {"to": [{"channel": "email", "address": "ada@example.com"}], "subject": "s", "text": "t"}
        accepted = await herald.client.post("/notify", json=notify)
        assert accepted.status_code == 202, accepted.text
        [delivery] = accepted.json()["deliveries"]
        body = await herald.settled(delivery["id"], "succeeded", "failed")
        listed = (await herald.client.get("/tasks", params={"name": "send_email"})).json()
    assert (body["task"], body["state"], body["attempts"]) == ("send_email", "succeeded", 1)
    assert [item["id"] for item in listed["items"]] == [delivery["id"]]


@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({"state": "lost"}, ["query", "state"]),
        ({"limit": "0"}, ["query", "limit"]),
        ({"limit": "201"}, ["query", "limit"]),
        ({"limit": "ten"}, ["query", "limit"]),
        ({"cursor": "yesterday"}, ["query", "cursor"]),
        ({"cursor": "12.job x"}, ["query", "cursor"]),
    ],
)
async def test_a_bad_listing_query_is_a_422_naming_the_parameter(
    open_herald: OpenHerald, params: dict[str, str], loc: list[str]
) -> None:
    async with open_herald() as herald:
        response = await herald.client.get("/tasks", params=params)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert set(error) == {"loc", "msg", "type"}
    assert error["loc"] == loc


async def test_registered_lists_every_task_with_its_policy_sorted_by_name(open_herald: OpenHerald) -> None:
    async with open_herald(WEBHOOK_MAX_ATTEMPTS=7) as herald:
        response = await herald.client.get("/tasks/registered")
    assert response.status_code == 200, response.text
    registered = {task["name"]: task for task in response.json()}
    assert [task["name"] for task in response.json()] == sorted(registered)
    assert {"send_email", "send_webhook", "add", "double", "refuse", "held"} <= set(registered)
    assert registered["add"] == {
        "name": "add",
        "summary": "Add two numbers.",
        "priority": "high",
        "policy": {"max_attempts": 2, "timeout_s": 5.0, "base_delay_s": 0.5, "max_delay_s": 2.0},
    }
    assert registered["send_webhook"] == {
        "name": "send_webhook",
        "summary": "POST one signed webhook; returns the receiver's 2xx status.",
        "priority": "normal",
        # make_settings: WEBHOOK_TIMEOUT_S 2 (+5 for the attempt), RETRY_BASE_DELAY_S 0.02, RETRY_MAX_DELAY_S 0.2
        "policy": {"max_attempts": 7, "timeout_s": 7.0, "base_delay_s": 0.02, "max_delay_s": 0.2},
    }
    assert registered["refuse"]["policy"]["max_attempts"] == 1


async def test_schedules_list_heralds_and_the_apps_cron_jobs_with_their_next_run(
    open_herald: OpenHerald, backend_settings: dict[str, Any]
) -> None:
    async with open_herald(**backend_settings) as herald:
        before = datetime.now(UTC)
        response = await herald.client.get("/tasks/schedules")
    assert response.status_code == 200, response.text
    schedules = {s["name"]: s for s in response.json()}
    assert [s["name"] for s in response.json()] == sorted(schedules)
    assert set(schedules) == {"purge_expired_records", "requeue_stuck_deliveries", "nightly_digest", "broken_cleanup"}
    assert schedules["requeue_stuck_deliveries"]["expression"] == "* * * * *"
    assert schedules["requeue_stuck_deliveries"]["timeout_s"] == 55
    assert schedules["nightly_digest"]["expression"] == "0 3 * * *"
    for schedule in schedules.values():
        next_run = _at(schedule["next_run"])
        assert before < next_run <= before + timedelta(days=1), schedule
        assert schedule["enabled"] is True
    nightly = _at(schedules["nightly_digest"]["next_run"])
    assert (nightly.hour, nightly.minute, nightly.second) == (3, 0, 0)


class ManualClock:
    """Virtual time for a CronScheduler: each sleep moves it forward at once, until ``until``, then parks."""

    def __init__(self, start: datetime, *, until: datetime) -> None:
        self.t = start
        self.until = until

    def now(self) -> datetime:
        return self.t

    async def sleep(self, seconds: float) -> None:
        target = self.t + timedelta(seconds=seconds)
        if target > self.until:
            await asyncio.Future()  # until the scheduler is stopped
        self.t = target
        await asyncio.sleep(0)


async def test_schedules_show_the_last_run_of_each_cron_job(
    open_herald: OpenHerald, backend_settings: dict[str, Any]
) -> None:
    day = datetime(2026, 1, 1, tzinfo=UTC)
    async with open_herald(**backend_settings, CRON_ENABLED=False) as herald:
        before = {s["name"]: s for s in (await herald.client.get("/tasks/schedules")).json()}
        history: CronHistory = herald.app.state.cron_history
        clock = ManualClock(day + timedelta(hours=2, minutes=59), until=day + timedelta(hours=4, minutes=30))
        scheduler = CronScheduler(jobs.cron_jobs, MemoryLease(), TaskContext.for_test, clock=clock, history=history)

        async def both_ran() -> bool:
            listed = (await herald.client.get("/tasks/schedules")).json()
            return sum(s["last_run"] is not None for s in listed) == 2

        async with scheduler:
            await eventually(both_ran, what="both cron jobs of the TaskSet to record a run")
        after = {s["name"]: s for s in (await herald.client.get("/tasks/schedules")).json()}
    for name in ("nightly_digest", "broken_cleanup"):
        assert before[name]["last_run"] is None
        assert before[name]["last_outcome"] is None
        assert before[name]["last_error"] is None
        assert before[name]["enabled"] is False
    nightly, broken = after["nightly_digest"], after["broken_cleanup"]
    assert _at(nightly["last_run"]["tick"]) == day + timedelta(hours=3)
    assert _at(nightly["last_run"]["finished_at"]) >= day + timedelta(hours=3)
    assert (nightly["last_outcome"], nightly["last_error"]) == ("succeeded", None)
    assert _at(broken["last_run"]["tick"]) == day + timedelta(hours=4)
    assert (broken["last_outcome"], broken["last_error"]) == ("failed", "RuntimeError: disk full")
    assert after["requeue_stuck_deliveries"]["last_run"] is None


async def test_a_chain_and_a_group_answer_as_a_whole(open_herald: OpenHerald, backend_settings: dict[str, Any]) -> None:
    async with open_herald(**backend_settings) as herald:
        good_chain = await chain(add.s(1, 2), double.s())
        bad_chain = await chain(add.s(1, 2), refuse.s(), double.s())
        good_group = await group([add.s(1, 2), add.s(3, 4), double.s(5)])
        chained = await herald.settled(good_chain.id, "succeeded", "failed")
        broken = await herald.settled(bad_chain.id, "failed", "succeeded")
        grouped = await herald.settled(good_group.id, "succeeded", "failed")
        first_step = await herald.job(chained["jobs"][0]["id"])
    assert chained["kind"] == "chain"
    assert chained["id"] == good_chain.id
    assert chained["result"] == 6
    assert chained["error"] is None
    assert [(j["task"], j["state"]) for j in chained["jobs"]] == [("add", "succeeded"), ("double", "succeeded")]
    assert broken["kind"] == "chain"
    assert broken["result"] is None
    assert broken["error"] == "refused 3"
    assert [(j["task"], j["state"]) for j in broken["jobs"]] == [
        ("add", "succeeded"),
        ("refuse", "failed"),
        ("double", None),
    ]
    assert grouped["kind"] == "group"
    assert grouped["result"] == [3, 7, 10]
    assert [j["state"] for j in grouped["jobs"]] == ["succeeded"] * 3
    assert first_step["parent"] == good_chain.id
    assert first_step["result"] == 3


async def test_deleting_a_group_cancels_its_jobs_not_yet_started(
    open_herald: OpenHerald, backend_settings: dict[str, Any]
) -> None:
    later = Options(delay=60)
    async with open_herald(**backend_settings) as herald:
        waiting = await group([replace(add.s(1, 1), options=later), replace(add.s(2, 2), options=later)])
        cancelled = await herald.client.delete(f"/tasks/{waiting.id}")
        again = await herald.client.delete(f"/tasks/{waiting.id}")
    assert cancelled.status_code == 200, cancelled.text
    body = cancelled.json()
    assert (body["kind"], body["state"]) == ("group", "cancelled")
    assert body["error"] == CANCELLED_NOTE
    assert [j["state"] for j in body["jobs"]] == ["cancelled", "cancelled"]
    assert again.status_code == 409, again.text
    assert again.json() == {"detail": f"group {waiting.id} is already cancelled"}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}], ids=["missing", "wrong"])
async def test_every_tasks_endpoint_refuses_a_missing_or_wrong_key(
    open_herald: OpenHerald, headers: dict[str, str]
) -> None:
    async with open_herald() as herald:
        handle = await add.enqueue(1, 1, delay=60)
        transport = httpx.ASGITransport(app=herald.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://herald.test", headers=headers) as stranger:
            answers = {
                (method, path): await stranger.request(method, path)
                for method, path in [
                    ("GET", "/tasks"),
                    ("GET", "/tasks/registered"),
                    ("GET", "/tasks/schedules"),
                    ("GET", f"/tasks/{handle.id}"),
                    ("DELETE", f"/tasks/{handle.id}"),
                ]
            }
        cancelled = await herald.client.delete(f"/tasks/{handle.id}")  # with the key; and no 5 s drain
    for (method, path), answer in answers.items():
        assert answer.status_code == 401, (method, path, answer.text)
        assert answer.headers["www-authenticate"] == "Bearer"
        assert API_KEY not in answer.text
    assert cancelled.status_code == 200, "a refused DELETE cancelled nothing"


def test_openapi_documents_every_tasks_endpoint_with_a_summary_description_and_example(
    make_settings: Callable[..., Settings],
) -> None:
    paths = create_app(make_settings(), task_sets=[jobs]).openapi()["paths"]
    operations = {
        (method, path): op for path, ops in paths.items() if path.startswith("/tasks") for method, op in ops.items()
    }
    assert set(operations) == {
        ("get", "/tasks"),
        ("get", "/tasks/registered"),
        ("get", "/tasks/schedules"),
        ("get", "/tasks/{task_id}"),
        ("delete", "/tasks/{task_id}"),
    }
    for key, op in operations.items():
        assert op["summary"], key
        assert op["description"], key
        content = op["responses"]["200"]["content"]["application/json"]
        assert "example" in content or "examples" in content, key
        assert "401" in op["responses"], key
    shapes = operations[("get", "/tasks/{task_id}")]["responses"]["200"]["content"]["application/json"]
    assert shapes["schema"]["discriminator"]["propertyName"] == "kind"
    assert {ref["$ref"].rsplit("/", 1)[-1] for ref in shapes["schema"]["oneOf"]} == {"JobOut", "ComposedOut"}
    assert set(shapes["examples"]) == {"job", "chain"}
    assert "409" in operations[("delete", "/tasks/{task_id}")]["responses"]
    assert "422" in operations[("get", "/tasks")]["responses"]
