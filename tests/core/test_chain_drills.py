"""Crash drills for chains in arq mode: a real redis-server, real worker processes, SIGKILL mid-chain.

The first drill kills the worker while a step runs; the second freezes it right after the first Redis
write that follows a step's success and kills it there, where a step's record and its successor written
separately (not in one script) would lose one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import TracebackType

import pytest
from arq.constants import default_queue_name, job_key_prefix
from redis.asyncio import Redis

from core.arq_backend import ArqBackend
from core.arq_enqueue import DEFERRED_KEY
from core.arq_worker import RUNNING_KEY
from core.jobs import JobState
from core.queue import ComposedStatus, TaskQueue
from core.redis_stores import JOB_PREFIX
from core.registry import TaskRegistry
from core.taskset import chain
from tests.support.drill_tasks import EVENTS_PATH_VAR, Event, add, drill, read_events
from tests.support.processes import WORKER_COMMANDS, Process, Processes, child_env
from tests.support.redis_server import RedisServer
from tests.support.waiting import eventually

HEARTBEAT_S = 0.5
KEEP_S = 3600.0
CRASH_STEP = 3  # the first worker is killed while it runs (first drill) or right after it succeeds (second)
# A killed worker's job runs again once arq's in-progress key expires: the longest arq timeout of any
# task the worker runs + 10 s. Herald's delivery tasks run in every worker with policy timeout
# SMTP/WEBHOOK_TIMEOUT_S + 5 and arq's 5 s margin on top, so with 0.1 s below that is 10.1 + 10 = 20.1 s.
RECOVERY_BOUND_S = 40.0
NOTHING_LEFT = {"queued": 0, "arq job keys": 0, "running": 0, "deferred": 0}


@pytest.fixture
async def queue(redis_client: Redis) -> AsyncIterator[TaskQueue]:
    """The web side without a worker: the drill TaskSet bound to a TaskQueue over an ArqBackend."""
    registry = TaskRegistry()
    drill.register(registry)
    backend = ArqBackend(registry, redis_client, record_ttl_s=KEEP_S, heartbeat_interval_s=HEARTBEAT_S)
    await backend.start()
    task_queue = TaskQueue(backend, registry, key_ttl_s=KEEP_S)
    drill.bind(task_queue)
    try:
        yield task_queue
    finally:
        drill.bind(None)
        await backend.stop(0)


def _worker(processes: Processes, entry: str, redis_url: str, events: Path) -> Process:
    env = child_env(
        REDIS_URL=redis_url,
        TASK_MODULES="tests.support.drill_tasks:drill",
        WORKER_POLL_DELAY_S="0.05",
        HEARTBEAT_INTERVAL_S=str(HEARTBEAT_S),
        WORKER_METRICS_PORT="0",
        SMTP_TIMEOUT_S="0.1",  # see RECOVERY_BOUND_S
        WEBHOOK_TIMEOUT_S="0.1",
        **{EVENTS_PATH_VAR: str(events)},
    )
    return processes.start(f"worker-{entry}", WORKER_COMMANDS[entry], env)


async def _leftovers(redis: Redis) -> dict[str, int]:
    """What is still on arq's queue, of arq's job keys, and in Herald's running and deferred sets."""
    return {
        "queued": await redis.zcard(default_queue_name),
        "arq job keys": len([key async for key in redis.scan_iter(job_key_prefix + "*")]),
        "running": await redis.zcard(RUNNING_KEY),
        "deferred": await redis.zcard(DEFERRED_KEY),
    }


def _states(status: ComposedStatus) -> list[JobState | None]:
    return [record.state if record else None for _, _, record in status.jobs]


def _attempts(status: ComposedStatus) -> list[int | None]:
    return [record.attempts if record else None for _, _, record in status.jobs]


def _count(events: list[Event], what: str) -> dict[int, int]:
    return dict(sorted(Counter(e.step for e in events if e.event == what).items()))


