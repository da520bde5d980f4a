"""The TaskSet a drill's worker process imports (``TASK_MODULES=tests.support.drill_tasks:drill``).

Each run of ``add`` appends one JSON line to the file named by ``DRILL_EVENTS_PATH`` when it starts and
another when it finishes. The file lives outside Redis on purpose: it counts what really ran, whatever
the job records (the thing under test) say.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.context import TaskContext
from core.taskset import TaskSet

EVENTS_PATH_VAR = "DRILL_EVENTS_PATH"
# Below Herald's delivery tasks' arq timeouts (at least 5 s + 5 s), so the drill tasks do not lengthen
# how long arq waits before it re-runs a killed worker's job; above STALL_S, so a stall never times out.
STEP_TIMEOUT_S = 5.0
STALL_S = 4.0  # long enough for a test polling the events file to SIGKILL the worker mid-step

drill = TaskSet()


@drill.task(retries=2, timeout=STEP_TIMEOUT_S)
async def add(ctx: TaskContext, total: int, step: int, stall_on_first_attempt: bool = False) -> int:
    """Chain step ``step``: ``total + step``, after a pause on its first attempt if asked to stall."""
    await _record("started", step, ctx)
    if stall_on_first_attempt and ctx.attempt == 1:
        await asyncio.sleep(STALL_S)
    await _record("finished", step, ctx)
    return total + step


@dataclass(frozen=True, slots=True)
class Event:
    """One line of the events file: what happened to which step, in which job, attempt and process."""

    event: str  # "started" or "finished"
    step: int
    job_id: str
    attempt: int
    pid: int
    at: float  # time.time() in the process that ran it


def read_events(path: Path) -> list[Event]:
    """Every complete line of the events file (none if it does not exist yet)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    complete = text[: text.rfind("\n") + 1]  # a line being written by a killed process is not an event
    return [Event(**json.loads(line)) for line in complete.splitlines()]


async def _record(event: str, step: int, ctx: TaskContext) -> None:
    fields: dict[str, Any] = {
        "event": event,
        "step": step,
        "job_id": ctx.job_id,
        "attempt": ctx.attempt,
        "pid": os.getpid(),
        "at": time.time(),
    }
    line = (json.dumps(fields) + "\n").encode()
    await asyncio.to_thread(_append, os.environ[EVENTS_PATH_VAR], line)


def _append(path: str, line: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, line)  # one write on an O_APPEND file: lines from two processes never interleave
    finally:
        os.close(descriptor)
