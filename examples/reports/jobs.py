"""The example application's own background jobs, declared on one TaskSet.

The worker finds them by name: ``TASK_MODULES=examples.reports.jobs:jobs``.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import TypedDict

from core import PermanentError, TaskContext, TaskSet

logger = logging.getLogger("reports")

jobs = TaskSet()


class Report(TypedDict):
    month: str
    orders: int
    revenue_cents: int


@jobs.task(retries=3, timeout=60, priority="normal")
async def generate_report(ctx: TaskContext, month: str) -> Report:
    """Add up a month's orders (a stand-in for a slow query), reporting progress day by day."""
    year, _, number = month.partition("-")
    if not (year.isdigit() and number.isdigit() and 1 <= int(number) <= 12):
        raise PermanentError(f"not a month: {month!r}")  # a retry cannot fix it
    report = Report(month=month, orders=0, revenue_cents=0)
    days = 30
    for day in range(1, days + 1):
        report["orders"] += (day * 7) % 11
        report["revenue_cents"] += ((day * 7) % 11) * 1250
        await ctx.progress(day, days)
        await asyncio.sleep(0.01)  # the slow query
    return report


@jobs.cron("0 3 1 * *")  # 03:00 UTC on the 1st of each month, once however many workers run
async def queue_last_months_report(ctx: TaskContext) -> str:
    """Queue last month's report."""
    last_month = (datetime.now(UTC).replace(day=1) - timedelta(days=1)).strftime("%Y-%m")
    handle = await generate_report.enqueue(last_month, key=f"monthly-{last_month}")
    logger.info("queued the %s report as %s", last_month, handle.id)
    return handle.id
