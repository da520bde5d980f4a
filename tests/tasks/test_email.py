"""send_email against a real aiosmtpd server (tests.support.smtp)."""

from __future__ import annotations

import io
from collections.abc import Callable
from email.message import EmailMessage

import pytest

from core.config import Settings
from core.errors import PermanentError, RetryableError
from core.jobs import JobState
from tasks.channels.email import ConsoleMailer, SmtpMailer, build_message
from tasks.delivery import send_email
from tasks.messages import Channel, DeliveryPayload
from tasks.rendering import TemplateLibrary
from tasks.resources import build_mailer
from tests.support.smtp import SmtpSink, free_port
from tests.tasks.helpers import deliver, delivery_context, inline_runner, make_payload

EMAIL_FROM = "Herald Test <herald@example.org>"

SettingsFactory = Callable[..., Settings]


def smtp_settings(make_settings: SettingsFactory, smtp: SmtpSink) -> Settings:
    return make_settings(SMTP_HOST="127.0.0.1", SMTP_PORT=smtp.port, SMTP_TLS="none", EMAIL_FROM=EMAIL_FROM)


def email_payload(
    *,
    subject: str = "Your report is ready",
    text: str = "Hi Ada,\nthe report is attached.\n",
    html: str | None = "<p>Hi Ada,</p><p>the report is attached.</p>",
    delivery_id: str | None = None,
) -> DeliveryPayload:
    return make_payload(
        channel=Channel.EMAIL,
        address="ada@example.com",
        delivery_id=delivery_id,
        subject=subject,
        text=text,
        html=html,
    )


def part(message: EmailMessage, subtype: str) -> str:
    body = message.get_body(preferencelist=(subtype,))
    assert body is not None, f"no text/{subtype} part"
    assert body.get_content_type() == f"text/{subtype}"
    content = body.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")  # SMTP carries CRLF; compare with what we sent


async def test_message_arrives_as_multipart_alternative(make_settings: SettingsFactory, smtp: SmtpSink) -> None:
    settings = smtp_settings(make_settings, smtp)
    payload = email_payload()

    async with delivery_context(settings) as ctx:
        await send_email(ctx, payload)

    [message] = smtp.messages
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    assert message["From"] == EMAIL_FROM
    assert message["To"] == "ada@example.com"
    assert message["Subject"] == "Your report is ready"
    assert message["X-Herald-Notification-ID"] == payload["notification_id"]
    assert part(message, "plain") == "Hi Ada,\nthe report is attached.\n"
    assert "<p>the report is attached.</p>" in part(message, "html")
    [(mail_from, rcpt_tos)] = smtp.envelopes
    assert mail_from == "herald@example.org"
    assert rcpt_tos == ["ada@example.com"]


async def test_text_only_payload_is_a_single_plain_part(make_settings: SettingsFactory, smtp: SmtpSink) -> None:
    settings = smtp_settings(make_settings, smtp)

    async with delivery_context(settings) as ctx:
        await send_email(ctx, email_payload(html=None))

    [message] = smtp.messages
    assert message.get_content_type() == "text/plain"
    assert not message.is_multipart()


async def test_message_id_is_fixed_by_the_delivery_id_across_retries(
    make_settings: SettingsFactory, smtp: SmtpSink
) -> None:
    settings = smtp_settings(make_settings, smtp)
    payload = email_payload(delivery_id="dlv_stable42")

    async with delivery_context(settings) as ctx:
        await send_email(ctx, payload)
        await send_email(ctx, payload)

    assert [m["Message-ID"] for m in smtp.messages] == ["<dlv_stable42@example.org>"] * 2


async def test_welcome_template_escapes_html_but_keeps_text_literal(
    make_settings: SettingsFactory, smtp: SmtpSink
) -> None:
    settings = smtp_settings(make_settings, smtp)
    rendered = TemplateLibrary().render("welcome", {"name": "<script>alert(1)</script>"})
    assert rendered.html is not None
    payload = email_payload(subject=rendered.subject, text=rendered.text, html=rendered.html)

    async with delivery_context(settings) as ctx:
        await send_email(ctx, payload)

    [message] = smtp.messages
    html = part(message, "html")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>" not in html
    assert "Hi <script>alert(1)</script>," in part(message, "plain")
    assert message["Subject"] == "Welcome to Herald, <script>alert(1)</script>!"