@pytest.mark.slow
async def test_sigkill_mid_chain_then_a_new_worker_completes_it_recording_each_step_once(
    processes: Processes, redis_url: str, redis_client: Redis, queue: TaskQueue, tmp_path: Path
) -> None:
    """5 steps, each adding its number; the worker is SIGKILLed while step 3 runs (it stalls on its
    first attempt), and a new worker (the other entry point) takes the chain to its end."""
    events_path = tmp_path / "events.jsonl"
    handle = await chain(add.s(0, 1), add.s(2), add.s(CRASH_STEP, stall_on_first_attempt=True), add.s(4), add.s(5))
    first = _worker(processes, "python-m", redis_url, events_path)

    def stalled_step_started() -> bool:
        assert first.running, f"the first worker exited early:\n{first.log()}"
        return any(e.event == "started" and e.step == CRASH_STEP for e in read_events(events_path))

    await eventually(stalled_step_started, timeout_s=20, what=f"step {CRASH_STEP} to start")
    first.kill()
    killed_at = time.monotonic()
    at_kill = await handle.status()
    events_at_kill = read_events(events_path)
    # Steps 1-2 done and recorded, step 3 mid-attempt, step 4 not enqueued yet.
    assert _states(at_kill) == [JobState.SUCCEEDED, JobState.SUCCEEDED, JobState.RUNNING, None, None], first.log()
    assert at_kill.state is JobState.RUNNING
    assert _count(events_at_kill, "started") == {1: 1, 2: 1, 3: 1}
    assert _count(events_at_kill, "finished") == {1: 1, 2: 1}, "the kill landed mid-step, before it finished"
    second = _worker(processes, "arq-cli", redis_url, events_path)

    async def chain_finished() -> bool:
        assert second.running, f"the new worker exited:\n{second.log()}"
        return (await handle.status()).state.is_terminal

    await eventually(chain_finished, timeout_s=RECOVERY_BOUND_S, what="the chain to finish on the new worker")
    finished_after_s = time.monotonic() - killed_at
    final = await handle.status()
    result = await handle.result(timeout=1)
    events = read_events(events_path)
    starts = [e for e in events if e.event == "started" and e.step == CRASH_STEP]

    async def cleared() -> bool:
        return await _leftovers(redis_client) == NOTHING_LEFT

    # The last record says succeeded a moment before arq and run_job drop their own keys.
    with contextlib.suppress(AssertionError):
        await eventually(cleared, timeout_s=5, what="the queue and its bookkeeping to empty")
    leftovers = await _leftovers(redis_client)
    records = await queue.list(limit=100)
    crash_record = final.jobs[CRASH_STEP - 1][2]
    print(
        f"\nchain crash drill: step {CRASH_STEP} re-run {starts[-1].at - starts[0].at:.1f}s after its first start "
        f"(note {crash_record.last_error if crash_record else None!r}); "
        f"chain finished {finished_after_s:.1f}s after the kill; "
        f"started per step {_count(events, 'started')}, finished per step {_count(events, 'finished')}; "
        f"attempts {_attempts(final)}"
    )

    ids = [job_id for job_id, _, _ in final.jobs]
    # The new worker finished the chain: every step succeeded with its own result.
    assert final.kind == "chain"
    assert final.state is JobState.SUCCEEDED, (final, second.log())
    assert result == 15
    assert final.results == [1, 3, 6, 10, 15]
    assert [task for _, task, _ in final.jobs] == [add.name] * 5
    for job_id, _, record in final.jobs:
        assert record is not None
        assert (record.id, record.state, record.parent) == (job_id, JobState.SUCCEEDED, handle.id)
    # Only the killed attempt was lost: step 3 ran again (its second attempt, on the new worker).
    assert _attempts(final) == [1, 1, 2, 1, 1]
    assert _count(events, "started") == {1: 1, 2: 1, 3: 2, 4: 1, 5: 1}, second.log()
    assert _count(events, "finished") == {1: 1, 2: 1, 3: 1, 4: 1, 5: 1}, "each result was produced once"
    assert [(e.step, e.job_id) for e in events if e.event == "finished"] == list(enumerate(ids, start=1))
    assert {e.pid for e in events_at_kill} == {first.pid}
    assert {e.pid for e in events if e not in events_at_kill} == {second.pid}
    assert [(e.job_id, e.attempt, e.pid) for e in starts] == [
        (ids[CRASH_STEP - 1], 1, first.pid),
        (ids[CRASH_STEP - 1], 2, second.pid),
    ]

    # No job beyond the chain's five (none twice, none left behind), and nothing of arq's or Herald's
    # bookkeeping left over.
    assert sorted(r.id for r in records) == sorted(ids)
    assert all(r.parent == handle.id for r in records)
    assert leftovers == NOTHING_LEFT


