"""Running failed jobs again: a new attempt series under the same job id (so receivers can dedupe)."""

from __future__ import annotations

from collections.abc import Sequence

from core.backend import TaskBackend
from core.errors import HeraldError
from core.jobs import JobRecord, JobSpec, JobState, spec_key


class NotRetryableError(HeraldError):
    """Only a failed job can be run again; this one is not failed (or its spec is no longer kept)."""


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
    return (await backend.enqueue(specs)).records
