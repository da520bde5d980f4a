"""The SMS_* settings: refused at start-up with the variable's name, never echoing the token."""

from __future__ import annotations

import pytest

from core.config import get_settings
from core.errors import ConfigError
from tasks.channels.sms import MAX_SEGMENTS, e164_problem

LEAKY_TOKEN = "leaky-sms-token-4242"
GOOD = {
    "SMS_ACCOUNT_SID": "AC" + "0" * 32,
    "SMS_AUTH_TOKEN": LEAKY_TOKEN,
    "SMS_FROM": "+14155550100",
}


def set_env(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_sms_is_off_by_default_and_points_at_twilio() -> None:
    settings = get_settings()

    assert settings.sms_enabled is False
    assert settings.SMS_API_BASE_URL == "https://api.twilio.com"
    assert (settings.SMS_ACCOUNT_SID, settings.SMS_AUTH_TOKEN, settings.SMS_FROM) == (None, None, None)
    assert settings.SMS_MAX_SEGMENTS == MAX_SEGMENTS


def test_a_complete_configuration_is_read_and_the_token_kept_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, {**GOOD, "SMS_TIMEOUT_S": "4.5", "SMS_MAX_SEGMENTS": "3", "SMS_MAX_ATTEMPTS": "7"})

    settings = get_settings()

    assert settings.sms_enabled is True
    assert settings.SMS_AUTH_TOKEN is not None
    assert settings.SMS_AUTH_TOKEN.get_secret_value() == LEAKY_TOKEN
    assert (settings.SMS_TIMEOUT_S, settings.SMS_MAX_SEGMENTS, settings.SMS_MAX_ATTEMPTS) == (4.5, 3, 7)
    assert LEAKY_TOKEN not in repr(settings)
    assert LEAKY_TOKEN not in str(settings.model_dump())


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        ("https://api.twilio.com/", "https://api.twilio.com"),
        ("https://sms.example.com/api/compat", "https://sms.example.com/api/compat"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://localhost:8080/", "http://localhost:8080"),
        ("http://[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_a_base_url_is_accepted_without_its_trailing_slash(
    monkeypatch: pytest.MonkeyPatch, url: str, kept: str
) -> None:
    monkeypatch.setenv("SMS_API_BASE_URL", url)
    settings = get_settings()

    assert kept == settings.SMS_API_BASE_URL


@pytest.mark.parametrize(
    "sender", ["+14155550100", "+4930901820", "MG" + "0123456789abcdef" * 2, "Herald", "My Shop 24"]
)
def test_each_kind_of_sender_is_accepted(monkeypatch: pytest.MonkeyPatch, sender: str) -> None:
    set_env(monkeypatch, {**GOOD, "SMS_FROM": sender})
    settings = get_settings()

    assert sender == settings.SMS_FROM


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("SMS_API_BASE_URL", "ftp://api.twilio.com", "must be an http(s) URL with a host"),
        ("SMS_API_BASE_URL", "api.twilio.com", "must be an http(s) URL with a host"),
        ("SMS_API_BASE_URL", "https://", "must be an http(s) URL with a host"),
        ("SMS_API_BASE_URL", "https://api.twilio.com:99999", "must be an http(s) URL"),
        ("SMS_API_BASE_URL", "https://[::1", "must be an http(s) URL"),
        ("SMS_API_BASE_URL", "http://api.twilio.com", "must be https"),
        ("SMS_API_BASE_URL", "http://10.0.0.5:8080", "must be https"),
        ("SMS_API_BASE_URL", f"https://AC1:{LEAKY_TOKEN}@api.twilio.com", "must not contain credentials"),
        ("SMS_API_BASE_URL", "https://api.twilio.com/?region=us1", "must not have a query or a fragment"),
        ("SMS_ACCOUNT_SID", "AC123/../other", "must be the provider's account id"),
        ("SMS_ACCOUNT_SID", "AC 123", "must be the provider's account id"),
        ("SMS_AUTH_TOKEN", LEAKY_TOKEN + "\n", "must not contain spaces or control characters"),
        ("SMS_AUTH_TOKEN", LEAKY_TOKEN + " x", "must not contain spaces or control characters"),
        ("SMS_FROM", "+04930901820", "must be an E.164 number"),
        ("SMS_FROM", "+1 415 555 0100", "must be an E.164 number"),
        ("SMS_FROM", "14155550100", "must be an E.164 number"),
        ("SMS_FROM", "Herald Notify", "alphanumeric sender ID (1 to 11"),
        ("SMS_FROM", "12345", "must be an E.164 number"),
        ("SMS_FROM", "MG" + "0" * 31, "Messaging Service SID ('MG' + 32 hex digits)"),
        ("SMS_TIMEOUT_S", "0", "greater than 0"),
        ("SMS_MAX_SEGMENTS", "0", "greater than or equal to 1"),
        ("SMS_MAX_SEGMENTS", "11", "less than or equal to 10"),
        ("SMS_MAX_ATTEMPTS", "0", "greater than or equal to 1"),
    ],
)
def test_a_bad_value_stops_start_up_naming_the_variable_and_not_the_token(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, said: str
) -> None:
    set_env(monkeypatch, {**GOOD, name: value})

    with pytest.raises(ConfigError) as caught:
        get_settings()

    message = str(caught.value)
    assert f"{name}: " in message
    assert said in message
    assert LEAKY_TOKEN not in message


@pytest.mark.parametrize("missing", sorted(GOOD))
def test_account_token_and_sender_are_set_together(monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    set_env(monkeypatch, {name: value for name, value in GOOD.items() if name != missing})

    with pytest.raises(ConfigError) as caught:
        get_settings()

    message = str(caught.value)
    assert "SMS_ACCOUNT_SID, SMS_AUTH_TOKEN and SMS_FROM must be set together" in message
    assert f"(missing: {missing})" in message
    assert LEAKY_TOKEN not in message


@pytest.mark.parametrize(
    "number",
    ["+14155550123", "+12345678", "+123456789012345", "+1234567", "+1234567890123456", "+0123456789", "+1 4155550"],
)
def test_sms_from_numbers_follow_the_same_e164_rule_as_recipients(monkeypatch: pytest.MonkeyPatch, number: str) -> None:
    set_env(monkeypatch, {**GOOD, "SMS_FROM": number})

    try:
        get_settings()
    except ConfigError:
        accepted = False
    else:
        accepted = True

    assert accepted == (e164_problem(number) is None)