async def test_smtp_451_is_retryable_with_its_status(make_settings: SettingsFactory, smtp: SmtpSink) -> None:
    settings = smtp_settings(make_settings, smtp)
    smtp.replies.append("451 4.3.0 try later")

    async with delivery_context(settings) as ctx:
        with pytest.raises(RetryableError) as caught:
            await send_email(ctx, email_payload())

    assert caught.value.status_code == 451
    assert caught.value.channel == "email"
    assert "4.3.0 try later" in caught.value.reason
    assert smtp.messages == []


async def test_smtp_550_is_permanent_and_keeps_the_servers_reply(
    make_settings: SettingsFactory, smtp: SmtpSink
) -> None:
    settings = smtp_settings(make_settings, smtp)
    smtp.replies.append("550 5.7.1 rejected by local policy")

    async with delivery_context(settings) as ctx:
        with pytest.raises(PermanentError) as caught:
            await send_email(ctx, email_payload())

    assert not isinstance(caught.value, RetryableError)
    assert caught.value.status_code == 550
    assert "5.7.1 rejected by local policy" in caught.value.reason
    assert smtp.messages == []


async def test_nobody_listening_is_retryable(make_settings: SettingsFactory) -> None:
    settings = make_settings(SMTP_HOST="127.0.0.1", SMTP_PORT=free_port(), SMTP_TLS="none")
    mailer = build_mailer(settings)
    assert isinstance(mailer, SmtpMailer)

    async with delivery_context(settings, mailer=mailer) as ctx:
        with pytest.raises(RetryableError) as caught:
            await send_email(ctx, email_payload())

    assert caught.value.channel == "email"
    assert caught.value.reason.startswith("SMTP connection problem")


async def test_console_mailer_prints_the_message(make_settings: SettingsFactory) -> None:
    settings = make_settings(EMAIL_FROM=EMAIL_FROM)
    assert isinstance(build_mailer(settings), ConsoleMailer)  # no SMTP_HOST: the console is the default
    stream = io.StringIO()
    payload = email_payload(subject="Printed, not sent", delivery_id="dlv_console1")

    async with delivery_context(settings, mailer=ConsoleMailer(stream)) as ctx:
        await send_email(ctx, payload)

    printed = stream.getvalue()
    assert "Subject: Printed, not sent" in printed
    assert "Message-ID: <dlv_console1@example.org>" in printed
    assert "To: ada@example.com" in printed
    assert "the report is attached." in printed
    assert "\r" not in printed, "console output uses plain newlines"


async def test_inline_runner_retries_451_then_delivers_once(make_settings: SettingsFactory, smtp: SmtpSink) -> None:
    settings = smtp_settings(make_settings, smtp)
    smtp.replies.append("451 4.3.0 try later")
    payload = email_payload()

    async with inline_runner(settings) as backend:
        record = await deliver(backend, payload)

    assert record.state is JobState.SUCCEEDED
    assert record.attempts == 2
    assert record.last_error is not None
    assert "451" in record.last_error
    [message] = smtp.messages
    expected = build_message(payload, settings.email_from_address)["Message-ID"]
    assert message["Message-ID"] == expected == f"<{payload['delivery_id']}@example.org>"


async def test_inline_runner_gives_up_at_once_on_550(make_settings: SettingsFactory, smtp: SmtpSink) -> None:
    settings = smtp_settings(make_settings, smtp)
    smtp.replies.append("550 5.1.1 no such user")

    async with inline_runner(settings) as backend:
        record = await deliver(backend, email_payload())

    assert record.state is JobState.FAILED
    assert record.attempts == 1
    assert record.last_error == "SMTP 550 5.1.1 no such user"
    assert smtp.messages == []


@pytest.mark.parametrize("subject", ["Hello\u2028Bcc: eve@example.com", "Hello\x85there"])
async def test_subject_with_a_unicode_line_break_is_a_permanent_error(
    make_settings: SettingsFactory, smtp: SmtpSink, subject: str
) -> None:
    # The API lets these through (it only refuses ASCII control characters); the header cannot
    # hold them, which once escaped as a bare ValueError, logged as a bug in the task.
    settings = smtp_settings(make_settings, smtp)

    async with delivery_context(settings) as ctx:
        with pytest.raises(PermanentError, match="cannot build the email headers") as caught:
            await send_email(ctx, email_payload(subject=subject))

    assert caught.value.channel == "email"
    assert smtp.messages == []
