"""The client side of the task module: enqueue jobs on a backend, watch them, cancel them.

:class:`TaskQueue` is what ``Task.enqueue``, ``chain`` and ``group`` (core/taskset.py) and the
``/tasks`` endpoints use; it works the same over the in-process backend and over arq.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from core.backend import AfterResponse, TaskBackend
from core.documents import Claim, Document
from core.errors import JobNotFinishedError, JobUnsuccessfulError, NotCancellableError, UnknownJobError
from core.jobs import CANCELLABLE, JobRecord, JobSpec, JobState, Priority, Step, composed_key, utcnow
from core.registry import TaskRegistry
from core.store import Position

MAX_KEY_LENGTH = 200
POLL_FIRST_S = 0.01
POLL_MAX_S = 0.5


def new_job_id() -> str:
    return f"job_{uuid.uuid4().hex}"


@dataclass(frozen=True, slots=True)
class Options:
    """How to run one job. ``delay`` (seconds or timedelta) and ``at`` are exclusive."""

    delay: float | timedelta | None = None
    at: datetime | None = None
    priority: Priority | str | None = None
    expires_at: datetime | None = None
    key: str | None = None

    def defer_until(self) -> datetime | None:
        if self.delay is not None and self.at is not None:
            raise ValueError("give delay or at, not both")
        if self.at is not None:
            if self.at.tzinfo is None:
                raise ValueError("at must be timezone-aware (e.g. datetime.now(UTC) + ...)")
            return self.at
        if self.delay is None:
            return None
        seconds = self.delay.total_seconds() if isinstance(self.delay, timedelta) else float(self.delay)
        if not (0 <= seconds < math.inf):
            raise ValueError(f"delay must be a finite number of seconds >= 0, not {self.delay!r}")
        return utcnow() + timedelta(seconds=seconds) if seconds > 0 else None

    def checked_expiry(self) -> datetime | None:
        if self.expires_at is not None and self.expires_at.tzinfo is None:
            raise ValueError("expires_at must be timezone-aware")
        return self.expires_at

    def checked_key(self) -> str | None:
        if self.key is not None and not (0 < len(self.key) <= MAX_KEY_LENGTH):
            raise ValueError(f"key must be 1-{MAX_KEY_LENGTH} characters")
        return self.key


@dataclass(frozen=True, slots=True)
class Call:
    """A task with its arguments and options, not yet enqueued: a step of a chain or a member of a group."""

    task: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: Options = Options()
    queue: Callable[[], TaskQueue] | None = field(default=None, compare=False, repr=False)  # where it goes


@dataclass(frozen=True, slots=True)
class ComposedStatus:
    """Where a chain or a group stands: one state for all, and each job's record (None: not started yet)."""

    id: str
    kind: str  # "chain" or "group"
    state: JobState
    jobs: list[tuple[str, str, JobRecord | None]]  # (job id, task, record)

    @property
    def results(self) -> list[Any]:
        return [record.result if record is not None else None for _, _, record in self.jobs]

    @property
    def error(self) -> str | None:
        """Why it did not succeed: the first failed job's error, else the first skipped/cancelled/expired one's note."""
        if self.state is JobState.SUCCEEDED:
            return None  # a group whose other jobs were skipped still succeeded
        ended = [
            r for _, _, r in self.jobs if r is not None and r.state.is_terminal and r.state is not JobState.SUCCEEDED
        ]
        ended.sort(key=lambda r: r.state is not JobState.FAILED)  # failures first, else in order
        if ended:
            return ended[0].last_error
        return "cancelled" if self.state is JobState.CANCELLED else None


