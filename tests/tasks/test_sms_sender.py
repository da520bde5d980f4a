"""SmsSender against a real provider on 127.0.0.1 speaking Twilio's Messages API (tests.support.sms_provider)."""

from __future__ import annotations

import base64
import logging
import re
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from core.config import Settings
from core.errors import PermanentError, RetryableError, TaskError
from tasks.channels.sms import USER_AGENT, SmsSender, build_sms_sender, post_sms
from tests.support.sms_provider import ACCOUNT_SID, AUTH_TOKEN, ProviderReply, SmsProvider, sms_provider
from tests.support.waiting import eventually
from tests.tasks.helpers import make_payload

SettingsFactory = Callable[..., Settings]

TO = "+15551234567"
TO_MASKED = "+1******4567"
SID = re.compile(r"SM[0-9a-f]{32}")


@pytest.fixture
def provider() -> Iterator[SmsProvider]:
    with sms_provider() as server:
        yield server


@pytest.fixture
def sender_for(make_settings: SettingsFactory) -> Callable[..., SmsSender]:
    """``async with sender_for(provider, **settings)``: a sender built from settings as the worker will build it."""

    def build(provider: SmsProvider, **overrides: object) -> SmsSender:
        sender = build_sms_sender(make_settings(**provider.settings(**overrides)))
        assert sender is not None
        return sender

    return build


@pytest.fixture
async def sender(provider: SmsProvider, sender_for: Callable[..., SmsSender]) -> AsyncIterator[SmsSender]:
    async with sender_for(provider) as built:
        yield built


