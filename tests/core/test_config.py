from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import get_settings
from core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

# Recognisable, so that a message echoing them is easy to spot.
LEAKY_SECRET = "whsec_NOT*BASE64*leaky-webhook-secret-4242"
LEAKY_PASSWORD = "leaky-smtp-password-4242"


def test_defaults_need_no_environment() -> None:
    settings = get_settings()

    assert settings.TASK_BACKEND == "inline"
    assert settings.PORT == 8000
    assert settings.WEBHOOK_SECRET is None


def test_environment_is_read_when_settings_are_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9123")
    monkeypatch.setenv("SMTP_TLS", "none")

    settings = get_settings()

    assert (settings.PORT, settings.SMTP_TLS) == (9123, "none")


def test_a_valid_webhook_secret_and_smtp_credentials_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    monkeypatch.setenv("WEBHOOK_SECRET", secret)
    monkeypatch.setenv("SMTP_USERNAME", "herald")
    monkeypatch.setenv("SMTP_PASSWORD", LEAKY_PASSWORD)

    settings = get_settings()

    assert settings.WEBHOOK_SECRET is not None
    assert settings.WEBHOOK_SECRET.get_secret_value() == secret
    assert LEAKY_PASSWORD not in repr(settings)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("SMTP_TLS", "bogus"),
        ("TASK_BACKEND", "celery"),
        ("EMAIL_FROM", "Herald"),
        ("EMAIL_FROM", "Herald <herald@example.com>\r\nBcc: x@example.com"),
        ("WEBHOOK_SECRET", "c2hvcnQ="),
        ("WEBHOOK_SECRET", "whsec_" + base64.b64encode(b"too short").decode()),
        ("WEBHOOK_SECRET", LEAKY_SECRET),
        ("RETRY_BASE_DELAY_S", "0"),
    ],
)
def test_bad_value_raises_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)

    with pytest.raises(ConfigError) as caught:
        get_settings()

    message = str(caught.value)
    assert name in message
    if name == "WEBHOOK_SECRET":
        assert value not in message
        assert value.removeprefix("whsec_") not in message


def test_webhook_secret_prefix_is_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    bare = base64.b64encode(b"k" * 32).decode()  # what Render's generateValue produces
    monkeypatch.setenv("WEBHOOK_SECRET", bare)

    settings = get_settings()

    assert settings.WEBHOOK_SECRET is not None
    assert settings.WEBHOOK_SECRET.get_secret_value() == bare


def test_smtp_username_without_password_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_USERNAME", "herald")

    with pytest.raises(ConfigError, match="SMTP_PASSWORD"):
        get_settings()


def test_smtp_password_never_appears_in_the_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_PASSWORD", LEAKY_PASSWORD)  # without SMTP_USERNAME: refused

    with pytest.raises(ConfigError) as caught:
        get_settings()

    assert "SMTP_USERNAME" in str(caught.value)
    assert LEAKY_PASSWORD not in str(caught.value)


def test_secrets_stay_out_of_a_message_about_another_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_USERNAME", "herald")
    monkeypatch.setenv("SMTP_PASSWORD", LEAKY_PASSWORD)
    monkeypatch.setenv("WEBHOOK_SECRET", LEAKY_SECRET)
    monkeypatch.setenv("PORT", "abc")

    with pytest.raises(ConfigError) as caught:
        get_settings()

    message = str(caught.value)
    assert "PORT" in message
    assert "WEBHOOK_SECRET" in message
    assert LEAKY_PASSWORD not in message
    assert LEAKY_SECRET not in message
    assert "leaky" not in message


def test_config_error_does_not_chain_the_validation_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # A traceback of the ConfigError must not print pydantic's error, which may carry inputs.
    monkeypatch.setenv("WEBHOOK_SECRET", LEAKY_SECRET)

    with pytest.raises(ConfigError) as caught:
        get_settings()

    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__ is True


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key not in env}
    environment.update(env)
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_importing_modules_needs_no_valid_environment() -> None:
    code = (
        "import importlib, pkgutil, api.app, core.config, tasks\n"
        "for mod in pkgutil.walk_packages(tasks.__path__, 'tasks.'):\n"
        "    importlib.import_module(mod.name)\n"
        "print('imported')\n"
    )

    result = _run("-c", code, PORT="abc", SMTP_TLS="bogus", WEBHOOK_SECRET=LEAKY_SECRET)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "imported"


def test_python_m_api_refuses_a_bad_port_with_exit_code_2() -> None:
    result = _run("-m", "api", PORT="abc", WEBHOOK_SECRET=LEAKY_SECRET)

    assert result.returncode == 2, result.stderr
    assert "PORT" in result.stderr
    assert "Traceback" not in result.stderr
    assert "leaky" not in result.stderr
