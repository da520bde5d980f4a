"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Annotated, Any, Literal

import httpx
from email_validator import EmailNotValidError, validate_email
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from api.inbox_deps import USER_ID_RULE, is_user_id
from core.jobs import Priority
from tasks.channels.email import subject_problem
from tasks.channels.sms import validate_e164
from tasks.messages import CONTROL_CHARACTERS
from tasks.notifications import DeliveryItem, DeliveryStatus, DeliveryView, NotificationStatus, NotificationView

MAX_ADDRESS_LENGTH = 2048
MAX_SUBJECT_LENGTH = 255
MAX_TEXT_LENGTH = 100_000
_TEMPLATE_NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"
# Recipients repeat (the same users, the same few webhook endpoints) and checking one is a pure function of
# its string, so the answers are kept per process: email-validator alone costs ~35 us an address, more than
# the rest of a POST /notify. Bounded: at most this many addresses of each kind (a failed check is not kept).
ADDRESS_CACHE_SIZE = 4096


class Recipient(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: Literal["email", "webhook", "sms", "inapp"] = Field(description="How to reach the recipient.")
    address: str = Field(
        min_length=1,
        max_length=MAX_ADDRESS_LENGTH,
        description="An email address for `email`, an http(s) URL for `webhook`, "
        "an E.164 phone number (`+14155550123`) for `sms`, your application's user id for `inapp` "
        f"(the `user_id` of `GET /users/{{user_id}}/inbox`: {USER_ID_RULE}).",
    )

    @field_validator("address")
    @classmethod
    def _address_fits_channel(cls, value: str, info: ValidationInfo) -> str:
        channel = info.data.get("channel")
        if channel == "email":
            return _email_address(value)
        if channel == "webhook":
            return _webhook_url(value)
        if channel == "sms":
            return validate_e164(value)
        if channel == "inapp" and not is_user_id(value):
            raise ValueError(f"an inapp address is a user id, which {USER_ID_RULE}")
        return value


def _email_address(value: str) -> str:
    if CONTROL_CHARACTERS.search(value):
        raise ValueError("an email address may not contain control characters (CR, LF, ...)")
    if "=?" in value:  # the email package decodes them in the To header: '=?us-ascii?q?eve=40evil?=@x' is eve@evil
        raise ValueError("an email address may not contain RFC 2047 encoded words ('=?charset?q?...?=')")
    return normalized_email(value)


@lru_cache(maxsize=ADDRESS_CACHE_SIZE)
def normalized_email(value: str) -> str:
    """The address as email-validator normalises it; ValueError saying why it is not one."""
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid email address: {exc}") from None


def _webhook_url(value: str) -> str:
    if CONTROL_CHARACTERS.search(value) or " " in value:
        raise ValueError("a webhook URL may not contain spaces or control characters")
    webhook_host(value)
    return value


@lru_cache(maxsize=ADDRESS_CACHE_SIZE)
def webhook_host(value: str) -> str:
    """The host of an http(s) webhook URL, as httpx will connect to it; ValueError saying what is wrong."""
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    if url.scheme not in ("http", "https"):
        raise ValueError("a webhook URL must start with http:// or https://")
    if not url.host:
        raise ValueError("a webhook URL needs a host")
    return url.host


class NotifyRequest(BaseModel):
    """Either ``template`` (+ ``context``) or literal ``subject`` + ``text`` (+ optional ``html``).

    ``subject`` may be left out when every recipient is ``sms``: an SMS has none.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "to": [
                        {"channel": "email", "address": "ada@example.com"},
                        {"channel": "webhook", "address": "https://hooks.example.com/herald"},
                        {"channel": "sms", "address": "+14155550123"},
                        {"channel": "inapp", "address": "user_42"},
                    ],
                    "template": "welcome",
                    "context": {"name": "Ada"},
                    "user_id": "user_42",
                    "metadata": {"signup_source": "web"},
                }
            ]
        },
    )

    to: list[Recipient] = Field(min_length=1, description="One delivery is made per recipient.")
    template: Annotated[str, Field(pattern=_TEMPLATE_NAME)] | None = Field(
        default=None, description="Name of a template under tasks/templates/."
    )
    context: dict[str, Any] = Field(default_factory=dict, description="Variables for the template.")
    subject: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SUBJECT_LENGTH,
        description="Literal subject, one line (an `inapp` message's title); optional when every recipient is `sms`.",
    )
    text: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_TEXT_LENGTH,
        description="Literal text, sent as given: the email's text part, the webhook's `text`, the SMS body "
        "(at most SMS_MAX_SEGMENTS segments, never truncated), the inbox message's body (`inapp`).",
    )
    html: str | None = Field(default=None, min_length=1, max_length=MAX_TEXT_LENGTH)
    metadata: dict[str, Any] = Field(default_factory=dict, description="Echoed in status and webhooks.")
    user_id: str | None = Field(
        default=None,
        description="Your application's id of the user this notification is for: just before each delivery is "
        "sent, that user's preferences (`PUT /users/{user_id}/preferences`) are checked, and one they opted out "
        "of ends `skipped` (a template marked critical is sent anyway). An `inapp` recipient is checked against "
        f"its own user id. {USER_ID_RULE[0].upper()}{USER_ID_RULE[1:]}.",
        examples=["user_42"],
    )
    send_at: AwareDatetime | None = Field(
        default=None,
        description="ISO-8601 with a timezone: deliveries wait until then (status `scheduled`); past = now.",
    )
    priority: Priority = Field(
        default=Priority.NORMAL,
        description="`urgent`, `high`, `normal` or `low`: waiting deliveries start in this order, in both modes.",
    )
    expires_at: AwareDatetime | None = Field(
        default=None,
        description="ISO-8601 with a timezone: a delivery not started by then ends `expired` and is never sent "
        "(so nothing arrives late). Must be in the future, and after `send_at` if both are given.",
    )

    @field_validator("user_id")
    @classmethod
    def _user_id(cls, value: str | None) -> str | None:
        if value is not None and not is_user_id(value):
            raise ValueError(f"the user id {USER_ID_RULE}")
        return value

    @field_validator("subject")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is not None and CONTROL_CHARACTERS.search(value):
            raise ValueError("the subject must be one line without control characters (CR, LF, ...)")
        problem = subject_problem(value) if value is not None else None
        if problem is not None:  # e.g. a CR/LF hidden in an RFC 2047 encoded word, which the email package decodes
            raise ValueError(f"the subject {problem}")
        return value

    @model_validator(mode="after")
    def _template_or_literal(self) -> NotifyRequest:
        literal = [name for name in ("subject", "text", "html") if getattr(self, name) is not None]
        if self.template is not None and literal:
            raise ValueError(f"give either 'template' or literal content, not both (also got {literal})")
        if self.template is None:
            needs_subject = any(recipient.channel != "sms" for recipient in self.to)
            if self.text is None or (self.subject is None and needs_subject):
                raise ValueError(
                    "give 'template' (with 'context'), or literal 'subject' and 'text' "
                    "('subject' may be left out when every recipient is sms)"
                )
            if self.context:
                raise ValueError("'context' is only used with 'template'")
        seen: set[tuple[str, str]] = set()
        for index, recipient in enumerate(self.to):
            # a user id is case-sensitive, as its inbox is; addresses and URLs are not
            address = recipient.address if recipient.channel == "inapp" else recipient.address.lower()
            key = (recipient.channel, address)
            if key in seen:
                raise ValueError(f"to[{index}] repeats an earlier recipient ({recipient.channel} {recipient.address})")
            seen.add(key)
        return self


class DeliveryOut(BaseModel):
    id: str
    channel: str
    address: str
    status: DeliveryStatus
    attempts: int
    last_error: str | None = Field(
        description="Why the last attempt failed, or why the delivery ended unsent: `skipped` names the opt-out "
        "(e.g. `user user_42 opted out of sms`), `cancelled` and `expired` say when."
    )
    created_at: datetime
    updated_at: datetime
    next_attempt_at: datetime | None
    finished_at: datetime | None
    provider_message_id: str | None = Field(
        default=None, description="`sms`: the provider's message sid once delivered (Twilio: `SM…`); else null."
    )

    @classmethod
    def of(cls, view: DeliveryView) -> DeliveryOut:
        return cls(
            id=view.id,
            channel=view.channel.value,
            address=view.address,
            status=view.status,
            attempts=view.attempts,
            last_error=view.last_error,
            created_at=view.created_at,
            updated_at=view.updated_at,
            next_attempt_at=view.next_attempt_at,
            finished_at=view.finished_at,
            provider_message_id=view.provider_message_id,
        )


class DeliveryItemOut(DeliveryOut):
    notification_id: str

    @classmethod
    def of_item(cls, item: DeliveryItem) -> DeliveryItemOut:
        return cls(notification_id=item.notification_id, **DeliveryOut.of(item.delivery).model_dump())


class DeliveryPageOut(BaseModel):
    items: list[DeliveryItemOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page; null at the end.")


class NotificationOut(BaseModel):
    id: str
    status: NotificationStatus
    created_at: datetime
    event_type: str
    template: str | None
    subject: str
    metadata: dict[str, Any]
    send_at: datetime | None
    priority: Priority
    expires_at: datetime | None
    user_id: str | None = Field(description="The user whose preferences apply (given to POST /notify), or null.")
    deliveries: list[DeliveryOut]

    @classmethod
    def of(cls, view: NotificationView) -> NotificationOut:
        return cls(
            id=view.id,
            status=view.status,
            created_at=view.created_at,
            event_type=view.event_type,
            template=view.template,
            subject=view.subject,
            metadata=view.metadata,
            send_at=view.send_at,
            priority=view.priority,
            expires_at=view.expires_at,
            user_id=view.user_id,
            deliveries=[DeliveryOut.of(d) for d in view.deliveries],
        )


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorOut(BaseModel):
    detail: list[ErrorItem]


class ErrorOut(BaseModel):
    detail: str


class Health(BaseModel):
    status: Literal["ok"]
    backend: str


class Readiness(BaseModel):
    ready: bool
    backend: str
    checks: dict[str, Any]