Command = list[bytes]


def _next_command(buffer: bytes) -> tuple[Command, int] | None:
    """The first whole command in ``buffer`` (a RESP array of bulk strings, as clients send them) and its
    length in bytes; None until all of it has arrived."""
    if not buffer:
        return None
    if not buffer.startswith(b"*"):
        raise ValueError(f"not a RESP command: {buffer[:20]!r}")
    end = buffer.find(b"\r\n")
    if end < 0:
        return None
    count, position, command = int(buffer[1:end]), end + 2, []
    for _ in range(count):
        end = buffer.find(b"\r\n", position)
        if end < 0:
            return None
        start = end + 2
        stop = start + int(buffer[position + 1 : end])  # "$<length>"
        if len(buffer) < stop + 2:
            return None
        command.append(buffer[start:stop])
        position = stop + 2
    return command, position


class FreezingProxy:
    """A TCP proxy in front of Redis for one process: whole commands pass until one that ``trips`` does;
    after it, every command of every connection is held (never sent). ``answered`` is set once Redis has
    replied to the tripping command, so the process is then stopped right after that write, for good."""

    def __init__(self, upstream_port: int, trips: Callable[[Command], bool]) -> None:
        self._upstream_port = upstream_port
        self._trips = trips
        self.frozen = False
        self.answered = asyncio.Event()
        self.failures: list[BaseException] = []  # a proxy that breaks must fail the test, not look like Redis
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._pumps: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for pump in self._pumps:
            pump.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        tripped_here = asyncio.Event()
        pumps = {
            asyncio.create_task(self._requests(client_reader, upstream_writer, tripped_here)),
            asyncio.create_task(self._replies(upstream_reader, client_writer, tripped_here)),
        }
        self._pumps |= pumps
        try:
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            self.failures += [error for pump in done if (error := pump.exception()) is not None]
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._pumps -= pumps
            for writer in (upstream_writer, client_writer):
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    async def _requests(
        self, reader: asyncio.StreamReader, upstream: asyncio.StreamWriter, tripped_here: asyncio.Event
    ) -> None:
        buffer = b""
        while chunk := await reader.read(65536):
            buffer += chunk
            while not self.frozen and (found := _next_command(buffer)) is not None:
                command, size = found
                upstream.write(buffer[:size])
                buffer = buffer[size:]
                if self._trips(command):
                    self.frozen = True
                    tripped_here.set()
            await upstream.drain()

    async def _replies(
        self, upstream: asyncio.StreamReader, writer: asyncio.StreamWriter, tripped_here: asyncio.Event
    ) -> None:
        while chunk := await upstream.read(65536):
            writer.write(chunk)
            await writer.drain()
            # A connection of a redis-py pool carries one command at a time: what comes back after the
            # tripping command is its reply.
            if tripped_here.is_set():
                self.answered.set()


def _finishing(step_id: str, next_id: str) -> Callable[[Command], bool]:
    """Trips on the first script that writes ``step_id``'s record as succeeded or ``next_id``'s record."""
    next_record_key = (JOB_PREFIX + next_id).encode()

    def succeeded_record(arg: bytes) -> bool:
        try:
            value = json.loads(arg) if arg.startswith(b"{") else None
        except ValueError:
            return False
        return isinstance(value, dict) and value.get("id") == step_id and value.get("state") == JobState.SUCCEEDED

    def trips(command: Command) -> bool:
        # Steps 1 and 2 went through the same writes, so these scripts are in Redis' cache: no NOSCRIPT
        # reply (and reload) can come between the tripping command and its effect.
        if command[0].upper() not in (b"EVAL", b"EVALSHA"):
            return False
        return any(arg == next_record_key or succeeded_record(arg) for arg in command[1:])

    return trips


