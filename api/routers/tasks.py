"""``/tasks``: jobs of every registered task (Herald's deliveries and the app's own), chains and groups,
what is registered, and the cron schedules."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from api.auth import require_api_key
from api.deps import CronHistoryDep, SettingsDep, TaskQueueDep, TaskSetsDep
from api.schemas import ErrorOut, ValidationErrorOut
from api.task_schemas import (
    CANCELLED_EXAMPLE,
    COMPOSED_EXAMPLE,
    JOB_EXAMPLE,
    PAGE_EXAMPLE,
    REGISTERED_EXAMPLE,
    SCHEDULE_EXAMPLE,
    ComposedOut,
    JobOut,
    JobPageOut,
    RegisteredTaskOut,
    ScheduleOut,
    TaskStatusOut,
)
from core.cron import CronJob
from core.errors import UnknownJobError
from core.jobs import JobRecord, JobState
from core.queue import ComposedStatus, TaskQueue
from core.store import Position
from tasks.cron import build_cron_schedule

router = APIRouter(prefix="/tasks", tags=["tasks"], dependencies=[Depends(require_api_key)])

MAX_PAGE = 200
_CURSOR = r"^[0-9]{1,16}\.[A-Za-z0-9_:-]{1,128}$"
_401: dict[int | str, dict[str, Any]] = {401: {"model": ErrorOut, "description": "Missing or wrong API key"}}
_404: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut, "description": "Unknown (or no longer kept) id"}}
_422: dict[int | str, dict[str, Any]] = {
    422: {"model": ValidationErrorOut, "description": "Invalid query; each error names where"}
}
_503: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorOut, "description": "Redis is unavailable (arq mode); see Retry-After"}
}


def _example(value: Any) -> dict[int | str, dict[str, Any]]:
    return {200: {"content": {"application/json": {"example": value}}}}


# Declared before /tasks/{task_id}, which would otherwise take "registered" and "schedules" for ids.
@router.get(
    "/registered",
    response_model=list[RegisteredTaskOut],
    summary="Every task this server can run, with its retry policy",
    responses={**_401, **_example([REGISTERED_EXAMPLE])},
)
async def registered_tasks(queue: TaskQueueDep) -> list[RegisteredTaskOut]:
    """Herald's delivery tasks and the application's own (its TaskSets), sorted by name: each one's
    docstring summary, default priority and retry policy."""
    return [RegisteredTaskOut.of(task) for task in sorted(queue.registry, key=lambda task: task.name)]


@router.get(
    "/schedules",
    response_model=list[ScheduleOut],
    summary="Every cron job, when it runs next and how its last run went",
    responses={**_401, **_503, **_example([SCHEDULE_EXAMPLE])},
)
async def schedules(settings: SettingsDep, history: CronHistoryDep, task_sets: TaskSetsDep) -> list[ScheduleOut]:
    """Herald's own cron jobs and the application's (`@cron` in its TaskSets), sorted by name. Times are
    UTC; `last_run` is the latest run any process recorded (in arq mode, whichever worker ran the tick)."""
    jobs: list[CronJob[Any]] = [*build_cron_schedule(), *(job for s in task_sets for job in s.cron_jobs)]
    latest = await history.latest()
    now = datetime.now(UTC)
    out = [ScheduleOut.of(job, latest.get(job.name), now=now, enabled=settings.CRON_ENABLED) for job in jobs]
    return sorted(out, key=lambda schedule: schedule.name)


@router.get(
    "",
    response_model=JobPageOut,
    summary="Jobs newest first, e.g. the failed ones of one task",
    responses={**_401, **_422, **_503, **_example(PAGE_EXAMPLE)},
)
async def list_tasks(
    queue: TaskQueueDep,
    *,
    state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
    # Not `| None`: a query string cannot say null, and the schema's `anyOf [array, null]` made fuzzers take
    # `?name=true` (a task named "true") for a malformed request.
    name: Annotated[
        list[str],
        Query(default_factory=list, description="Only jobs of this task; repeat it for several (`?name=a&name=b`)."),
    ],
    cursor: Annotated[str | None, Query(pattern=_CURSOR, description="`next_cursor` of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> JobPageOut:
    """Job records kept (for RECORD_TTL_S), newest first, `limit` at a time: pass `next_cursor` back as
    `cursor` for the next page; it is null on the last one. Chains and groups are not listed, their jobs are."""
    records = await queue.list(state=state, names=set(name) if name else None, after=_position(cursor), limit=limit)
    next_cursor = _cursor(records[-1]) if len(records) == limit else None
    return JobPageOut(items=[JobOut.of(record) for record in records], next_cursor=next_cursor)


@router.get(
    "/{task_id}",
    response_model=TaskStatusOut,
    summary="A job's status, or a chain's or group's as a whole",
    responses={
        **_401,
        **_404,
        **_503,
        200: {
            "description": "A job (`kind: job`), or a chain or group (`kind: chain | group`) with its jobs",
            "content": {
                "application/json": {
                    "examples": {
                        "job": {"summary": "A job", "value": JOB_EXAMPLE},
                        "chain": {"summary": "A chain that failed at its second step", "value": COMPOSED_EXAMPLE},
                    }
                }
            },
        },
    },
)
async def get_task(task_id: str, queue: TaskQueueDep) -> JobOut | ComposedOut:
    """A job id (`job_…`, or a delivery's `dlv_…`) gives the job: state, attempts, progress, result once
    succeeded or the error, timestamps. A chain (`chn_…`) or group (`grp_…`) id gives the aggregate: one
    state, the result (a chain's last, a group's list) or the error, and each job's state (null for a chain
    step not reached yet)."""
    record = await queue.status(task_id)
    if record is not None:
        return JobOut.of(record)
    return ComposedOut.of(await _composed(queue, task_id))


@router.delete(
    "/{task_id}",
    response_model=TaskStatusOut,
    summary="Cancel a job that has not started (or a chain's or group's jobs that have not)",
    responses={
        **_401,
        **_404,
        **_503,
        **_example(CANCELLED_EXAMPLE),
        409: {"model": ErrorOut, "description": "Running or finished: nothing could be cancelled; `detail` says why"},
    },
)
async def cancel_task(task_id: str, queue: TaskQueueDep) -> JobOut | ComposedOut:
    """A job queued, scheduled or waiting for its next try ends `cancelled` and never runs (again); the
    answer is its new status. A running or finished job cannot be cancelled (409). With a chain or group
    id, every job of it waiting to start is cancelled, a chain whose step is running stops after that step,
    and the answer is the aggregate; 409 if it has already finished."""
    composed = await queue.composed_status(task_id)
    if composed is None:
        return JobOut.of(await queue.cancel(task_id))  # raises UnknownJobError (404), NotCancellableError (409)
    await queue.cancel_composed(task_id)  # raises NotCancellableError (409) once it has finished
    return ComposedOut.of(await _composed(queue, task_id))


async def _composed(queue: TaskQueue, composed_id: str) -> ComposedStatus:
    status = await queue.composed_status(composed_id)
    if status is None:
        raise UnknownJobError(composed_id)
    return status


def _cursor(record: JobRecord) -> str:
    return f"{int(record.created_at.timestamp() * 1000)}.{record.id}"


def _position(cursor: str | None) -> Position | None:
    if cursor is None:
        return None
    ms, _, job_id = cursor.partition(".")  # the Query pattern guarantees both parts
    return int(ms), job_id
