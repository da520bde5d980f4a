"""Status records of jobs. The in-memory store is bounded so memory stays flat under load."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterable
from dataclasses import replace
from datetime import timedelta
from typing import Protocol

from core.jobs import JobRecord, JobState, utcnow

Position = tuple[int, str]  # (creation ms, job id): a place in a newest-first listing


class JobStore(Protocol):
    async def save(self, record: JobRecord) -> None: ...

    async def save_if(self, record: JobRecord, expected: Iterable[JobState]) -> bool:
        """Save ``record`` only if the stored one is in one of the ``expected`` states (atomic)."""
        ...

    async def get(self, job_id: str) -> JobRecord | None: ...

    async def get_many(self, job_ids: Iterable[str]) -> dict[str, JobRecord]: ...

    async def delete(self, job_ids: Iterable[str]) -> None: ...

    async def list_records(
        self,
        *,
        state: JobState | None = None,
        tasks: Collection[str] | None = None,
        after: Position | None = None,
        limit: int = 50,
    ) -> list[JobRecord]:
        """Records newest first by (creation ms, id), optionally in one state / of some tasks, past ``after``."""
        ...

    async def count_by_state(self) -> dict[JobState, int]: ...


class MemoryJobStore:
    """Keeps every unfinished job, and finished ones up to ``max_finished`` and ``ttl_s``.

    Unfinished jobs are never evicted: their number is bounded by the runner's queue limit.
    """

    def __init__(self, *, max_finished: int, ttl_s: float) -> None:
        self._records: dict[str, JobRecord] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._max_finished = max_finished
        self._ttl = timedelta(seconds=ttl_s)

    async def save(self, record: JobRecord) -> None:
        self.put(record)

    def put(self, record: JobRecord) -> None:
        """``save`` without awaiting, for writes that must not be interleaved with other tasks."""
        # A copy, as a remote store would keep: callers may change their object before save_if.
        self._records[record.id] = replace(record)
        if not record.state.is_terminal:
            self._finished.pop(record.id, None)  # running again (a re-run): not evictable any more
        elif record.id not in self._finished:
            self._finished[record.id] = None
            self._prune()

    async def save_if(self, record: JobRecord, expected: Iterable[JobState]) -> bool:
        current = self._records.get(record.id)
        if current is None or current.state not in set(expected):
            return False
        await self.save(record)
        return True

    async def get(self, job_id: str) -> JobRecord | None:
        return self._live(job_id)

    def peek(self, job_id: str) -> JobRecord | None:
        """``get`` without awaiting, for checks that must not be interleaved with other tasks."""
        return self._live(job_id)

    async def get_many(self, job_ids: Iterable[str]) -> dict[str, JobRecord]:
        return {job_id: record for job_id in job_ids if (record := self._live(job_id)) is not None}

    async def delete(self, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:
            self._records.pop(job_id, None)
            self._finished.pop(job_id, None)

    def purge(self) -> int:
        """Evict every finished record older than ``ttl_s`` now (reads already skip them); how many went."""
        oldest_kept = utcnow() - self._ttl
        expired = [
            job_id
            for job_id in self._finished
            if (record := self._records.get(job_id)) is None
            or (record.finished_at is not None and record.finished_at < oldest_kept)
        ]
        removed = 0
        for job_id in expired:
            del self._finished[job_id]
            removed += self._records.pop(job_id, None) is not None
        return removed

    async def list_records(
        self,
        *,
        state: JobState | None = None,
        tasks: Collection[str] | None = None,
        after: Position | None = None,
        limit: int = 50,
    ) -> list[JobRecord]:
        newest_first = sorted(self._records.values(), key=_position, reverse=True)
        found = []
        for record in newest_first:
            if after is not None and _position(record) >= after:
                continue
            if (state is None or record.state is state) and (tasks is None or record.task in tasks):
                if self._live(record.id) is None:
                    continue
                found.append(record)
                if len(found) == limit:
                    break
        return found

    async def count_by_state(self) -> dict[JobState, int]:
        counts = dict.fromkeys(JobState, 0)
        for record in self._records.values():
            if self._live(record.id) is not None:
                counts[record.state] += 1
        return counts

    def __len__(self) -> int:
        return len(self._records)

    def _live(self, job_id: str) -> JobRecord | None:
        record = self._records.get(job_id)
        if record is not None and record.finished_at is not None and record.finished_at < utcnow() - self._ttl:
            return None  # expired; eviction itself waits for the next save
        return record

    def _prune(self) -> None:
        oldest_kept = utcnow() - self._ttl
        while self._finished:
            job_id = next(iter(self._finished))
            record = self._records.get(job_id)
            expired = record is None or (record.finished_at is not None and record.finished_at < oldest_kept)
            if not expired and len(self._finished) <= self._max_finished:
                break
            del self._finished[job_id]
            self._records.pop(job_id, None)


def _position(record: JobRecord) -> Position:
    return (int(record.created_at.timestamp() * 1000), record.id)