@pytest.mark.slow
async def test_sigkill_right_after_a_step_succeeds_keeps_its_record_and_its_successor_together(
    processes: Processes,
    redis_server: RedisServer,
    redis_url: str,
    redis_client: Redis,
    queue: TaskQueue,
    tmp_path: Path,
) -> None:
    """The first worker reaches Redis through a proxy that holds everything after the first write that
    records step 3's success or enqueues step 4; killed there, the chain must still have both (one
    script) and finish on a new worker with every step run once."""
    events_path = tmp_path / "events.jsonl"
    handle = await chain(add.s(0, 1), add.s(2), add.s(3), add.s(4), add.s(5))
    ids = [job_id for job_id, _, _ in (await handle.status()).jobs]
    proxy = FreezingProxy(redis_server.port, _finishing(ids[CRASH_STEP - 1], ids[CRASH_STEP]))
    async with proxy as proxied_url:
        first = _worker(processes, "python-m", proxied_url, events_path)

        def frozen_after_the_write() -> bool:
            assert first.running, f"the first worker exited early:\n{first.log()}"
            assert not proxy.failures, proxy.failures
            return proxy.answered.is_set()

        await eventually(frozen_after_the_write, timeout_s=20, what=f"the first write after step {CRASH_STEP} succeeds")
        first.kill()
    killed_at = time.monotonic()
    at_kill = await handle.status()
    events_at_kill = read_events(events_path)
    assert _states(at_kill) == [
        JobState.SUCCEEDED,
        JobState.SUCCEEDED,
        JobState.SUCCEEDED,
        JobState.QUEUED,
        None,
    ], "step 3's success and step 4's job are written together or not at all"
    assert _count(events_at_kill, "finished") == {1: 1, 2: 1, 3: 1}
    second = _worker(processes, "arq-cli", redis_url, events_path)

    async def chain_finished() -> bool:
        assert second.running, f"the new worker exited:\n{second.log()}"
        return (await handle.status()).state.is_terminal

    # Step 4 was queued with step 3's success: the new worker needs no recovery to go on.
    await eventually(chain_finished, timeout_s=15, what="the chain to finish on the new worker")
    finished_after_s = time.monotonic() - killed_at
    final = await handle.status()

    async def cleared() -> bool:
        return await _leftovers(redis_client) == NOTHING_LEFT

    # Step 3's own arq job is still held by the killed worker; once arq lets it go, the new worker must
    # drop it (its record is finished) rather than run step 3 again.
    with contextlib.suppress(AssertionError):
        await eventually(cleared, timeout_s=RECOVERY_BOUND_S, what="the killed worker's step to be let go")
    assert second.running, f"the new worker exited:\n{second.log()}"
    cleared_after_s = time.monotonic() - killed_at
    leftovers = await _leftovers(redis_client)
    events = read_events(events_path)
    records = await queue.list(limit=100)
    print(
        f"\nchain finishing-write drill: states at the kill {[str(s) for s in _states(at_kill)]}; "
        f"chain finished {finished_after_s:.1f}s and the killed step's arq job was let go {cleared_after_s:.1f}s "
        f"after the kill; started per step {_count(events, 'started')}; attempts {_attempts(final)}"
    )

    assert final.state is JobState.SUCCEEDED, (final, second.log())
    assert await handle.result(timeout=1) == 15
    assert final.results == [1, 3, 6, 10, 15]
    assert _attempts(final) == [1, 1, 1, 1, 1]
    assert _count(events, "started") == _count(events, "finished") == {1: 1, 2: 1, 3: 1, 4: 1, 5: 1}
    assert {e.pid for e in events if e.step > CRASH_STEP} == {second.pid}
    assert sorted(r.id for r in records) == sorted(ids)
    assert leftovers == NOTHING_LEFT
