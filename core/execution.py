"""One attempt of one task: run it under its timeout and decide what happens next.

Shared by every backend, so a task behaves the same in-process and on a durable worker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from core.errors import DeferJob, PermanentError, RetryableError, SkipJob, TaskError
from core.logging import begin_attempt_log
from core.observe import AttemptReport, Phase, report
from core.registry import TaskDef

logger = logging.getLogger("herald.jobs")

MAX_RESULT_BYTES = 256 * 1024  # a result is kept in the job's record, so it must stay small
# A deferred job waits its delay_s plus up to this fraction more: jobs deferred together (a busy webhook
# host's) come back spread out, not in lock-step.
DEFER_JITTER = 0.5


class Verdict(StrEnum):
    SUCCEEDED = "succeeded"
    RETRY = "retry"
    FAILED = "failed"
    SKIPPED = "skipped"
    DEFERRED = "deferred"  # not now (DeferJob): run again after retry_in_s; this run is not an attempt


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    result: Any = None
    error: str | None = None
    retry_in_s: float | None = None


_PHASE_OF_VERDICT: dict[Verdict, Phase] = {
    Verdict.SUCCEEDED: "succeeded",
    Verdict.RETRY: "retry",
    Verdict.FAILED: "failed",
    Verdict.SKIPPED: "skipped",
    Verdict.DEFERRED: "deferred",
}


async def run_attempt(
    task: TaskDef,
    ctx: Mapping[str, Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    *,
    rng: random.Random | None = None,
) -> Outcome:
    """Run ``task`` once; ``ctx["job_try"]`` is this attempt's 1-based number.

    A ``DEFERRED`` outcome asks the caller to give the attempt back (the job's ``attempts`` as it was) and
    run the job again after ``retry_in_s``. Cancellation propagates: the caller decides what a cancelled
    attempt means.
    """
    attempt: int = ctx["job_try"]
    job_id: str = ctx["job_id"]
    # Lasts past the return: the runner's outcome line carries these and whatever the task bound.
    begin_attempt_log(job_id=job_id, task=task.name, attempt=attempt)
    report(ctx, AttemptReport(job_id, task.name, attempt, "started"))
    started = time.perf_counter()
    try:
        outcome = await _attempt(task, ctx, args, kwargs, attempt, rng)
    except asyncio.CancelledError:
        report(ctx, AttemptReport(job_id, task.name, attempt, "cancelled", time.perf_counter() - started))
        raise
    phase = _PHASE_OF_VERDICT[outcome.verdict]
    report(ctx, AttemptReport(job_id, task.name, attempt, phase, time.perf_counter() - started, outcome.error))
    return outcome


async def _attempt(
    task: TaskDef,
    ctx: Mapping[str, Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    attempt: int,
    rng: random.Random | None,
) -> Outcome:
    policy = task.policy
    deadline = asyncio.timeout(policy.timeout_s)
    try:
        async with deadline:
            result = await task.function(ctx, *args, **kwargs)
    except SkipJob as exc:
        return Outcome(Verdict.SKIPPED, error=exc.reason)
    except DeferJob as exc:  # whatever the attempt number: a deferral never uses up a retry
        wait_s = exc.delay_s * (1 + DEFER_JITTER * (rng or random).random())
        return Outcome(Verdict.DEFERRED, error=exc.reason, retry_in_s=wait_s)
    except TaskError as exc:
        error: TaskError = exc
    except Exception as exc:
        if isinstance(exc, TimeoutError) and deadline.expired():
            error = RetryableError(f"attempt timed out after {policy.timeout_s:g}s")
        else:  # a bug in the task (a bare TimeoutError too), not a verdict about the destination
            logger.exception("task %s raised an unexpected error", task.name, extra={"job_id": ctx["job_id"]})
            error = PermanentError(f"internal error in task {task.name}: {type(exc).__name__}")
    else:
        problem = _unstorable(result)
        if problem is None:
            return Outcome(Verdict.SUCCEEDED, result=result)
        error = PermanentError(f"task {task.name} returned {problem}")

    if isinstance(error, RetryableError) and policy.should_retry(attempt):
        delay = policy.delay_s(attempt, retry_after_s=error.retry_after_s, rng=rng)
        return Outcome(Verdict.RETRY, error=error.reason, retry_in_s=delay)
    if isinstance(error, RetryableError):
        return Outcome(Verdict.FAILED, error=f"gave up after {attempt} attempts: {error.reason}")
    return Outcome(Verdict.FAILED, error=error.reason)


def _unstorable(result: Any) -> str | None:
    """Why ``result`` cannot be kept as the job's result (JSON, bounded), or None if it can."""
    try:
        size = len(json.dumps(result, allow_nan=False))
    except (TypeError, ValueError) as exc:
        return f"a result that is not JSON-able ({exc})"
    if size > MAX_RESULT_BYTES:
        return f"a result of {size} bytes as JSON; at most {MAX_RESULT_BYTES} are kept"
    return None
