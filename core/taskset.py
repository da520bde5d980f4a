"""Your own background jobs: declare tasks and cron schedules on a TaskSet, enqueue them, watch them.

::

    jobs = TaskSet()

    @jobs.task(retries=3, timeout=60)
    async def generate_report(ctx: TaskContext, month: str) -> dict[str, int]:
        \"\"\"Build the monthly report.\"\"\"
        await ctx.progress(1, 2)
        ...

    handle = await generate_report.enqueue("2026-10", priority="high")
    print(await handle.result(timeout=30))

A TaskSet is registered explicitly: pass it to the app (``create_app(task_sets=[jobs])``) and name it
in ``TASK_MODULES`` for a separate arq worker. The app binds it to the running backend at start-up,
so ``.enqueue()`` works in both modes; a decorated task stays a plain coroutine function that tests
call directly.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from core.context import TaskContext
from core.cron import DEFAULT_JOB_TIMEOUT_S, CronHistory, CronJob, CronScheduler, Lease
from core.errors import TaskModuleNotStartedError
from core.jobs import Priority
from core.queue import Call, ComposedHandle, JobHandle, Options, TaskQueue
from core.registry import TaskDef, TaskRegistry
from core.retry import RetryPolicy

P = ParamSpec("P")
R = TypeVar("R")

OPTION_NAMES = frozenset({"delay", "at", "priority", "expires_at", "key"})
DEFAULT_RETRIES = 3
DEFAULT_TIMEOUT_S = 300.0


class Task(Generic[P, R]):
    """A registered task: call it like the function it wraps, or ``await task.enqueue(...)``."""

    def __init__(
        self, taskset: TaskSet, definition: TaskDef, function: Callable[Concatenate[TaskContext, P], Awaitable[R]]
    ) -> None:
        self._taskset = taskset
        self.definition = definition
        self._function = function
        functools.update_wrapper(self, function)

    @property
    def name(self) -> str:
        return self.definition.name

    def __call__(self, ctx: TaskContext, *args: P.args, **kwargs: P.kwargs) -> Awaitable[R]:
        return self._function(ctx, *args, **kwargs)

    async def enqueue(
        self,
        *args: Any,
        delay: float | timedelta | None = None,
        at: datetime | None = None,
        priority: Priority | str | None = None,
        expires_at: datetime | None = None,
        key: str | None = None,
        **kwargs: Any,
    ) -> JobHandle:
        """Queue one run with these arguments (JSON-able, checked now) and return at once.

        ``delay``/``at``: not before then. ``priority``: urgent, high, normal, low (default: the
        task's). ``expires_at``: if it has not started by then it ends ``expired`` and never runs.
        ``key``: a second enqueue with the same key (within IDEMPOTENCY_TTL_S) returns the first job.
        """
        options = Options(delay=delay, at=at, priority=priority, expires_at=expires_at, key=key)
        return await self._taskset.queue.enqueue(Call(self.name, args, kwargs, options))

    def _queue(self) -> TaskQueue:
        return self._taskset.queue

    def s(self, *args: Any, **kwargs: Any) -> Call:
        """This task with these arguments, for ``chain`` or ``group``; in a chain, later steps get the
        previous step's result before ``args``."""
        return Call(self.name, args, kwargs, queue=self._queue)

    def __repr__(self) -> str:
        return f"<Task {self.name}>"


Resources = Callable[[], AbstractAsyncContextManager[Mapping[str, Any]]]


class TaskSet:
    """Tasks and cron jobs declared together, registered with an app in one visible place.

    ``resources``: an async context manager factory yielding the clients its tasks share (a database pool,
    an API client), opened once per process — by the app in-process, by each arq worker — and closed at
    shutdown; tasks read them as ``ctx["name"]``.
    """

    def __init__(self, *, resources: Resources | None = None) -> None:
        self._tasks: dict[str, Task[Any, Any]] = {}
        self._crons: dict[str, CronJob[TaskContext]] = {}
        self._queue: TaskQueue | None = None
        self.resources = resources

    @overload
    def task(self, function: Callable[Concatenate[TaskContext, P], Awaitable[R]]) -> Task[P, R]: ...

    @overload
    def task(
        self,
        *,
        name: str | None = None,
        retries: int = DEFAULT_RETRIES,
        timeout: float = DEFAULT_TIMEOUT_S,
        backoff: float = 2.0,
        max_backoff: float = 300.0,
        priority: Priority | str = Priority.NORMAL,
        policy: RetryPolicy | None = None,
    ) -> Callable[[Callable[Concatenate[TaskContext, P], Awaitable[R]]], Task[P, R]]: ...

    def task(
        self,
        function: Callable[..., Awaitable[Any]] | None = None,
        *,
        name: str | None = None,
        retries: int = DEFAULT_RETRIES,
        timeout: float = DEFAULT_TIMEOUT_S,
        backoff: float = 2.0,
        max_backoff: float = 300.0,
        priority: Priority | str = Priority.NORMAL,
        policy: RetryPolicy | None = None,
    ) -> Any:
        """Declare an ``async def f(ctx, ...)`` as a task.

        ``retries``: tries after the first when it raises RetryableError or times out (any other
        exception, and PermanentError, end it at once). ``timeout``: seconds per attempt. ``backoff``
        / ``max_backoff``: the first wait between tries and the cap (doubling, with jitter). Or give
        a whole ``policy``.
        """

        def declare(fn: Callable[..., Awaitable[Any]]) -> Task[Any, Any]:
            if not inspect.iscoroutinefunction(fn):
                raise TypeError(f"task {fn.__name__!r} must be an async def")
            clashes = OPTION_NAMES & set(inspect.signature(fn).parameters)
            if clashes:
                raise TypeError(f"task {fn.__name__!r}: parameters {sorted(clashes)} are reserved for enqueue options")
            chosen = policy or RetryPolicy(
                max_attempts=retries + 1, timeout_s=timeout, base_delay_s=backoff, max_delay_s=max_backoff
            )
            definition = TaskDef(name=name or fn.__name__, function=fn, policy=chosen, priority=Priority(priority))
            if definition.name in self._tasks:
                raise ValueError(f"task {definition.name!r} is already declared in this TaskSet")
            declared: Task[Any, Any] = Task(self, definition, fn)
            self._tasks[definition.name] = declared
            return declared

        return declare(function) if function is not None else declare

    def cron(
        self, expression: str, *, name: str | None = None, timeout: float = DEFAULT_JOB_TIMEOUT_S
    ) -> Callable[[Callable[[TaskContext], Awaitable[R]]], Callable[[TaskContext], Awaitable[R]]]:
        """Run ``async def f(ctx)`` at every tick of ``expression`` (UTC; 5 fields, or 6 with seconds),
        once per tick however many processes run it. The function stays directly callable."""

        def declare(fn: Callable[[TaskContext], Awaitable[R]]) -> Callable[[TaskContext], Awaitable[R]]:
            job: CronJob[TaskContext] = CronJob(
                name=name or fn.__name__, cron=expression, function=fn, timeout_s=timeout
            )
            if job.name in self._crons:
                raise ValueError(f"cron job {job.name!r} is already declared in this TaskSet")
            self._crons[job.name] = job
            return fn

        return declare

    def __iter__(self) -> Iterator[Task[Any, Any]]:
        return iter(self._tasks.values())

    @property
    def cron_jobs(self) -> list[CronJob[TaskContext]]:
        return list(self._crons.values())

    def register(self, registry: TaskRegistry) -> None:
        """Add every task of this set to ``registry`` (what a backend runs)."""
        for declared in self._tasks.values():
            registry.add(declared.definition)

    def bind(self, queue: TaskQueue | None) -> None:
        """Point ``.enqueue()`` at a running backend (the app's lifespan does it; None unbinds)."""
        self._queue = queue

    @property
    def queue(self) -> TaskQueue:
        if self._queue is None:
            raise TaskModuleNotStartedError(
                "this TaskSet is not bound to a running backend: pass it to create_app(task_sets=[...]) "
                "and enqueue while the app runs (inside its lifespan), or bind it to a TaskQueue in a test"
            )
        return self._queue


async def chain(*calls: Call, priority: Priority | str | None = None) -> ComposedHandle:
    """Run ``calls`` (``task.s(...)``) one after another, each given the previous result first.

    The first failed step stops the chain (later steps never run). Returns a handle whose ``result()``
    is the last step's result.
    """
    queue = _queue_of(calls)
    if priority is not None:
        first = calls[0]
        calls = (replace(first, options=replace(first.options, priority=priority)), *calls[1:])
    return await queue.chain(calls)


async def group(calls: Sequence[Call], *, priority: Priority | str | None = None) -> ComposedHandle:
    """Run ``calls`` side by side (enqueued together, all or none); ``result()`` is every result in order."""
    queue = _queue_of(calls)
    if priority is not None:
        calls = [replace(c, options=replace(c.options, priority=priority)) for c in calls]
    return await queue.group(calls)


def _queue_of(calls: Sequence[Call]) -> TaskQueue:
    if not calls:
        raise ValueError("nothing to run: give at least one task.s(...)")
    source = calls[0].queue
    if source is None:
        raise TypeError("chain and group take task.s(...) calls of tasks declared in a TaskSet")
    return source()


def task_set_cron(
    task_sets: Sequence[TaskSet],
    lease: Lease,
    *,
    resources: Mapping[str, Any],
    history: CronHistory | None = None,
) -> CronScheduler[TaskContext] | None:
    """A scheduler for every ``@cron`` of ``task_sets`` (None if there are none); each run gets a TaskContext
    with ``resources``, ``job_id`` ``"cron"`` and attempt 1 (a cron run is not a queued job)."""
    jobs = [job for task_set in task_sets for job in task_set.cron_jobs]
    if not jobs:
        return None
    names = [job.name for job in jobs]
    if len(set(names)) < len(names):
        raise ValueError(f"cron job names must be unique across TaskSets: {sorted(names)}")
    return CronScheduler(jobs, lease, lambda: TaskContext(resources, job_id="cron", job_try=1), history=history)


@asynccontextmanager
async def opened_resources(base: Mapping[str, Any], task_sets: Sequence[TaskSet]) -> AsyncIterator[dict[str, Any]]:
    """``base`` plus every TaskSet's own resources, opened in order and closed in reverse.

    Raises ValueError if two of them use the same name (a task would get the wrong client).
    """
    merged = dict(base)
    async with AsyncExitStack() as stack:
        for task_set in task_sets:
            if task_set.resources is None:
                continue
            own = await stack.enter_async_context(task_set.resources())
            clash = sorted(set(own) & set(merged))
            if clash:
                raise ValueError(f"TaskSet resources {clash} are already provided by Herald or another TaskSet")
            merged.update(own)
        yield merged
