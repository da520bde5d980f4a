"""POST /notify to SMS recipients, through the real app in both modes, against a real local provider speaking
Twilio's Messages API (tests.support.sms_provider): what the provider receives, retries, failures, and what the
API refuses before anything is queued."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from core.config import Settings
from tasks.channels.sms import segments
from tasks.rendering import TemplateLibrary
from tests.support.receiver import Receiver
from tests.support.sms_provider import ACCOUNT_SID, AUTH_TOKEN, ProviderReply, SmsProvider, sms_provider
from tests.support.templates import template_library
from tests.support.waiting import eventually

PHONE = "+14155550123"
PHONE_MASKED = "+1******0123"
SENDER = "+14155550100"  # SmsProvider.settings()' SMS_FROM
SMS = {"channel": "sms", "address": PHONE}


@pytest.fixture
def provider() -> Iterator[SmsProvider]:
    with sms_provider() as server:
        yield server


async def _status(client: httpx.AsyncClient, notification_id: str) -> dict[str, Any]:
    response = await client.get(f"/notifications/{notification_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _accepted(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/notify", json=body)
    assert response.status_code == 202, response.text
    accepted: dict[str, Any] = response.json()
    return accepted


async def _until(client: httpx.AsyncClient, notification_id: str, status: str, *, timeout_s: float = 10) -> None:
    """Wait until every delivery of the notification has ``status``."""

    async def reached() -> bool:
        deliveries = (await _status(client, notification_id))["deliveries"]
        return all(delivery["status"] == status for delivery in deliveries)

    await eventually(reached, timeout_s=timeout_s, what=f"notification {notification_id} to be {status}")


def _refusal(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert set(error) == {"loc", "msg", "type"}
    detail: dict[str, Any] = error
    return detail


async def test_a_template_is_sent_as_its_sms_txt_with_our_sender_and_credentials_and_the_sid_is_shown(
    client_for: Any, backend_settings: dict[str, Any], provider: SmsProvider, receiver: Receiver
) -> None:
    async with client_for(**backend_settings, **provider.settings()) as client:
        accepted = await _accepted(
            client,
            {
                "to": [SMS, {"channel": "webhook", "address": receiver.url("/hook")}],
                "template": "welcome",
                "context": {"name": "Ada", "login_url": "https://app.example.com/login"},
            },
        )
        assert [(d["channel"], d["address"], d["status"]) for d in accepted["deliveries"]] == [
            ("sms", PHONE, "queued"),
            ("webhook", receiver.url("/hook"), "queued"),
        ]
        await _until(client, accepted["id"], "delivered")
        sms_delivery = (await _status(client, accepted["id"]))["deliveries"][0]
        job = (await client.get(f"/tasks/{sms_delivery['id']}")).json()

    [message] = provider.messages()
    assert message.form == {
        "To": PHONE,
        "From": SENDER,
        "Body": "Welcome to Herald, Ada! Your account is ready. Sign in: https://app.example.com/login",
    }
    assert message.credentials == (ACCOUNT_SID, AUTH_TOKEN)
    assert message.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    assert (sms_delivery["status"], sms_delivery["attempts"]) == ("delivered", 1)
    assert sms_delivery["provider_message_id"] == message.sid
    assert (job["task"], job["state"], job["result"]) == ("send_sms", "succeeded", message.sid)
    # the other channel keeps the email text: each recipient gets its channel's part of the template
    [hook] = receiver.received("/hook")
    text = json.loads(hook.body)["data"]["text"]
    assert text.startswith("Hi Ada,\n")
    assert message.form["Body"] not in text


async def test_literal_text_is_sent_exactly_as_given_and_needs_no_subject(
    client_for: Any, backend_settings: dict[str, Any], provider: SmsProvider
) -> None:
    text = "  Code 123456 {{ not rendered }}\n€5 off \u2013 today only  "  # an en dash: UCS-2; spaces kept
    async with client_for(**backend_settings, **provider.settings()) as client:
        accepted = await _accepted(client, {"to": [SMS], "text": text})
        await _until(client, accepted["id"], "delivered")
    [message] = provider.messages()
    assert message.form["Body"] == text
    assert accepted["subject"] == ""


async def test_a_429_with_retry_after_is_retried_once_after_the_wait_then_delivered(
    client_for: Any, backend_settings: dict[str, Any], provider: SmsProvider
) -> None:
    provider.script(ProviderReply.error(429, 20429, "Too Many Requests", headers=(("retry-after", "1"),)))
    settings = {**backend_settings, **provider.settings(), "RETRY_MAX_DELAY_S": 2.0}
    async with client_for(**settings) as client:
        accepted = await _accepted(client, {"to": [SMS], "template": "password_reset", "context": {"reset_url": "x"}})
        await _until(client, accepted["id"], "retrying")
        retrying = (await _status(client, accepted["id"]))["deliveries"][0]
        await _until(client, accepted["id"], "delivered")
        [delivery] = (await _status(client, accepted["id"]))["deliveries"]

    first, second = provider.received()
    assert (first.status, second.status) == (429, 201)
    assert first.form == second.form  # the same message, not a re-render
    assert second.at - first.at >= 0.9  # Retry-After: 1, not the 0.02 s base back-off
    assert "rate limit (20429): Too Many Requests" in retrying["last_error"]
    assert retrying["next_attempt_at"] is not None
    assert (delivery["status"], delivery["attempts"]) == ("delivered", 2)
    assert delivery["provider_message_id"] == second.sid


async def test_a_400_fails_at_once_with_the_providers_message_and_the_number_masked_and_can_be_sent_again(
    client_for: Any, backend_settings: dict[str, Any], provider: SmsProvider
) -> None:
    provider.script(ProviderReply.error(400, 21614, f"'To' number {PHONE} is not a valid mobile number"))
    async with client_for(**backend_settings, **provider.settings()) as client:
        accepted = await _accepted(client, {"to": [SMS], "text": "Your code is 123456"})
        await _until(client, accepted["id"], "failed")
        [delivery] = (await _status(client, accepted["id"]))["deliveries"]
        statuses = [request.status for request in provider.received()]
        rerun = await client.post(f"/deliveries/{delivery['id']}/retry")
        await _until(client, accepted["id"], "delivered")
        [again] = (await _status(client, accepted["id"]))["deliveries"]
    assert delivery["attempts"] == 1
    assert (
        delivery["last_error"] == f"provider refused (21614): 'To' number {PHONE_MASKED} is not a valid mobile number"
    )
    assert delivery["provider_message_id"] is None
    assert statuses == [400]
    # the kept payload is sent again as it was, under the same delivery id
    assert rerun.status_code == 202, rerun.text
    [message] = provider.messages()
    assert (message.form["To"], message.form["Body"]) == (PHONE, "Your code is 123456")
    assert (again["id"], again["attempts"], again["provider_message_id"]) == (delivery["id"], 1, message.sid)


async def test_sms_is_refused_when_this_server_has_no_provider_configured(client_for: Any) -> None:
    async with client_for() as client:
        response = await client.post(
            "/notify",
            json={"to": [{"channel": "email", "address": "ada@example.com"}, SMS], "subject": "s", "text": "t"},
        )
    error = _refusal(response)
    assert error["loc"] == ["body", "to", 1, "channel"]
    assert "sms channel is disabled on this server" in error["msg"]
    assert "SMS_ACCOUNT_SID" in error["msg"]


async def test_an_sms_within_the_limit_is_sent_whole_and_one_character_more_is_refused(
    client_for: Any, provider: SmsProvider
) -> None:
    async with client_for(**provider.settings(SMS_MAX_SEGMENTS=2)) as client:
        refused = await client.post("/notify", json={"to": [SMS], "text": "x" * 307})
        accepted = await _accepted(client, {"to": [SMS], "text": "x" * 306})
        await _until(client, accepted["id"], "delivered")
    error = _refusal(refused)
    assert error["loc"] == ["body", "text"]
    assert "takes 3 segments in GSM-7: 307 septets" in error["msg"]
    assert "at most 2 segments" in error["msg"]
    [message] = provider.messages()
    assert message.form["Body"] == "x" * 306  # 2 x 153: never truncated


async def test_an_over_long_ucs2_sms_names_the_character_that_made_it_ucs2(
    client_for: Any, provider: SmsProvider
) -> None:
    async with client_for(**provider.settings(SMS_MAX_SEGMENTS=1)) as client:
        response = await client.post("/notify", json={"to": [SMS], "text": "Привет " * 11})
    error = _refusal(response)
    assert error["loc"] == ["body", "text"]
    assert "takes 2 segments in UCS-2, because 'П'" in error["msg"]


async def test_an_over_long_rendered_sms_txt_is_refused_with_its_segment_count(
    client_for: Any, provider: SmsProvider
) -> None:
    login_url = "https://app.example.com/" + "x" * 1600
    rendered = f"Welcome to Herald, Ada! Your account is ready. Sign in: {login_url}"
    async with client_for(**provider.settings()) as client:
        response = await client.post(
            "/notify", json={"to": [SMS], "template": "welcome", "context": {"name": "Ada", "login_url": login_url}}
        )
    error = _refusal(response)
    assert error["loc"] == ["body", "context"]
    assert error["msg"].startswith(f"template 'welcome' (sms.txt): the SMS body takes {segments(rendered).segments} ")
    assert "at most 10 segments" in error["msg"]
    assert provider.received() == []


async def test_a_blank_sms_is_refused(client_for: Any, provider: SmsProvider) -> None:
    async with client_for(**provider.settings()) as client:
        response = await client.post("/notify", json={"to": [SMS], "text": " \n "})
    error = _refusal(response)
    assert (error["loc"], error["msg"]) == (["body", "text"], "an SMS body must not be empty")


async def test_the_same_number_twice_is_refused(client_for: Any, provider: SmsProvider) -> None:
    async with client_for(**provider.settings()) as client:
        response = await client.post("/notify", json={"to": [SMS, SMS], "text": "t"})
    error = _refusal(response)
    assert "to[1] repeats an earlier recipient (sms +14155550123)" in error["msg"]


async def test_a_subject_is_still_needed_when_another_recipient_is_not_sms(
    client_for: Any, provider: SmsProvider
) -> None:
    async with client_for(**provider.settings()) as client:
        response = await client.post(
            "/notify", json={"to": [SMS, {"channel": "email", "address": "ada@example.com"}], "text": "t"}
        )
    assert "literal 'subject' and 'text'" in _refusal(response)["msg"]


@pytest.fixture
def library(tmp_path: Path) -> TemplateLibrary:
    """``email_only`` has no sms.txt; ``code``'s sms.txt needs a variable its other parts do not."""
    return template_library(
        tmp_path,
        {
            "email_only": {"subject.txt": "Hello", "body.txt": "A long email, {{ name }}."},
            "code": {
                "subject.txt": "Your code",
                "body.txt": "See the SMS.",
                "sms.txt": "\nYour code is {{ code }}.\n\n",
            },
        },
    )


