"""Response bodies of the ``/tasks`` endpoints: jobs, chains and groups, registered tasks, cron schedules."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.cron import CronJob, CronRun
from core.jobs import JobRecord, JobState, Priority
from core.queue import ComposedStatus
from core.registry import TaskDef

JOB_EXAMPLE: dict[str, Any] = {
    "id": "job_6f1c0e2a9b3d4c5e8f7a6b5c4d3e2f1a",
    "kind": "job",
    "task": "generate_report",
    "state": "succeeded",
    "attempts": 1,
    "max_attempts": 4,
    "priority": "normal",
    "progress": {"done": 2, "total": 2},
    "result": {"rows": 1200},
    "error": None,
    "created_at": "2026-11-23T21:30:00.000000Z",
    "started_at": "2026-11-23T21:30:00.012000Z",
    "updated_at": "2026-11-23T21:30:04.250000Z",
    "next_attempt_at": None,
    "finished_at": "2026-11-23T21:30:04.250000Z",
    "expires_at": None,
    "parent": None,
}

COMPOSED_EXAMPLE: dict[str, Any] = {
    "id": "chn_0a1b2c3d4e5f60718293a4b5c6d7e8f9",
    "kind": "chain",
    "state": "failed",
    "result": None,
    "error": "upstream refused the file",
    "jobs": [
        {"id": "job_1f2e3d4c5b6a79881726354433221100", "task": "fetch", "state": "succeeded"},
        {"id": "job_00112233445566778899aabbccddeeff", "task": "upload", "state": "failed"},
        {"id": "job_ffeeddccbbaa99887766554433221100", "task": "notify_done", "state": None},
    ],
}

CANCELLED_EXAMPLE: dict[str, Any] = {
    **JOB_EXAMPLE,
    "state": "cancelled",
    "attempts": 0,
    "progress": None,
    "result": None,
    "error": "cancelled before it started",
    "started_at": None,
    "updated_at": "2026-11-23T21:30:02.500000Z",
    "finished_at": "2026-11-23T21:30:02.500000Z",
}

PAGE_EXAMPLE: dict[str, Any] = {
    "items": [JOB_EXAMPLE],
    "next_cursor": "1795037400000.job_6f1c0e2a9b3d4c5e8f7a6b5c4d3e2f1a",
}

REGISTERED_EXAMPLE: dict[str, Any] = {
    "name": "send_webhook",
    "summary": "POST one signed webhook; returns the receiver's 2xx status.",
    "priority": "normal",
    "policy": {"max_attempts": 8, "timeout_s": 15.0, "base_delay_s": 2.0, "max_delay_s": 300.0},
}

SCHEDULE_EXAMPLE: dict[str, Any] = {
    "name": "requeue_stuck_deliveries",
    "expression": "* * * * *",
    "timeout_s": 55.0,
    "next_run": "2026-11-23T21:31:00Z",
    "last_run": {"tick": "2026-11-23T21:30:00Z", "finished_at": "2026-11-23T21:30:00.041000Z"},
    "last_outcome": "succeeded",
    "last_error": None,
    "enabled": True,
}


class JobOut(BaseModel):
    """One job: a run of a registered task, with its retries."""

    model_config = ConfigDict(json_schema_extra={"examples": [JOB_EXAMPLE]})

    id: str
    kind: Literal["job"] = Field(default="job", description="`job` here; `chain` or `group` for an aggregate.")
    task: str = Field(description="The registered task's name.")
    state: JobState
    attempts: int = Field(description="Attempts started so far.")
    max_attempts: int
    priority: Priority
    progress: dict[str, Any] | None = Field(
        description="The latest `ctx.progress(...)` report: `{done, total}` or the task's own small dict."
    )
    result: Any = Field(description="What the task returned; only when `state` is `succeeded`, else null.")
    error: str | None = Field(
        description="Why the last attempt failed, or why the job ended (skipped, cancelled, expired); "
        "null once succeeded."
    )
    created_at: datetime
    started_at: datetime | None = Field(description="When the first attempt started.")
    updated_at: datetime
    next_attempt_at: datetime | None = Field(description="When a scheduled or retrying job runs next.")
    finished_at: datetime | None
    expires_at: datetime | None = Field(description="Not started by then, it ends `expired` and never runs.")
    parent: str | None = Field(description="The chain (`chn_…`) or group (`grp_…`) this job belongs to.")

    @classmethod
    def of(cls, record: JobRecord) -> JobOut:
        succeeded = record.state is JobState.SUCCEEDED
        return cls(
            id=record.id,
            task=record.task,
            state=record.state,
            attempts=record.attempts,
            max_attempts=record.max_attempts,
            priority=record.priority,
            progress=record.progress,
            result=record.result if succeeded else None,
            error=None if succeeded else record.last_error,
            created_at=record.created_at,
            started_at=record.started_at,
            updated_at=record.updated_at,
            next_attempt_at=record.next_attempt_at,
            finished_at=record.finished_at,
            expires_at=record.expires_at,
            parent=record.parent,
        )


class MemberOut(BaseModel):
    id: str
    task: str
    state: JobState | None = Field(description="Null for a chain step not reached yet.")


class ComposedOut(BaseModel):
    """A chain or a group: one state for all of its jobs."""

    model_config = ConfigDict(json_schema_extra={"examples": [COMPOSED_EXAMPLE]})

    id: str
    kind: Literal["chain", "group"]
    state: JobState = Field(
        description="A chain: the state of the step it is at (`succeeded` once the last step is). A group: "
        "`succeeded` when all are, the common end state when all ended, else `running`/`queued`/`scheduled`."
    )
    result: Any = Field(
        description="Only when `succeeded`: a chain's last step's result, a group's results in order; else null."
    )
    error: str | None = Field(
        description="The error of the job that made it fail (or end skipped, cancelled or expired)."
    )
    jobs: list[MemberOut] = Field(description="Its jobs in order (a chain's steps, a group's members).")

    @classmethod
    def of(cls, status: ComposedStatus) -> ComposedOut:
        succeeded = status.state is JobState.SUCCEEDED
        result: Any = None
        if succeeded:
            result = status.results[-1] if status.kind == "chain" else status.results
        return cls(
            id=status.id,
            kind="chain" if status.kind == "chain" else "group",
            state=status.state,
            result=result,
            error=None if succeeded else (status.error or _ending_error(status)),
            jobs=[
                MemberOut(id=job_id, task=task, state=record.state if record is not None else None)
                for job_id, task, record in status.jobs
            ],
        )


def _ending_error(status: ComposedStatus) -> str | None:
    # ComposedStatus.error names failed jobs only; a cancelled or expired one says why in its own record.
    return next(
        (
            record.last_error
            for _, _, record in status.jobs
            if record is not None and record.state.is_terminal and record.state is not JobState.SUCCEEDED
        ),
        None,
    )


TaskStatusOut = Annotated[JobOut | ComposedOut, Field(discriminator="kind")]


class JobPageOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [PAGE_EXAMPLE]})

    items: list[JobOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page; null at the end.")


class PolicyOut(BaseModel):
    max_attempts: int = Field(description="Attempts in all, the first included.")
    timeout_s: float = Field(description="Seconds one attempt may take.")
    base_delay_s: float = Field(description="Wait after the first failed attempt (doubling, with jitter).")
    max_delay_s: float = Field(description="The longest wait between attempts.")


class RegisteredTaskOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [REGISTERED_EXAMPLE]})

    name: str
    summary: str = Field(description="The first line of the task function's docstring.")
    priority: Priority = Field(description="Its jobs' priority unless an enqueue says otherwise.")
    policy: PolicyOut

    @classmethod
    def of(cls, task: TaskDef) -> RegisteredTaskOut:
        policy = task.policy
        return cls(
            name=task.name,
            summary=task.summary,
            priority=task.priority,
            policy=PolicyOut(
                max_attempts=policy.max_attempts,
                timeout_s=policy.timeout_s,
                base_delay_s=policy.base_delay_s,
                max_delay_s=policy.max_delay_s,
            ),
        )


class LastRunOut(BaseModel):
    tick: datetime = Field(description="The scheduled time the run was for.")
    finished_at: datetime


class ScheduleOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [SCHEDULE_EXAMPLE]})

    name: str
    expression: str = Field(description="Cron expression, read in UTC (5 fields, or 6 with seconds first).")
    timeout_s: float
    next_run: datetime = Field(description="The expression's next tick after now; it runs only when `enabled`.")
    last_run: LastRunOut | None = Field(description="The latest recorded run; null if it never ran.")
    last_outcome: str | None = Field(description="`succeeded`, `failed` or `timed_out`; null if it never ran.")
    last_error: str | None
    enabled: bool = Field(
        description="CRON_ENABLED on this server. In arq mode each worker runs the schedule under its own setting."
    )

    @classmethod
    def of(cls, job: CronJob[Any], last: CronRun | None, *, now: datetime, enabled: bool) -> ScheduleOut:
        return cls(
            name=job.name,
            expression=job.cron,
            timeout_s=job.timeout_s,
            next_run=job.next_tick(now),
            last_run=LastRunOut(tick=last.tick, finished_at=last.finished_at) if last is not None else None,
            last_outcome=last.outcome if last is not None else None,
            last_error=last.error if last is not None else None,
            enabled=enabled,
        )
