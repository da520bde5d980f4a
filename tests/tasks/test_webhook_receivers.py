"""Misbehaving receivers: raw asyncio servers on 127.0.0.1 (tests/support/hostile_receivers.py).

Each drill bounds the sender in time (WEBHOOK_TIMEOUT_S is 0.5 s here; a test-level cap turns a hang into a
failure instead of a pytest-timeout) and in bytes: the ``LoopbackDialler`` under the guard counts what was
read from the socket, the receiver counts what its socket took.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from core.config import Settings
from core.errors import PermanentError, RetryableError
from core.jobs import JobState
from tasks.channels.webhook import ERROR_BODY_BYTES, SUCCESS_BODY_BYTES
from tasks.channels.webhook_client import WebhookClient
from tasks.delivery import send_webhook
from tests.support.hostile_receivers import (
    Behaviour,
    LoopbackDialler,
    answer,
    blast,
    drill_client,
    drip,
    endless_headers,
    hostile_receiver,
    in_turn,
    never_answer,
    status_head,
)
from tests.support.waiting import eventually
from tests.tasks.helpers import deliver, delivery_context, inline_runner, make_payload

pytestmark = pytest.mark.drill  # docs/guarantees.md; `make drills` runs it with the rest

SettingsFactory = Callable[..., Settings]
TIMEOUT_S = 0.5
MARGIN_S = 0.75  # scheduling slack on a shared 2-core machine; a hang is caught by HANG_S
HANG_S = 5.0
READ_CHUNK_BYTES = 64 * 1024  # httpcore reads the socket in chunks of this size
HEAD_BYTES = 1024  # room for a status line and a few headers
TEN_MB = 10 * 1024 * 1024


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(WEBHOOK_ALLOW_PRIVATE=True, WEBHOOK_TIMEOUT_S=TIMEOUT_S)


async def send_once(settings: Settings, client: WebhookClient, url: str) -> tuple[float, int | BaseException]:
    """One send_webhook through ``client``: (seconds it took, status or the error it raised)."""
    async with delivery_context(settings) as ctx:
        ctx["webhooks"] = client
        started = time.monotonic()
        outcome: int | BaseException
        try:
            async with asyncio.timeout(HANG_S):  # a hang fails here, cleanly, instead of at pytest's timeout
                outcome = await send_webhook(ctx, make_payload(address=url))
        except (RetryableError, PermanentError) as exc:
            outcome = exc
        return time.monotonic() - started, outcome


async def test_a_receiver_that_never_answers_times_out_retryably(settings: Settings) -> None:
    dialler = LoopbackDialler()
    async with hostile_receiver(never_answer()) as server, drill_client(settings, dialler) as client:
        elapsed_s, outcome = await send_once(settings, client, server.url())

        assert isinstance(outcome, RetryableError)
        assert outcome.reason.startswith("timed out")
        assert TIMEOUT_S * 0.9 <= elapsed_s < TIMEOUT_S + MARGIN_S
        [connection] = server.connections
        await eventually(lambda: connection.peer_gone_at is not None, what="the sender to hang up")


async def test_the_runner_gives_up_on_a_silent_receiver_after_max_attempts(make_settings: SettingsFactory) -> None:
    settings = make_settings(WEBHOOK_ALLOW_PRIVATE=True, WEBHOOK_TIMEOUT_S=TIMEOUT_S, WEBHOOK_MAX_ATTEMPTS=2)
    async with (
        hostile_receiver(never_answer()) as server,
        inline_runner(settings, webhooks=drill_client(settings, LoopbackDialler())) as backend,
    ):
        record = await deliver(backend, make_payload(address=server.url()))

    assert record.state is JobState.FAILED
    assert record.attempts == 2
    assert record.last_error is not None
    assert record.last_error.startswith("gave up after 2 attempts: timed out")
    assert len(server.connections) == 2


@pytest.mark.parametrize(
    ("behaviour", "what"),
    [
        (drip(status_head(200, content_length=10**9), every_s=0.02), "a 2xx body, a byte at a time"),
        (drip(status_head(500, content_length=10**9), every_s=0.02), "an error body, a byte at a time"),
        (drip(b"HTTP/1.1 200 OK\r\nx-slow: ", every_s=0.02), "a header line, a byte at a time"),
    ],
    ids=["2xx-body", "error-body", "headers"],
)
async def test_a_dripping_receiver_is_cut_off_at_the_timeout(
    settings: Settings, behaviour: Behaviour, what: str
) -> None:
    """Each byte comes well inside the per-read timeout, so only a deadline on the whole exchange ends it."""
    dialler = LoopbackDialler()
    async with hostile_receiver(behaviour) as server, drill_client(settings, dialler) as client:
        elapsed_s, outcome = await send_once(settings, client, server.url())

        assert isinstance(outcome, RetryableError), (what, outcome)
        assert outcome.reason == "timed out (DeadlineExceeded)"
        assert elapsed_s < TIMEOUT_S + MARGIN_S, what
        assert dialler.bytes_read < HEAD_BYTES + 100  # a few dozen dripped bytes, nothing piled up
        [connection] = server.connections
        await eventually(lambda: connection.peer_gone_at is not None, what="the sender to hang up")


@pytest.mark.parametrize(
    ("status", "cap_bytes"),
    [(200, SUCCESS_BODY_BYTES), (400, ERROR_BODY_BYTES)],
)
async def test_a_ten_megabyte_answer_is_not_read_past_the_cap(settings: Settings, status: int, cap_bytes: int) -> None:
    dialler = LoopbackDialler()
    behaviour = blast(status_head(status, content_length=TEN_MB), total_bytes=TEN_MB)
    async with hostile_receiver(behaviour) as server, drill_client(settings, dialler) as client:
        elapsed_s, outcome = await send_once(settings, client, server.url())

        [connection] = server.connections
        await eventually(lambda: connection.peer_gone_at is not None, what="the sender to hang up")

    if status == 200:
        assert outcome == 200
    else:
        assert isinstance(outcome, PermanentError)
        assert outcome.reason == "HTTP 400: " + "x" * ERROR_BODY_BYTES
    assert elapsed_s < TIMEOUT_S + MARGIN_S
    # read from the socket: the cap, rounded up to httpcore's read chunk, plus the head
    assert dialler.bytes_read <= cap_bytes + READ_CHUNK_BYTES + HEAD_BYTES
    # taken by the receiver's socket: that, plus what the kernel buffers on both sides; never the whole body
    assert not connection.finished
    assert connection.bytes_sent < TEN_MB // 4


async def test_410_gone_fails_at_once(make_settings: SettingsFactory) -> None:
    settings = make_settings(WEBHOOK_ALLOW_PRIVATE=True, WEBHOOK_TIMEOUT_S=TIMEOUT_S)
    async with (
        hostile_receiver(answer(410, body=b"this endpoint is gone")) as server,
        inline_runner(settings, webhooks=drill_client(settings, LoopbackDialler())) as backend,
    ):
        record = await deliver(backend, make_payload(address=server.url()))

    assert record.state is JobState.FAILED
    assert record.attempts == 1
    assert record.last_error == "HTTP 410: this endpoint is gone"
    assert len(server.connections) == 1


async def test_429_is_retryable_and_carries_retry_after(settings: Settings) -> None:
    async with (
        hostile_receiver(answer(429, headers=[("retry-after", "3")], body=b"slow down")) as server,
        drill_client(settings, LoopbackDialler()) as client,
    ):
        _, outcome = await send_once(settings, client, server.url())

    assert isinstance(outcome, RetryableError)
    assert outcome.status_code == 429
    assert outcome.retry_after_s == 3.0
    assert outcome.reason == "HTTP 429: slow down"


async def test_the_runner_waits_as_long_as_retry_after_asks(make_settings: SettingsFactory) -> None:
    # the back-off alone would retry after 0.01 s; Retry-After: 1 (under RETRY_MAX_DELAY_S) must win
    settings = make_settings(
        WEBHOOK_ALLOW_PRIVATE=True, WEBHOOK_TIMEOUT_S=TIMEOUT_S, RETRY_BASE_DELAY_S=0.01, RETRY_MAX_DELAY_S=5.0
    )
    behaviour = in_turn(answer(429, headers=[("retry-after", "1")]), answer(200, body=b"ok"))
    async with (
        hostile_receiver(behaviour) as server,
        inline_runner(settings, webhooks=drill_client(settings, LoopbackDialler())) as backend,
    ):
        record = await deliver(backend, make_payload(address=server.url()))

    assert record.state is JobState.SUCCEEDED
    assert record.attempts == 2
    first, second = server.connections
    assert second.opened_at - first.opened_at >= 0.95


@pytest.mark.parametrize(
    "behaviour",
    [
        blast(b"HTTP/1.1 200 OK\r\nx-huge: ", total_bytes=1024 * 1024, fill=b"a"),  # one 1 MB header line
        endless_headers(),  # short header lines for ever, never the blank line
    ],
    ids=["huge-header-line", "endless-header-block"],
)
async def test_an_oversized_header_block_fails_cleanly_and_retryably(settings: Settings, behaviour: Behaviour) -> None:
    """h11 (under httpcore) gives up on a head over 100 KiB: a protocol error, retried, well before the timeout."""
    dialler = LoopbackDialler()
    async with hostile_receiver(behaviour) as server, drill_client(settings, dialler) as client:
        elapsed_s, outcome = await send_once(settings, client, server.url())

        assert isinstance(outcome, RetryableError)
        assert outcome.reason.startswith("connection failed: RemoteProtocolError")
        assert elapsed_s < TIMEOUT_S  # refused on size, not on time
        assert dialler.bytes_read <= 100 * 1024 + 2 * READ_CHUNK_BYTES
        [connection] = server.connections
        await eventually(lambda: connection.peer_gone_at is not None, what="the sender to hang up")
        assert not connection.finished
