"""One state for many jobs (a group, a notification's deliveries), and progress writes that never fail a job."""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import pytest

from core.arq_worker import _ProgressWriter
from core.errors import BackendUnavailableError
from core.jobs import JobRecord, JobState
from core.queue import _group_state
from core.redis_stores import RedisJobStore
from tasks.notifications import DeliveryStatus, overall_status

S = JobState
D = DeliveryStatus


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ([S.SUCCEEDED, S.SUCCEEDED], S.SUCCEEDED),
        ([S.SUCCEEDED, S.FAILED], S.FAILED),
        ([S.CANCELLED, S.FAILED], S.FAILED),
        ([S.CANCELLED, S.EXPIRED], S.CANCELLED),
        ([S.EXPIRED, S.EXPIRED], S.EXPIRED),
        ([S.SUCCEEDED, S.CANCELLED], S.CANCELLED),
        ([S.SUCCEEDED, S.RUNNING], S.RUNNING),
        ([S.QUEUED, S.QUEUED], S.QUEUED),
    ],
)
def test_a_groups_state_says_what_happened(states: list[JobState], expected: JobState) -> None:
    jobs: list[tuple[str, str, JobRecord | None]] = [
        (f"job_{n}", "t", JobRecord(id=f"job_{n}", task="t", max_attempts=1, state=s)) for n, s in enumerate(states)
    ]
    assert _group_state(jobs) is expected


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([D.EXPIRED], "expired"),
        ([D.CANCELLED, D.EXPIRED], "cancelled"),
        ([D.EXPIRED, D.FAILED], "failed"),
        ([D.DELIVERED, D.EXPIRED], "partially_delivered"),
    ],
)
def test_a_notification_that_sent_nothing_and_failed_nothing_is_not_failed(
    statuses: list[DeliveryStatus], expected: str
) -> None:
    assert overall_status(statuses) == expected


class _RedisDown:
    async def save_if(self, record: JobRecord, expected: Iterable[JobState]) -> bool:
        raise BackendUnavailableError("Redis is unavailable (ConnectionError)")


async def test_a_progress_report_during_a_redis_blip_does_not_fail_the_job() -> None:
    record = JobRecord(id="job_1", task="t", max_attempts=1, state=JobState.RUNNING)
    writer = _ProgressWriter(cast(RedisJobStore, _RedisDown()), record)  # only save_if is used
    await writer.report({"done": 1, "total": 2})  # must not raise: progress is for people
    writer.close()
    assert record.progress == {"done": 1, "total": 2}, "kept for the attempt's final save"
