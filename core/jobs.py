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
    SKIPPED = "skipped"  # the task chose not to do its work (SkipJob); not a failure, never retried
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.SKIPPED, JobState.CANCELLED, JobState.EXPIRED})
CANCELLABLE = frozenset({JobState.QUEUED, JobState.SCHEDULED, JobState.RETRYING})  # not started (or between tries)
CANCELLED_NOTE = "cancelled before it started"
EXPIRED_NOTE = "not started before its expires_at"

# Priority bands on arq's queue, whose score is the ms a job is due and the order jobs are picked in:
# a band moves a job's score this far into the past, so every due urgent job sorts before every due
# high one, and so on, as long as no job waits longer than a band (about 3 years).
PRIORITY_BAND_MS = 100_000_000_000


class Priority(StrEnum):
    URGENT = "urgent"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        """0 for urgent, 3 for low: lower runs first."""
        return _RANKS[self]

    @property
    def band_ms(self) -> int:
        return (3 - self.rank) * PRIORITY_BAND_MS


_RANKS = {Priority.URGENT: 0, Priority.HIGH: 1, Priority.NORMAL: 2, Priority.LOW: 3}


class JobContext(TypedDict):
    """What every task receives first. Applications extend it with their own resources."""

    job_id: str
    job_try: int


@dataclass(frozen=True, slots=True)
class Step:
    """A later step of a chain: run ``task(ctx, <previous result>, *args, **kwargs)`` as ``job_id``."""

    task: str
    job_id: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> list[Any]:
        return [self.task, self.job_id, list(self.args), self.kwargs]

    @classmethod
    def from_json(cls, data: list[Any]) -> Step:
        task, job_id, args, kwargs = data
        return cls(task, job_id, tuple(args), kwargs)


def spec_key(job_id: str) -> str:
    return f"spec:{job_id}"


def composed_key(composed_id: str) -> str:
    """The document of a chain or a group: its kind, its jobs, and whether it was cancelled."""
    return f"composed:{composed_id}"


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
    priority: Priority = Priority.NORMAL
    expires_at: datetime | None = None
    then: tuple[Step, ...] = ()  # the rest of a chain, run one after another on success
    parent: str | None = None  # the chain or group this job belongs to

    def __post_init__(self) -> None:
        try:
            json.dumps([self.args, self.kwargs, [step.to_json() for step in self.then]], allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"arguments of task {self.task!r} must be JSON-able: {exc}") from None
        for name in ("defer_until", "expires_at"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"{name} must be timezone-aware")

    def as_document(self) -> Document:
        """The spec kept beside its record, so the job can be run again later (a re-run, a chain's next step)."""
        value: dict[str, Any] = {"task": self.task, "args": list(self.args), "kwargs": self.kwargs}
        if self.priority is not Priority.NORMAL:
            value["priority"] = self.priority.value
        if self.then:
            value["then"] = [step.to_json() for step in self.then]
        if self.parent is not None:
            value["parent"] = self.parent
        return Document(spec_key(self.job_id), value)

    @classmethod
    def from_document(cls, job_id: str, value: dict[str, Any]) -> JobSpec:
        return cls(
            task=value["task"],
            job_id=job_id,
            args=tuple(value["args"]),
            kwargs=value["kwargs"],
            priority=Priority(value.get("priority", Priority.NORMAL)),
            then=tuple(Step.from_json(step) for step in value.get("then", ())),
            parent=value.get("parent"),
        )

    def is_deferred(self, now: datetime | None = None) -> bool:
        return self.defer_until is not None and self.defer_until > (now or utcnow())

    def next_step(self, result: Any) -> JobSpec | None:
        """The chain's next job, given this one's result; None at the end of the chain."""
        if not self.then:
            return None
        step, *rest = self.then
        return JobSpec(
            task=step.task,
            job_id=step.job_id,
            args=(result, *step.args),
            kwargs=step.kwargs,
            priority=self.priority,
            then=tuple(rest),
            parent=self.parent,
        )


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
    started_at: datetime | None = None
    priority: Priority = Priority.NORMAL
    expires_at: datetime | None = None
    parent: str | None = None
    result: Any = None
    progress: dict[str, Any] | None = None

    @classmethod
    def accepted(cls, spec: JobSpec, *, task: str, max_attempts: int) -> JobRecord:
        """The first record of a job: ``scheduled`` if its spec is deferred, else ``queued``."""
        record = cls(
            id=spec.job_id,
            task=task,
            max_attempts=max_attempts,
            priority=spec.priority,
            expires_at=spec.expires_at,
            parent=spec.parent,
        )
        if spec.is_deferred():
            record.move_to(JobState.SCHEDULED, next_attempt_at=spec.defer_until)
        return record

    def is_expired(self, now: datetime | None = None) -> bool:
        """Past its ``expires_at`` without having finished: it must not start (again)."""
        return self.expires_at is not None and not self.state.is_terminal and self.expires_at <= (now or utcnow())

    def start_attempt(self) -> None:
        self.attempts += 1
        self.move_to(JobState.RUNNING)
        if self.started_at is None:
            self.started_at = self.updated_at

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
            "started_at": _iso(self.started_at),
            "priority": self.priority.value,
            "expires_at": _iso(self.expires_at),
            "parent": self.parent,
            "result": self.result,
            "progress": self.progress,
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
            started_at=_parse(data.get("started_at")),
            priority=Priority(data.get("priority", Priority.NORMAL)),
            expires_at=_parse(data.get("expires_at")),
            parent=data.get("parent"),
            result=data.get("result"),
            progress=data.get("progress"),
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
