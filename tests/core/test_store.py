from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis

from core.jobs import JobRecord, JobState, utcnow
from core.redis_stores import RedisJobStore
from core.store import JobStore, MemoryJobStore, Position


def _record(job_id: str, state: JobState = JobState.QUEUED) -> JobRecord:
    record = JobRecord(id=job_id, task="t", max_attempts=3)
    if state is not JobState.QUEUED:
        record.move_to(state)
    return record


async def _ids(store: MemoryJobStore, job_ids: list[str]) -> list[str]:
    return list(await store.get_many(job_ids))


async def test_unfinished_records_are_never_evicted() -> None:
    store = MemoryJobStore(max_finished=2, ttl_s=60)
    unfinished = [f"u{n}" for n in range(20)]
    for n, job_id in enumerate(unfinished):
        record = _record(job_id, [JobState.QUEUED, JobState.RUNNING, JobState.RETRYING][n % 3])
        record.created_at = record.updated_at = utcnow() - timedelta(days=30)  # old, but still running
        await store.save(record)

    for n in range(10):
        await store.save(_record(f"f{n}", JobState.SUCCEEDED))

    assert await _ids(store, unfinished) == unfinished
    assert len(store) == 20 + 2


async def test_finished_records_beyond_the_limit_are_evicted_oldest_finished_first() -> None:
    store = MemoryJobStore(max_finished=3, ttl_s=60)
    first_created = _record("created-first")
    await store.save(first_created)
    for n in range(4):
        await store.save(_record(f"f{n}", JobState.FAILED))
    first_created.move_to(JobState.SUCCEEDED)  # finishes last, so it is the newest finished record
    await store.save(first_created)

    assert await _ids(store, ["f0", "f1", "f2", "f3", "created-first"]) == ["f2", "f3", "created-first"]


async def test_resaving_a_finished_record_does_not_count_it_twice() -> None:
    store = MemoryJobStore(max_finished=2, ttl_s=60)
    a, b = _record("a", JobState.SUCCEEDED), _record("b", JobState.CANCELLED)
    await store.save(a)
    await store.save(b)
    await store.save(a)
    await store.save(a)

    assert await _ids(store, ["a", "b"]) == ["a", "b"]


async def test_finished_records_past_their_ttl_are_evicted() -> None:
    store = MemoryJobStore(max_finished=100, ttl_s=60)
    old = _record("old", JobState.SUCCEEDED)
    await store.save(old)
    running = _record("running", JobState.RUNNING)
    await store.save(running)
    assert await store.get("old") == old

    old.finished_at = utcnow() - timedelta(seconds=61)  # as if a minute had passed
    await store.save(old)
    await store.save(_record("new", JobState.SUCCEEDED))

    assert await store.get("old") is None
    assert await _ids(store, ["old", "running", "new"]) == ["running", "new"]


async def test_an_expired_record_is_not_served_even_before_the_next_save() -> None:
    store = MemoryJobStore(max_finished=100, ttl_s=60)
    old = _record("old", JobState.SUCCEEDED)
    await store.save(old)
    old.finished_at = utcnow() - timedelta(seconds=61)
    await store.save(old)

    assert await store.get("old") is None
    assert await store.get_many(["old"]) == {}


async def test_finished_records_within_their_ttl_are_kept() -> None:
    store = MemoryJobStore(max_finished=100, ttl_s=60)
    recent = _record("recent", JobState.FAILED)
    recent.finished_at = utcnow() - timedelta(seconds=50)
    await store.save(recent)
    await store.save(_record("new", JobState.SUCCEEDED))

    assert await _ids(store, ["recent", "new"]) == ["recent", "new"]


async def test_get_many_returns_known_ids_in_the_order_asked() -> None:
    store = MemoryJobStore(max_finished=10, ttl_s=60)
    for job_id in ["a", "b", "c"]:
        await store.save(_record(job_id))

    found = await store.get_many(["c", "missing", "a"])

    assert list(found) == ["c", "a"]
    assert found["a"].id == "a"
    assert await store.get_many([]) == {}


async def test_delete_removes_records_and_frees_their_finished_slot() -> None:
    store = MemoryJobStore(max_finished=2, ttl_s=60)
    await store.save(_record("queued"))
    await store.save(_record("f1", JobState.SUCCEEDED))
    await store.save(_record("f2", JobState.SUCCEEDED))

    await store.delete(["queued", "f1", "never-existed"])
    await store.save(_record("f3", JobState.SUCCEEDED))

    assert await store.get("queued") is None
    assert await _ids(store, ["f1", "f2", "f3"]) == ["f2", "f3"]
    assert len(store) == 2


async def test_a_finished_record_running_again_is_not_evicted() -> None:
    store = MemoryJobStore(max_finished=2, ttl_s=60)
    rerun = _record("rerun", JobState.FAILED)
    await store.save(rerun)
    rerun.state = JobState.RUNNING
    await store.save(rerun)
    for n in range(3):
        await store.save(_record(f"done-{n}", JobState.SUCCEEDED))

    assert (await store.get("rerun")) is not None


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_paging_sees_every_record_when_hundreds_share_one_millisecond(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """A group of 450 jobs written in one millisecond: a cursor walk lists each exactly once, in both stores."""
    store: JobStore
    if kind == "redis":
        redis = Redis.from_url(request.getfixturevalue("redis_url"))
        store = RedisJobStore(redis, ttl_s=3600)
    else:
        store = MemoryJobStore(max_finished=10_000, ttl_s=3600)
    same_ms = datetime.now(UTC).replace(microsecond=123_000)
    ids = [f"job_{n:04d}" for n in range(450)]
    for job_id in ids:
        await store.save(JobRecord(id=job_id, task="t", max_attempts=1, created_at=same_ms))
    seen: list[str] = []
    after: Position | None = None
    for _ in range(20):  # bounded: a broken cursor must fail, not loop
        page = await store.list_records(after=after, limit=100)
        seen += [record.id for record in page]
        if len(page) < 100:
            break
        after = (int(page[-1].created_at.timestamp() * 1000), page[-1].id)
    if kind == "redis":
        await redis.aclose()
    assert seen == sorted(ids, reverse=True)
