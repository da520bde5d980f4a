"""What a delivery job carries: everything needed to send one message to one recipient.

It is a plain JSON-able dict (a durable queue stores it as JSON) fixed when the notification is
accepted, so every retry sends exactly the same content. ``text`` is what the channel sends as text: the
rendered ``body.txt`` for email and webhooks, the rendered ``sms.txt`` for SMS (the body the API counted).
For ``inapp`` the inbox message's title is ``subject``, its body ``text`` and its link ``url`` (the rendered
``inapp.txt``, or the subject and ``body.txt`` of a template without one); ``url`` is only in inapp payloads.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, NotRequired, TypedDict

# C0/C1 controls and Unicode line/paragraph separators: any of them can end an email header line (or a title).
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class Channel(StrEnum):
    EMAIL = "email"
    WEBHOOK = "webhook"
    SMS = "sms"
    INAPP = "inapp"


class DeliveryPayload(TypedDict):
    delivery_id: str
    notification_id: str
    channel: str
    address: str
    event_type: str
    created_at: str
    subject: str
    text: str
    html: str | None
    template: str | None
    context: dict[str, Any]
    metadata: dict[str, Any]
    url: NotRequired[str | None]  # inapp: the message's link
    # Set when the notification names its user (an inapp recipient always does): checked against their
    # preferences before sending. ``category`` and ``critical`` come from the template's template.toml.
    user_id: NotRequired[str]
    category: NotRequired[str | None]
    critical: NotRequired[bool]
