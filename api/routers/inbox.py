"""``/users/{user_id}/inbox``: a user's in-app messages, marking them read, and a live stream of new ones."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, status

from api.auth import require_api_key
from api.deps import SettingsDep
from api.inbox_deps import InboxDep, UserIdDep
from api.inbox_schemas import (
    MESSAGE_EXAMPLE,
    PAGE_EXAMPLE,
    READ_ALL_EXAMPLE,
    READ_EXAMPLE,
    InboxMessageOut,
    InboxPageOut,
    ReadAllOut,
)
from api.schemas import ErrorOut, ValidationErrorOut
from api.sse import EventStream, inbox_events
from tasks.inbox.message import MESSAGE_ID_PATTERN

router = APIRouter(prefix="/users/{user_id}/inbox", tags=["inbox"], dependencies=[Depends(require_api_key)])

MAX_PAGE = 200
_CURSOR = r"^[0-9]{1,19}$"
_401: dict[int | str, dict[str, Any]] = {401: {"model": ErrorOut, "description": "Missing or wrong API key"}}
_422: dict[int | str, dict[str, Any]] = {
    422: {"model": ValidationErrorOut, "description": "Invalid user id, message id or query; each error names where"}
}
_503: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorOut, "description": "Redis is unavailable, or the server is shutting down; retry later"}
}


def _example(value: Any) -> dict[int | str, dict[str, Any]]:
    return {200: {"content": {"application/json": {"example": value}}}}


_STREAM_EXAMPLE = (
    "retry: 3000\n: live\n\n"
    f"id: 1795037400041000\nevent: message\ndata: {json.dumps(MESSAGE_EXAMPLE)}\n\n"
    ": heartbeat\n\n"
)
_LAST_EVENT_ID = re.compile(r"[0-9]{1,19}")


@router.get(
    "",
    response_model=InboxPageOut,
    summary="A user's inbox, newest first",
    responses={**_401, **_422, **_503, **_example(PAGE_EXAMPLE)},
)
async def list_inbox(
    user_id: UserIdDep,
    inbox: InboxDep,
    cursor: Annotated[str | None, Query(pattern=_CURSOR, description="`next_cursor` of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    unread: Annotated[bool, Query(description="Only unread messages.")] = False,
) -> InboxPageOut:
    """The user's messages kept (the newest INBOX_MAX_PER_USER, for RECORD_TTL_S), newest first, `limit` at a
    time: pass `next_cursor` back as `cursor` for the next page; it is null on the last one. `unread` counts
    all the user's unread messages. A user with no messages has an empty inbox, not a 404."""
    return InboxPageOut.of(await inbox.list(user_id, cursor=cursor, limit=limit, unread_only=unread))


@router.post(
    "/read-all",
    response_model=ReadAllOut,
    summary="Mark every message of a user read",
    responses={**_401, **_422, **_503, **_example(READ_ALL_EXAMPLE)},
)
async def read_all(user_id: UserIdDep, inbox: InboxDep) -> ReadAllOut:
    """Every unread message becomes read now; `marked` says how many were unread (0 when none was)."""
    marked = await inbox.mark_all_read(user_id)
    return ReadAllOut(marked=marked, unread=await inbox.unread_count(user_id))


@router.post(
    "/{message_id}/read",
    response_model=InboxMessageOut,
    summary="Mark one message read",
    responses={
        **_401,
        **_422,
        **_503,
        **_example(READ_EXAMPLE),
        404: {"model": ErrorOut, "description": "This user has no such message (never had, or no longer kept)"},
    },
)
async def read_one(
    user_id: UserIdDep,
    inbox: InboxDep,
    message_id: Annotated[str, Path(pattern=MESSAGE_ID_PATTERN, description="A message's `id` (`msg_…`).")],
) -> InboxMessageOut:
    """Answers the message with its `read_at`. Marking a read message again changes nothing (same `read_at`)."""
    message = await inbox.mark_read(user_id, message_id)
    if message is None:
        raise HTTPException(
            status_code=status.HTTP_404_NOT_FOUND,
            detail=f"user {user_id!r} has no message {message_id!r} (never had, or no longer kept)",
        )
    return InboxMessageOut.of(message)


@router.get(
    "/stream",
    response_class=EventStream,
    status_code=status.HTTP_200_OK,  # EventStream's __init__ has no status_code for FastAPI to read it from
    summary="New messages of a user, live (Server-Sent Events)",
    responses={
        **_401,
        **_422,
        **_503,
        200: {
            "description": "A `text/event-stream` that stays open: each new message, heartbeats between",
            "content": {"text/event-stream": {"schema": {"type": "string"}, "example": _STREAM_EXAMPLE}},
        },
    },
)
async def stream(
    user_id: UserIdDep,
    inbox: InboxDep,
    settings: SettingsDep,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            description="The `id:` of the last event received: the messages stored since are sent first.",
        ),
    ] = None,
) -> EventStream:
    """Each message stored for the user from now on is an `event: message` whose `data` is the message as
    `GET …/inbox` lists it and whose `id:` is its position in the inbox. A `: heartbeat` comment comes every
    INBOX_HEARTBEAT_S (15 s) without a message, so proxies keep the connection open. The first bytes are
    `retry: 3000` and `: live`, sent once the stream receives. With `Last-Event-ID` (which browsers send when
    they reconnect), the messages kept since that event come first, oldest first; a value that is not an id
    this stream sent is ignored. In arq mode a message delivered by any worker reaches streams on every web
    instance (Redis pub/sub). The stream ends when the server shuts down, or when the client falls 100
    messages behind (it reconnects and catches up with `Last-Event-ID`). Needs the API key like every other
    endpoint: a browser's `EventSource` cannot send it, so go through your backend or a fetch-based client."""
    after = int(last_event_id) if last_event_id and _LAST_EVENT_ID.fullmatch(last_event_id) else None
    subscription = await inbox.subscribe(user_id)  # raises BackendUnavailableError (503)
    events = inbox_events(inbox, subscription, after=after, heartbeat_s=settings.INBOX_HEARTBEAT_S)
    return EventStream(events, subscription)
