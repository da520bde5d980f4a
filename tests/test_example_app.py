"""The README's example app: its own job, queued from its own endpoint, watched through GET /tasks/{id}."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx

from core import TaskContext
from core.config import Settings
from examples.reports.app import build
from examples.reports.jobs import generate_report
from tests.conftest import API_KEY
from tests.support.waiting import eventually

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@asynccontextmanager
async def example_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = build(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://reports.test", headers=AUTH) as client:
            yield client


async def test_a_report_is_queued_and_watched_until_it_succeeds(
    make_settings: Callable[..., Settings], backend_settings: dict[str, Any]
) -> None:
    async with example_client(make_settings(**backend_settings, API_KEY=API_KEY)) as client:
        queued = await client.post("/reports", json={"month": "2026-10"})
        assert queued.status_code == 202, queued.text
        task_id = queued.json()["task_id"]
        assert queued.json()["status_url"] == f"/tasks/{task_id}"

        seen: dict[str, Any] = {}

        async def finished() -> bool:
            seen.update((await client.get(f"/tasks/{task_id}")).json())
            return seen["state"] in {"succeeded", "failed"}

        await eventually(finished, timeout_s=20, what="the report job to finish")
        status = seen
        again = await client.post("/reports", json={"month": "2026-10"})
    assert status["state"] == "succeeded", status
    assert status["task"] == "generate_report"
    assert status["result"] == await generate_report(TaskContext.for_test(), "2026-10")
    assert status["progress"] == {"done": 30, "total": 30}
    assert again.json()["task_id"] == task_id, "the same month within the key's TTL is the same job"


async def test_a_bad_month_is_a_422_and_queues_nothing(make_settings: Callable[..., Settings]) -> None:
    async with example_client(make_settings(API_KEY=API_KEY)) as client:
        response = await client.post("/reports", json={"month": "2026-13"})
        listed = (await client.get("/tasks", params={"name": "generate_report"})).json()
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "month"]
    assert listed["items"] == []


async def test_the_task_is_a_plain_function_in_tests() -> None:
    report = await generate_report(TaskContext.for_test(), "2026-02")
    assert report["month"] == "2026-02"
    assert report["revenue_cents"] == report["orders"] * 1250
    assert generate_report.definition.policy.max_attempts == 4, "retries=3 after the first attempt"
