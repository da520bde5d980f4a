"""Finding an application's TaskSets from ``TASK_MODULES`` (``package.module:attribute``, comma-separated).

A separate arq worker has no app object to be handed the TaskSets, so it imports them by name; the
web app does the same, so both always run the same tasks.
"""

from __future__ import annotations

import importlib

from core.config import task_module_paths
from core.errors import ConfigError
from core.taskset import TaskSet


def load_task_sets(task_modules: str) -> list[TaskSet]:
    """Import every ``module:attribute`` of ``task_modules``; each must be a TaskSet. Raises ConfigError."""
    found = []
    for path in task_module_paths(task_modules):
        module_name, _, attribute = path.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"invalid configuration: TASK_MODULES: cannot import {module_name!r} ({exc})") from exc
        value = getattr(module, attribute, None)
        if not isinstance(value, TaskSet):
            what = "nothing" if value is None else f"a {type(value).__name__}"
            raise ConfigError(f"invalid configuration: TASK_MODULES: {path!r} is {what}, not a TaskSet")
        found.append(value)
    return found