async def test_posts_twilios_form_with_basic_auth_and_returns_the_message_sid(
    provider: SmsProvider, sender: SmsSender
) -> None:
    sid = await sender.send(TO, "Your code is 123456", delivery_id="dlv_1")

    [request] = provider.received()
    assert (request.method, request.path) == ("POST", f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json")
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    expected_auth = base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {expected_auth}"
    assert request.headers["user-agent"] == USER_AGENT
    assert request.form == {"To": TO, "From": "+14155550100", "Body": "Your code is 123456"}
    assert request.status == 201
    assert SID.fullmatch(sid)
    assert sid == request.sid


async def test_unicode_bodies_arrive_intact(provider: SmsProvider, sender: SmsSender) -> None:
    body = "Grüße, Ada! 50 € — ✓ 😀 & a+b=c %20"

    await sender.send(TO, body, delivery_id="dlv_1")

    [message] = provider.messages()
    assert message.form["Body"] == body


async def test_a_messaging_service_sid_is_sent_as_messaging_service_sid(
    provider: SmsProvider, sender_for: Callable[..., SmsSender]
) -> None:
    service = "MG" + "a" * 32

    async with sender_for(provider, SMS_FROM=service) as sender:
        await sender.send(TO, "hi", delivery_id="dlv_1")

    [message] = provider.messages()
    assert message.form == {"To": TO, "MessagingServiceSid": service, "Body": "hi"}


async def test_an_alphanumeric_sender_id_is_sent_as_from(
    provider: SmsProvider, sender_for: Callable[..., SmsSender]
) -> None:
    async with sender_for(provider, SMS_FROM="Herald") as sender:
        await sender.send(TO, "hi", delivery_id="dlv_1")

    [message] = provider.messages()
    assert message.form["From"] == "Herald"


async def test_a_base_url_with_a_path_and_a_trailing_slash_is_joined_once(
    provider: SmsProvider, sender_for: Callable[..., SmsSender]
) -> None:
    # a compatible provider may serve the API under a prefix; the provider answers 404 to any other path
    async with sender_for(provider, SMS_API_BASE_URL=provider.base_url + "/") as sender:
        await sender.send(TO, "hi", delivery_id="dlv_1")
    async with sender_for(provider, SMS_API_BASE_URL=provider.base_url + "/compat") as sender:
        with pytest.raises(PermanentError, match=r"provider refused \(20404\): The requested resource /compat/2010"):
            await sender.send(TO, "hi", delivery_id="dlv_2")

    assert [r.path for r in provider.received()] == [
        f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json",
        f"/compat/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json",
    ]


async def test_a_sender_built_directly_joins_a_base_url_with_a_trailing_slash(provider: SmsProvider) -> None:
    sender = SmsSender(
        base_url=provider.base_url + "/",
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        sender="+14155550100",
        timeout_s=2.0,
    )
    async with sender:
        await sender.send(TO, "hi", delivery_id="dlv_1")

    [message] = provider.messages()
    assert message.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"


async def test_429_is_retryable_with_retry_after_and_the_next_call_succeeds(
    provider: SmsProvider, sender: SmsSender
) -> None:
    provider.script(ProviderReply.error(429, 20429, "Too Many Requests", headers=(("Retry-After", "3"),)))

    with pytest.raises(RetryableError) as caught:
        await sender.send(TO, "hi", delivery_id="dlv_1")
    sid = await sender.send(TO, "hi", delivery_id="dlv_1")

    assert caught.value.status_code == 429
    assert caught.value.retry_after_s == 3.0
    assert caught.value.channel == "sms"
    assert caught.value.reason == "SMS provider rate limit (20429): Too Many Requests"
    assert [r.status for r in provider.received()] == [429, 201]
    assert [m.sid for m in provider.messages()] == [sid]


async def test_retry_after_as_an_http_date_is_honoured(provider: SmsProvider, sender: SmsSender) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    provider.script(ProviderReply.error(503, 20503, "Service Unavailable", headers=(("Retry-After", when),)))

    with pytest.raises(RetryableError) as caught:
        await sender.send(TO, "hi", delivery_id="dlv_1")

    assert caught.value.retry_after_s is not None
    assert 100 < caught.value.retry_after_s <= 120


async def test_400_is_permanent_with_the_providers_code_and_message_number_masked(
    provider: SmsProvider, sender: SmsSender
) -> None:
    provider.script(ProviderReply.error(400, 21211, f"The 'To' number {TO} is not a valid phone number."))

    with pytest.raises(PermanentError) as caught:
        await sender.send(TO, "hi", delivery_id="dlv_1")

    assert not isinstance(caught.value, RetryableError)
    assert caught.value.status_code == 400
    assert caught.value.channel == "sms"
    assert caught.value.reason == f"provider refused (21211): The 'To' number {TO_MASKED} is not a valid phone number."
    assert provider.messages() == []


async def test_every_number_the_provider_echoes_is_masked_but_our_own_sender(
    provider: SmsProvider, sender: SmsSender
) -> None:
    provider.script(
        ProviderReply.error(
            400,
            21606,
            f"The From phone number +14155550100 is not valid for {TO.lstrip('+')} (ported from +442071838750).",
        )
    )

    with pytest.raises(PermanentError) as caught:
        await sender.send(TO, "hi", delivery_id="dlv_1")

    assert caught.value.reason == (
        "provider refused (21606): The From phone number +14155550100 is not valid for "
        f"{TO_MASKED.lstrip('+')} (ported from +4*******8750)."
    )


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
async def test_5xx_and_408_are_retryable(provider: SmsProvider, sender: SmsSender, status: int) -> None:
    provider.script(ProviderReply.error(status, 20500, "An internal server error has occurred"))

    with pytest.raises(RetryableError) as caught:
        await sender.send(TO, "hi", delivery_id="dlv_1")

    assert caught.value.status_code == status
    assert caught.value.retry_after_s is None
    assert caught.value.reason == "SMS provider unavailable (20500): An internal server error has occurred"


async def test_a_non_json_error_page_is_quoted_short_on_one_line(provider: SmsProvider, sender: SmsSender) -> None:
    page = b"<html>\n  <body>Bad Gateway</body>\n</html>\n" + b"x" * 1000
    provider.script(ProviderReply(502, page))

    with pytest.raises(RetryableError) as caught:
        await sender.send(TO, "hi", delivery_id="dlv_1")

    assert caught.value.reason.startswith(
        "SMS provider unavailable (HTTP 502): <html> <body>Bad Gateway</body> </html> xx"
    )
    assert len(caught.value.reason) < 400
    assert caught.value.reason.endswith("…")


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (400, 21610, "Attempt to send to unsubscribed recipient"),
        (
            400,
            21408,
            f"Permission to send an SMS has not been enabled for the region indicated by the 'To' number: {TO}",
        ),
        (404, 20404, "The requested resource was not found"),
        (409, 20409, "Conflict"),
        (422, 21620, "Invalid media URL(s)"),
    ],
)
async def test_other_4xx_are_permanent(
    provider: SmsProvider, sender: SmsSender, status: int, code: int, message: str
) -> None:
    provider.script(ProviderReply.error(status, code, message))

    with pytest.raises(PermanentError) as caught:
        await sender.send(TO, "hi", delivery_id="dlv_1")

    assert not isinstance(caught.value, RetryableError)
    assert caught.value.status_code == status
    assert caught.value.reason.startswith(f"provider refused ({code}): ")
    assert TO not in caught.value.reason


