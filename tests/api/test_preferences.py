"""PUT/GET /users/{user_id}/preferences and what they do to POST /notify, through the real app in both modes:
an opted-out delivery ends `skipped` with the reason and is never sent (no mail at the SMTP server, no webhook
at the receiver, nothing in the inbox); a critical template is sent anyway."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.support.receiver import Receiver
from tests.support.smtp import SmtpSink
from tests.support.waiting import eventually

USER = "user_42"
WELCOME = {"template": "welcome", "context": {"name": "Ada", "login_url": "https://app.example.com/login"}}
RESET = {"template": "password_reset", "context": {"reset_url": "https://app.example.com/reset/abc"}}


def _smtp(smtp: SmtpSink) -> dict[str, Any]:
    return {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": smtp.port, "SMTP_TLS": "none"}


async def _put(client: httpx.AsyncClient, body: dict[str, Any], user_id: str = USER) -> httpx.Response:
    return await client.put(f"/users/{user_id}/preferences", json=body)


async def _settled(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    """POST /notify, then the notification once none of its deliveries is still waiting or sending."""
    response = await client.post("/notify", json=body)
    assert response.status_code == 202, response.text
    notification: dict[str, Any] = response.json()

    async def done() -> bool:
        notification.update((await client.get(f"/notifications/{notification['id']}")).json())
        return notification["status"] not in ("queued", "scheduled", "in_progress")

    await eventually(done, timeout_s=10, what="the notification to settle")
    return notification


def _by_channel(notification: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["channel"]: d for d in notification["deliveries"]}


async def test_preferences_are_all_on_until_set_then_read_back_as_put(
    client_for: Any, backend_settings: dict[str, Any]
) -> None:
    wanted = {
        "channels": {"sms": False},
        "categories": {"onboarding": {"email": False}},
        "templates": {"welcome": {"sms": True}},
    }
    async with client_for(**backend_settings) as client:
        before = await client.get(f"/users/{USER}/preferences")
        put = await _put(client, wanted)
        after = await client.get(f"/users/{USER}/preferences")
        other = await client.get("/users/user_43/preferences")
        cleared = await _put(client, {})

    assert before.status_code == 200
    assert before.json() == {"user_id": USER, "channels": {}, "categories": {}, "templates": {}, "updated_at": None}
    assert put.status_code == 200, put.text
    assert after.json() == put.json()
    assert {k: after.json()[k] for k in wanted} == wanted
    assert after.json()["updated_at"] is not None
    assert other.json()["channels"] == {}
    assert (cleared.status_code, cleared.json()["channels"]) == (200, {})


@pytest.mark.parametrize(
    ("body", "loc", "says"),
    [
        ({"channels": {"fax": False}}, ["body", "channels", "fax", "[key]"], "'email', 'webhook', 'sms' or 'inapp'"),
        ({"channels": {"sms": "no"}}, ["body", "channels", "sms"], "valid boolean"),
        ({"templates": {"welcom": False}}, ["body", "templates", "welcom"], "no template 'welcom'; known: "),
        ({"categories": {"news": False}}, ["body", "categories", "news"], "known: account, onboarding"),
        ({"templates": {"password_reset": False}}, ["body", "templates", "password_reset"], "is critical"),
        ({"templates": {"password_reset": {"sms": False}}}, ["body", "templates", "password_reset"], "is critical"),
        ({"channel": {"sms": False}}, ["body", "channel"], "Extra inputs are not permitted"),
    ],
)
async def test_a_wrong_preference_is_a_422_naming_where_and_nothing_changes(
    client_for: Any, body: dict[str, Any], loc: list[str], says: str
) -> None:
    async with client_for() as client:
        await _put(client, {"channels": {"email": False}})
        response = await _put(client, body)
        kept = (await client.get(f"/users/{USER}/preferences")).json()
    assert response.status_code == 422, response.text
    [error] = [e for e in response.json()["detail"] if e["loc"] == loc] or response.json()["detail"]
    assert error["loc"] == loc
    assert says in error["msg"]
    assert kept["channels"] == {"email": False}


async def test_a_bad_user_id_is_a_422_on_the_path(client_for: Any) -> None:
    async with client_for() as client:
        response = await _put(client, {}, user_id="a b")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "user_id"]


async def test_an_opted_out_channel_is_skipped_with_the_reason_and_the_rest_is_sent(
    client_for: Any, backend_settings: dict[str, Any], smtp: SmtpSink, receiver: Receiver
) -> None:
    to = [{"channel": "email", "address": "ada@example.com"}, {"channel": "webhook", "address": receiver.url()}]
    async with client_for(**backend_settings, **_smtp(smtp)) as client:
        assert (await _put(client, {"channels": {"email": False}})).status_code == 200
        notification = await _settled(client, {"to": to, "user_id": USER, **WELCOME})
        someone_else = await _settled(client, {"to": to[:1], "user_id": "user_43", **WELCOME})
        skipped = (await client.get("/deliveries", params={"status": "skipped"})).json()["items"]

    email, webhook = _by_channel(notification)["email"], _by_channel(notification)["webhook"]
    assert (email["status"], email["attempts"], email["last_error"]) == (
        "skipped",
        1,
        f"user {USER} opted out of email",
    )
    assert webhook["status"] == "delivered"
    assert (notification["status"], notification["user_id"]) == ("delivered", USER)
    assert someone_else["status"] == "delivered"
    assert [m["To"] for m in smtp.messages] == ["ada@example.com"], "only user_43's email went out"
    assert len(receiver.received()) == 1
    assert [item["id"] for item in skipped] == [email["id"]]


async def test_a_critical_template_is_sent_to_a_user_who_opted_out_of_everything(
    client_for: Any, backend_settings: dict[str, Any], smtp: SmtpSink
) -> None:
    everything_off = {"channels": {"email": False, "inapp": False}, "categories": {"account": False}}
    to = [{"channel": "email", "address": "ada@example.com"}, {"channel": "inapp", "address": USER}]
    async with client_for(**backend_settings, **_smtp(smtp)) as client:
        assert (await _put(client, everything_off)).status_code == 200
        reset = await _settled(client, {"to": to, "user_id": USER, **RESET})
        welcome = await _settled(client, {"to": to, "user_id": USER, **WELCOME})
        inbox = (await client.get(f"/users/{USER}/inbox")).json()["items"]

    assert reset["status"] == "delivered"
    assert {d["status"] for d in reset["deliveries"]} == {"delivered"}
    assert (welcome["status"], {d["status"] for d in welcome["deliveries"]}) == ("skipped", {"skipped"})
    assert [m["Subject"] for m in smtp.messages] == ["Reset your Herald password"]
    assert [m["title"] for m in inbox] == ["Reset your Herald password"]


async def test_a_category_or_template_opt_out_skips_only_its_channels(
    client_for: Any, backend_settings: dict[str, Any], smtp: SmtpSink
) -> None:
    to = [{"channel": "email", "address": "ada@example.com"}, {"channel": "inapp", "address": USER}]
    async with client_for(**backend_settings, **_smtp(smtp)) as client:
        await _put(client, {"categories": {"onboarding": {"inapp": False}}})
        by_category = await _settled(client, {"to": to, "user_id": USER, **WELCOME})
        await _put(client, {"templates": {"welcome": False}})
        by_template = await _settled(client, {"to": to, "user_id": USER, **WELCOME})

    assert {c: d["status"] for c, d in _by_channel(by_category).items()} == {"email": "delivered", "inapp": "skipped"}
    assert _by_channel(by_category)["inapp"]["last_error"] == f"user {USER} opted out of category 'onboarding' on inapp"
    assert {d["last_error"] for d in by_template["deliveries"]} == {f"user {USER} opted out of template 'welcome'"}
    assert len(smtp.messages) == 1


async def test_an_inapp_recipient_is_checked_against_its_own_user(
    client_for: Any, backend_settings: dict[str, Any]
) -> None:
    async with client_for(**backend_settings) as client:
        await _put(client, {"channels": {"inapp": False}}, user_id="user_43")
        notification = await _settled(
            client,
            {"to": [{"channel": "inapp", "address": "user_43"}, {"channel": "inapp", "address": USER}], **WELCOME},
        )
        theirs = (await client.get("/users/user_43/inbox")).json()["items"]
        mine = (await client.get(f"/users/{USER}/inbox")).json()["items"]

    assert {d["address"]: d["status"] for d in notification["deliveries"]} == {"user_43": "skipped", USER: "delivered"}
    assert (len(theirs), len(mine)) == (0, 1)


async def test_an_opt_out_made_after_a_notification_was_scheduled_still_applies(
    client_for: Any, backend_settings: dict[str, Any], smtp: SmtpSink
) -> None:
    send_at = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    body = {"to": [{"channel": "email", "address": "ada@example.com"}], "user_id": USER, "send_at": send_at, **WELCOME}
    async with client_for(**backend_settings, **_smtp(smtp)) as client:
        response = await client.post("/notify", json=body)
        assert response.json()["status"] == "scheduled"
        await _put(client, {"channels": {"email": False}})

        async def settled() -> bool:
            notification = (await client.get(f"/notifications/{response.json()['id']}")).json()
            return bool(notification["status"] == "skipped")

        await eventually(settled, timeout_s=10, what="the scheduled delivery to be skipped")
    assert smtp.messages == []


async def test_in_process_a_new_users_preferences_past_the_limit_are_a_507(client_for: Any) -> None:
    async with client_for(PREFERENCES_MAX_USERS=1) as client:
        first = await _put(client, {"channels": {"sms": False}})
        second = await _put(client, {"channels": {"sms": False}}, user_id="user_43")
        again = await _put(client, {}, user_id=USER)
    assert (first.status_code, again.status_code) == (200, 200)
    assert second.status_code == 507
    assert "PREFERENCES_MAX_USERS" in second.json()["detail"]


async def test_a_bad_user_id_on_notify_is_a_422_at_user_id(client_for: Any) -> None:
    async with client_for() as client:
        response = await client.post(
            "/notify", json={"to": [{"channel": "inapp", "address": USER}], "user_id": "a\nb", **WELCOME}
        )
        listed = (await client.get("/deliveries")).json()["items"]
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "user_id"]
    assert listed == []
