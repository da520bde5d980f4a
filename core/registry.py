"""The task registry: which names map to which functions, each with its retry policy.

Registration is explicit (``registry.register(fn, policy=...)``) so that what a worker can run
is visible in one place and never depends on which modules happened to be imported.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from core.jobs import Priority
from core.retry import RetryPolicy

TaskFunction = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class TaskDef:
    name: str
    function: TaskFunction
    policy: RetryPolicy
    priority: Priority = Priority.NORMAL

    @property
    def summary(self) -> str:
        """The first line of the function's docstring."""
        doc = (self.function.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


class UnknownTaskError(KeyError):
    """No task is registered under this name."""


class TaskRegistry:
    def __init__(self) -> None:
        self._tasks: dict[str, TaskDef] = {}

    def register(
        self,
        function: TaskFunction,
        *,
        policy: RetryPolicy,
        name: str | None = None,
        priority: Priority = Priority.NORMAL,
    ) -> TaskDef:
        """Register ``function`` (an ``async def f(ctx, ...)``) under ``name`` (default: its own name)."""
        return self.add(TaskDef(name=name or function.__name__, function=function, policy=policy, priority=priority))

    def add(self, task: TaskDef) -> TaskDef:
        if task.name in self._tasks:
            raise ValueError(f"task {task.name!r} is already registered")
        self._tasks[task.name] = task
        return task

    def get(self, name: str) -> TaskDef:
        try:
            return self._tasks[name]
        except KeyError:
            raise UnknownTaskError(name) from None

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Iterator[TaskDef]:
        return iter(self._tasks.values())
