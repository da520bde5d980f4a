"""Running failed jobs again: a new attempt series under the same job id (so receivers can dedupe)."""

from __future__ import annotations

from collections.abc import Sequence

from core.backend import TaskBackend
from core.errors import NotRetryableError
from core.jobs import JobRecord, JobSpec, JobState, spec_key


async def rerun(backend: TaskBackend, job_ids: Sequence[str]) -> list[JobRecord]:
    """Enqueue each failed job again from its kept spec; raise NotRetryableError naming the first that is not."""
    specs = []
    for job_id in job_ids:
        record = await backend.store.get(job_id)
        if record is None or record.state is not JobState.FAILED:
            state = record.state.value if record else "unknown"
            raise NotRetryableError(f"job {job_id!r} is {state}; only failed jobs can be retried")
        kept = await backend.documents.get(spec_key(job_id))
        if kept is None:
            raise NotRetryableError(f"job {job_id!r} can no longer be retried: its content is no longer kept")
        specs.append(JobSpec.from_document(job_id, kept))
    if not specs:
        return []
    # The check above is for a clear message; only_if_failed makes it hold atomically at write time.
    return (await backend.enqueue(specs, only_if_failed=True)).records


__all__ = ["NotRetryableError", "rerun"]
