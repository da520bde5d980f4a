"""The seam between call sites and the engine that runs jobs.

Call sites only ever ``await backend.enqueue(specs, after_response=...)``; the in-process backend
and a durable one (arq) both satisfy :class:`TaskBackend`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from core.jobs import JobRecord, JobSpec
from core.store import JobStore


class AfterResponse(Protocol):
    """Something that runs a callable once the HTTP response is sent (Starlette's BackgroundTasks)."""

    def add_task(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None: ...


class TaskBackend(Protocol):
    store: JobStore

    @property
    def accepting(self) -> bool: ...

    async def enqueue(
        self, specs: Sequence[JobSpec], *, after_response: AfterResponse | None = None
    ) -> list[JobRecord]:
        """Accept every spec or none (raises EnqueueError); return their records, state ``queued``.

        An in-process backend may start the jobs only after the response is sent, through
        ``after_response``; a durable one stores them before returning.
        """
        ...

    async def start(self) -> None: ...

    async def stop(self, grace_s: float) -> list[str]:
        """Stop accepting, finish what it can within ``grace_s``; return ids left unfinished."""
        ...
