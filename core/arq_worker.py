"""Running registered tasks on an arq worker, as its own process or inside the web process.

arq re-runs a job only when it raises ``Retry``, counts a shutdown cancellation as a try, and keeps
no per-attempt history. So each task is wrapped: the wrapper keeps Herald's job record (attempts,
state, last error) in Redis, turns a retryable failure into ``Retry(defer=back-off)``, lets a
permanent one end the job, never runs a job whose record is already finished or cancelled, and
gives back the attempt of a job cancelled by shutdown before arq re-queues it. arq's own
``max_tries`` is set out of reach: the task's RetryPolicy decides.

A deferral (the task raised DeferJob) takes the retry path, ``scheduled`` instead of ``retrying``,
and is given back twice: Herald's ``attempts`` goes back to what it was, and so does arq's own try
counter (``arq:retry:<id>``, which arq increments on every run and compares with ``max_tries``), so
no number of deferrals brings a job nearer to arq's limit. The arq job key's lifetime, set at enqueue
from the retry schedule, is extended by the time the deferral costs, so it cannot run out either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from arq.constants import default_queue_name, job_key_prefix, retry_key_prefix
from arq.worker import Function, Retry, Worker, func
from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.arq_enqueue import (
    DEFERRED_KEY,
    EXPIRING_KEY,
    FAR_FUTURE_MS,
    ArqEnqueuer,
    Promoter,
    expire_due,
)
from core.codec import json_dumps, json_loads
from core.context import PROGRESS_CTX_KEY, TaskContext
from core.errors import BackendUnavailableError, DuplicateJobError
from core.execution import Outcome, Verdict, run_attempt
from core.jobs import EXPIRED_NOTE, JobRecord, JobSpec, JobState, composed_key, spec_key, utcnow
from core.observe import OBSERVERS_CTX_KEY, Observer
from core.redis_stores import KEY_PREFIX, Membership, RedisDocumentStore, RedisJobStore
from core.registry import TaskDef, TaskRegistry

logger = logging.getLogger("herald.worker")

HEARTBEATS_KEY = KEY_PREFIX + "workers"
RUNNING_KEY = KEY_PREFIX + "running"  # job id -> ms after which a still-running job counts as stuck
STORE_CTX_KEY = "herald_job_store"
ENQUEUER_CTX_KEY = "herald_enqueuer"
PROGRESS_EVERY_S = 0.2  # progress reports closer together than this are kept for the final save
MIN_MAINTAIN_SLEEP_S = 0.005  # the promoter's shortest nap, when a deferred job is due sooner than a poll
ARQ_MAX_TRIES = 1_000_000  # out of reach on purpose: the RetryPolicy decides
TIMEOUT_MARGIN_S = 5.0
RESTART_DELAY_S = 2.0
DISCARD_WAIT_S = 2.0  # cancelled jobs get this long to record their end before the worker's pool closes
MAX_READS_PER_POLL = 20  # reads of arq's queue one poll may make back to back while they keep finding work
OUTCOME_WRITE_RETRY_S = 5.0  # a job whose outcome could not be written runs again after this
RUNNING_MARGIN_S = 10.0  # past the job timeout, time to record the outcome before a job counts as stuck

ResourcesFactory = Callable[[], AbstractAsyncContextManager[Mapping[str, Any]]]

# A deferred run is no try of arq's: take back the increment arq made when it started the job (its counter
# lives as long as the job runs, so it is there), and push the job key's expiry back by what the run cost.
# KEYS: arq's retry counter, arq's job key. ARGV: ms to add to the job key's lifetime.
_GIVE_BACK_TRY = """
if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then redis.call('DECR', KEYS[1]) end
local ttl = redis.call('PTTL', KEYS[2])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl + tonumber(ARGV[1])) end
return 1
"""


async def run_job(task: TaskDef, ctx: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """One arq job run = one attempt of ``task``, recorded in Herald's job record.

    While it runs, the job sits in ``herald:running`` scored with the time after which it counts
    as stuck (``core.arq_recovery`` looks there for jobs a lost worker left ``running``). It joins
    that set in the write that marks it running and leaves it in the write of its outcome, so a
    job costs Herald three round trips to Redis: read the record, start, finish.
    """
    tracked = _Tracked(ctx["job_id"])
    try:
        return await _attempt(task, ctx, args, kwargs, tracked)
    finally:
        if tracked.listed:  # not taken out by an outcome write (not run, a chain's step, Redis trouble)
            try:
                await asyncio.shield(ctx["redis"].zrem(RUNNING_KEY, tracked.job_id))
            except RedisError as exc:  # never replace the job's outcome; recovery drops stale entries
                logger.warning("job %s: could not untrack it (%s)", tracked.job_id, type(exc).__name__)


@dataclass(slots=True)
class _Tracked:
    job_id: str
    # Whether herald:running may list the job: a run that does not start it still drops what a lost
    # worker's run of it left there.
    listed: bool = True

    def starting(self, task: TaskDef) -> Membership:
        deadline_ms = int((time.time() + task.policy.timeout_s + TIMEOUT_MARGIN_S + RUNNING_MARGIN_S) * 1000)
        return Membership(join={RUNNING_KEY: deadline_ms})

    def ending(self, record: JobRecord, *, deferred_until_ms: int | None = None) -> Membership:
        """Leave herald:running (and the expiry sweep's set: a finished job is not swept).

        A job waiting again (``deferred_until_ms``) joins herald:deferred, and the sweep's set again: a sweep
        while it ran could not expire it (it was running) and dropped it from there.
        """
        leave = (
            [RUNNING_KEY] if record.expires_at is None or not record.state.is_terminal else [RUNNING_KEY, EXPIRING_KEY]
        )
        join: dict[str, int] = {}
        if deferred_until_ms is not None:
            join[DEFERRED_KEY] = deferred_until_ms
            if record.expires_at is not None:
                join[EXPIRING_KEY] = int(record.expires_at.timestamp() * 1000)
        return Membership(join=join, leave=leave)


async def _attempt(
    task: TaskDef, ctx: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any], tracked: _Tracked
) -> Any:
    store: RedisJobStore = ctx[STORE_CTX_KEY]
    job_id: str = ctx["job_id"]
    record = await store.get(job_id)
    if record is None:
        logger.warning("job %s has no record (expired?); not running it", job_id)
        return None
    if record.state.is_terminal:
        logger.info("job %s is already %s; not running it again", job_id, record.state.value)
        return None
    was, started_before = record.state, record.started_at
    if record.is_expired():  # never start it late, even if the expiry sweep has not reached it
        record.move_to(JobState.EXPIRED, error=EXPIRED_NOTE)
        if await store.save_if(record, [was], Membership(leave=[EXPIRING_KEY])):
            logger.info("job %s expired before it started; not running it", job_id)
        return None
    record.start_attempt()
    # Tracked in the same write that says running, so no crash leaves it running untracked.
    if not await store.save_if(record, [was], tracked.starting(task)):
        logger.info("job %s changed state as it started (cancelled?); not running it", job_id)
        return None
    progress = _ProgressWriter(store, record)
    task_ctx = TaskContext(ctx, job_try=record.attempts, **{PROGRESS_CTX_KEY: progress.report})
    started = time.perf_counter()
    try:
        outcome = await run_attempt(task, task_ctx, tuple(args), kwargs)
    except asyncio.CancelledError:
        progress.close()
        # Shutdown (or a lost worker's job timeout): give the attempt back; arq re-queues the job.
        record.attempts -= 1
        record.move_to(JobState.QUEUED)
        await asyncio.shield(store.save(record, tracked.ending(record)))
        tracked.listed = False
        raise
    progress.close()  # before the outcome is written: no late progress write can follow it
    elapsed_s = time.perf_counter() - started
    log_extra = {
        "job_id": job_id,
        "task": task.name,
        "attempt": record.attempts,
        "outcome": outcome.verdict.value,
        "duration_s": round(elapsed_s, 3),
    }
    try:
        if outcome.verdict is Verdict.DEFERRED and outcome.retry_in_s is not None:
            record.started_at = started_before
            return await _record_deferral(ctx, record, outcome, outcome.retry_in_s, elapsed_s, log_extra, tracked)
        return await _record_outcome(ctx, record, outcome, elapsed_s, log_extra, tracked)
    except BackendUnavailableError as exc:
        # It ran, but where it stands could not be written: run it again (at least once) rather than
        # leave the record `running` with nothing left to move it on.
        logger.error("job %s: could not record its outcome (%s); it runs again", job_id, exc, extra=log_extra)
        raise Retry(defer=timedelta(seconds=OUTCOME_WRITE_RETRY_S)) from None


async def _record_outcome(
    ctx: dict[str, Any],
    record: JobRecord,
    outcome: Outcome,
    elapsed_s: float,
    log_extra: dict[str, Any],
    tracked: _Tracked,
) -> Any:
    store: RedisJobStore = ctx[STORE_CTX_KEY]
    job_id = record.id
    if outcome.verdict is Verdict.SUCCEEDED:
        logger.info("job %s succeeded in %.3fs", job_id, elapsed_s, extra=log_extra)
        record.result = outcome.result
        record.move_to(JobState.SUCCEEDED)
        following = await _next_step(ctx, record, outcome.result)
        if following is None:
            await store.save(record, tracked.ending(record))
            tracked.listed = False
            return None
        # This step's success and the next step's job in one write: a crash keeps both or neither.
        enqueuer: ArqEnqueuer = ctx[ENQUEUER_CTX_KEY]
        try:
            guard = composed_key(following.parent) if following.parent else None
            written = await enqueuer.enqueue([following], finishing=record, guard=guard)
            if not written.records:
                logger.info("job %s: its chain was cancelled; no next step", job_id, extra=log_extra)
        except DuplicateJobError as exc:  # recovery took it back meanwhile: its new run continues the chain
            logger.warning("job %s: %s", job_id, exc)
            return None
        await _forget_expiry(ctx, record)
        return None
    if outcome.verdict is Verdict.RETRY and outcome.retry_in_s is not None:
        logger.warning(
            "job %s attempt %d failed, retrying in %.2fs: %s",
            job_id,
            record.attempts,
            outcome.retry_in_s,
            outcome.error,
            extra=log_extra,
        )
        due = utcnow() + timedelta(seconds=outcome.retry_in_s)
        record.move_to(JobState.RETRYING, error=outcome.error, next_attempt_at=due)
        await store.save(record, tracked.ending(record, deferred_until_ms=int(due.timestamp() * 1000)))
        tracked.listed = False
        # arq puts it out of its own reach; the promoter puts it back, banded, when it is due.
        raise Retry(defer=timedelta(milliseconds=FAR_FUTURE_MS))
    if outcome.verdict is Verdict.SKIPPED:  # a chain stops here: its next steps never start
        logger.info("job %s skipped: %s", job_id, outcome.error, extra=log_extra)
        record.move_to(JobState.SKIPPED, error=outcome.error)
    else:
        logger.warning("job %s failed: %s", job_id, outcome.error, extra=log_extra)
        record.move_to(JobState.FAILED, error=outcome.error)
    await store.save(record, tracked.ending(record))
    tracked.listed = False
    return None


async def _record_deferral(
    ctx: dict[str, Any],
    record: JobRecord,
    outcome: Outcome,
    wait_s: float,
    elapsed_s: float,
    log_extra: dict[str, Any],
    tracked: _Tracked,
) -> Any:
    """The task deferred itself (DeferJob): ``scheduled`` again after ``wait_s``, this run given back."""
    store: RedisJobStore = ctx[STORE_CTX_KEY]
    logger.debug("job %s deferred for %.2fs (not an attempt): %s", record.id, wait_s, outcome.error, extra=log_extra)
    record.attempts -= 1
    due = utcnow() + timedelta(seconds=wait_s)
    record.move_to(JobState.SCHEDULED, error=outcome.error, next_attempt_at=due)
    await store.save(record, tracked.ending(record, deferred_until_ms=int(due.timestamp() * 1000)))
    tracked.listed = False
    try:
        await ctx["redis"].eval(
            _GIVE_BACK_TRY,
            2,
            retry_key_prefix + record.id,
            job_key_prefix + record.id,
            int((wait_s + elapsed_s) * 1000) + 1,
        )
    except RedisError as exc:  # one try of arq's a million used up; the job itself is recorded and waits
        logger.warning("job %s: could not give arq's try back (%s)", record.id, type(exc).__name__)
    # The same way back as a retry: out of arq's reach, promoted from herald:deferred when due.
    raise Retry(defer=timedelta(milliseconds=FAR_FUTURE_MS))


async def _forget_expiry(ctx: Mapping[str, Any], record: JobRecord) -> None:
    """A finished job leaves the expiry sweep's set now, not at its (maybe far-off) expires_at."""
    if record.expires_at is not None:
        with contextlib.suppress(RedisError):
            await ctx["redis"].zrem(EXPIRING_KEY, record.id)


class _ProgressWriter:
    """Saves a running job's progress at most every PROGRESS_EVERY_S, the latest report last.

    A report inside the interval is written when the interval ends, so the status never stays behind
    while the task works on without reporting. Writes only over a ``running`` record.
    """

    def __init__(self, store: RedisJobStore, record: JobRecord) -> None:
        self._store = store
        self._record = record
        self._last_saved = 0.0
        self._trailing: asyncio.Task[None] | None = None

    async def report(self, value: dict[str, Any]) -> None:
        self._record.progress = value  # the attempt's final save carries the latest one in any case
        wait_s = self._last_saved + PROGRESS_EVERY_S - time.monotonic()
        if wait_s <= 0:
            try:
                await self._save()
            except BackendUnavailableError as exc:  # progress is for people: never fail the job over it
                logger.warning("job %s: could not save its progress (%s)", self._record.id, exc)
        elif self._trailing is None or self._trailing.done():
            self._trailing = asyncio.create_task(self._save_after(wait_s), name="herald-progress")

    def close(self) -> None:
        if self._trailing is not None:
            self._trailing.cancel()

    async def _save_after(self, wait_s: float) -> None:
        await asyncio.sleep(wait_s)
        try:
            await self._save()
        except BackendUnavailableError as exc:
            logger.warning("job %s: could not save its progress (%s)", self._record.id, exc)

    async def _save(self) -> None:
        self._last_saved = time.monotonic()
        await self._store.save_if(replace(self._record), [JobState.RUNNING])


async def _next_step(ctx: Mapping[str, Any], record: JobRecord, result: Any) -> JobSpec | None:
    if record.parent is None:
        return None
    kept = await RedisDocumentStore(ctx["redis"]).get(spec_key(record.id))
    if kept is None:
        if record.parent.startswith("chn_"):
            logger.error("job %s: its chain's next steps are no longer kept; the chain stops here", record.id)
        return None
    return JobSpec.from_document(record.id, kept).next_step(result)


def arq_function(task: TaskDef) -> Function:
    async def run(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        return await run_job(task, ctx, args, kwargs)

    run.__qualname__ = run.__name__ = task.name
    return func(run, name=task.name, max_tries=ARQ_MAX_TRIES, timeout=task.policy.timeout_s + TIMEOUT_MARGIN_S)


async def live_workers(redis: Redis, *, max_age_s: float) -> int:
    """Workers whose heartbeat is younger than ``max_age_s`` (older entries are pruned)."""
    oldest_ms = int((time.time() - max_age_s) * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zremrangebyscore(HEARTBEATS_KEY, "-inf", oldest_ms)
        pipe.zcard(HEARTBEATS_KEY)
        _, count = await pipe.execute()
    return int(count)


async def _beat(redis: Redis, worker_id: str, interval_s: float) -> None:
    while True:
        try:
            await redis.zadd(HEARTBEATS_KEY, {worker_id: int(time.time() * 1000)})
        except RedisError as exc:
            logger.warning("heartbeat failed: %s", type(exc).__name__)
        await asyncio.sleep(interval_s)


def worker_options(
    registry: TaskRegistry,
    resources: ResourcesFactory,
    *,
    redis_settings: Any,
    max_jobs: int,
    poll_delay_s: float,
    completion_wait_s: float,
    heartbeat_interval_s: float,
    record_ttl_s: float,
    queue_name: str | None = None,
    extra_startup: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    extra_shutdown: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    observers: Sequence[Observer] = (),
) -> dict[str, Any]:
    """Keyword arguments for ``arq.worker.Worker`` running every task of ``registry``."""
    tasks = list(registry)
    stacks: dict[int, contextlib.AsyncExitStack] = {}

    async def on_startup(ctx: dict[str, Any]) -> None:
        stack = contextlib.AsyncExitStack()
        stacks[id(ctx)] = stack
        ctx.update(await stack.enter_async_context(resources()))
        ctx[STORE_CTX_KEY] = RedisJobStore(ctx["redis"], ttl_s=record_ttl_s)
        ctx[ENQUEUER_CTX_KEY] = ArqEnqueuer(
            registry, ctx["redis"], record_ttl_s=record_ttl_s, queue_name=queue_name or default_queue_name
        )
        ctx[OBSERVERS_CTX_KEY] = tuple(observers)
        worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        beat = asyncio.create_task(_beat(ctx["redis"], worker_id, heartbeat_interval_s), name="herald-heartbeat")
        stack.push_async_callback(_stop_beat, beat, ctx["redis"], worker_id)
        upkeep = asyncio.create_task(
            _maintain(ctx["redis"], ctx[STORE_CTX_KEY], queue_name or default_queue_name, poll_delay_s),
            name="herald-promoter",
        )
        stack.push_async_callback(_cancel_and_wait, upkeep)
        if extra_startup is not None:
            await extra_startup(ctx)
        logger.info("worker %s ready for %s", worker_id, ", ".join(t.name for t in tasks))

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        stack = stacks.pop(id(ctx), None)
        try:
            if extra_shutdown is not None:
                await extra_shutdown(ctx)
        finally:
            if stack is not None:
                await stack.aclose()

    options: dict[str, Any] = {
        "functions": [arq_function(task) for task in tasks],
        "redis_settings": redis_settings,
        "job_serializer": json_dumps,
        "job_deserializer": json_loads,
        "max_jobs": max_jobs,
        "poll_delay": poll_delay_s,
        "job_timeout": max(t.policy.timeout_s for t in tasks) + TIMEOUT_MARGIN_S,
        "keep_result": 0,
        "max_tries": ARQ_MAX_TRIES,
        # arq annotates it int but only awaits it: int() would turn a 0.9 s grace into none at all.
        "job_completion_wait": completion_wait_s,
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
    }
    if queue_name is not None:
        options["queue_name"] = queue_name
    return options


async def _maintain(redis: Redis, store: RedisJobStore, queue_name: str, poll_delay_s: float) -> None:
    """Move deferred jobs onto arq's queue when due and expire the ones past expires_at, until cancelled."""
    promoter = Promoter(redis, queue_name=queue_name)
    while True:
        next_due_ms: int | None = None
        try:
            _, next_due_ms = await promoter.promote_due()
            await expire_due(redis, store, queue_name=queue_name)
        except (RedisError, OSError) as exc:  # the poll loop notices a lost Redis; this one waits
            logger.warning("promoting deferred jobs failed: %s", type(exc).__name__)
        # On arq's own poll cadence: a deferral written by any process is seen within one poll.
        wait_s = poll_delay_s
        if next_due_ms is not None:
            wait_s = min(wait_s, max(MIN_MAINTAIN_SLEEP_S, next_due_ms / 1000 - time.time()))
        await asyncio.sleep(wait_s)


async def _cancel_and_wait(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _stop_beat(beat: asyncio.Task[None], redis: Redis, worker_id: str) -> None:
    beat.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await beat
    with contextlib.suppress(RedisError):
        await redis.zrem(HEARTBEATS_KEY, worker_id)


async def _discard(worker: Worker) -> None:
    """Close ``worker``; arq's close() talks to Redis first, so with Redis gone finish it here."""
    try:
        await worker.close()
        return
    except asyncio.CancelledError:
        # arq's close() gathers the jobs it cancels, and one cancelled inside arq's own epilogue
        # surfaces here; only a cancellation of this task itself may stop the clean-up.
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
        logger.info("worker close was cut short by a job's cancellation; closing what is left")
    except Exception as exc:
        logger.info("worker close stopped early (%s); closing what is left", type(exc).__name__)
    # The cancelled jobs still write their ends (arq shields its finish_job): let them, before the pool goes.
    finishing = [task for task in worker.tasks.values() if not task.done()]
    if finishing:
        await asyncio.wait(finishing, timeout=DISCARD_WAIT_S)
    if worker.on_shutdown is not None:
        with contextlib.suppress(Exception):
            await worker.on_shutdown(worker.ctx)
    with contextlib.suppress(Exception):
        await worker.pool.aclose(close_connection_pool=True)


class HeraldWorker(Worker):
    """arq's Worker, reading at each poll just enough of the queue's head to start ``max_jobs`` new jobs.

    arq reads a fixed number of due ids per poll (by default max(5 * max_jobs, 100)) and starts them in
    that order as slots free up, so an urgent job enqueued after that read waits behind all of them.
    Reading only ``max_jobs`` would stall every worker but one: a running job stays at the head of the
    queue until it ends, so the head is the jobs already running. Every running job, whichever worker
    runs it, is in ``herald:running``; reading ``max_jobs`` past that many is enough, and no more.
    (This overrides a private method of arq 0.28, which is pinned and in maintenance only; arq's own CLI
    cannot take a Worker subclass, so ``arq tasks.worker.WorkerSettings`` keeps arq's fixed read.)
    """

    _started_in_read = 0
    _read_was_full = False

    async def _poll_iteration(self) -> None:
        # A small read empties fast: while the last one was full and started jobs, read again at once
        # instead of leaving freed slots idle for a whole poll_delay (bounded, so a poll still ends).
        for _ in range(MAX_READS_PER_POLL):
            with contextlib.suppress(RedisError):  # arq's own poll below meets the same error and handles it
                self.queue_read_limit = self.max_jobs + int(await self.pool.zcard(RUNNING_KEY))
            self._started_in_read, self._read_was_full = 0, False
            await super()._poll_iteration()
            if not (self._read_was_full and self._started_in_read and self.allow_pick_jobs):
                break

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        self._read_was_full = len(job_ids) >= self.queue_read_limit
        before = len(self.tasks)
        await super().start_jobs(job_ids)
        self._started_in_read = len(self.tasks) - before


class EmbeddedWorker:
    """An arq worker inside this process's event loop: no signal handlers, restarted if Redis drops it.

    ``stop`` stops picking jobs, lets running ones finish within the grace, then cancels the rest
    (each is re-queued by arq and its attempt given back by ``run_job``).
    """

    def __init__(self, options: Mapping[str, Any]) -> None:
        self._options = dict(options)
        self._worker: Worker | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def running(self) -> bool:
        return self._supervisor is not None and not self._supervisor.done() and self._worker is not None

    async def start(self) -> None:
        self._stopping = False
        self._supervisor = asyncio.create_task(self._supervise(), name="herald-embedded-worker")

    async def _supervise(self) -> None:
        while not self._stopping:
            worker = HeraldWorker(**self._options, handle_signals=False)
            self._worker = worker
            try:
                await worker.async_run()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                logger.warning("worker lost Redis (%s); restarting in %gs", type(exc).__name__, RESTART_DELAY_S)
            await _discard(worker)
            if not self._stopping:
                await asyncio.sleep(RESTART_DELAY_S)

    async def stop(self, grace_s: float) -> None:
        self._stopping = True
        worker = self._worker
        if worker is not None:
            worker.allow_pick_jobs = False
            running = [task for task in worker.tasks.values() if not task.done()]
            if running:
                await asyncio.wait(running, timeout=grace_s)
        if self._supervisor is not None:
            # End arq's poll loop before closing its pool, so no command is cut off mid-pipeline.
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
        if worker is not None:
            await _discard(worker)
        self._worker = None


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop where installed, as uvicorn picks it for the web process: a worker's time is mostly socket
    I/O to Redis and receivers, which uvloop does in C (bench/worker_drain.py); else asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # uvicorn[standard] leaves it out on Windows
        return asyncio.new_event_loop
    return uvloop.new_event_loop


@contextlib.asynccontextmanager
async def no_resources() -> AsyncIterator[Mapping[str, Any]]:
    yield {}
