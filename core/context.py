"""What a task receives first: its job's id and attempt, a way to report progress, and the app's resources."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

PROGRESS_CTX_KEY = "herald_progress"
MAX_PROGRESS_BYTES = 2048

ProgressSink = Callable[[dict[str, Any]], Awaitable[None]]


class TaskContext(dict[str, Any]):
    """A dict (arq's ctx is one, and resources are read as ``ctx["db"]``) with typed accessors.

    ``ctx.job_id`` and ``ctx.attempt`` (1-based) say which job and try this is; ``await
    ctx.progress(done, total)`` or ``await ctx.progress({"stage": "upload"})`` records progress that
    the job's status shows. Called directly in a test, a task can get ``TaskContext.for_test()``.
    """

    @property
    def job_id(self) -> str:
        return str(self["job_id"])

    @property
    def attempt(self) -> int:
        return int(self["job_try"])

    async def progress(self, done: int | Mapping[str, Any], total: int | None = None) -> None:
        """Record how far the job is: ``(done, total)`` or a small JSON-able dict (at most 2 KiB)."""
        value = progress_value(done, total)
        sink: ProgressSink | None = self.get(PROGRESS_CTX_KEY)
        if sink is not None:
            await sink(value)

    @classmethod
    def for_test(cls, job_id: str = "job_test", attempt: int = 1, **resources: Any) -> TaskContext:
        """A context for calling a task directly; progress is checked and then dropped."""
        return cls({**resources, "job_id": job_id, "job_try": attempt})


def progress_value(done: int | Mapping[str, Any], total: int | None = None) -> dict[str, Any]:
    if isinstance(done, Mapping):
        if total is not None:
            raise TypeError("progress takes (done, total) or one dict, not both")
        value = dict(done)
    elif isinstance(done, int) and not isinstance(done, bool):
        if total is not None and (not isinstance(total, int) or isinstance(total, bool) or total < 0):
            raise TypeError("progress total must be a non-negative int")
        value = {"done": done, "total": total}
    else:
        raise TypeError(f"progress takes (done, total) ints or a dict, not {type(done).__name__}")
    try:
        encoded = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"progress must be JSON-able: {exc}") from None
    if len(encoded) > MAX_PROGRESS_BYTES:
        raise ValueError(f"progress is {len(encoded)} bytes as JSON; at most {MAX_PROGRESS_BYTES}")
    return value
