"""A TaskSet's own resources: opened once per process, in every task's ctx, closed at shutdown, in both modes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from api.app import create_app
from core.config import Settings
from core.context import TaskContext
from core.taskset import TaskSet


class Warehouse:
    def __init__(self) -> None:
        self.open = True

    def count(self, month: str) -> int:
        assert self.open, "used after it was closed"
        return len(month)


opened: list[Warehouse] = []


@asynccontextmanager
async def warehouse_resources() -> AsyncIterator[dict[str, Any]]:
    warehouse = Warehouse()
    opened.append(warehouse)
    try:
        yield {"warehouse": warehouse}
    finally:
        warehouse.open = False


jobs = TaskSet(resources=warehouse_resources)


@jobs.task(retries=0)
async def count_orders(ctx: TaskContext, month: str) -> int:
    warehouse: Warehouse = ctx["warehouse"]
    return warehouse.count(month)


async def test_tasks_use_the_task_sets_resources_opened_once_and_closed_at_shutdown(
    make_settings: Callable[..., Settings], backend_settings: dict[str, Any]
) -> None:
    opened.clear()
    app = create_app(make_settings(**backend_settings, CRON_ENABLED=False), task_sets=[jobs])
    async with app.router.lifespan_context(app):
        results = [await (await count_orders.enqueue(month)).result(timeout=10) for month in ("2026-10", "2026-1")]
        [warehouse] = opened
        assert warehouse.open
    assert results == [7, 6]
    assert not warehouse.open, "closed with the app (in-process) or with the worker (arq)"


async def test_a_resource_name_already_taken_is_refused_at_start_up(
    make_settings: Callable[..., Settings],
) -> None:
    @asynccontextmanager
    async def shadowing() -> AsyncIterator[dict[str, Any]]:
        yield {"http": object()}  # Herald's webhook client is ctx["http"]

    app = create_app(make_settings(CRON_ENABLED=False), task_sets=[TaskSet(resources=shadowing)])
    with pytest.raises(ValueError, match=r"\['http'\] are already provided"):
        async with app.router.lifespan_context(app):
            pass
