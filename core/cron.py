"""Cron jobs: async functions run on a UTC cron schedule, once per tick however many processes run them.

Every process that runs a :class:`CronScheduler` works out the same ticks from the same cron
expressions. At each tick it asks a :class:`Lease` for ``(job name, tick)``; only the process that
gets it runs the job. The lease key names the *tick* (not "now"), so schedulers whose clocks
disagree by a few seconds still ask for the same key: the first one wins, the late one is refused.

- :class:`MemoryLease`: one process (in-process mode).
- :class:`RedisLease`: ``SET herald:cron:<name>:<tick epoch s> NX PX <ttl>``, shared by every worker.

Ticks missed while nothing was running are not replayed: a scheduler starts with the first tick
after it starts, and if it wakes late (a blocked loop, a suspended machine) it runs the latest due
tick once, not every tick it slept through.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar, cast

from cronsim import CronSim, CronSimError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.redis_stores import unavailable

logger = logging.getLogger("herald.cron")

Ctx = TypeVar("Ctx")

LEASE_PREFIX = "herald:cron:"
HISTORY_KEY = "herald:cron-runs"
MIN_LEASE_TTL_S = 86_400.0  # a tick's key outlives any plausible clock skew
DEFAULT_JOB_TIMEOUT_S = 300.0
STOP_WAIT_S = 2.0
MIN_SLEEP_S = 0.001  # never spin on a sleep that asyncio ends a hair early
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


def _as_utc(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise ValueError("cron times must be timezone-aware")
    return when.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class CronJob(Generic[Ctx]):
    """``function(ctx)`` run at every tick of ``cron``, a cron expression read in UTC.

    ``cron`` has 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first.
    Raises ValueError at definition time if the name or the expression is invalid.
    """

    name: str
    cron: str
    function: Callable[[Ctx], Awaitable[Any]]
    timeout_s: float = DEFAULT_JOB_TIMEOUT_S

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"cron job name {self.name!r} must be 1-100 of A-Z a-z 0-9 _ . -")
        if not self.timeout_s > 0:
            raise ValueError(f"cron job {self.name!r}: timeout_s must be positive")
        try:
            next(CronSim(self.cron, _EPOCH))
        except (CronSimError, AttributeError, TypeError) as exc:
            raise ValueError(
                f"cron job {self.name!r}: invalid cron expression {self.cron!r} ({exc}); expected 5 fields "
                "'minute hour day-of-month month day-of-week' in UTC, or 6 with seconds first"
            ) from exc

    def next_tick(self, after: datetime) -> datetime:
        """The first tick strictly after ``after`` (timezone-aware), in UTC."""
        return next(CronSim(self.cron, _as_utc(after)))

    def latest_tick(self, at: datetime) -> datetime:
        """The last tick at or before ``at`` (timezone-aware), in UTC."""
        # Walking back, cronsim yields ticks at or before the whole second below its start; starting
        # 1 µs after ``at`` makes that second ``at``'s own.
        return next(CronSim(self.cron, _as_utc(at) + _ONE_US, reverse=True))


class CronSchedule(Generic[Ctx]):
    """The cron jobs of an application, added explicitly in one place."""

    def __init__(self) -> None:
        self._jobs: dict[str, CronJob[Ctx]] = {}

    def add(
        self,
        function: Callable[[Ctx], Awaitable[Any]],
        *,
        cron: str,
        name: str | None = None,
        timeout_s: float = DEFAULT_JOB_TIMEOUT_S,
    ) -> CronJob[Ctx]:
        """Add ``function`` under ``name`` (default: its own name). Raises ValueError if invalid or taken."""
        job = CronJob(name=name or function.__name__, cron=cron, function=function, timeout_s=timeout_s)
        if job.name in self._jobs:
            raise ValueError(f"cron job {job.name!r} is already scheduled")
        self._jobs[job.name] = job
        return job

    def __iter__(self) -> Iterator[CronJob[Ctx]]:
        return iter(self._jobs.values())

    def __len__(self) -> int:
        return len(self._jobs)


class Lease(Protocol):
    async def acquire(self, name: str, tick: datetime, *, hold_s: float) -> bool:
        """True for exactly one caller per ``(name, tick)``; ``hold_s`` is how long the answer must hold."""
        ...


class MemoryLease:
    """One process's lease: a tick is granted once, and never one older than the last one granted.

    Keeps only the latest granted tick per job, so it stays small however long the process runs.
    """

    def __init__(self) -> None:
        self._latest: dict[str, datetime] = {}

    async def acquire(self, name: str, tick: datetime, *, hold_s: float) -> bool:
        latest = self._latest.get(name)
        if latest is not None and tick <= latest:
            return False
        self._latest[name] = tick
        return True


class RedisLease:
    """A lease shared through Redis: ``SET <prefix><name>:<tick epoch s> <owner> NX PX <ttl>``.

    The TTL is at least ``min_ttl_s`` (a day) and twice the gap to the next tick, so the key
    outlives the window in which any scheduler could still ask for that tick.
    """

    def __init__(self, redis: Redis, *, prefix: str = LEASE_PREFIX, min_ttl_s: float = MIN_LEASE_TTL_S) -> None:
        self._redis = redis
        self._prefix = prefix
        self._min_ttl_s = min_ttl_s
        self._owner = f"{socket.gethostname()}:{os.getpid()}"

    def key(self, name: str, tick: datetime) -> str:
        return f"{self._prefix}{name}:{int(_as_utc(tick).timestamp())}"

    async def acquire(self, name: str, tick: datetime, *, hold_s: float) -> bool:
        ttl_ms = int(max(self._min_ttl_s, hold_s) * 1000)
        return bool(await self._redis.set(self.key(name, tick), self._owner, nx=True, px=ttl_ms))


@dataclass(frozen=True, slots=True)
class CronRun:
    """How a cron job's latest run went: its tick, ``succeeded`` / ``failed`` / ``timed_out``, and when it ended."""

    tick: datetime
    outcome: str
    finished_at: datetime
    error: str | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "tick": self.tick.isoformat(),
                "outcome": self.outcome,
                "finished_at": self.finished_at.isoformat(),
                "error": self.error,
            }
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> CronRun:
        data = json.loads(raw)
        return cls(
            tick=datetime.fromisoformat(data["tick"]),
            outcome=data["outcome"],
            finished_at=datetime.fromisoformat(data["finished_at"]),
            error=data.get("error"),
        )