async def test_a_template_without_sms_txt_is_refused_for_sms_and_still_sent_by_email(
    client_for: Any, provider: SmsProvider, library: TemplateLibrary
) -> None:
    async with client_for(templates=library, **provider.settings()) as client:
        refused = await client.post("/notify", json={"to": [SMS], "template": "email_only", "context": {"name": "A"}})
        by_email = await client.post(
            "/notify",
            json={
                "to": [{"channel": "email", "address": "ada@example.com"}],
                "template": "email_only",
                "context": {"name": "A"},
            },
        )
    error = _refusal(refused)
    assert error["loc"] == ["body", "template"]
    assert "template 'email_only' has no sms.txt, so it cannot be sent to an sms recipient" in error["msg"]
    assert by_email.status_code == 202, by_email.text
    assert provider.received() == []


async def test_sms_txt_is_rendered_stripped_and_its_own_variables_are_checked(
    client_for: Any, provider: SmsProvider, library: TemplateLibrary
) -> None:
    async with client_for(templates=library, **provider.settings()) as client:
        missing = await client.post("/notify", json={"to": [SMS], "template": "code", "context": {}})
        accepted = await _accepted(client, {"to": [SMS], "template": "code", "context": {"code": "123456"}})
        await _until(client, accepted["id"], "delivered")
    error = _refusal(missing)
    assert error["loc"] == ["body", "context"]
    assert error["msg"] == "template 'code' needs variable 'code' in context (sms.txt)"
    [message] = provider.messages()
    assert message.form["Body"] == "Your code is 123456."


async def test_the_openapi_example_has_an_sms_recipient(make_settings: Callable[..., Settings]) -> None:
    schema = create_app(make_settings()).openapi()["components"]["schemas"]
    [example] = schema["NotifyRequest"]["examples"]
    assert SMS in example["to"]
    assert "sms" in schema["Recipient"]["properties"]["channel"]["enum"]
    assert "provider_message_id" in schema["DeliveryOut"]["properties"]
