"""Herald's settings, read from environment variables.

Nothing here runs at import time: call :func:`get_settings` (the app factory does) or
build ``Settings(...)`` directly in tests. A bad value raises :class:`ConfigError`, whose
message names the variable and never echoes a secret.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from email.headerregistry import Address
from email.utils import parseaddr
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.errors import ConfigError

PositiveSeconds = Annotated[float, Field(gt=0, le=7 * 24 * 3600)]

_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")

WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 - a format prefix, not a secret
MIN_WEBHOOK_SECRET_BYTES = 24

# SMS_FROM: an E.164 number (as tasks/channels/sms.py checks recipients), a Twilio Messaging Service SID
# (sent as MessagingServiceSid), or an alphanumeric sender ID (1-11 letters, digits, spaces; one letter at least).
_SMS_FROM_NUMBER = re.compile(r"\+[1-9][0-9]{7,14}")
_SMS_FROM_SERVICE = re.compile(r"MG[0-9a-fA-F]{32}")
_SMS_FROM_ALPHANUMERIC = re.compile(r"(?=[A-Za-z0-9 ]*[A-Za-z])[A-Za-z0-9 ]{1,11}")
# Goes into the URL path: Twilio's is AC + 32 hex digits; compatible providers use other ids (UUIDs).
_SMS_ACCOUNT_SID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class Settings(BaseSettings):
    """Every knob Herald reads, one field per environment variable."""

    model_config = SettingsConfigDict(case_sensitive=True, env_ignore_empty=True, extra="ignore")

    TASK_BACKEND: Literal["inline", "arq"] = "inline"
    REDIS_URL: SecretStr | None = None
    WORKER_MODE: Literal["separate", "embedded"] = "separate"
    WORKER_MAX_JOBS: int = Field(default=50, ge=1, le=10_000)
    WORKER_POLL_DELAY_S: PositiveSeconds = 0.1
    HEARTBEAT_INTERVAL_S: PositiveSeconds = 10.0
    CRON_ENABLED: bool = True
    TASK_MODULES: str = ""
    HOST: str = "127.0.0.1"
    PORT: int = Field(default=8000, ge=1, le=65535)
    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    LOG_FORMAT: Literal["json", "console"] = "json"
    METRICS_PUBLIC: bool = False
    WORKER_METRICS_PORT: int = Field(default=9191, ge=0, le=65535)

    API_KEY: SecretStr | None = None

    SMTP_HOST: str | None = None
    SMTP_PORT: int = Field(default=587, ge=1, le=65535)
    SMTP_USERNAME: str | None = None
    SMTP_PASSWORD: SecretStr | None = None
    SMTP_TLS: Literal["starttls", "tls", "none"] = "starttls"
    SMTP_TIMEOUT_S: PositiveSeconds = 30.0
    SMTP_POOL_SIZE: int = Field(default=4, ge=1, le=100)
    EMAIL_FROM: str = "Herald <herald@localhost>"

    WEBHOOK_SECRET: SecretStr | None = None
    WEBHOOK_ALLOW_PRIVATE: bool = False
    WEBHOOK_TIMEOUT_S: PositiveSeconds = 10.0
    WEBHOOK_MAX_PER_HOST: int = Field(default=10, ge=1, le=10_000)

    SMS_API_BASE_URL: str = "https://api.twilio.com"
    SMS_ACCOUNT_SID: str | None = None
    SMS_AUTH_TOKEN: SecretStr | None = None
    SMS_FROM: str | None = None
    SMS_TIMEOUT_S: PositiveSeconds = 10.0
    SMS_MAX_SEGMENTS: int = Field(default=10, ge=1, le=10)

    TASK_CONCURRENCY: int = Field(default=20, ge=1, le=1000)
    TASK_QUEUE_MAX: int = Field(default=10_000, ge=1, le=1_000_000)
    SHUTDOWN_GRACE_S: PositiveSeconds = 20.0
    INLINE_MAX_DEFER_S: PositiveSeconds = 3600.0
    RETRY_BASE_DELAY_S: PositiveSeconds = 2.0
    RETRY_MAX_DELAY_S: PositiveSeconds = 300.0
    EMAIL_MAX_ATTEMPTS: int = Field(default=5, ge=1, le=50)
    WEBHOOK_MAX_ATTEMPTS: int = Field(default=8, ge=1, le=50)
    SMS_MAX_ATTEMPTS: int = Field(default=5, ge=1, le=50)

    RECORD_MAX_COUNT: int = Field(default=10_000, ge=10, le=10_000_000)
    RECORD_TTL_S: PositiveSeconds = 7 * 24 * 3600.0
    IDEMPOTENCY_TTL_S: PositiveSeconds = 24 * 3600.0
    INBOX_MAX_PER_USER: int = Field(default=200, ge=1, le=10_000)
    INBOX_HEARTBEAT_S: PositiveSeconds = 15.0
    PREFERENCES_MAX_USERS: int = Field(default=100_000, ge=1, le=100_000_000)  # in-process mode only

    MAX_BODY_BYTES: int = Field(default=256 * 1024, ge=1024, le=64 * 1024 * 1024)
    MAX_RECIPIENTS: int = Field(default=50, ge=1, le=10_000)
    MAX_CONTEXT_BYTES: int = Field(default=16 * 1024, ge=64, le=16 * 1024 * 1024)

    @field_validator("EMAIL_FROM")
    @classmethod
    def _email_from_has_address(cls, value: str) -> str:
        if "\r" in value or "\n" in value:
            raise ValueError("must be one line")
        _, addr = parseaddr(value)
        if "@" not in addr:
            raise ValueError("must contain an address, e.g. 'Herald <herald@example.com>'")
        return value

    @field_validator("WEBHOOK_SECRET")
    @classmethod
    def _webhook_secret_format(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        raw = value.get_secret_value().removeprefix(WEBHOOK_SECRET_PREFIX)
        # The prefix is optional: Render's generateValue makes a bare base64 value.
        try:
            key = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"must be base64, optionally prefixed with '{WEBHOOK_SECRET_PREFIX}'") from None
        if len(key) < MIN_WEBHOOK_SECRET_BYTES:
            raise ValueError(f"must decode to at least {MIN_WEBHOOK_SECRET_BYTES} bytes")
        return value

    @field_validator("TASK_MODULES")
    @classmethod
    def _task_modules_format(cls, value: str) -> str:
        for path in task_module_paths(value):
            module, _, attribute = path.partition(":")
            if not (_DOTTED.fullmatch(module) and attribute.isidentifier()):
                raise ValueError(f"{path!r} is not 'package.module:attribute' (comma-separated for several)")
        return value

    @field_validator("REDIS_URL")
    @classmethod
    def _redis_url_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("SMS_API_BASE_URL")
    @classmethod
    def _sms_api_base_url(cls, value: str) -> str:
        try:
            parts = urlsplit(value)
            host = parts.hostname
            _ = parts.port  # a port that is not a number, or out of range, raises ValueError
        except ValueError:
            raise ValueError("must be an http(s) URL such as 'https://api.twilio.com'") from None
        if parts.scheme not in ("https", "http") or not host:
            raise ValueError("must be an http(s) URL with a host, such as 'https://api.twilio.com'")
        if parts.username is not None or parts.password is not None:
            # never echoed: it would be the token
            raise ValueError("must not contain credentials: set SMS_ACCOUNT_SID and SMS_AUTH_TOKEN instead")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or a fragment")
        if parts.scheme == "http" and not _is_loopback(host):
            raise ValueError("must be https: the auth token is sent with every request (http only for loopback)")
        return value.rstrip("/")

    @field_validator("SMS_ACCOUNT_SID")
    @classmethod
    def _sms_account_sid(cls, value: str | None) -> str | None:
        if value is not None and not _SMS_ACCOUNT_SID.fullmatch(value):
            raise ValueError("must be the provider's account id, e.g. Twilio's 'AC' + 32 hex digits")
        return value

    @field_validator("SMS_AUTH_TOKEN")
    @classmethod
    def _sms_auth_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        token = value.get_secret_value()
        if not token:
            raise ValueError("must not be empty")
        if not token.isprintable() or " " in token:
            raise ValueError("must not contain spaces or control characters (a pasted newline?)")
        return value

    @field_validator("SMS_FROM")
    @classmethod
    def _sms_from(cls, value: str | None) -> str | None:
        if value is None or any(
            pattern.fullmatch(value) for pattern in (_SMS_FROM_NUMBER, _SMS_FROM_SERVICE, _SMS_FROM_ALPHANUMERIC)
        ):
            return value
        raise ValueError(
            "must be an E.164 number ('+' and 8 to 15 digits, e.g. '+14155550123'), a Messaging Service SID "
            "('MG' + 32 hex digits) or an alphanumeric sender ID (1 to 11 letters, digits or spaces)"
        )

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.TASK_BACKEND == "arq" and self.REDIS_URL is None:
            raise ValueError("TASK_BACKEND=arq needs REDIS_URL")
        if self.RETRY_MAX_DELAY_S < self.RETRY_BASE_DELAY_S:
            raise ValueError("RETRY_MAX_DELAY_S must be at least RETRY_BASE_DELAY_S")
        if (self.SMTP_USERNAME is None) != (self.SMTP_PASSWORD is None):
            raise ValueError("SMTP_USERNAME and SMTP_PASSWORD must be set together")
        sms = {
            "SMS_ACCOUNT_SID": self.SMS_ACCOUNT_SID,
            "SMS_AUTH_TOKEN": self.SMS_AUTH_TOKEN,
            "SMS_FROM": self.SMS_FROM,
        }
        missing = [name for name, value in sms.items() if value is None]
        if 0 < len(missing) < len(sms):
            raise ValueError(
                f"SMS_ACCOUNT_SID, SMS_AUTH_TOKEN and SMS_FROM must be set together (missing: {', '.join(missing)})"
            )
        return self

    @property
    def sms_enabled(self) -> bool:
        """Whether the SMS channel is configured (all of SMS_ACCOUNT_SID, SMS_AUTH_TOKEN and SMS_FROM)."""
        return self.SMS_ACCOUNT_SID is not None and self.SMS_AUTH_TOKEN is not None and self.SMS_FROM is not None

    @property
    def email_from_address(self) -> Address:
        display_name, addr = parseaddr(self.EMAIL_FROM)
        username, _, domain = addr.rpartition("@")
        return Address(display_name=display_name, username=username, domain=domain)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def task_module_paths(value: str) -> list[str]:
    """``TASK_MODULES`` split into its ``module:attribute`` entries."""
    return [part.strip() for part in value.split(",") if part.strip()]


def get_settings(**overrides: Any) -> Settings:
    """Build settings from the environment (plus ``overrides``), or raise ConfigError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"]) or "settings"
        problems.append(f"{where}: {error['msg']}")
    return "invalid configuration: " + "; ".join(problems)
