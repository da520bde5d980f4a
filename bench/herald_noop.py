"""One task that does nothing: Herald's worker draining it does raw arq's no-op work plus Herald's own."""

from __future__ import annotations

from core import TaskContext, TaskSet

jobs = TaskSet()


@jobs.task(retries=3, timeout=60)
async def noop(ctx: TaskContext) -> None:
    return None
