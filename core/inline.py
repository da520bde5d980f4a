"""The in-process runner: a bounded pool of asyncio workers owned by the app's lifespan.

Jobs wait in an in-memory queue; ``TASK_CONCURRENCY`` workers take them one at a time. A failed
attempt that may be retried does not hold a worker while it backs off: a timer puts the job back
in the queue when its delay is over (a scheduled job waits on a timer the same way, and so does a
job that deferred itself with DeferJob: ``scheduled`` again, its run not counted as an attempt). On shutdown
the runner stops accepting, lets queued, running and backing-off jobs finish until the grace period
ends, then cancels the rest and logs each one by id. Everything lives in this process: a SIGKILL
loses what had not finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from core.backend import AfterResponse, Enqueued
from core.context import PROGRESS_CTX_KEY, TaskContext
from core.documents import Claim, Document, MemoryDocumentStore
from core.errors import DuplicateJobError, NotRetryableError, QueueClosedError, QueueFullError
from core.execution import Verdict, run_attempt
from core.jobs import (
    CANCELLABLE,
    CANCELLED_NOTE,
    EXPIRED_NOTE,
    JobRecord,
    JobSpec,
    JobState,
    composed_key,
    utcnow,
)
from core.observe import OBSERVERS_CTX_KEY, Observer
from core.registry import TaskDef, TaskRegistry
from core.store import MemoryJobStore

logger = logging.getLogger("herald.jobs")

WORKER_CANCEL_WAIT_S = 1.0
DRAIN_CHECK_S = 0.05  # while draining, how often to look whether only far-off timers are left


@dataclass(slots=True)
class _Job:
    spec: JobSpec
    task: TaskDef
    record: JobRecord


class InlineBackend:
    """Runs registered tasks in this process. See the module docstring."""

    name = "inline"

    def __init__(
        self,
        registry: TaskRegistry,
        store: MemoryJobStore,
        resources: Mapping[str, Any],
        *,
        concurrency: int,
        max_unfinished: int,
        documents: MemoryDocumentStore | None = None,
        observers: Sequence[Observer] = (),
    ) -> None:
        self.store = store
        self.documents = documents if documents is not None else MemoryDocumentStore(max_documents=10_000, ttl_s=86_400)
        self._registry = registry
        self._resources = {**resources, OBSERVERS_CTX_KEY: tuple(observers)}
        self._concurrency = concurrency
        self._max_unfinished = max_unfinished
        # (priority rank, arrival) first: an urgent job overtakes every waiting normal one
        self._queue: asyncio.PriorityQueue[tuple[int, int, _Job]] = asyncio.PriorityQueue()
        self._arrivals = itertools.count()
        self._unfinished: dict[str, _Job] = {}  # accepted and not finished, handed off or not
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._expiry_timers: dict[str, asyncio.TimerHandle] = {}
        self._workers: list[asyncio.Task[None]] = []
        self._idle = asyncio.Event()
        self._idle.set()
        self._accepting = False
        self._cut_note = "cut short while running at shutdown"

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def unfinished(self) -> int:
        return len(self._unfinished)

    def backlog(self) -> tuple[int, int, float]:
        """Jobs due and waiting for a free worker, jobs waiting on a timer (a later send, a back-off),
        and how long the oldest due one has waited, in seconds (0 when none)."""
        now = utcnow()
        due, on_timer, oldest_s = 0, 0, 0.0
        for job in self._unfinished.values():
            record = job.record
            if record.state is JobState.RUNNING:
                continue
            due_at = record.next_attempt_at or record.created_at
            if due_at > now:  # a later send, or a back-off: its timer puts it in the queue
                on_timer += 1
            else:
                due += 1
                oldest_s = max(oldest_s, (now - due_at).total_seconds())
        return due, on_timer, oldest_s

    def check_room(self, jobs: int = 1) -> None:
        """Raise what ``enqueue`` would for ``jobs`` more jobs now: QueueClosedError or QueueFullError."""
        if not self._accepting:
            raise QueueClosedError("the server is shutting down and accepts no new jobs")
        if self.unfinished + jobs > self._max_unfinished:
            raise QueueFullError(f"{self.unfinished} jobs are waiting (limit {self._max_unfinished})")

    async def start(self) -> None:
        self._accepting = True
        self._workers = [asyncio.create_task(self._work(), name=f"herald-worker-{n}") for n in range(self._concurrency)]

    async def enqueue(
        self,
        specs: Sequence[JobSpec],
        *,
        after_response: AfterResponse | None = None,
        documents: Sequence[Document] = (),
        claim: Claim | None = None,
        only_if_failed: bool = False,
    ) -> Enqueued:
        if only_if_failed:  # nothing awaits between this check and the reservation below
            for spec in specs:
                current = self.store.peek(spec.job_id)
                if current is None or current.state is not JobState.FAILED:
                    raise NotRetryableError(f"job {spec.job_id!r} is not failed; only failed jobs can be retried")
        self.check_room(len(specs))
        ids = [spec.job_id for spec in specs]
        duplicates = {job_id for job_id in ids if job_id in self._unfinished or ids.count(job_id) > 1}
        if duplicates:
            raise DuplicateJobError(f"jobs already queued under these ids: {sorted(duplicates)}")
        jobs = [self._job(spec) for spec in specs]  # raises before anything is reserved
        if claim is not None and (existing := self.documents.claim(claim)) is not None:
            return Enqueued(existing_claim=existing)
        documents = [*documents, *(spec.as_document() for spec in specs)]
        for document in documents:
            self.documents.put(document.key, document.value)
        for job in jobs:
            self._unfinished[job.record.id] = job
        self._idle.clear()
        try:
            for job in jobs:
                await self.store.save(job.record)
        except BaseException:
            for job in jobs:
                del self._unfinished[job.record.id]
            await self.documents.delete(*(d.key for d in documents), *([claim.key] if claim else []))
            self._set_idle_if_done()
            raise
        if after_response is None:
            await self._submit(jobs)
        else:
            after_response.add_task(self._submit, jobs)
        return Enqueued(records=[job.record for job in jobs])

    async def cancel(self, job_ids: Sequence[str]) -> list[str]:
        cancelled = []
        for job_id in job_ids:
            job = self._unfinished.get(job_id)
            if job is None or job.record.state not in CANCELLABLE:
                continue
            timer = self._timers.pop(job_id, None)
            if timer is not None:
                timer.cancel()
            await self._finish(job, JobState.CANCELLED, CANCELLED_NOTE)
            cancelled.append(job_id)
        return cancelled

    async def readiness(self) -> dict[str, Any]:
        return {"ready": self._accepting, "unfinished_jobs": len(self._unfinished)}

    async def stop(self, grace_s: float) -> list[str]:
        self._accepting = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        # Done once idle, or once all that is left waits for a time past the grace (a send_at, a back-off):
        # waiting for the grace to end cannot finish those, and would make every deploy take the whole grace.
        while not self._idle.is_set() and not self._only_timers_past(deadline) and loop.time() < deadline:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(DRAIN_CHECK_S, deadline - loop.time())):
                    await self._idle.wait()
        left = list(self._unfinished.values())
        for handle in [*self._timers.values(), *self._expiry_timers.values()]:
            handle.cancel()
        self._timers.clear()
        self._expiry_timers.clear()
        self._cut_note = f"cut short while running: not finished within the {grace_s:g}s shutdown grace"
        for worker in self._workers:
            worker.cancel()
        if self._workers:  # bounded: a task that swallows CancelledError must not hang shutdown
            await asyncio.wait(self._workers, timeout=WORKER_CANCEL_WAIT_S)
        self._workers = []
        for job in left:
            if job.record.id in self._unfinished:  # a running one has already said it was cut short
                self._finish_now(job, JobState.CANCELLED, f"not finished within the {grace_s:g}s shutdown grace")
        if left:
            logger.error("shutdown left %d jobs unfinished: %s", len(left), ", ".join(job.record.id for job in left))
        return [job.record.id for job in left]

    def _only_timers_past(self, deadline: float) -> bool:
        """Whether every unfinished job is waiting on a timer that fires after ``deadline`` (loop time)."""
        return all(
            (timer := self._timers.get(job_id)) is not None and timer.when() > deadline for job_id in self._unfinished
        )

    def _job(self, spec: JobSpec) -> _Job:
        task = self._registry.get(spec.task)
        record = JobRecord.accepted(spec, task=task.name, max_attempts=task.policy.max_attempts)
        return _Job(spec=spec, task=task, record=record)

    async def _submit(self, jobs: list[_Job]) -> None:
        # Runs after the response (BackgroundTasks) or inline; must not raise, or Starlette
        # would skip the other background tasks of the same response. It is async so that
        # Starlette runs it on the event loop, not in its thread pool as it would a plain def.
        loop = asyncio.get_running_loop()
        for job in jobs:
            if job.record.id not in self._unfinished:  # stop() or cancel() got to it first
                continue
            self._arm_expiry(job)
            wait_s = (job.spec.defer_until - utcnow()).total_seconds() if job.spec.defer_until else 0.0
            if wait_s > 0:
                self._timers[job.record.id] = loop.call_later(wait_s, self._requeue, job)
            else:
                self._put(job)

    def _arm_expiry(self, job: _Job) -> None:
        """Expire ``job`` at its expires_at if it is waiting then (its timer is a no-op while it runs)."""
        if job.spec.expires_at is not None and job.record.id not in self._expiry_timers:
            expires_in_s = max(0.0, (job.spec.expires_at - utcnow()).total_seconds())
            loop = asyncio.get_running_loop()
            self._expiry_timers[job.record.id] = loop.call_later(expires_in_s, self._expire, job)

    def _put(self, job: _Job) -> None:
        self._queue.put_nowait((job.spec.priority.rank, next(self._arrivals), job))

    def _expire(self, job: _Job) -> None:
        self._expiry_timers.pop(job.record.id, None)
        if job.record.id in self._unfinished and job.record.state in CANCELLABLE:
            timer = self._timers.pop(job.record.id, None)
            if timer is not None:
                timer.cancel()
            self._finish_now(job, JobState.EXPIRED, EXPIRED_NOTE)

    async def _work(self) -> None:
        while True:
            # get() does not suspend while jobs are waiting: without this, tasks that never await
            # would run the whole backlog before the loop serves a single HTTP request.
            await asyncio.sleep(0)
            _, _, job = await self._queue.get()
            if job.record.id not in self._unfinished:  # cancelled while it waited
                continue
            if job.record.is_expired():  # its timer has not run yet: never start it late
                await self._finish(job, JobState.EXPIRED, EXPIRED_NOTE)
                continue
            try:
                await self._attempt(job)
            except asyncio.CancelledError:
                raise
            except Exception:  # the store failed; the job must not vanish, nor the worker die
                logger.exception("runner error on job %s", job.record.id)
                try:
                    await self._finish(job, JobState.FAILED, "internal error in the runner")
                except Exception:
                    logger.exception("could not record the failure of job %s", job.record.id)

    async def _attempt(self, job: _Job) -> None:
        record = job.record
        started_before = record.started_at
        record.start_attempt()
        await self.store.save(record)
        ctx = TaskContext(
            self._resources, job_id=record.id, job_try=record.attempts, **{PROGRESS_CTX_KEY: self._progress_sink(job)}
        )
        started = time.perf_counter()
        try:
            outcome = await run_attempt(job.task, ctx, job.spec.args, job.spec.kwargs)
        except asyncio.CancelledError:
            await self._finish(job, JobState.CANCELLED, self._cut_note)
            raise
        elapsed_s = time.perf_counter() - started
        log_extra = {
            "job_id": record.id,
            "task": record.task,
            "attempt": record.attempts,
            "outcome": outcome.verdict.value,
            "duration_s": round(elapsed_s, 3),
        }
        if outcome.verdict is Verdict.SUCCEEDED:
            logger.info("job %s succeeded in %.3fs", record.id, elapsed_s, extra=log_extra)
            record.result = outcome.result
            following = job.spec.next_step(outcome.result)
            stopped = following is not None and following.parent is not None and self._cancelled(following.parent)
            if following is not None and not stopped:  # before finishing, so a drain still waits for the chain
                self._continue_with(following)
            await self._finish(job, JobState.SUCCEEDED, None)
        elif outcome.verdict is Verdict.RETRY and outcome.retry_in_s is not None:
            logger.warning(
                "job %s attempt %d failed, retrying in %.2fs: %s",
                record.id,
                record.attempts,
                outcome.retry_in_s,
                outcome.error,
                extra=log_extra,
            )
            due = utcnow() + timedelta(seconds=outcome.retry_in_s)
            record.move_to(JobState.RETRYING, error=outcome.error, next_attempt_at=due)
            await self.store.save(record)
            self._wait_then_requeue(job, outcome.retry_in_s)
        elif outcome.verdict is Verdict.DEFERRED and outcome.retry_in_s is not None:
            # Not an attempt: given back, so deferring never uses up the task's retries.
            logger.debug(
                "job %s deferred for %.2fs (not an attempt): %s",
                record.id,
                outcome.retry_in_s,
                outcome.error,
                extra=log_extra,
            )
            record.attempts -= 1
            record.started_at = started_before
            due = utcnow() + timedelta(seconds=outcome.retry_in_s)
            record.move_to(JobState.SCHEDULED, error=outcome.error, next_attempt_at=due)
            await self.store.save(record)
            self._wait_then_requeue(job, outcome.retry_in_s)
        elif outcome.verdict is Verdict.SKIPPED:  # a chain stops here: its next steps never start
            logger.info("job %s skipped: %s", record.id, outcome.error, extra=log_extra)
            await self._finish(job, JobState.SKIPPED, outcome.error)
        else:
            logger.warning("job %s failed: %s", record.id, outcome.error, extra=log_extra)
            await self._finish(job, JobState.FAILED, outcome.error)

    def _continue_with(self, spec: JobSpec) -> None:
        """A chain's next step: accepted as part of work already accepted (no limit, even while draining)."""
        job = self._job(spec)
        self.documents.put(spec.as_document().key, spec.as_document().value)
        self._unfinished[job.record.id] = job
        self._idle.clear()
        self.store.put(job.record)
        self._put(job)

    def _cancelled(self, composed_id: str) -> bool:
        document = self.documents.peek(composed_key(composed_id))
        return bool(document and document.get("cancelled"))

    def _progress_sink(self, job: _Job) -> Any:
        async def record_progress(value: dict[str, Any]) -> None:
            job.record.progress = value
            self.store.put(job.record)  # a copy in memory: cheap enough for every report

        return record_progress

    def _wait_then_requeue(self, job: _Job, wait_s: float) -> None:
        """Back in the queue after ``wait_s``, holding no worker meanwhile; expired if expires_at comes first."""
        loop = asyncio.get_running_loop()
        self._timers[job.record.id] = loop.call_later(wait_s, self._requeue, job)
        self._arm_expiry(job)  # its timer may have fired, and done nothing, while the job ran

    def _requeue(self, job: _Job) -> None:
        self._timers.pop(job.record.id, None)
        self._put(job)

    async def _finish(self, job: _Job, state: JobState, error: str | None) -> None:
        self._finish_now(job, state, error)

    def _finish_now(self, job: _Job, state: JobState, error: str | None) -> None:
        job.record.move_to(state, error=error)
        expiry = self._expiry_timers.pop(job.record.id, None)
        if expiry is not None:
            expiry.cancel()
        self._unfinished.pop(job.record.id, None)
        self._set_idle_if_done()
        self.store.put(job.record)

    def _set_idle_if_done(self) -> None:
        if not self._unfinished:
            self._idle.set()
