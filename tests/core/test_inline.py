from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import timedelta
from typing import Any

import pytest

from core.errors import DuplicateJobError, PermanentError, QueueClosedError, QueueFullError, RetryableError
from core.inline import InlineBackend
from core.jobs import JobContext, JobRecord, JobSpec, JobState, utcnow
from core.registry import TaskFunction, TaskRegistry, UnknownTaskError
from core.retry import RetryPolicy
from core.store import MemoryJobStore
from tests.support.waiting import eventually

FAST = RetryPolicy(max_attempts=5, timeout_s=5.0, base_delay_s=0.01, max_delay_s=0.05)
_ids = itertools.count()


class Runner:
    """Starts InlineBackends for one test and stops every one of them at teardown."""

    def __init__(self) -> None:
        self.backends: list[InlineBackend] = []

    async def start(
        self,
        tasks: Sequence[TaskFunction | tuple[TaskFunction, RetryPolicy]],
        *,
        concurrency: int = 2,
        max_unfinished: int = 100,
    ) -> InlineBackend:
        registry = TaskRegistry()
        for task in tasks:
            function, policy = task if isinstance(task, tuple) else (task, FAST)
            registry.register(function, policy=policy)
        backend = InlineBackend(
            registry,
            MemoryJobStore(max_finished=1000, ttl_s=3600),
            {"greeting": "hello"},
            concurrency=concurrency,
            max_unfinished=max_unfinished,
        )
        await backend.start()
        self.backends.append(backend)
        return backend


@pytest.fixture
async def runner() -> AsyncIterator[Runner]:
    runner = Runner()
    yield runner
    for backend in runner.backends:
        await backend.stop(grace_s=0.5)


