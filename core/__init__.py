"""Herald's generic task module: define tasks, enqueue them, run them with retries, watch their status.

It imports nothing from ``api`` or ``tasks``; any FastAPI (or plain asyncio) app can use it. The
public API is re-exported here::

    from core import TaskSet, TaskContext, chain, group, RetryableError, PermanentError, SkipJob, DeferJob
"""

from core.context import TaskContext
from core.errors import (
    DeferJob,
    JobNotFinishedError,
    JobUnsuccessfulError,
    NotCancellableError,
    PermanentError,
    RetryableError,
    SkipJob,
    TaskModuleNotStartedError,
    UnknownJobError,
)
from core.jobs import JobRecord, JobState, Priority
from core.queue import ComposedHandle, JobHandle, TaskQueue
from core.retry import RetryPolicy
from core.taskset import Task, TaskSet, chain, group

__all__ = [
    "ComposedHandle",
    "DeferJob",
    "JobHandle",
    "JobNotFinishedError",
    "JobRecord",
    "JobState",
    "JobUnsuccessfulError",
    "NotCancellableError",
    "PermanentError",
    "Priority",
    "RetryPolicy",
    "RetryableError",
    "SkipJob",
    "Task",
    "TaskContext",
    "TaskModuleNotStartedError",
    "TaskQueue",
    "TaskSet",
    "UnknownJobError",
    "chain",
    "group",
]
