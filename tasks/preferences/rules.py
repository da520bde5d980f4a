"""A user's notification preferences, and the rule that decides whether one delivery is sent.

The document (what ``PUT /users/{user_id}/preferences`` stores) switches channels off, or templates and
categories on every channel (``false``) or on some (``{"sms": false}``)::

    {"channels": {"sms": false},
     "categories": {"marketing": false, "digest": {"email": false}},
     "templates": {"welcome": {"inapp": false}}}

The most specific setting that names a delivery decides: the template's (for that channel, then as a whole),
then its category's, then the channel's; nothing set means it is sent. So ``{"channels": {"sms": false},
"templates": {"login_code": {"sms": true}}}`` reads "no SMS, except login codes". A template marked critical
(``critical = true`` in its template.toml, e.g. password_reset) is sent whatever the preferences say.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Rule = bool | dict[str, bool]  # a template's or category's setting: all channels, or some


@dataclass(frozen=True, slots=True)
class Preferences:
    channels: dict[str, bool] = field(default_factory=dict)
    categories: dict[str, Rule] = field(default_factory=dict)
    templates: dict[str, Rule] = field(default_factory=dict)
    updated_at: str | None = None  # ISO 8601, set by the store that kept it

    def to_json(self) -> dict[str, Any]:
        return {
            "channels": self.channels,
            "categories": self.categories,
            "templates": self.templates,
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Preferences:
        return cls(
            channels=dict(data.get("channels") or {}),
            categories=dict(data.get("categories") or {}),
            templates=dict(data.get("templates") or {}),
            updated_at=data.get("updated_at"),
        )


@dataclass(frozen=True, slots=True)
class Audience:
    """Who a delivery is for and what kind of message it is: what preferences are checked against."""

    user_id: str
    channel: str
    template: str | None = None
    category: str | None = None
    critical: bool = False


def skip_reason(preferences: Preferences | None, audience: Audience) -> str | None:
    """Why this delivery is not to be sent (the user opted out), or None to send it."""
    if preferences is None or audience.critical:
        return None
    channel = audience.channel
    for kind, name, rules in (
        ("template", audience.template, preferences.templates),
        ("category", audience.category, preferences.categories),
    ):
        if name is None or name not in rules:
            continue
        rule = rules[name]
        if isinstance(rule, bool):
            return None if rule else f"user {audience.user_id} opted out of {kind} {name!r}"
        if channel in rule:
            return None if rule[channel] else f"user {audience.user_id} opted out of {kind} {name!r} on {channel}"
    if preferences.channels.get(channel, True):
        return None
    return f"user {audience.user_id} opted out of {channel}"
