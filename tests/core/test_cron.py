"""core/cron.py: cron expressions in UTC, the scheduler loop, and leases (in memory and on a real Redis)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from core.cron import CronJob, CronSchedule, CronScheduler, Lease, MemoryLease, RedisLease
from tests.support.waiting import eventually

T0 = datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)


def at(minute: int, second: int = 0) -> datetime:
    return datetime(2026, 1, 1, 0, minute, second, tzinfo=UTC)


async def nothing(ctx: Any) -> None:
    return None


class ManualClock:
    """Virtual time for the scheduler: ``sleep`` moves it forward at once (plus ``jump_s`` the first time),
    and parks for good once the wake-up would pass ``until``, so a test sees every tick up to there."""

    def __init__(self, start: datetime, *, until: datetime, jump_s: float = 0.0) -> None:
        self.t = start
        self.until = until
        self.jump_s = jump_s
        self.parked = asyncio.Event()

    def now(self) -> datetime:
        return self.t

    async def sleep(self, seconds: float) -> None:
        target = self.t + timedelta(seconds=seconds + self.jump_s)
        self.jump_s = 0.0
        if target > self.until:
            self.parked.set()
            await asyncio.Future()  # until the scheduler is stopped
        self.t = target
        await asyncio.sleep(0)


class FastClock:
    """Real time sped up ``speed`` times, shifted by ``skew_s``: a worker whose clock is off."""

    def __init__(self, *, speed: float, skew_s: float) -> None:
        self.speed = speed
        self.start = datetime.now(UTC) + timedelta(seconds=skew_s)
        self.started = time.monotonic()

    def now(self) -> datetime:
        return self.start + timedelta(seconds=(time.monotonic() - self.started) * self.speed)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds / self.speed)


@dataclass
class RecordingLease:
    """Wraps a lease and records every request; once closed it refuses without asking."""

    inner: Lease
    asked: list[tuple[str, datetime, bool]] = field(default_factory=list)
    closed: bool = False

    async def acquire(self, name: str, tick: datetime, *, hold_s: float) -> bool:
        if self.closed:
            return False
        won = await self.inner.acquire(name, tick, hold_s=hold_s)
        self.asked.append((name, tick, won))
        return won

    def won(self) -> list[datetime]:
        return [tick for _, tick, won in self.asked if won]


@dataclass
class Runs:
    ctxs: list[Any] = field(default_factory=list)

    async def job(self, ctx: Any) -> str:
        self.ctxs.append(ctx)
        return "ok"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


# --- expressions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("61 * * * *", "Bad minute"),
        ("* * *", "Wrong number of fields"),
        ("", "Wrong number of fields"),
        ("@hourly", "Wrong number of fields"),
        ("0 0 30 2 *", "Bad day-of-month"),
        ("* * * * * * *", "Wrong number of fields"),
    ],
)
def test_a_bad_expression_is_refused_when_the_job_is_defined(expression: str, problem: str) -> None:
    with pytest.raises(ValueError, match="invalid cron expression") as caught:
        CronJob(name="nightly", cron=expression, function=nothing)
    message = str(caught.value)
    assert "'nightly'" in message
    assert repr(expression) in message
    assert problem in message
    assert "UTC" in message


def test_a_non_string_expression_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid cron expression"):
        CronJob(name="nightly", cron=5, function=nothing)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "has space", "a:b", "x" * 101])
def test_a_bad_name_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="cron job name"):
        CronJob(name=name, cron="* * * * *", function=nothing)


def test_a_schedule_names_jobs_after_their_function_and_refuses_duplicates() -> None:
    schedule = CronSchedule[Any]()
    job = schedule.add(nothing, cron="*/5 * * * *")
    assert job.name == "nothing"
    schedule.add(nothing, cron="0 * * * *", name="hourly_nothing")
    with pytest.raises(ValueError, match="already scheduled"):
        schedule.add(nothing, cron="0 0 * * *")
    assert [j.name for j in schedule] == ["nothing", "hourly_nothing"]
    assert len(schedule) == 2


def test_ticks_are_computed_in_utc_whatever_the_zone_of_the_time_given() -> None:
    job = CronJob(name="one_am", cron="0 1 * * *", function=nothing)
    paris_summer = timezone(timedelta(hours=2))
    # 02:30 at +02:00 is 00:30 UTC: the next 01:00 UTC is half an hour away, not 22.5 hours.
    assert job.next_tick(datetime(2026, 6, 1, 2, 30, tzinfo=paris_summer)) == datetime(2026, 6, 1, 1, 0, tzinfo=UTC)
    assert job.next_tick(datetime(2026, 6, 1, 2, 30, tzinfo=paris_summer)).tzinfo == UTC


def test_next_tick_is_strictly_after_and_latest_tick_is_at_or_before() -> None:
    job = CronJob(name="quarterly", cron="*/15 * * * *", function=nothing)
    assert job.next_tick(at(15)) == at(30)
    assert job.next_tick(at(14, 59)) == at(15)
    assert job.latest_tick(at(15)) == at(15)
    assert job.latest_tick(at(29, 59) + timedelta(microseconds=999_999)) == at(15)
    assert job.latest_tick(at(14, 59)) == at(0)


def test_six_fields_mean_seconds_first() -> None:
    job = CronJob(name="every_ten_s", cron="*/10 * * * * *", function=nothing)
    assert job.next_tick(at(0, 1)) == at(0, 10)


def test_naive_times_are_refused() -> None:
    job = CronJob(name="hourly", cron="0 * * * *", function=nothing)
    with pytest.raises(ValueError, match="timezone-aware"):
        job.next_tick(datetime(2026, 1, 1))


# --- the scheduler (virtual time, in-memory lease) ----------------------------------------------


async def test_the_scheduler_runs_a_job_at_each_tick_with_its_context() -> None:
    runs = Runs()
    lease = RecordingLease(MemoryLease())
    clock = ManualClock(T0, until=at(3, 30))
    job = CronJob(name="minutely", cron="* * * * *", function=runs.job)
    async with CronScheduler([job], lease, lambda: {"ctx": "given"}, clock=clock) as scheduler:
        await asyncio.wait_for(clock.parked.wait(), 5)
        await eventually(lambda: len(runs.ctxs) == 3, what="three runs")
        running_inside = scheduler.running
    assert running_inside
    assert not scheduler.running
    assert lease.asked == [("minutely", at(1), True), ("minutely", at(2), True), ("minutely", at(3), True)]
    assert runs.ctxs == [{"ctx": "given"}] * 3


async def test_two_jobs_keep_their_own_schedules() -> None:
    lease = RecordingLease(MemoryLease())
    clock = ManualClock(T0, until=at(10, 30))
    jobs = [
        CronJob(name="every_minute", cron="* * * * *", function=nothing),
        CronJob(name="every_five", cron="*/5 * * * *", function=nothing),
    ]
    async with CronScheduler(jobs, lease, dict, clock=clock):
        await asyncio.wait_for(clock.parked.wait(), 5)
    assert [tick for name, tick, _ in lease.asked if name == "every_five"] == [at(5), at(10)]
    assert [tick for name, tick, _ in lease.asked if name == "every_minute"] == [at(m) for m in range(1, 11)]


async def test_ticks_missed_while_asleep_are_not_replayed() -> None:
    runs = Runs()
    lease = RecordingLease(MemoryLease())
    # The first sleep (due at 00:01) ends ten minutes and 20 s late, as after a suspended machine.
    clock = ManualClock(T0, until=at(12, 30), jump_s=620)
    async with CronScheduler([CronJob(name="m", cron="* * * * *", function=runs.job)], lease, dict, clock=clock):
        await asyncio.wait_for(clock.parked.wait(), 5)
        await eventually(lambda: len(runs.ctxs) == 2, what="two runs")
    assert lease.won() == [at(11), at(12)]


async def test_a_failing_job_is_logged_and_runs_again_at_the_next_tick(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    async def flaky(ctx: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")

    clock = ManualClock(T0, until=at(2, 30))
    async with CronScheduler(
        [CronJob(name="flaky", cron="* * * * *", function=flaky)], MemoryLease(), dict, clock=clock
    ):
        await asyncio.wait_for(clock.parked.wait(), 5)
        await eventually(lambda: calls == 2, what="the second run")
    [failure] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "cron job flaky" in failure.getMessage()
    assert failure.exc_info is not None
    assert "boom" in str(failure.exc_info[1])


async def test_a_hung_job_times_out_and_is_not_started_twice(caplog: pytest.LogCaptureFixture) -> None:
    release = asyncio.Event()
    started = 0

    async def hangs(ctx: Any) -> None:
        nonlocal started
        started += 1
        await release.wait()

    lease = RecordingLease(MemoryLease())
    clock = ManualClock(T0, until=at(3, 30))
    job = CronJob(name="hangs", cron="* * * * *", function=hangs, timeout_s=0.2)
    async with CronScheduler([job], lease, dict, clock=clock):
        await asyncio.wait_for(clock.parked.wait(), 5)
        # Ticks 00:02 and 00:03 came while the 00:01 run hung: skipped without taking the lease.
        assert lease.asked == [("hangs", at(1), True)]
        assert started == 1
        await eventually(lambda: "timed out after 0.2s" in caplog.text, what="the timeout to be logged")
    assert "previous run is still going" in caplog.text


async def test_a_lease_error_skips_that_tick_only(caplog: pytest.LogCaptureFixture) -> None:
    class FlakyLease(MemoryLease):
        failed = False

        async def acquire(self, name: str, tick: datetime, *, hold_s: float) -> bool:
            if not self.failed:
                self.failed = True
                raise RedisConnectionError("down")
            return await super().acquire(name, tick, hold_s=hold_s)

    runs = Runs()
    lease = RecordingLease(FlakyLease())
    clock = ManualClock(T0, until=at(2, 30))
    async with CronScheduler([CronJob(name="m", cron="* * * * *", function=runs.job)], lease, dict, clock=clock):
        await asyncio.wait_for(clock.parked.wait(), 5)
        await eventually(lambda: len(runs.ctxs) == 1, what="the run at 00:02")
    assert lease.won() == [at(2)]
    assert "no lease for 2026-01-01 00:01:00+00:00 (ConnectionError)" in caplog.text


async def test_stop_does_not_hang_on_a_job_that_ignores_cancellation(caplog: pytest.LogCaptureFixture) -> None:
    cancelled = asyncio.Event()
    finish = asyncio.Event()

    async def stubborn(ctx: Any) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            await finish.wait()  # swallows the cancellation, then ends when the test says so

    clock = ManualClock(T0, until=at(1, 30))
    scheduler = CronScheduler(
        [CronJob(name="stubborn", cron="* * * * *", function=stubborn)],
        MemoryLease(),
        dict,
        clock=clock,
        stop_wait_s=0.1,
    )
    await scheduler.start()
    await asyncio.wait_for(clock.parked.wait(), 5)
    started = time.monotonic()
    await asyncio.wait_for(scheduler.stop(), 2)
    assert time.monotonic() - started < 1
    assert cancelled.is_set()
    assert "did not stop within 0.1s" in caplog.text
    assert not scheduler.running
    finish.set()


async def test_a_scheduler_without_jobs_starts_and_stops() -> None:
    scheduler = CronScheduler[Any]([], MemoryLease(), dict)
    await scheduler.start()
    assert not scheduler.running
    await scheduler.stop()


# --- leases ---------------------------------------------------------------------------------------


async def test_the_memory_lease_grants_each_tick_once_and_never_an_older_one() -> None:
    lease = MemoryLease()
    assert await lease.acquire("a", at(1), hold_s=120)
    assert not await lease.acquire("a", at(1), hold_s=120)
    assert await lease.acquire("b", at(1), hold_s=120)
    assert await lease.acquire("a", at(2), hold_s=120)
    assert not await lease.acquire("a", at(1), hold_s=120)


async def test_the_redis_lease_is_one_key_per_job_and_tick(redis: Redis) -> None:
    lease = RedisLease(redis)
    other_worker = RedisLease(redis)
    assert await lease.acquire("purge", at(1), hold_s=120)
    assert not await other_worker.acquire("purge", at(1), hold_s=120)
    assert await other_worker.acquire("purge", at(2), hold_s=120)
    assert await other_worker.acquire("requeue", at(1), hold_s=120)
    key = f"herald:cron:purge:{int(at(1).timestamp())}"
    assert lease.key("purge", at(1)) == key
    assert await redis.exists(key)
    ttl_ms = await redis.pttl(key)
    assert 86_300_000 < ttl_ms <= 86_400_000, "a day at least"
    assert await lease.acquire("yearly", at(1), hold_s=2 * 365 * 86_400)
    assert await redis.pttl(lease.key("yearly", at(1))) > 86_400_000 * 700


async def test_two_workers_with_skewed_clocks_run_each_tick_exactly_once(redis_url: str) -> None:
    """Two schedulers on one Redis, clocks 4 s apart (+2 s and -2 s), ten times faster than real time."""
    clients = [Redis.from_url(redis_url), Redis.from_url(redis_url)]
    leases = [RecordingLease(RedisLease(client)) for client in clients]
    runs = [Runs(), Runs()]
    schedulers = [
        CronScheduler(
            [CronJob(name="every_second", cron="* * * * * *", function=runs[n].job)],
            leases[n],
            dict,
            clock=FastClock(speed=10, skew_s=skew_s),
        )
        for n, skew_s in enumerate([2.0, -2.0])
    ]

    def common_ticks() -> set[datetime]:
        return {t for _, t, _ in leases[0].asked} & {t for _, t, _ in leases[1].asked}

    try:
        for scheduler in schedulers:
            await scheduler.start()
        await eventually(lambda: len(common_ticks()) >= 5, timeout_s=10, what="five ticks asked by both")
        for lease in leases:
            lease.closed = True  # no new runs from here on
        wins = len(leases[0].won()) + len(leases[1].won())
        await eventually(lambda: len(runs[0].ctxs) + len(runs[1].ctxs) == wins, what="every won tick to run")
    finally:
        for scheduler in schedulers:
            await scheduler.stop()
        for client in clients:
            await client.aclose()
    winners: dict[datetime, int] = {}
    for lease in leases:
        for _, tick, won in lease.asked:
            winners[tick] = winners.get(tick, 0) + won
    assert winners
    assert all(count == 1 for count in winners.values()), winners
    # The worker whose clock is ahead asks first for every tick both asked for, and wins it.
    assert common_ticks() <= set(leases[0].won())
    assert len(runs[0].ctxs) + len(runs[1].ctxs) == len(winners)
