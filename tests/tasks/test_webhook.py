"""send_webhook against a real HTTP receiver on 127.0.0.1 (tests.support.receiver)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from core.config import Settings
from core.errors import PermanentError, RetryableError
from core.jobs import JobState
from tasks.channels.webhook import ERROR_BODY_BYTES, SUCCESS_BODY_BYTES, USER_AGENT, parse_retry_after
from tasks.delivery import send_webhook
from tasks.messages import DeliveryPayload
from tests.support.receiver import Receiver, Reply
from tests.tasks.helpers import deliver, delivery_context, inline_runner, make_payload

SettingsFactory = Callable[..., Settings]


def hook_payload(receiver: Receiver, path: str = "/hook") -> DeliveryPayload:
    return make_payload(
        address=receiver.url(path),
        event_type="user.welcomed",
        subject="Welcome, Ada",
        text="Hi Ada",
        template="welcome",
        context={"name": "Ada", "note": "naïve ✓"},
        metadata={"user_id": "42"},
    )


async def test_body_is_the_documented_json_and_the_signature_verifies(
    make_settings: SettingsFactory, receiver: Receiver
) -> None:
    payload = hook_payload(receiver)

    async with delivery_context(make_settings()) as ctx:
        status = await send_webhook(ctx, payload)

    assert status == 200
    [request] = receiver.received("/hook")
    assert request.verified is True
    assert request.headers["webhook-id"] == payload["delivery_id"]
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == USER_AGENT
    body = json.loads(request.body)
    assert set(body) == {"type", "timestamp", "data"}
    assert body["type"] == "user.welcomed"
    assert body["timestamp"] == payload["created_at"]
    assert body["data"] == {
        "notification_id": payload["notification_id"],
        "delivery_id": payload["delivery_id"],
        "template": "welcome",
        "subject": "Welcome, Ada",
        "text": "Hi Ada",
        "context": {"name": "Ada", "note": "naïve ✓"},
        "metadata": {"user_id": "42"},
    }


async def test_asks_for_an_uncompressed_answer(make_settings: SettingsFactory, receiver: Receiver) -> None:
    # The error excerpt is read raw (bounded, no decompression): httpx's default
    # "gzip, deflate" once let receivers answer with bytes that ended up in last_error as noise.
    async with delivery_context(make_settings()) as ctx:
        await send_webhook(ctx, hook_payload(receiver))

    [request] = receiver.received("/hook")
    assert request.headers["accept-encoding"] == "identity"


async def test_any_2xx_is_success_and_returned(make_settings: SettingsFactory, receiver: Receiver) -> None:
    receiver.script("/hook", Reply(status=204, body=b""))

    async with delivery_context(make_settings()) as ctx:
        assert await send_webhook(ctx, hook_payload(receiver)) == 204


async def test_without_a_secret_nothing_is_sent(make_settings: SettingsFactory, receiver: Receiver) -> None:
    async with delivery_context(make_settings(), signed=False) as ctx:
        with pytest.raises(PermanentError, match="WEBHOOK_SECRET"):
            await send_webhook(ctx, hook_payload(receiver))

    assert receiver.received() == []


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
async def test_transient_statuses_are_retryable(
    make_settings: SettingsFactory, receiver: Receiver, status: int
) -> None:
    receiver.script("/hook", Reply(status=status, body=b"busy"))

    async with delivery_context(make_settings()) as ctx:
        with pytest.raises(RetryableError) as caught:
            await send_webhook(ctx, hook_payload(receiver))

    assert caught.value.status_code == status
    assert caught.value.reason == f"HTTP {status}: busy"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 410, 422, 501])
async def test_other_statuses_are_permanent(make_settings: SettingsFactory, receiver: Receiver, status: int) -> None:
    receiver.script("/hook", Reply(status=status, body=b"nope"))

    async with delivery_context(make_settings()) as ctx:
        with pytest.raises(PermanentError) as caught:
            await send_webhook(ctx, hook_payload(receiver))

    assert not isinstance(caught.value, RetryableError)
    assert caught.value.status_code == status
    assert caught.value.reason == f"HTTP {status}: nope"


async def test_retry_after_is_passed_on(make_settings: SettingsFactory, receiver: Receiver) -> None:
    receiver.script("/hook", Reply(status=503, headers=(("retry-after", "7"),)))

    async with delivery_context(make_settings()) as ctx:
        with pytest.raises(RetryableError) as caught:
            await send_webhook(ctx, hook_payload(receiver))

    assert caught.value.retry_after_s == 7.0


async def test_unparsable_retry_after_still_retries(make_settings: SettingsFactory, receiver: Receiver) -> None:
    # a date past datetime's range once escaped as OverflowError: the runner took it for a bug and gave up
    receiver.script("/hook", Reply(status=503, headers=(("retry-after", "Wed, 21 Oct 99999999999 07:28:00 GMT"),)))

    async with delivery_context(make_settings()) as ctx:
        with pytest.raises(RetryableError) as caught:
            await send_webhook(ctx, hook_payload(receiver))

    assert caught.value.status_code == 503
    assert caught.value.retry_after_s is None


async def test_inline_runner_retries_503_and_500_then_succeeds_with_the_same_delivery(
    make_settings: SettingsFactory, receiver: Receiver
) -> None:
    receiver.script("/hook", Reply(status=503), Reply(status=500))
    payload = hook_payload(receiver)

    async with inline_runner(make_settings()) as backend:
        record = await deliver(backend, payload)

    assert record.state is JobState.SUCCEEDED
    assert record.attempts == 3
    requests = receiver.received("/hook")
    assert len(requests) == 3
    assert {r.headers["webhook-id"] for r in requests} == {payload["delivery_id"]}
    assert len({r.body for r in requests}) == 1
    assert all(r.verified for r in requests)


async def test_inline_runner_fails_400_at_once(make_settings: SettingsFactory, receiver: Receiver) -> None:
    receiver.script("/hook", Reply(status=400, body=b"bad payload"))

    async with inline_runner(make_settings()) as backend:
        record = await deliver(backend, hook_payload(receiver))

    assert record.state is JobState.FAILED
    assert record.attempts == 1
    assert record.last_error is not None
    assert "HTTP 400" in record.last_error
    assert "bad payload" in record.last_error
    assert len(receiver.received("/hook")) == 1


async def test_inline_runner_retries_429_with_retry_after_zero(
    make_settings: SettingsFactory, receiver: Receiver
) -> None:
    receiver.script("/hook", Reply(status=429, headers=(("retry-after", "0"),)))

    async with inline_runner(make_settings()) as backend:
        record = await deliver(backend, hook_payload(receiver))

    assert record.state is JobState.SUCCEEDED
    assert record.attempts == 2
    assert [r.path for r in receiver.received()] == ["/hook", "/hook"]


async def test_inline_runner_gives_up_after_max_attempts(make_settings: SettingsFactory, receiver: Receiver) -> None:
    receiver.default = Reply(status=502, body=b"gateway down")

    async with inline_runner(make_settings(WEBHOOK_MAX_ATTEMPTS=3)) as backend:
        record = await deliver(backend, hook_payload(receiver))

    assert record.state is JobState.FAILED
    assert record.attempts == 3
    assert record.last_error == "gave up after 3 attempts: HTTP 502: gateway down"
    assert len(receiver.received("/hook")) == 3


def test_parse_retry_after_seconds() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 0 ") == 0.0


def test_parse_retry_after_http_date() -> None:
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after(format_datetime(now + timedelta(seconds=90), usegmt=True), now=now) == 90.0
    assert parse_retry_after("Wed, 01 May 2024 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Wed, 01 May 2024 11:00:00 GMT", now=now) == 0.0  # in the past: no wait


@pytest.mark.parametrize(
    "value",
    [None, "", "soon", "-5", "1.5", "Wed, 31 Feb 2024 07:28:00 GMT", "Wed, 21 Oct 99999999999 07:28:00 GMT", "²", "١٢"],
)
def test_parse_retry_after_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value) is None


async def test_redirect_is_not_followed_and_is_permanent(make_settings: SettingsFactory, receiver: Receiver) -> None:
    target = receiver.url("/elsewhere")
    receiver.script("/hook", Reply(status=302, headers=(("location", target),)))

    async with delivery_context(make_settings()) as ctx:
        with pytest.raises(PermanentError) as caught:
            await send_webhook(ctx, hook_payload(receiver))

    assert caught.value.status_code == 302
    assert "redirects are not followed" in caught.value.reason
    assert target in caught.value.reason
    assert receiver.received("/elsewhere") == []
    assert len(receiver.received("/hook")) == 1


async def test_slow_receiver_times_out_as_retryable(make_settings: SettingsFactory, receiver: Receiver) -> None:
    receiver.script("/hook", Reply(status=200, delay_s=1.0))

    async with delivery_context(make_settings(WEBHOOK_TIMEOUT_S=0.3)) as ctx:
        with pytest.raises(RetryableError, match="timed out"):
            await send_webhook(ctx, hook_payload(receiver))

    assert len(receiver.received("/hook")) == 1  # the request went out; the answer was too slow


async def test_large_error_body_is_cut_to_error_body_bytes(make_settings: SettingsFactory, receiver: Receiver) -> None:
    receiver.script("/hook", Reply(status=400, body=b"x" * 1_000_000))

    async with delivery_context(make_settings()) as ctx:
        with pytest.raises(PermanentError) as caught:
            await send_webhook(ctx, hook_payload(receiver))

    assert caught.value.reason == "HTTP 400: " + "x" * ERROR_BODY_BYTES


async def test_large_error_body_keeps_last_error_bounded_through_the_runner(
    make_settings: SettingsFactory, receiver: Receiver
) -> None:
    receiver.script("/hook", Reply(status=422, body=b"y" * 1_000_000))

    async with inline_runner(make_settings()) as backend:
        record = await deliver(backend, hook_payload(receiver))

    assert record.state is JobState.FAILED
    assert record.last_error is not None
    assert len(record.last_error) <= ERROR_BODY_BYTES + len("HTTP 422: ")


async def test_deliveries_to_one_receiver_reuse_one_connection(
    make_settings: SettingsFactory, receiver: Receiver
) -> None:
    """A 2xx body left unread makes httpcore drop the connection: every webhook would pay a new handshake."""
    receiver.default = Reply(body=b'{"received": true}')
    async with delivery_context(make_settings()) as ctx:
        for n in range(5):
            await send_webhook(ctx, make_payload(address=receiver.url("/reuse"), delivery_id=f"dlv_reuse_{n}"))
    clients = {r.client for r in receiver.received("/reuse")}
    assert len(receiver.received("/reuse")) == 5
    assert len(clients) == 1, clients


async def test_a_huge_success_body_is_not_read_to_its_end(make_settings: SettingsFactory, receiver: Receiver) -> None:
    receiver.script("/huge", Reply(body=b"x" * (4 * SUCCESS_BODY_BYTES)))
    async with delivery_context(make_settings()) as ctx:
        status = await send_webhook(ctx, make_payload(address=receiver.url("/huge")))
    assert status == 200


async def test_the_request_carries_host_length_and_url_credentials(
    make_settings: SettingsFactory, receiver: Receiver
) -> None:
    """What httpx's client used to add, the webhook client adds itself: Host with the port, Content-Length, and
    Basic auth from credentials in the URL (percent-decoded)."""
    address = f"http://hook%40user:s%3Acret@localhost:{receiver.port}/creds?x=1"
    async with delivery_context(make_settings()) as ctx:
        await send_webhook(ctx, make_payload(address=address))
    [request] = receiver.received("/creds")
    assert request.headers["host"] == f"localhost:{receiver.port}"
    assert request.headers["content-length"] == str(len(request.body))
    assert request.headers["authorization"] == "Basic " + base64.b64encode(b"hook@user:s:cret").decode()
    assert request.verified is True


@pytest.mark.parametrize("address", ["ftp://example.com/hook", "http:///no-host", "/relative/hook"])
async def test_a_url_that_cannot_be_sent_to_fails_permanently(make_settings: SettingsFactory, address: str) -> None:
    async with delivery_context(make_settings()) as ctx:
        with pytest.raises(PermanentError, match="cannot send to this URL"):
            await send_webhook(ctx, make_payload(address=address))