async def test_wrong_credentials_are_permanent_and_never_show_the_token(
    provider: SmsProvider, sender_for: Callable[..., SmsSender], caplog: pytest.LogCaptureFixture
) -> None:
    wrong_token = "wrong-sms-token-0000-aaaaaaaaaaa"
    caplog.set_level(logging.DEBUG)

    async with sender_for(provider, SMS_AUTH_TOKEN=wrong_token) as sender:
        with pytest.raises(PermanentError) as caught:
            await sender.send(TO, "hi", delivery_id="dlv_1")

    assert not isinstance(caught.value, RetryableError)
    assert caught.value.status_code == 401
    assert caught.value.reason == (
        "SMS provider refused the credentials (20003): Authenticate; check SMS_ACCOUNT_SID and SMS_AUTH_TOKEN"
    )
    assert [r.status for r in provider.received()] == [401]
    _assert_nowhere(wrong_token, caught.value, caplog)


async def test_a_2xx_without_a_sid_is_permanent(provider: SmsProvider, sender: SmsSender) -> None:
    provider.script(ProviderReply(201, {"status": "queued"}))

    with pytest.raises(PermanentError) as caught:
        await sender.send(TO, "hi", delivery_id="dlv_1")

    assert not isinstance(caught.value, RetryableError)
    assert caught.value.status_code == 201
    assert caught.value.reason == (
        "SMS provider answered HTTP 201 without a message sid; the message may have been sent, so it is not retried"
    )


@pytest.mark.parametrize("body", [b"Created", b"", b'["SMabc"]', b'{"sid": 42}', b'{"sid": ""}'])
async def test_a_2xx_that_is_not_a_message_is_permanent(provider: SmsProvider, sender: SmsSender, body: bytes) -> None:
    provider.script(ProviderReply(200, body))

    with pytest.raises(PermanentError, match="without a message sid"):
        await sender.send(TO, "hi", delivery_id="dlv_1")


async def test_a_redirect_is_not_followed(provider: SmsProvider, sender: SmsSender) -> None:
    elsewhere = f"{provider.base_url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json?moved=1"
    provider.script(ProviderReply(307, b"", headers=(("location", elsewhere),)))

    with pytest.raises(PermanentError, match=r"redirected \(HTTP 307\); redirects are not followed"):
        await sender.send(TO, "hi", delivery_id="dlv_1")

    assert len(provider.received()) == 1


async def test_a_timeout_is_retryable_and_says_the_message_may_have_been_sent(
    provider: SmsProvider, sender_for: Callable[..., SmsSender], caplog: pytest.LogCaptureFixture
) -> None:
    provider.script(ProviderReply(delay_s=0.8))
    caplog.set_level(logging.INFO, logger="herald.sms")

    async with sender_for(provider, SMS_TIMEOUT_S=0.2) as sender:
        with pytest.raises(RetryableError) as caught:
            await sender.send(TO, "hi", delivery_id="dlv_timeout")

    assert caught.value.reason == (
        "SMS provider gave no answer (ReadTimeout); it may have sent the message, and a retry can send it twice"
    )
    assert caught.value.status_code is None
    [line] = [r for r in caplog.records if r.name == "herald.sms"]
    assert line.levelno == logging.WARNING
    assert line.__dict__["delivery_id"] == "dlv_timeout"
    assert line.__dict__["to"] == TO_MASKED
    # at least once: the provider got it and made a message, so a retry would make a second one
    await eventually(lambda: len(provider.messages()) == 1, what="the provider to have the message")


