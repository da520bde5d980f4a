"""The tasks of the contract suite (tests/core/test_contract.py), and the journal they write to.

Both backends run tasks in the test's own process and event loop (arq's worker is embedded), so a
task can note when it started in a module-level :class:`Journal` and wait on one of its gates; the
suite asserts on those notes (start order, attempt times), never on how long it slept.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from core.context import TaskContext
from core.errors import DeferJob, PermanentError, RetryableError, SkipJob
from core.taskset import TaskSet

PACED_BACKOFF_S = 0.2  # paced's first wait between tries: long beside a worker's poll delay (0.02 s)
BACKOFF_JITTER = 0.2  # RetryPolicy's default, which @task keeps: a wait is 80-100% of its nominal value
STALL_TIMEOUT_S = 0.1
DEFER_JITTER = 0.5  # core.execution's: a deferred job waits delay_s plus up to half as much again


@dataclass(frozen=True, slots=True)
class Start:
    """One attempt of one task, as the task itself saw it begin."""

    label: str
    job_id: str
    attempt: int
    at_s: float  # time.monotonic()


class Journal:
    """What the tasks did, in the order they did it, and the gates that hold them."""

    def __init__(self) -> None:
        self.starts: list[Start] = []
        self._gates: dict[str, asyncio.Event] = {}

    def reset(self) -> None:
        self.starts.clear()
        self._gates.clear()

    def start(self, ctx: TaskContext, label: str) -> None:
        self.starts.append(Start(label, ctx.job_id, ctx.attempt, time.monotonic()))

    def gate(self, name: str) -> asyncio.Event:
        return self._gates.setdefault(name, asyncio.Event())

    def release(self, name: str) -> None:
        self.gate(name).set()

    def close(self, name: str) -> None:
        """Shut gate ``name`` again: tasks that reach it from now on wait (those past it go on)."""
        self._gates[name] = asyncio.Event()

    def release_all(self) -> None:
        for gate in self._gates.values():
            gate.set()

    @property
    def labels(self) -> list[str]:
        return [start.label for start in self.starts]

    def of(self, label: str) -> list[Start]:
        return [start for start in self.starts if start.label == label]

    def started(self, label: str) -> bool:
        return any(start.label == label for start in self.starts)


journal = Journal()
contract = TaskSet()


@contract.task(retries=0, timeout=30)
async def step(ctx: TaskContext, label: str, hold: str | None = None) -> str:
    """Note the start; wait for gate ``hold`` if given; return ``label``."""
    journal.start(ctx, label)
    if hold is not None:
        await journal.gate(hold).wait()
    return label


@contract.task(retries=0, timeout=30)
async def chore(ctx: TaskContext, label: str, hold: str, work_s: float) -> None:
    """Note the start, wait for gate ``hold``, then work (wait on I/O) for ``work_s``: a short real job."""
    journal.start(ctx, label)
    await journal.gate(hold).wait()
    await asyncio.sleep(work_s)


def _fail_first(ctx: TaskContext, label: str, failures: int) -> str:
    journal.start(ctx, label)
    if ctx.attempt <= failures:
        raise RetryableError(f"{label}: attempt {ctx.attempt} hit a transient fault")
    return f"{label} ok on attempt {ctx.attempt}"


@contract.task(retries=2, backoff=0.01)
async def flaky(ctx: TaskContext, label: str, failures: int) -> str:
    """Fail retryably on the first ``failures`` attempts, then succeed (3 attempts at most)."""
    return _fail_first(ctx, label, failures)


@contract.task(retries=2, backoff=PACED_BACKOFF_S, max_backoff=10.0)
async def paced(ctx: TaskContext, label: str, failures: int) -> str:
    """As ``flaky``, with back-offs long enough to measure (0.2 s, then 0.4 s, less jitter)."""
    return _fail_first(ctx, label, failures)


@contract.task(retries=3, backoff=0.01)
async def refuse(ctx: TaskContext, value: Any, reason: str) -> None:
    """Fail permanently (retries are available and must not be used)."""
    journal.start(ctx, f"refuse({value})")
    raise PermanentError(reason)


@contract.task(retries=3, backoff=0.01)
async def decline(ctx: TaskContext, value: Any, reason: str) -> None:
    """Decide the work is not to be done (retries are available and must not be used)."""
    journal.start(ctx, f"decline({value})")
    raise SkipJob(reason)


@contract.task(retries=3, backoff=0.01)
async def crash(ctx: TaskContext, label: str) -> None:
    """A bug in a task: a bare exception (retries are available and must not be used)."""
    journal.start(ctx, label)
    raise ValueError(f"{label} has a bug")


@contract.task(retries=1, timeout=STALL_TIMEOUT_S, backoff=0.01)
async def stall(ctx: TaskContext, label: str) -> None:
    """Outlast its timeout on every attempt."""
    journal.start(ctx, label)
    await asyncio.sleep(30)


@contract.task(retries=3, backoff=0.01)
async def unstorable(ctx: TaskContext, label: str) -> object:
    """Succeed with a value no store can keep."""
    journal.start(ctx, label)
    return {"label": label, "when": object()}


@contract.task(retries=0, timeout=30)
async def work(ctx: TaskContext, label: str, total: int) -> dict[str, Any]:
    """Report progress 1/total, wait for gate ``label``, report each further step, then return a summary.

    With total > 2 it waits again, on gate ``label:2``, after reporting 2/total.
    """
    journal.start(ctx, label)
    await ctx.progress(1, total)
    await journal.gate(label).wait()
    for done in range(2, total + 1):
        await ctx.progress(done, total)
        if done == 2 and total > 2:
            await journal.gate(f"{label}:2").wait()
    return {"label": label, "items": total}


@contract.task(retries=0)
async def add(ctx: TaskContext, value: int, n: int) -> int:
    """``value + n``: a chain passes each result on as the next step's ``value``."""
    journal.start(ctx, f"add({value},{n})")
    return value + n


@contract.task(retries=0, timeout=30)
async def wait_turn(ctx: TaskContext, label: str, deferrals: int, delay_s: float, hold: str | None = None) -> str:
    """Defer itself (DeferJob, ``delay_s``) on its first ``deferrals`` runs, then succeed; each run waits for
    gate ``hold`` first if given.

    Declared with no retries: were a deferral counted as an attempt, the second run could not happen.
    """
    journal.start(ctx, label)
    if hold is not None:
        await journal.gate(hold).wait()
    runs = len(journal.of(label))
    if runs <= deferrals:
        raise DeferJob(f"{label}: not now ({runs} of {deferrals})", delay_s=delay_s)
    return f"{label} ran on attempt {ctx.attempt}"
