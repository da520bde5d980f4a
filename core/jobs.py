"""What a job is: the request to run a task (JobSpec) and the record of how it went (JobRecord)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypedDict

from core.documents import Document


class JobState(StrEnum):
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
CANCELLABLE = frozenset({JobState.QUEUED, JobState.SCHEDULED, JobState.RETRYING})


class JobContext(TypedDict):
    """What every task receives first. Applications extend it with their own resources."""

    job_id: str
    job_try: int


def spec_key(job_id: str) -> str:
    return f"spec:{job_id}"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A request to run ``task(ctx, *args, **kwargs)`` once, under the id ``job_id``.

    Arguments must be JSON-able so that a durable backend can store them; the check happens
    here, at enqueue time, in every backend alike.
    """

    task: str
    job_id: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    defer_until: datetime | None = None

    def __post_init__(self) -> None:
        try:
            json.dumps([self.args, self.kwargs], allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"arguments of task {self.task!r} must be JSON-able: {exc}") from None
        if self.defer_until is not None and self.defer_until.tzinfo is None:
            raise ValueError("defer_until must be timezone-aware")

    def as_document(self) -> Document:
        """The spec kept beside its record, so the job can be run again later (a re-run of a failure)."""
        return Document(spec_key(self.job_id), {"task": self.task, "args": list(self.args), "kwargs": self.kwargs})

    @classmethod
    def from_document(cls, job_id: str, value: dict[str, Any]) -> JobSpec:
        return cls(task=value["task"], job_id=job_id, args=tuple(value["args"]), kwargs=value["kwargs"])

    def is_deferred(self, now: datetime | None = None) -> bool:
        return self.defer_until is not None and self.defer_until > (now or utcnow())


@dataclass(slots=True)
class JobRecord:
    """Where a job stands. Holds no arguments, so bodies and addresses stay out of status stores."""

    id: str
    task: str
    max_attempts: int
    state: JobState = JobState.QUEUED
    attempts: int = 0
    last_error: str | None = None
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    next_attempt_at: datetime | None = None
    finished_at: datetime | None = None

    @classmethod
    def accepted(cls, spec: JobSpec, *, task: str, max_attempts: int) -> JobRecord:
        """The first record of a job: ``scheduled`` if its spec is deferred, else ``queued``."""
        record = cls(id=spec.job_id, task=task, max_attempts=max_attempts)
        if spec.is_deferred():
            record.move_to(JobState.SCHEDULED, next_attempt_at=spec.defer_until)
        return record

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "task": self.task,
            "max_attempts": self.max_attempts,
            "state": self.state.value,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "next_attempt_at": _iso(self.next_attempt_at),
            "finished_at": _iso(self.finished_at),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobRecord:
        return cls(
            id=data["id"],
            task=data["task"],
            max_attempts=int(data["max_attempts"]),
            state=JobState(data["state"]),
            attempts=int(data["attempts"]),
            last_error=data.get("last_error"),
            created_at=datetime.fromisoformat(data["created_at"]),
            updated_at=datetime.fromisoformat(data["updated_at"]),
            next_attempt_at=_parse(data.get("next_attempt_at")),
            finished_at=_parse(data.get("finished_at")),
        )

    def move_to(self, state: JobState, *, error: str | None = None, next_attempt_at: datetime | None = None) -> None:
        now = utcnow()
        self.state = state
        self.updated_at = now
        self.next_attempt_at = next_attempt_at
        if error is not None:
            self.last_error = error
        if state.is_terminal:
            self.finished_at = now


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None
