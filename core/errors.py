"""Errors raised by the task module.

    HeraldError
    ├── ConfigError            a setting is missing or malformed (start-up stops)
    ├── EnqueueError           a job could not be accepted
    │   ├── QueueClosedError     the runner is shutting down
    │   ├── QueueFullError       the in-process queue is at TASK_QUEUE_MAX
    │   ├── DuplicateJobError    a job with the same id is already queued
    │   ├── BackendUnavailableError  the durable backend's Redis cannot be reached (reads raise it too)
    │   └── NotRetryableError    a re-run was asked of a job that is not failed
    ├── TaskError              raised by a task attempt; decides what happens next
    │   ├── RetryableError       try again after back-off (or after ``retry_after_s``)
    │   ├── PermanentError       give up now; retrying cannot help
    │   ├── SkipJob              the work is not to be done (an opt-out, say): the job ends skipped
    │   └── DeferJob             not now: run it again after ``delay_s``; this run is not an attempt
    ├── UnknownJobError        no job, chain or group is kept under this id (also a LookupError)
    ├── NotCancellableError    the job has started or finished; the message says which
    ├── JobUnsuccessfulError   ``result()`` of a job that failed, was skipped, cancelled or expired
    ├── JobNotFinishedError    ``result(timeout=...)`` ran out of time (also a TimeoutError)
    └── TaskModuleNotStartedError  ``.enqueue()`` before the TaskSet was bound to a running backend

A task signals its outcome only through ``TaskError``: the runner never guesses from a bare
exception type. Any other exception escaping a task is a bug and fails the job permanently.
"""

from __future__ import annotations

import math


class HeraldError(Exception):
    """Base of every error Herald raises on purpose."""


class ConfigError(HeraldError):
    """Configuration is invalid; the message names the variable."""


class EnqueueError(HeraldError):
    """A job could not be accepted; nothing was queued."""


class QueueClosedError(EnqueueError):
    """The runner has stopped accepting work (shutdown in progress)."""


class QueueFullError(EnqueueError):
    """The in-process runner already holds its maximum number of unfinished jobs."""


class DuplicateJobError(EnqueueError):
    """A job with this id is already queued or running."""


class BackendUnavailableError(EnqueueError):
    """The durable backend's store (Redis) cannot be reached; nothing was written."""


class NotRetryableError(EnqueueError):
    """Only a failed job can be run again; this one is not failed (or its content is no longer kept)."""


class TaskError(HeraldError):
    """One attempt of a task failed. ``reason`` is safe to show to users."""

    retryable: bool = False

    def __init__(self, reason: str, *, channel: str | None = None, status_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.channel = channel
        self.status_code = status_code


class RetryableError(TaskError):
    """A transient failure: the same attempt may succeed later."""

    retryable = True

    def __init__(
        self,
        reason: str,
        *,
        channel: str | None = None,
        status_code: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(reason, channel=channel, status_code=status_code)
        self.retry_after_s = retry_after_s


class PermanentError(TaskError):
    """A failure no retry can fix (refused address, 4xx answer, 5xx SMTP reply)."""


class SkipJob(TaskError):
    """Not a failure: the task decided its work is not to be done. The job ends ``skipped`` with this reason,
    at once and for good (never retried, a chain stops there), like Celery's Ignore but recorded."""


class DeferJob(TaskError):
    """Not a failure, not an attempt: the task cannot start its work now (a shared resource is busy, say)
    and asks to run again after about ``delay_s`` seconds.

    The run that raised it is given back: the job's ``attempts`` is what it was before, so deferring never
    uses up the task's retries, however often it happens. The job waits ``scheduled`` (``next_attempt_at``
    its new time, ``last_error`` this reason) and can be cancelled meanwhile; its ``expires_at`` still ends
    it ``expired``. The runner adds up to half of ``delay_s`` of jitter, so jobs deferred together do not come
    back together. Nothing bounds how often a job may defer: a task that always defers runs until it expires
    or is cancelled, so give such jobs an ``expires_at``.
    """

    def __init__(self, reason: str, *, delay_s: float, channel: str | None = None) -> None:
        # written as a positive comparison so that NaN fails it
        if not (0 <= delay_s < math.inf):
            raise ValueError(f"delay_s must be a finite number of seconds >= 0, not {delay_s!r}")
        super().__init__(reason, channel=channel)
        self.delay_s = delay_s


class JobNotFinishedError(HeraldError, TimeoutError):
    """``result(timeout=...)`` ran out of time before the job finished."""


class JobUnsuccessfulError(HeraldError):
    """The job ended without a result: failed, cancelled or expired. ``state`` and ``error`` say how."""

    def __init__(self, job_id: str, state: str, error: str | None) -> None:
        super().__init__(f"job {job_id} {state}" + (f": {error}" if error else ""))
        self.job_id = job_id
        self.state = state
        self.error = error


class NotCancellableError(HeraldError):
    """The job has started or finished; the message says which."""


class UnknownJobError(HeraldError, LookupError):
    """No job is kept under this id (never existed, or its record expired)."""


class TaskModuleNotStartedError(HeraldError, RuntimeError):
    """A task was enqueued before its TaskSet was bound to a running backend (the app's lifespan binds it)."""
