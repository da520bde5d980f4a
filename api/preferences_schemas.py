"""Request and response bodies of ``/users/{user_id}/preferences``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from tasks.messages import Channel
from tasks.preferences import Preferences

# false: opted out on every channel; {"sms": false}: on those channels only (true: sent, overriding a wider opt-out)
RuleIn = StrictBool | dict[Channel, StrictBool]

PREFERENCES_EXAMPLE: dict[str, Any] = {
    "channels": {"sms": False},
    "categories": {"onboarding": {"email": False}},
    "templates": {"welcome": {"sms": True}},
}
_RULES = (
    '`false` opts out on every channel, `{"sms": false}` on the channels named; `true` (as a whole or for a '
    "channel) sends even what a wider setting turned off."
)


class PreferencesIn(BaseModel):
    """What the user opted out of; replaces all they had. `{}` turns everything back on.

    The most specific setting that names a delivery decides: its template's (for that channel, then as a whole),
    then its template's category's, then its channel's; nothing set means it is sent. A template marked critical
    (such as `password_reset`) is always sent, and cannot be opted out of here.
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [PREFERENCES_EXAMPLE]})

    channels: dict[Channel, StrictBool] = Field(
        default_factory=dict, description="`false` opts out of every message on that channel."
    )
    categories: dict[str, RuleIn] = Field(
        default_factory=dict, description=f"By template category (`category` in a template's template.toml). {_RULES}"
    )
    templates: dict[str, RuleIn] = Field(default_factory=dict, description=f"By template name. {_RULES}")

    def to_preferences(self) -> Preferences:
        def plain(rule: RuleIn) -> bool | dict[str, bool]:
            return rule if isinstance(rule, bool) else {channel.value: on for channel, on in rule.items()}

        return Preferences(
            channels={channel.value: on for channel, on in self.channels.items()},
            categories={name: plain(rule) for name, rule in self.categories.items()},
            templates={name: plain(rule) for name, rule in self.templates.items()},
        )


class PreferencesOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"user_id": "user_42", **PREFERENCES_EXAMPLE, "updated_at": "2026-11-24T09:15:00.120000Z"}]
        }
    )

    user_id: str
    channels: dict[str, bool]
    categories: dict[str, bool | dict[str, bool]]
    templates: dict[str, bool | dict[str, bool]]
    updated_at: datetime | None = Field(description="When they were last set; null: never set, everything is sent.")

    @classmethod
    def of(cls, user_id: str, preferences: Preferences | None) -> PreferencesOut:
        kept = preferences or Preferences()
        return cls(
            user_id=user_id,
            channels=kept.channels,
            categories=kept.categories,
            templates=kept.templates,
            updated_at=datetime.fromisoformat(kept.updated_at) if kept.updated_at else None,
        )
