"""The opt-out rule (most specific setting decides, critical templates always sent), the stores, template.toml."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from core.config import Settings
from core.errors import RetryableError
from tasks.delivery import send_inapp
from tasks.inbox import RedisInbox
from tasks.messages import Channel
from tasks.preferences import (
    Audience,
    MemoryPreferences,
    Preferences,
    PreferencesFullError,
    RedisPreferences,
    skip_reason,
)
from tasks.rendering import TemplateLibrary
from tasks.template_info import TemplateInfo, TemplateInfoError, read_template_info
from tests.support.smtp import free_port
from tests.tasks.helpers import delivery_context, make_payload

NO_SMS = Preferences(channels={"sms": False})


def _for(channel: str, template: str | None = "welcome", category: str | None = "onboarding") -> Audience:
    return Audience(user_id="u1", channel=channel, template=template, category=category)


@pytest.mark.parametrize(
    ("preferences", "audience", "reason"),
    [
        (None, _for("sms"), None),
        (Preferences(), _for("sms"), None),
        (NO_SMS, _for("sms"), "user u1 opted out of sms"),
        (NO_SMS, _for("email"), None),
        (Preferences(templates={"welcome": False}), _for("email"), "user u1 opted out of template 'welcome'"),
        (Preferences(templates={"other": False}), _for("email"), None),
        (
            Preferences(templates={"welcome": {"email": False}}),
            _for("email"),
            "user u1 opted out of template 'welcome' on email",
        ),
        (Preferences(templates={"welcome": {"email": False}}), _for("sms"), None),
        (Preferences(categories={"onboarding": False}), _for("inapp"), "user u1 opted out of category 'onboarding'"),
        (
            Preferences(categories={"onboarding": {"inapp": False}}),
            _for("inapp"),
            "user u1 opted out of category 'onboarding' on inapp",
        ),
        (Preferences(categories={"onboarding": False}), _for("inapp", category=None), None),
        # the most specific setting decides: "no SMS, except this template" and "this template, but not by SMS"
        (Preferences(channels={"sms": False}, templates={"welcome": {"sms": True}}), _for("sms"), None),
        (Preferences(channels={"sms": False}, templates={"welcome": True}), _for("sms"), None),
        (Preferences(categories={"onboarding": False}, templates={"welcome": {"email": True}}), _for("email"), None),
        (
            Preferences(categories={"onboarding": False}, templates={"welcome": {"email": True}}),
            _for("sms"),
            "user u1 opted out of category 'onboarding'",
        ),
        (
            Preferences(templates={"welcome": {"sms": True}}, categories={"onboarding": {"email": False}}),
            _for("email"),
            "user u1 opted out of category 'onboarding' on email",
        ),
        (
            Preferences(channels={"email": False}),
            _for("email", template=None, category=None),
            "user u1 opted out of email",
        ),
    ],
)
def test_skip_reason_names_the_most_specific_setting_that_decides(
    preferences: Preferences | None, audience: Audience, reason: str | None
) -> None:
    assert skip_reason(preferences, audience) == reason


def test_a_critical_template_is_never_skipped() -> None:
    everything_off = Preferences(
        channels={"email": False}, categories={"account": False}, templates={"password_reset": False}
    )
    critical = Audience(user_id="u1", channel="email", template="password_reset", category="account", critical=True)
    assert skip_reason(everything_off, critical) is None
    assert skip_reason(everything_off, Audience(user_id="u1", channel="email", template="password_reset")) is not None


def test_preferences_survive_their_json_form() -> None:
    kept = Preferences(
        channels={"sms": False}, categories={"a": {"email": False}}, templates={"t": True}, updated_at="2026-11-24"
    )
    assert Preferences.from_json(kept.to_json()) == kept


async def test_the_memory_store_refuses_a_new_user_past_its_limit_and_keeps_everyone_elses() -> None:
    store = MemoryPreferences(max_users=2)
    await store.put("a", NO_SMS)
    await store.put("b", NO_SMS)
    with pytest.raises(PreferencesFullError, match="at most 2 users"):
        await store.put("c", NO_SMS)
    changed = await store.put("a", Preferences())  # a user already kept can always change theirs
    assert changed.updated_at is not None
    assert await store.get("a") == changed
    kept_b = await store.get("b")
    assert kept_b is not None
    assert kept_b.channels == {"sms": False}
    assert await store.get("c") is None


async def test_the_redis_store_keeps_preferences_without_expiry(redis_client: Redis) -> None:
    store = RedisPreferences(redis_client)
    assert await store.get("user:1") is None
    kept = await store.put("user:1", Preferences(channels={"sms": False}, templates={"welcome": {"inapp": False}}))
    again = await RedisPreferences(redis_client).get("user:1")
    [key] = await redis_client.keys("herald:prefs:*")
    assert again == kept
    assert kept.updated_at is not None
    assert await redis_client.ttl(key) == -1, "an opt-out must not age out"


def test_shipped_templates_declare_their_category_and_password_reset_is_critical() -> None:
    library = TemplateLibrary()
    assert library.info("password_reset") == TemplateInfo(category="account", critical=True)
    assert library.info("welcome") == TemplateInfo(category="onboarding", critical=False)
    assert library.categories() == {"account", "onboarding"}


@pytest.mark.parametrize(
    ("toml", "problem"),
    [
        ('category = "a"\ncritcal = true\n', "unknown keys \\['critcal'\\]"),
        ('critical = "yes"\n', "critical must be true or false"),
        ('category = "Has Spaces"\n', "category must be"),
        ("category = \n", "template.toml"),
    ],
)
def test_a_malformed_template_toml_is_refused_naming_the_file(tmp_path: Path, toml: str, problem: str) -> None:
    (tmp_path / "template.toml").write_text(toml)
    with pytest.raises(TemplateInfoError, match=problem):
        read_template_info(tmp_path)


def test_a_template_without_template_toml_has_no_category_and_is_not_critical(tmp_path: Path) -> None:
    assert read_template_info(tmp_path) == TemplateInfo()


async def test_redis_out_of_reach_makes_an_inapp_attempt_retryable_not_a_task_bug(
    make_settings: Callable[..., Settings],
) -> None:
    nobody = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    inbox = RedisInbox(nobody, max_per_user=10, ttl_s=60)
    payload = make_payload(channel=Channel.INAPP, address="user_42")
    payload["user_id"] = "user_42"
    try:
        async with delivery_context(make_settings(), inbox=inbox) as ctx:
            ctx["preferences"] = RedisPreferences(nobody)
            with pytest.raises(RetryableError, match="could not reach the user's preferences"):
                await send_inapp(ctx, payload)
            del ctx["preferences"]
            with pytest.raises(RetryableError, match="could not reach the inbox"):
                await send_inapp(ctx, payload)
    finally:
        await inbox.aclose()
        await nobody.aclose()