class TaskQueue:
    """Enqueue registered tasks on ``backend`` and read their status back."""

    def __init__(self, backend: TaskBackend, registry: TaskRegistry, *, key_ttl_s: float) -> None:
        self.backend = backend
        self.registry = registry
        self._key_ttl_s = key_ttl_s

    def spec(self, call: Call, *, job_id: str | None = None, parent: str | None = None) -> JobSpec:
        """Check ``call`` against the registry and its options; raises ValueError/TypeError, UnknownTaskError."""
        task = self.registry.get(call.task)
        options = call.options
        return JobSpec(
            task=task.name,
            job_id=job_id or new_job_id(),
            args=call.args,
            kwargs=call.kwargs,
            defer_until=options.defer_until(),
            priority=Priority(options.priority) if options.priority is not None else task.priority,
            expires_at=options.checked_expiry(),
            parent=parent,
        )

    async def enqueue(self, call: Call, *, after_response: AfterResponse | None = None) -> JobHandle:
        """Enqueue one job; with a ``key`` already used (within its TTL), the earlier job's handle instead."""
        spec = self.spec(call)
        key = call.options.checked_key()
        claim = Claim(f"taskkey:{spec.task}:{key}", {"job_id": spec.job_id}, self._key_ttl_s) if key else None
        enqueued = await self.backend.enqueue([spec], claim=claim, after_response=after_response)
        if enqueued.existing_claim is not None:
            return JobHandle(self, str(enqueued.existing_claim["job_id"]))
        return JobHandle(self, spec.job_id)

    async def chain(self, calls: Sequence[Call]) -> ComposedHandle:
        """Run ``calls`` one after another, each given the previous result first; stop at the first failure."""
        if not calls:
            raise ValueError("a chain needs at least one step")
        if any(c.options.key for c in calls) or any(c.options.delay or c.options.at for c in calls[1:]):
            raise ValueError("in a chain, key is not supported and only the first step may have delay/at")
        chain_id = f"chn_{uuid.uuid4().hex}"
        ids = [new_job_id() for _ in calls]
        for call in calls[1:]:
            self.registry.get(call.task)  # unknown tasks refused now, not when the step is reached
        rest = tuple(Step(c.task, job_id, c.args, c.kwargs) for c, job_id in zip(calls[1:], ids[1:], strict=True))
        first = self.spec(calls[0], job_id=ids[0], parent=chain_id)
        first = JobSpec(
            task=first.task,
            job_id=first.job_id,
            args=first.args,
            kwargs=first.kwargs,
            defer_until=first.defer_until,
            priority=first.priority,
            expires_at=first.expires_at,
            then=rest,
            parent=chain_id,
        )
        members = [[c.task, job_id] for c, job_id in zip(calls, ids, strict=True)]
        document = Document(composed_key(chain_id), {"kind": "chain", "jobs": members})
        await self.backend.enqueue([first], documents=[document])
        return ComposedHandle(self, chain_id)

    async def group(self, calls: Sequence[Call]) -> ComposedHandle:
        """Run ``calls`` side by side, enqueued together (all or none)."""
        if not calls:
            raise ValueError("a group needs at least one job")
        if any(c.options.key for c in calls):
            raise ValueError("key is not supported inside a group")
        group_id = f"grp_{uuid.uuid4().hex}"
        specs = [self.spec(call, parent=group_id) for call in calls]
        members = [[spec.task, spec.job_id] for spec in specs]
        document = Document(composed_key(group_id), {"kind": "group", "jobs": members})
        await self.backend.enqueue(specs, documents=[document])
        return ComposedHandle(self, group_id)

    async def status(self, job_id: str) -> JobRecord | None:
        return await self.backend.store.get(job_id)

    async def cancel(self, job_id: str) -> JobRecord:
        """Cancel a job that has not started. Raises UnknownJobError, or NotCancellableError with the reason."""
        record = await self.status(job_id)
        if record is None:
            raise UnknownJobError(job_id)
        if record.state not in CANCELLABLE:
            raise NotCancellableError(_why_not_cancellable(record))
        if not await self.backend.cancel([job_id]):
            now = await self.status(job_id)  # a worker took it meanwhile
            raise NotCancellableError(_why_not_cancellable(now) if now else f"job {job_id} is no longer kept")
        cancelled = await self.status(job_id)
        if cancelled is None:
            raise UnknownJobError(job_id)
        return cancelled

    async def list(
        self,
        *,
        state: JobState | None = None,
        names: Collection[str] | None = None,
        after: Position | None = None,
        limit: int = 50,
    ) -> list[JobRecord]:
        return await self.backend.store.list_records(state=state, tasks=names, after=after, limit=limit)

    async def composed_status(self, composed_id: str) -> ComposedStatus | None:
        document = await self.backend.documents.get(composed_key(composed_id))
        if document is None:
            return None
        members: list[tuple[str, str]] = [(job_id, task) for task, job_id in document["jobs"]]
        records = await self.backend.store.get_many(job_id for job_id, _ in members)
        jobs = [(job_id, task, records.get(job_id)) for job_id, task in members]
        kind = str(document["kind"])
        state = _chain_state(jobs) if kind == "chain" else _group_state(jobs)
        unfinished = any(record is not None and not record.state.is_terminal for _, _, record in jobs)
        if document.get("cancelled") and not state.is_terminal and not unfinished:
            state = JobState.CANCELLED  # a chain stopped between steps: nothing of it will run again
        return ComposedStatus(id=composed_id, kind=kind, state=state, jobs=jobs)

    async def cancel_composed(self, composed_id: str) -> Sequence[str]:
        """Stop a chain or group: jobs waiting to start are cancelled, and a chain whose step is running
        stops after that step. Returns the ids cancelled now. Raises UnknownJobError, or NotCancellableError
        if it has already finished."""
        key = composed_key(composed_id)
        document = await self.backend.documents.get(key)
        status = await self.composed_status(composed_id)
        if document is None or status is None:
            raise UnknownJobError(composed_id)
        if status.state.is_terminal:
            raise NotCancellableError(f"{status.kind} {composed_id} is already {status.state.value}")
        # The flag first: a step finishing from here on sees it in the same write as its successor's.
        await self.backend.documents.replace(key, {**document, "cancelled": True})
        status = await self.composed_status(composed_id)
        members = [job_id for job_id, _, record in status.jobs if record is not None] if status else []
        return await self.backend.cancel(members)


