"""The in-app inbox: each user's messages, bounded, with a live feed of new ones.

``MemoryInbox`` in in-process mode, ``RedisInbox`` in arq mode (shared by every web and worker instance).
The ``inapp`` delivery calls ``await inbox.deliver(InboxMessage.new(...))``.
"""

from __future__ import annotations

from tasks.inbox.feed import Subscription
from tasks.inbox.memory import MemoryInbox
from tasks.inbox.message import InboxMessage, InboxPage, InboxStore
from tasks.inbox.redis_store import RedisInbox

__all__ = ["InboxMessage", "InboxPage", "InboxStore", "MemoryInbox", "RedisInbox", "Subscription"]