async def test_connection_refused_is_retryable_and_nothing_was_sent(
    provider: SmsProvider, sender_for: Callable[..., SmsSender]
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connecting is refused, and the port stays ours
        port = closed.getsockname()[1]
        async with sender_for(provider, SMS_API_BASE_URL=f"http://127.0.0.1:{port}") as sender:
            with pytest.raises(RetryableError) as caught:
                await sender.send(TO, "hi", delivery_id="dlv_1")

    assert caught.value.reason.startswith("SMS provider unreachable (ConnectError: ")
    assert caught.value.reason.endswith("); nothing was sent")
    assert isinstance(caught.value.__cause__, Exception)


async def test_a_number_that_is_not_e164_is_refused_before_sending(provider: SmsProvider, sender: SmsSender) -> None:
    with pytest.raises(PermanentError) as caught:
        await sender.send("+1 555 123 4567", "hi", delivery_id="dlv_1")

    assert caught.value.reason == (
        "not sent to [not a phone number]: a phone number may hold only the digits 0-9 after '+', "
        "but character 3 is ' '; write it without spaces or punctuation (e.g. +14155550123)"
    )
    assert provider.received() == []


@pytest.mark.parametrize(("body", "problem"), [("a" * 1531, "takes 11 segments"), ("", "must not be empty")])
async def test_a_body_too_long_or_empty_is_refused_before_sending(
    provider: SmsProvider, sender: SmsSender, body: str, problem: str
) -> None:
    with pytest.raises(PermanentError, match=problem):
        await sender.send(TO, body, delivery_id="dlv_1")

    assert provider.received() == []


async def test_sms_max_segments_lowers_the_limit(provider: SmsProvider, sender_for: Callable[..., SmsSender]) -> None:
    async with sender_for(provider, SMS_MAX_SEGMENTS=2) as sender:
        await sender.send(TO, "a" * 306, delivery_id="dlv_1")
        with pytest.raises(PermanentError, match="takes 3 segments"):
            await sender.send(TO, "a" * 307, delivery_id="dlv_2")

    assert len(provider.received()) == 1


async def test_connections_are_kept_alive_and_reused(provider: SmsProvider, sender: SmsSender) -> None:
    for n in range(3):
        await sender.send(TO, f"message {n}", delivery_id=f"dlv_{n}")

    clients = {request.client for request in provider.received()}
    assert len(clients) == 1


async def test_success_is_logged_with_the_delivery_id_and_sid_and_a_masked_number(
    provider: SmsProvider, sender: SmsSender, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="herald.sms")

    sid = await sender.send(TO, "hi", delivery_id="dlv_logged")

    [line] = [r for r in caplog.records if r.name == "herald.sms"]
    assert line.levelno == logging.INFO
    assert line.__dict__["delivery_id"] == "dlv_logged"
    assert line.__dict__["provider_sid"] == sid
    assert line.__dict__["provider_status"] == "queued"
    assert line.__dict__["to"] == TO_MASKED
    assert TO not in repr(line.__dict__)


async def test_the_token_is_in_no_error_and_no_log_line(
    provider: SmsProvider, sender_for: Callable[..., SmsSender], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # httpx and httpcore too
    provider.script(
        ProviderReply.error(429, 20429, "Too Many Requests"),
        ProviderReply.error(400, 21211, f"The 'To' number {TO} is not a valid phone number."),
        ProviderReply.error(500, 20500, "Internal error"),
        ProviderReply(502, b"<html>proxy error</html>"),
        ProviderReply(201, {"status": "queued"}),
        ProviderReply.error(400, 12345, f"echoing your token {AUTH_TOKEN} back"),  # a careless provider
        ProviderReply(delay_s=0.8),
    )
    errors: list[TaskError] = []

    async with sender_for(provider, SMS_TIMEOUT_S=0.3) as sender:
        for n in range(7):
            with pytest.raises(TaskError) as caught:
                await sender.send(TO, "hi", delivery_id=f"dlv_{n}")
            errors.append(caught.value)
        await sender.send(TO, "hi", delivery_id="dlv_ok")

    assert "[token]" in errors[5].reason
    for error in errors:
        _assert_nowhere(AUTH_TOKEN, error, caplog)
        assert TO not in str(error)
    assert len(caplog.records) > 0


async def test_post_sms_sends_the_payloads_text_to_its_address(provider: SmsProvider, sender: SmsSender) -> None:
    # post_sms reads address, text and delivery_id only (Channel.SMS comes with the wiring)
    payload = make_payload(address=TO, text="Your code is 123456", delivery_id="dlv_payload")

    sid = await post_sms(sender, payload)

    [message] = provider.messages()
    assert message.sid == sid
    assert message.form["To"] == TO
    assert message.form["Body"] == "Your code is 123456"


async def test_post_sms_without_a_configured_sender_is_permanent() -> None:
    with pytest.raises(PermanentError, match="SMS is not configured on this server") as caught:
        await post_sms(None, make_payload(address=TO))

    assert caught.value.channel == "sms"


def test_no_sender_is_built_without_sms_settings(make_settings: SettingsFactory) -> None:
    assert build_sms_sender(make_settings()) is None


async def test_a_slow_answer_within_the_timeout_succeeds(
    provider: SmsProvider, sender_for: Callable[..., SmsSender]
) -> None:
    provider.script(ProviderReply(delay_s=0.3))

    async with sender_for(provider, SMS_TIMEOUT_S=2.0) as sender:
        sid = await sender.send(TO, "hi", delivery_id="dlv_1")

    assert [m.sid for m in provider.messages()] == [sid]


def _assert_nowhere(secret: str, error: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    encoded = base64.b64encode(f"{ACCOUNT_SID}:{secret}".encode()).decode()
    chain: BaseException | None = error
    while chain is not None:
        assert secret not in str(chain)
        assert secret not in repr(chain)
        chain = chain.__cause__
    for record in caplog.records:
        text = record.getMessage() + repr(record.__dict__)
        assert secret not in text
        assert encoded not in text