class JobHandle:
    """A job that was enqueued: its id, and ways to watch it."""

    def __init__(self, queue: TaskQueue, job_id: str) -> None:
        self._queue = queue
        self.id = job_id

    def __repr__(self) -> str:
        return f"JobHandle({self.id!r})"

    async def status(self) -> JobRecord:
        """The job's record now (state, attempts, progress, result, error, timestamps)."""
        record = await self._queue.status(self.id)
        if record is None:
            raise UnknownJobError(self.id)
        return record

    async def result(self, timeout: float | None = None) -> Any:  # noqa: ASYNC109 - the API users expect
        """Wait for the job to finish and return its result.

        Raises JobUnsuccessfulError if it failed, was skipped, cancelled or expired; JobNotFinishedError
        (a TimeoutError) if ``timeout`` seconds pass first.
        """
        record = await _wait(self.status, lambda r: r.state.is_terminal, timeout, self.id)
        if record.state is not JobState.SUCCEEDED:
            raise JobUnsuccessfulError(self.id, record.state.value, record.last_error)
        return record.result

    async def cancel(self) -> JobRecord:
        return await self._queue.cancel(self.id)


class ComposedHandle:
    """A chain or a group: one id, one aggregate status, the results of its jobs."""

    def __init__(self, queue: TaskQueue, composed_id: str) -> None:
        self._queue = queue
        self.id = composed_id

    def __repr__(self) -> str:
        return f"ComposedHandle({self.id!r})"

    async def status(self) -> ComposedStatus:
        status = await self._queue.composed_status(self.id)
        if status is None:
            raise UnknownJobError(self.id)
        return status

    async def result(self, timeout: float | None = None) -> Any:  # noqa: ASYNC109 - the API users expect
        """A chain's last result, or a group's results in order; raises as ``JobHandle.result``."""
        status = await _wait(self.status, lambda s: s.state.is_terminal, timeout, self.id)
        if status.state is not JobState.SUCCEEDED:
            raise JobUnsuccessfulError(self.id, status.state.value, status.error)
        return status.results[-1] if status.kind == "chain" else status.results

    async def cancel(self) -> Sequence[str]:
        """Cancel every job of it waiting to start; a chain whose step is running stops after that step.
        Returns the ids cancelled now; NotCancellableError if it has finished."""
        return await self._queue.cancel_composed(self.id)


async def _wait(read: Any, done: Any, timeout: float | None, job_id: str) -> Any:  # noqa: ASYNC109
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    pause = POLL_FIRST_S
    while True:
        value = await read()
        if done(value):
            return value
        if deadline is not None and loop.time() >= deadline:
            raise JobNotFinishedError(f"{job_id} did not finish within {timeout:g}s (it is {value.state.value})")
        wait = pause if deadline is None else min(pause, max(0.0, deadline - loop.time()))
        await asyncio.sleep(wait)
        pause = min(pause * 2, POLL_MAX_S)


def _chain_state(jobs: list[tuple[str, str, JobRecord | None]]) -> JobState:
    """The state of the step the chain is at: the last one that exists; succeeded only once the last step is."""
    started = [record for _, _, record in jobs if record is not None]
    if not started:
        return JobState.QUEUED
    current = started[-1]
    if current.state is JobState.SUCCEEDED and len(started) < len(jobs):
        return JobState.RUNNING  # between steps: the next one is being written
    return current.state


def _group_state(jobs: list[tuple[str, str, JobRecord | None]]) -> JobState:
    """Succeeded when each job succeeded or was skipped (a skip is a decision, not a failure); skipped if all were."""
    states = [record.state if record is not None else JobState.QUEUED for _, _, record in jobs]
    if states and all(state is JobState.SKIPPED for state in states):
        return JobState.SKIPPED
    if all(state in (JobState.SUCCEEDED, JobState.SKIPPED) for state in states):
        return JobState.SUCCEEDED
    if all(state.is_terminal for state in states):
        unsuccessful = {state for state in states if state not in (JobState.SUCCEEDED, JobState.SKIPPED)}
        if JobState.FAILED in unsuccessful:
            return JobState.FAILED
        return JobState.EXPIRED if unsuccessful == {JobState.EXPIRED} else JobState.CANCELLED
    if any(state in (JobState.RUNNING, JobState.RETRYING) or state.is_terminal for state in states):
        return JobState.RUNNING
    return JobState.SCHEDULED if all(state is JobState.SCHEDULED for state in states) else JobState.QUEUED


def _why_not_cancellable(record: JobRecord) -> str:
    if record.state is JobState.RUNNING:
        return f"job {record.id} is running (attempt {record.attempts}); only a job not yet started can be cancelled"
    return f"job {record.id} is already {record.state.value}"
