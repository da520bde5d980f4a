"""Where preferences are kept: in memory (in-process mode, lost at a restart) or in Redis (arq mode).

In Redis each user's document is one JSON string with no expiry, ``herald:prefs:{<user_id>}``: an opt-out
must hold until the user changes it, so nothing here is evicted or aged out.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.errors import HeraldError
from core.redis_stores import KEY_PREFIX, unavailable
from tasks.preferences.rules import Preferences

PREFERENCES_PREFIX = KEY_PREFIX + "prefs:"


class PreferencesFullError(HeraldError):
    """The in-memory store holds preferences for its maximum number of users; nothing was written."""


class PreferenceStore(Protocol):
    async def get(self, user_id: str) -> Preferences | None:
        """The user's preferences; None if they never set any. Raises BackendUnavailableError (Redis)."""

    async def put(self, user_id: str, preferences: Preferences) -> Preferences:
        """Replace the user's preferences; returns them as kept (with ``updated_at``)."""


def _stamped(preferences: Preferences) -> Preferences:
    return Preferences(
        channels=preferences.channels,
        categories=preferences.categories,
        templates=preferences.templates,
        updated_at=datetime.now(UTC).isoformat(),
    )


class MemoryPreferences:
    """Up to ``max_users`` users' preferences. Past that a new user's are refused, never someone else's dropped:
    a forgotten opt-out would send what a user turned off."""

    def __init__(self, *, max_users: int) -> None:
        self._max_users = max_users
        self._by_user: dict[str, Preferences] = {}

    async def get(self, user_id: str) -> Preferences | None:
        return self._by_user.get(user_id)

    async def put(self, user_id: str, preferences: Preferences) -> Preferences:
        if user_id not in self._by_user and len(self._by_user) >= self._max_users:
            raise PreferencesFullError(
                f"preferences are kept in memory for at most {self._max_users} users (PREFERENCES_MAX_USERS); "
                "use TASK_BACKEND=arq to keep them in Redis"
            )
        kept = _stamped(preferences)
        self._by_user[user_id] = kept
        return kept


class RedisPreferences:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def get(self, user_id: str) -> Preferences | None:
        try:
            raw = await self._redis.get(preferences_key(user_id))
        except RedisError as exc:
            raise unavailable(exc) from exc
        return Preferences.from_json(json.loads(raw)) if raw is not None else None

    async def put(self, user_id: str, preferences: Preferences) -> Preferences:
        kept = _stamped(preferences)
        try:
            await self._redis.set(preferences_key(user_id), json.dumps(kept.to_json(), separators=(",", ":")))
        except RedisError as exc:
            raise unavailable(exc) from exc
        return kept


def preferences_key(user_id: str) -> str:
    return f"{PREFERENCES_PREFIX}{{{user_id}}}"
