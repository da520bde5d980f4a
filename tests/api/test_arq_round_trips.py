"""arq mode: POST /notify writes everything in one script, and requests arriving together share a round trip."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from core.arq_enqueue import ScriptBatch
from tests.support.smtp import free_port

REQUESTS = 20
_ECHO_OR_FAIL = "if ARGV[1] == 'bad' then return redis.error_reply('bad argument') end return KEYS[1] .. ARGV[1]"


def _body(n: int) -> dict[str, Any]:
    return {"to": [{"channel": "email", "address": f"user{n}@example.com"}], "subject": "s", "text": "t"}


async def _reads_and_scripts(redis: Redis) -> tuple[int, int]:
    """How many times Redis read from its clients, and how many scripts it ran (EVALSHA)."""
    stats = await redis.info("stats")
    commands = await redis.info("commandstats")
    return int(stats["total_reads_processed"]), int(commands.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_requests_arriving_together_share_one_pipeline(
    client_for: Any, redis_url: str, redis_client: Redis
) -> None:
    async with client_for(TASK_BACKEND="arq", REDIS_URL=redis_url) as client:
        assert (await client.post("/notify", json=_body(0))).status_code == 202  # the script is loaded now
        reads_before, scripts_before = await _reads_and_scripts(redis_client)
        responses = await asyncio.gather(*(client.post("/notify", json=_body(n)) for n in range(REQUESTS)))
        reads_after, scripts_after = await _reads_and_scripts(redis_client)

    assert [r.status_code for r in responses] == [202] * REQUESTS
    assert len({r.json()["id"] for r in responses}) == REQUESTS
    assert scripts_after - scripts_before == REQUESTS  # one script per request, nothing else
    # One script per request in one write: Redis reads the ~60 KB pipeline in a few chunks, not 20 times.
    assert reads_after - reads_before <= REQUESTS // 4
    for response in responses:
        assert await redis_client.exists(f"herald:doc:ntf:{response.json()['id']}") == 1


async def test_concurrent_requests_with_one_key_make_one_notification(client_for: Any, redis_url: str) -> None:
    async with client_for(TASK_BACKEND="arq", REDIS_URL=redis_url) as client:
        responses = await asyncio.gather(
            *(client.post("/notify", json=_body(1), headers={"Idempotency-Key": "same"}) for _ in range(5))
        )
    assert [r.status_code for r in responses] == [202] * 5
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 4


async def test_a_script_flushed_from_redis_is_loaded_again(
    client_for: Any, redis_url: str, redis_client: Redis
) -> None:
    async with client_for(TASK_BACKEND="arq", REDIS_URL=redis_url) as client:
        first = await client.post("/notify", json=_body(1))
        await redis_client.script_flush()  # as after a Redis restart
        again = await asyncio.gather(*(client.post("/notify", json=_body(n)) for n in range(3)))
    assert first.status_code == 202
    assert [r.status_code for r in again] == [202, 202, 202]


async def test_each_caller_gets_its_own_answer_or_error(redis_client: Redis) -> None:
    batch = ScriptBatch(redis_client, _ECHO_OR_FAIL)
    results = await asyncio.gather(
        batch(["k"], ["1"]), batch(["k"], ["bad"]), batch(["k"], ["3"]), return_exceptions=True
    )
    assert results[0] == b"k1"
    assert isinstance(results[1], ResponseError)
    assert "bad argument" in str(results[1])
    assert results[2] == b"k3"


async def test_when_redis_is_unreachable_every_caller_is_told() -> None:
    redis = Redis(port=free_port(), socket_connect_timeout=0.5)
    try:
        batch = ScriptBatch(redis, _ECHO_OR_FAIL)
        results = await asyncio.gather(*(batch(["k"], [str(n)]) for n in range(3)), return_exceptions=True)
    finally:
        await redis.aclose()
    assert all(isinstance(result, RedisConnectionError) for result in results), results


async def test_a_cancelled_caller_does_not_disturb_the_others(redis_client: Redis) -> None:
    batch = ScriptBatch(redis_client, _ECHO_OR_FAIL)
    cancelled = asyncio.ensure_future(batch(["k"], ["x"]))
    kept = asyncio.ensure_future(batch(["k"], ["y"]))
    await asyncio.sleep(0)
    cancelled.cancel()
    assert await kept == b"ky"
    with pytest.raises(asyncio.CancelledError):
        await cancelled