class CronHistory(Protocol):
    async def record(self, name: str, run: CronRun) -> None: ...

    async def latest(self) -> dict[str, CronRun]: ...


class MemoryCronHistory:
    def __init__(self) -> None:
        self._runs: dict[str, CronRun] = {}

    async def record(self, name: str, run: CronRun) -> None:
        self._runs[name] = run

    async def latest(self) -> dict[str, CronRun]:
        return dict(self._runs)


class RedisCronHistory:
    """The latest run of each cron job in one hash, ``herald:cron-runs``, shared by every process."""

    def __init__(self, redis: Redis, *, key: str = HISTORY_KEY) -> None:
        self._redis = redis
        self._key = key

    async def record(self, name: str, run: CronRun) -> None:
        try:
            await cast(Awaitable[int], self._redis.hset(self._key, name, run.to_json()))  # redis-py types sync|async
        except RedisError as exc:
            raise unavailable(exc) from exc

    async def latest(self) -> dict[str, CronRun]:
        try:
            raw = await cast(Awaitable[dict[bytes, bytes]], self._redis.hgetall(self._key))
        except RedisError as exc:
            raise unavailable(exc) from exc
        return {name.decode(): CronRun.from_json(value) for name, value in raw.items()}


class Clock(Protocol):
    def now(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass(slots=True)
class _Slot(Generic[Ctx]):
    job: CronJob[Ctx]
    due: datetime
    run: asyncio.Task[None] | None = None


class CronScheduler(Generic[Ctx]):
    """Runs ``jobs`` at their ticks, each tick only where ``lease`` grants it.

    ``ctx_factory()`` builds the argument of each run. A job that raises or times out is logged
    and runs again at its next tick; nothing a job does stops the loop. A job still running from
    its previous tick in this process is not started again (nor the lease taken, so another
    process may run that tick). ``clock`` is injectable so tests need not wait for real minutes.
    Use ``async with scheduler:`` or ``start()`` / ``stop()``.
    """

    def __init__(
        self,
        jobs: Iterable[CronJob[Ctx]],
        lease: Lease,
        ctx_factory: Callable[[], Ctx],
        *,
        clock: Clock | None = None,
        stop_wait_s: float = STOP_WAIT_S,
        history: CronHistory | None = None,
    ) -> None:
        self._history = history
        self._jobs = list(jobs)
        self._lease = lease
        self._ctx_factory = ctx_factory
        self._clock = clock or SystemClock()
        self._stop_wait_s = stop_wait_s
        self._loop_task: asyncio.Task[None] | None = None
        self._slots: list[_Slot[Ctx]] = []

    @property
    def running(self) -> bool:
        return self._loop_task is not None and not self._loop_task.done()

    async def start(self) -> None:
        if self.running:
            raise RuntimeError("the cron scheduler is already running")
        now = self._clock.now()
        self._slots = [_Slot(job=job, due=job.next_tick(now)) for job in self._jobs]
        for slot in self._slots:
            logger.info("cron job %s (%s UTC): next run at %s", slot.job.name, slot.job.cron, slot.due.isoformat())
        if self._slots:
            self._loop_task = asyncio.create_task(self._loop(), name="herald-cron")

    async def stop(self) -> None:
        """Cancel the loop and any running job, and wait for them (bounded: a job may swallow cancellation)."""
        tasks = [t for t in (self._loop_task, *(s.run for s in self._slots)) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self._stop_wait_s)
            if pending:
                logger.error("cron: %d tasks did not stop within %gs", len(pending), self._stop_wait_s)
        self._loop_task = None

    async def __aenter__(self) -> CronScheduler[Ctx]:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _loop(self) -> None:
        while True:
            now = self._clock.now()
            for slot in self._slots:
                if slot.due <= now:
                    await self._fire(slot, now)
            wait_s = (min(slot.due for slot in self._slots) - self._clock.now()).total_seconds()
            if wait_s > 0:
                await self._clock.sleep(max(wait_s, MIN_SLEEP_S))

    async def _fire(self, slot: _Slot[Ctx], now: datetime) -> None:
        job = slot.job
        tick = job.latest_tick(now)  # ticks slept through are not replayed
        slot.due = job.next_tick(tick)
        if slot.run is not None and not slot.run.done():
            logger.warning("cron job %s: its previous run is still going; skipping the %s tick", job.name, tick)
            return
        hold_s = 2 * (slot.due - tick).total_seconds()
        try:
            won = await self._lease.acquire(job.name, tick, hold_s=hold_s)
        except (RedisError, OSError) as exc:
            logger.warning("cron job %s: no lease for %s (%s); skipping it", job.name, tick, type(exc).__name__)
            return
        except Exception:
            logger.exception("cron job %s: the lease for %s failed; skipping it", job.name, tick)
            return
        if won:
            slot.run = asyncio.create_task(self._run(job, tick), name=f"herald-cron-{job.name}")

    async def _run(self, job: CronJob[Ctx], tick: datetime) -> None:
        deadline = asyncio.timeout(job.timeout_s)
        outcome, error = "succeeded", None
        try:
            async with deadline:
                result = await job.function(self._ctx_factory())
        except Exception as exc:
            if isinstance(exc, TimeoutError) and deadline.expired():
                outcome, error = "timed_out", f"timed out after {job.timeout_s:g}s"
                logger.error("cron job %s (tick %s) timed out after %gs", job.name, tick.isoformat(), job.timeout_s)
            else:
                outcome, error = "failed", f"{type(exc).__name__}: {exc}"[:500]
                logger.exception("cron job %s (tick %s) failed", job.name, tick.isoformat())
        else:
            logger.info("cron job %s (tick %s) done: %s", job.name, tick.isoformat(), result)
        if self._history is not None:
            run = CronRun(tick=tick, outcome=outcome, finished_at=self._clock.now(), error=error)
            try:
                await self._history.record(job.name, run)
            except Exception as exc:  # the history is for people; never let it stop the schedule
                logger.warning("cron job %s: could not record its run (%s)", job.name, type(exc).__name__)
