"""Per-user notification preferences: who opted out of what, and the rule that decides a delivery.

``MemoryPreferences`` in in-process mode, ``RedisPreferences`` in arq mode (shared by every web and worker
instance). A delivery checks them just before it is sent (see tasks/delivery.py), so an opt-out made after a
notification was scheduled still applies.
"""

from __future__ import annotations

from tasks.preferences.rules import Audience, Preferences, Rule, skip_reason
from tasks.preferences.stores import MemoryPreferences, PreferencesFullError, PreferenceStore, RedisPreferences

__all__ = [
    "Audience",
    "MemoryPreferences",
    "PreferenceStore",
    "Preferences",
    "PreferencesFullError",
    "RedisPreferences",
    "Rule",
    "skip_reason",
]
