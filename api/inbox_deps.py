"""Dependencies of the inbox endpoints: the store of this app, and a checked user id.

Beside api/deps.py rather than in it only to keep the inbox in its own files; same rules (``async def``).
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, FastAPI, Path, Request

from api.errors import invalid
from tasks.inbox import InboxStore
from tasks.inbox.message import USER_ID_PATTERN

_USER_ID = re.compile(USER_ID_PATTERN)
USER_ID_RULE = "must be 1 to 128 characters, each a letter, a digit or one of . _ @ : -"


async def get_inbox(request: Request) -> InboxStore:
    inbox: InboxStore = request.app.state.inbox
    return inbox


def is_user_id(value: str) -> bool:
    """Whether ``value`` is a user id as the inbox keeps them (USER_ID_RULE); also an ``inapp`` recipient's address."""
    return _USER_ID.fullmatch(value) is not None


async def valid_user_id(
    user_id: Annotated[str, Path(description=f"Your application's id of the user: {USER_ID_RULE}.")],
) -> str:
    if not is_user_id(user_id):
        raise invalid(("path", "user_id"), USER_ID_RULE, "string_pattern_mismatch")
    return user_id


def end_streams(app: FastAPI) -> None:
    """End the app's open inbox streams now (the server is shutting down); harmless before start-up."""
    inbox: InboxStore | None = getattr(app.state, "inbox", None)
    if inbox is not None:
        inbox.close_streams()


InboxDep = Annotated[InboxStore, Depends(get_inbox)]
UserIdDep = Annotated[str, Depends(valid_user_id)]