class CollectedTasks:
    """Stands in for Starlette's BackgroundTasks: keeps what would run after the response."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []

    def add_task(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.calls.append((func, args, kwargs))

    async def run_all(self) -> None:
        for func, args, kwargs in self.calls:
            result = func(*args, **kwargs)
            if inspect.isawaitable(result):
                await result


def spec(task: str, *args: Any, **kwargs: Any) -> JobSpec:
    return JobSpec(task=task, job_id=f"job-{next(_ids)}", args=args, kwargs=kwargs)


async def enqueue_one(backend: InlineBackend, job: JobSpec) -> JobRecord:
    [record] = (await backend.enqueue([job])).records
    return record


async def record_of(backend: InlineBackend, job_id: str) -> JobRecord:
    record = await backend.store.get(job_id)
    assert record is not None, f"no record for {job_id}"
    return record


async def wait_for_state(backend: InlineBackend, job_id: str, *states: JobState, timeout_s: float = 5.0) -> JobRecord:
    async def reached() -> bool:
        record = await backend.store.get(job_id)
        return record is not None and record.state in states

    await eventually(reached, timeout_s=timeout_s, what=f"{job_id} to reach {'/'.join(states)}")
    return await record_of(backend, job_id)


async def test_a_job_succeeds_in_one_attempt(runner: Runner) -> None:
    seen: list[tuple[str, str, int, Any]] = []

    async def greet(ctx: JobContext, name: str, *, punctuation: str) -> str:
        seen.append((name, punctuation, ctx["job_try"], dict(ctx).get("greeting")))
        return f"hi {name}{punctuation}"

    backend = await runner.start([greet])
    job = spec("greet", "ada", punctuation="!")

    queued = await enqueue_one(backend, job)
    assert (queued.id, queued.task, queued.state, queued.attempts) == (job.job_id, "greet", JobState.QUEUED, 0)

    done = await wait_for_state(backend, job.job_id, JobState.SUCCEEDED, JobState.FAILED)
    assert (done.state, done.attempts, done.last_error) == (JobState.SUCCEEDED, 1, None)
    assert done.finished_at is not None
    assert seen == [("ada", "!", 1, "hello")]
    assert backend.unfinished == 0


async def test_retryable_errors_are_retried_until_success(runner: Runner) -> None:
    tries: list[int] = []
    states_seen: list[JobState] = []

    async def flaky(ctx: JobContext) -> None:
        tries.append(ctx["job_try"])
        record = await backend.store.get(ctx["job_id"])
        assert record is not None
        states_seen.append(record.state)
        if ctx["job_try"] < 3:
            raise RetryableError(f"busy {ctx['job_try']}")

    backend = await runner.start([flaky])
    job = spec("flaky")
    await enqueue_one(backend, job)

    done = await wait_for_state(backend, job.job_id, JobState.SUCCEEDED, JobState.FAILED)
    assert (done.state, done.attempts) == (JobState.SUCCEEDED, 3)
    assert tries == [1, 2, 3]
    assert states_seen == [JobState.RUNNING] * 3


async def test_a_retrying_record_says_why_and_when(runner: Runner) -> None:
    async def slow_to_recover(ctx: JobContext) -> None:
        raise RetryableError("try later", retry_after_s=5.0)

    policy = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=30.0)
    backend = await runner.start([(slow_to_recover, policy)])
    job = spec("slow_to_recover")
    before = utcnow()
    await enqueue_one(backend, job)

    record = await wait_for_state(backend, job.job_id, JobState.RETRYING)
    assert (record.attempts, record.last_error) == (1, "try later")
    assert record.next_attempt_at is not None
    # Retry-After (5 s) wins over the 0.01 s back-off.
    assert before + timedelta(seconds=4.9) <= record.next_attempt_at <= utcnow() + timedelta(seconds=5)
    assert await backend.stop(grace_s=0.05) == [job.job_id]


async def test_a_permanent_error_fails_at_once(runner: Runner) -> None:
    calls: list[int] = []

    async def refused(ctx: JobContext) -> None:
        calls.append(ctx["job_try"])
        raise PermanentError("550 mailbox unavailable", channel="email", status_code=550)

    backend = await runner.start([refused])
    job = spec("refused")
    await enqueue_one(backend, job)

    done = await wait_for_state(backend, job.job_id, JobState.SUCCEEDED, JobState.FAILED)
    assert (done.state, done.attempts, done.last_error) == (JobState.FAILED, 1, "550 mailbox unavailable")
    assert calls == [1]


async def test_retryable_every_time_gives_up_after_max_attempts(runner: Runner) -> None:
    calls: list[int] = []

    async def down(ctx: JobContext) -> None:
        calls.append(ctx["job_try"])
        raise RetryableError("503 from receiver")

    policy = RetryPolicy(max_attempts=4, timeout_s=5.0, base_delay_s=0.01, max_delay_s=0.02)
    backend = await runner.start([(down, policy)])
    job = spec("down")
    await enqueue_one(backend, job)

    done = await wait_for_state(backend, job.job_id, JobState.SUCCEEDED, JobState.FAILED)
    assert (done.state, done.attempts, done.max_attempts) == (JobState.FAILED, 4, 4)
    assert done.last_error == "gave up after 4 attempts: 503 from receiver"
    assert calls == [1, 2, 3, 4]


async def test_an_attempt_that_times_out_is_retried(runner: Runner) -> None:
    async def hangs_once(ctx: JobContext) -> str:
        if ctx["job_try"] == 1:
            await asyncio.Event().wait()  # never set: only the timeout ends it
        return "ok"

    policy = RetryPolicy(max_attempts=3, timeout_s=0.05, base_delay_s=0.01, max_delay_s=0.02)
    backend = await runner.start([(hangs_once, policy)])
    job = spec("hangs_once")
    await enqueue_one(backend, job)

    done = await wait_for_state(backend, job.job_id, JobState.SUCCEEDED, JobState.FAILED)
    assert (done.state, done.attempts) == (JobState.SUCCEEDED, 2)


async def test_an_attempt_that_always_times_out_fails_saying_so(runner: Runner) -> None:
    async def hangs(ctx: JobContext) -> None:
        await asyncio.Event().wait()

    policy = RetryPolicy(max_attempts=2, timeout_s=0.05, base_delay_s=0.01, max_delay_s=0.02)
    backend = await runner.start([(hangs, policy)])
    job = spec("hangs")
    await enqueue_one(backend, job)

    done = await wait_for_state(backend, job.job_id, JobState.SUCCEEDED, JobState.FAILED)
    assert (done.state, done.attempts) == (JobState.FAILED, 2)
    assert done.last_error == "gave up after 2 attempts: attempt timed out after 0.05s"


async def test_a_timeout_error_raised_by_the_task_itself_is_a_bug_not_a_timeout(runner: Runner) -> None:
    # Channels turn their own timeouts into RetryableError; a bare TimeoutError escaping a task is
    # a bug like any other exception (core/errors.py), not the attempt's deadline.
    calls: list[int] = []

    async def leaks_timeout(ctx: JobContext) -> None:
        calls.append(ctx["job_try"])
        raise TimeoutError("socket read timed out")

    backend = await runner.start([leaks_timeout])
    job = spec("leaks_timeout")
    await enqueue_one(backend, job)

    done = await wait_for_state(backend, job.job_id, JobState.SUCCEEDED, JobState.FAILED)
    assert (done.state, done.attempts) == (JobState.FAILED, 1)
    assert done.last_error == "internal error in task leaks_timeout: TimeoutError"
    assert calls == [1]


async def test_an_unexpected_exception_fails_only_that_job(runner: Runner, caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    async def buggy(ctx: JobContext) -> None:
        calls.append(ctx["job_try"])
        _ = 1 / 0

    async def fine(ctx: JobContext, n: int) -> int:
        return n

    backend = await runner.start([buggy, fine], concurrency=1)
    bad = spec("buggy")
    good = [spec("fine", n) for n in range(3)]
    await backend.enqueue([good[0], bad, *good[1:]])

    done = await wait_for_state(backend, bad.job_id, JobState.SUCCEEDED, JobState.FAILED)
    assert (done.state, done.attempts) == (JobState.FAILED, 1)
    assert done.last_error == "internal error in task buggy: ZeroDivisionError"
    assert calls == [1]  # a bug is not retried
    for job in good:
        finished = await wait_for_state(backend, job.job_id, JobState.SUCCEEDED, JobState.FAILED)
        assert finished.state is JobState.SUCCEEDED
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)


async def test_concurrency_is_bounded(runner: Runner) -> None:
    gate = asyncio.Event()
    running = 0
    peak = 0

    async def blocked(ctx: JobContext) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await gate.wait()
        finally:
            running -= 1

    backend = await runner.start([blocked], concurrency=3)
    jobs = [spec("blocked") for _ in range(10)]
    await backend.enqueue(jobs)

    await eventually(lambda: running >= 3, what="three jobs running")
    states = [(await record_of(backend, job.job_id)).state for job in jobs]
    assert states.count(JobState.RUNNING) == 3
    assert states.count(JobState.QUEUED) == 7

    gate.set()
    for job in jobs:
        await wait_for_state(backend, job.job_id, JobState.SUCCEEDED)
    assert peak == 3


async def test_a_job_backing_off_does_not_hold_a_worker(runner: Runner) -> None:
    a_state_when_b_ran: list[JobState] = []

    async def job_a(ctx: JobContext) -> None:
        if ctx["job_try"] == 1:
            raise RetryableError("try again later")

    async def job_b(ctx: JobContext, a_id: str) -> None:
        a_state_when_b_ran.append((await record_of(backend, a_id)).state)

    backing_off = RetryPolicy(max_attempts=3, timeout_s=5.0, base_delay_s=0.3, max_delay_s=0.3, jitter=0.0)
    backend = await runner.start([(job_a, backing_off), job_b], concurrency=1)
    a = spec("job_a")
    await enqueue_one(backend, a)
    await wait_for_state(backend, a.job_id, JobState.RETRYING)

    b = spec("job_b", a.job_id)
    await enqueue_one(backend, b)
    await wait_for_state(backend, b.job_id, JobState.SUCCEEDED)

    assert a_state_when_b_ran == [JobState.RETRYING]
    assert (await record_of(backend, a.job_id)).state is JobState.RETRYING
    done = await wait_for_state(backend, a.job_id, JobState.SUCCEEDED)
    assert done.attempts == 2


async def test_queue_full_refuses_the_whole_batch(runner: Runner) -> None:
    gate = asyncio.Event()

    async def blocked(ctx: JobContext) -> None:
        await gate.wait()

    backend = await runner.start([blocked], concurrency=1, max_unfinished=3)
    first = [spec("blocked"), spec("blocked")]
    await backend.enqueue(first)

    refused = [spec("blocked"), spec("blocked")]
    with pytest.raises(QueueFullError, match="limit 3"):
        await backend.enqueue(refused)

    assert await backend.store.get_many(job.job_id for job in refused) == {}
    assert backend.unfinished == 2
    third = await enqueue_one(backend, spec("blocked"))  # exactly at the limit is fine
    with pytest.raises(QueueFullError):
        await enqueue_one(backend, spec("blocked"))

    gate.set()
    await wait_for_state(backend, third.id, JobState.SUCCEEDED)
    await eventually(lambda: backend.unfinished == 0, what="all jobs finished")
    later = await enqueue_one(backend, spec("blocked"))  # room again once jobs finish
    await wait_for_state(backend, later.id, JobState.SUCCEEDED)


async def test_check_room_answers_as_enqueue_would(runner: Runner) -> None:
    gate = asyncio.Event()

    async def blocked(ctx: JobContext) -> None:
        await gate.wait()

    backend = await runner.start([blocked], concurrency=1, max_unfinished=2)
    backend.check_room(2)
    await backend.enqueue([spec("blocked")])
    backend.check_room(1)
    with pytest.raises(QueueFullError, match="limit 2"):
        backend.check_room(2)
    await backend.enqueue([spec("blocked")])
    with pytest.raises(QueueFullError):
        backend.check_room()

    gate.set()
    await eventually(lambda: backend.unfinished == 0, what="all jobs finished")
    await backend.stop(grace_s=1.0)
    with pytest.raises(QueueClosedError, match="shutting down"):
        backend.check_room()


async def test_enqueue_is_refused_before_start_and_after_stop() -> None:
    async def noop(ctx: JobContext) -> None:
        return None

    registry = TaskRegistry()
    registry.register(noop, policy=FAST)
    backend = InlineBackend(registry, MemoryJobStore(max_finished=10, ttl_s=60), {}, concurrency=1, max_unfinished=10)
    with pytest.raises(QueueClosedError):
        await backend.enqueue([spec("noop")])

    await backend.start()
    accepting = [backend.accepting]
    assert await backend.stop(grace_s=1.0) == []
    accepting.append(backend.accepting)

    assert accepting == [True, False]
    refused = spec("noop")
    with pytest.raises(QueueClosedError, match="shutting down"):
        await backend.enqueue([refused])
    assert await backend.store.get(refused.job_id) is None


async def test_after_response_jobs_wait_for_the_response(runner: Runner) -> None:
    ran: list[str] = []

    async def record_run(ctx: JobContext) -> None:
        ran.append(ctx["job_id"])

    backend = await runner.start([record_run], concurrency=1)
    background = CollectedTasks()
    deferred = spec("record_run")
    [queued] = (await backend.enqueue([deferred], after_response=background)).records
    assert queued.state is JobState.QUEUED
    assert len(background.calls) == 1

    # A job enqueued later without after_response runs first: the workers are live, and the
    # deferred job was never handed to them.
    immediate = spec("record_run")
    await enqueue_one(backend, immediate)
    await wait_for_state(backend, immediate.job_id, JobState.SUCCEEDED)
    assert ran == [immediate.job_id]
    assert (await record_of(backend, deferred.job_id)).state is JobState.QUEUED

    await background.run_all()  # the response has been sent
    await wait_for_state(backend, deferred.job_id, JobState.SUCCEEDED)
    assert ran == [immediate.job_id, deferred.job_id]


async def test_after_response_callback_is_harmless_once_stop_gave_up(runner: Runner) -> None:
    async def noop(ctx: JobContext) -> None:
        return None

    backend = await runner.start([noop])
    background = CollectedTasks()
    job = spec("noop")
    await backend.enqueue([job], after_response=background)

    assert await backend.stop(grace_s=0.01) == [job.job_id]
    await background.run_all()  # Starlette runs it after the response even so; it must not raise

    assert (await record_of(backend, job.job_id)).state is JobState.CANCELLED


async def test_stop_drains_queued_running_and_backing_off_jobs(runner: Runner) -> None:
    gate = asyncio.Event()

    async def once_flaky(ctx: JobContext) -> None:
        if ctx["job_try"] == 1:
            raise RetryableError("blip")

    async def gated(ctx: JobContext) -> None:
        await gate.wait()

    async def quick(ctx: JobContext) -> None:
        await asyncio.sleep(0.01)  # a little work

    backing_off = RetryPolicy(max_attempts=3, timeout_s=5.0, base_delay_s=0.2, max_delay_s=0.2, jitter=0.0)
    backend = await runner.start([(once_flaky, backing_off), gated, quick], concurrency=1)
    flaky = spec("once_flaky")
    await enqueue_one(backend, flaky)
    await wait_for_state(backend, flaky.job_id, JobState.RETRYING)
    blocker = spec("gated")
    queued = [spec("quick") for _ in range(3)]
    await backend.enqueue([blocker, *queued])
    await wait_for_state(backend, blocker.job_id, JobState.RUNNING)

    stopping = asyncio.create_task(backend.stop(grace_s=5.0))
    await eventually(lambda: not backend.accepting, what="stop() to begin")
    assert (await record_of(backend, flaky.job_id)).state is JobState.RETRYING
    assert [(await record_of(backend, job.job_id)).state for job in queued] == [JobState.QUEUED] * 3
    gate.set()

    assert await asyncio.wait_for(stopping, timeout=10) == []
    for job in [flaky, blocker, *queued]:
        assert (await record_of(backend, job.job_id)).state is JobState.SUCCEEDED, job.task
    assert backend.unfinished == 0


async def test_stop_cancels_and_reports_jobs_that_outlive_the_grace(
    runner: Runner, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # configure_logging() (called by `python -m api`) stops propagation; keep the records reaching caplog.
    monkeypatch.setattr(logging.getLogger("herald"), "propagate", True)
    cancelled = asyncio.Event()

    async def hangs(ctx: JobContext) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def quick(ctx: JobContext) -> None:
        return None

    patient = RetryPolicy(max_attempts=1, timeout_s=30.0)
    backend = await runner.start([(hangs, patient), quick], concurrency=1)
    hanging, waiting = spec("hangs"), spec("quick")
    await backend.enqueue([hanging, waiting])
    await wait_for_state(backend, hanging.job_id, JobState.RUNNING)

    with caplog.at_level(logging.ERROR, logger="herald.jobs"):
        left = await asyncio.wait_for(backend.stop(grace_s=0.1), timeout=5)

    assert left == [hanging.job_id, waiting.job_id]
    assert cancelled.is_set()
    for job_id in left:
        record = await record_of(backend, job_id)
        assert record.state is JobState.CANCELLED
        assert record.finished_at is not None
        assert record.last_error is not None
        assert "0.1s shutdown grace" in record.last_error
    errors = [r for r in caplog.records if r.name == "herald.jobs" and r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert hanging.job_id in errors[0].getMessage()
    assert waiting.job_id in errors[0].getMessage()


async def test_stop_cancels_a_job_still_backing_off(runner: Runner) -> None:
    async def always_busy(ctx: JobContext) -> None:
        raise RetryableError("busy")

    slow = RetryPolicy(max_attempts=5, timeout_s=5.0, base_delay_s=30.0, max_delay_s=30.0)
    backend = await runner.start([(always_busy, slow)])
    job = spec("always_busy")
    await enqueue_one(backend, job)
    await wait_for_state(backend, job.job_id, JobState.RETRYING)

    assert await asyncio.wait_for(backend.stop(grace_s=0.05), timeout=5) == [job.job_id]
    record = await record_of(backend, job.job_id)
    assert (record.state, record.attempts, record.next_attempt_at) == (JobState.CANCELLED, 1, None)


async def test_stop_does_not_wait_out_the_grace_for_jobs_due_after_it(runner: Runner) -> None:
    async def noop(ctx: JobContext) -> None:
        return None

    async def always_busy(ctx: JobContext) -> None:
        raise RetryableError("busy")

    slow = RetryPolicy(max_attempts=5, timeout_s=5.0, base_delay_s=600.0, max_delay_s=600.0)
    backend = await runner.start([noop, (always_busy, slow)])
    later = JobSpec(task="noop", job_id="job-later", defer_until=utcnow() + timedelta(hours=1))
    backing_off = spec("always_busy")
    await enqueue_one(backend, later)
    await enqueue_one(backend, backing_off)
    await wait_for_state(backend, backing_off.job_id, JobState.RETRYING)

    # Nothing left can finish within a 60 s grace: stop() says so at once instead of waiting it out.
    assert sorted(await asyncio.wait_for(backend.stop(grace_s=60), timeout=5)) == sorted(
        [later.job_id, backing_off.job_id]
    )


async def test_stop_waits_for_a_job_due_within_the_grace(runner: Runner) -> None:
    async def noop(ctx: JobContext) -> None:
        return None

    backend = await runner.start([noop])
    soon = JobSpec(task="noop", job_id="job-soon", defer_until=utcnow() + timedelta(seconds=0.3))
    await enqueue_one(backend, soon)

    assert await asyncio.wait_for(backend.stop(grace_s=10), timeout=5) == []
    assert (await record_of(backend, soon.job_id)).state is JobState.SUCCEEDED


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((object(),), {}), ((), {"tags": {"a", "b"}}), ((float("nan"),), {})],
    ids=["object", "set", "nan"],
)
def test_job_spec_refuses_arguments_that_are_not_json(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    with pytest.raises(TypeError, match="'send_report'"):
        JobSpec(task="send_report", job_id="job-x", args=args, kwargs=kwargs)


async def test_unknown_task_refuses_the_whole_batch(runner: Runner) -> None:
    async def known(ctx: JobContext) -> None:
        return None

    backend = await runner.start([known])
    good, bad = spec("known"), spec("no_such_task")

    with pytest.raises(UnknownTaskError, match="no_such_task"):
        await backend.enqueue([good, bad])

    assert await backend.store.get_many([good.job_id, bad.job_id]) == {}
    assert backend.unfinished == 0
    assert await backend.stop(grace_s=1.0) == []


async def test_a_job_id_already_queued_is_refused_and_nothing_of_the_batch_is_saved(runner: Runner) -> None:
    release = asyncio.Event()

    async def hold(ctx: JobContext) -> None:
        await release.wait()

    backend = await runner.start([hold])
    first = spec("hold")
    await enqueue_one(backend, first)
    fresh = spec("hold")

    with pytest.raises(DuplicateJobError, match=first.job_id):
        await backend.enqueue([fresh, JobSpec(task="hold", job_id=first.job_id)])
    with pytest.raises(DuplicateJobError):
        await backend.enqueue([fresh, fresh])

    assert await backend.store.get(fresh.job_id) is None
    assert backend.unfinished == 1
    release.set()


async def test_a_task_that_swallows_cancellation_cannot_hang_shutdown(runner: Runner) -> None:
    started = asyncio.Event()
    let_go = asyncio.Event()

    async def stubborn(ctx: JobContext) -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await let_go.wait()  # ignores the cancellation until the test is over

    patient = RetryPolicy(max_attempts=1, timeout_s=3600)  # so only stop() can end the attempt
    backend = await runner.start([(stubborn, patient)], concurrency=1)
    job = spec("stubborn")
    await enqueue_one(backend, job)
    await started.wait()

    async with asyncio.timeout(10):
        left = await backend.stop(grace_s=0.1)

    let_go.set()
    assert left == [job.job_id]
    assert (await record_of(backend, job.job_id)).state is JobState.CANCELLED
