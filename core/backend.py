"""The seam between call sites and the engine that runs jobs.

Call sites only ever ``await backend.enqueue(specs, ...)``; the in-process backend and the durable
one (arq + Redis) both satisfy :class:`TaskBackend`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.documents import Claim, Document, DocumentStore
from core.jobs import JobRecord, JobSpec
from core.store import JobStore


class AfterResponse(Protocol):
    """Something that runs a callable once the HTTP response is sent (Starlette's BackgroundTasks)."""

    def add_task(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class Enqueued:
    """What ``enqueue`` did: the new jobs' records, or (nothing written) the value of an existing claim."""

    records: list[JobRecord] = field(default_factory=list)
    existing_claim: dict[str, Any] | None = None


class TaskBackend(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def store(self) -> JobStore: ...

    @property
    def documents(self) -> DocumentStore: ...

    @property
    def accepting(self) -> bool: ...

    async def enqueue(
        self,
        specs: Sequence[JobSpec],
        *,
        after_response: AfterResponse | None = None,
        documents: Sequence[Document] = (),
        claim: Claim | None = None,
        only_if_failed: bool = False,
    ) -> Enqueued:
        """Store the jobs (state ``queued`` or ``scheduled``) and ``documents`` all at once, or nothing.

        With ``claim``, nothing is written if its key already holds a value: that value is returned
        instead. With ``only_if_failed`` (a re-run), every job's current record must be failed, or
        nothing is written and NotRetryableError is raised. Raises EnqueueError when the jobs cannot be
        accepted. An in-process backend may start
        the jobs only after the response is sent, through ``after_response``.
        """
        ...

    async def cancel(self, job_ids: Sequence[str]) -> list[str]:
        """Cancel the jobs that have not started (queued, scheduled, retrying); return their ids."""
        ...

    async def readiness(self) -> dict[str, Any]:
        """What the backend depends on and whether each part is up: ``{"ready": bool, ...}``."""
        ...

    async def start(self) -> None: ...

    async def stop(self, grace_s: float) -> list[str]:
        """Stop accepting, finish what it can within ``grace_s``; return ids left unfinished."""
        ...
