"""The task registry: which names map to which functions, each with its retry policy.

Registration is explicit (``registry.register(fn, policy=...)``) so that what a worker can run
is visible in one place and never depends on which modules happened to be imported.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from core.retry import RetryPolicy

TaskFunction = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class TaskDef:
    name: str
    function: TaskFunction
    policy: RetryPolicy


class UnknownTaskError(KeyError):
    """No task is registered under this name."""


class TaskRegistry:
    def __init__(self) -> None:
        self._tasks: dict[str, TaskDef] = {}

    def register(self, function: TaskFunction, *, policy: RetryPolicy, name: str | None = None) -> TaskDef:
        """Register ``function`` (an ``async def f(ctx, ...)``) under ``name`` (default: its own name)."""
        task_name = name or function.__name__
        if task_name in self._tasks:
            raise ValueError(f"task {task_name!r} is already registered")
        task = TaskDef(name=task_name, function=function, policy=policy)
        self._tasks[task_name] = task
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
