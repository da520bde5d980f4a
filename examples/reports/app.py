"""The example application: Herald's app plus one endpoint of its own that queues a report.

Serve it with ``python -m examples.reports`` (in-process, no Redis), or with ``TASK_BACKEND=arq
REDIS_URL=...`` and a worker started as ``TASK_MODULES=examples.reports.jobs:jobs python -m tasks.worker``.
Watch the job at ``GET /tasks/{task_id}``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, status
from pydantic import BaseModel, Field

from api.app import create_app
from api.auth import require_api_key
from core.config import Settings
from examples.reports.jobs import generate_report, jobs

router = APIRouter(tags=["reports"], dependencies=[Depends(require_api_key)])


class ReportRequest(BaseModel):
    month: Annotated[str, Field(pattern=r"^\d{4}-(0[1-9]|1[0-2])$", examples=["2026-10"])]


class ReportQueued(BaseModel):
    task_id: str
    status_url: str


@router.post("/reports", status_code=status.HTTP_202_ACCEPTED, summary="Queue a monthly report")
async def request_report(body: ReportRequest) -> ReportQueued:
    # The same month twice within IDEMPOTENCY_TTL_S gives the same job: one report, not two.
    handle = await generate_report.enqueue(body.month, key=f"report-{body.month}")
    return ReportQueued(task_id=handle.id, status_url=f"/tasks/{handle.id}")


def build(settings: Settings | None = None) -> FastAPI:
    app = create_app(settings, task_sets=[jobs])
    app.include_router(router)
    return app
