"""Request and response bodies of the ``/users/{user_id}/inbox`` endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tasks.inbox import InboxMessage, InboxPage

MESSAGE_EXAMPLE: dict[str, Any] = {
    "id": "msg_3f6c2a1b9d8e4f7a8b6c5d4e3f2a1b0c",
    "user_id": "user_42",
    "title": "Welcome to Herald, Ada!",
    "body": "Your account is ready.",
    "url": "https://example.com/start",
    "created_at": "2026-11-23T21:30:00.041000Z",
    "read_at": None,
    "notification_id": "ntf_0a1b2c3d4e5f60718293a4b5c6d7e8f9",
    "delivery_id": "dlv_9f8e7d6c5b4a39281706f5e4d3c2b1a0",
}

READ_EXAMPLE: dict[str, Any] = {**MESSAGE_EXAMPLE, "read_at": "2026-11-23T21:31:12.500000Z"}

PAGE_EXAMPLE: dict[str, Any] = {"items": [MESSAGE_EXAMPLE], "next_cursor": "1795037400041000", "unread": 3}

READ_ALL_EXAMPLE: dict[str, Any] = {"marked": 3, "unread": 0}


class InboxMessageOut(BaseModel):
    """One message of a user's inbox."""

    model_config = ConfigDict(json_schema_extra={"examples": [MESSAGE_EXAMPLE]})

    id: str = Field(description="`msg_…`: what `POST …/inbox/{message_id}/read` takes.")
    user_id: str
    title: str
    body: str
    url: str | None = Field(description="Where the message leads when clicked, if anywhere.")
    created_at: datetime
    read_at: datetime | None = Field(description="When it was first marked read; null while unread.")
    notification_id: str | None = Field(description="The notification (`ntf_…`) that sent it.")
    delivery_id: str = Field(description="The delivery (`dlv_…`) that stored it; one message per delivery.")

    @classmethod
    def of(cls, message: InboxMessage) -> InboxMessageOut:
        return cls(
            id=message.id,
            user_id=message.user_id,
            title=message.title,
            body=message.body,
            url=message.url,
            created_at=message.created_at,
            read_at=message.read_at,
            notification_id=message.notification_id,
            delivery_id=message.delivery_id,
        )


class InboxPageOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [PAGE_EXAMPLE]})

    items: list[InboxMessageOut] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page; null at the end.")
    unread: int = Field(description="The user's unread messages in all, not only on this page.")

    @classmethod
    def of(cls, page: InboxPage) -> InboxPageOut:
        return cls(
            items=[InboxMessageOut.of(message) for message in page.items],
            next_cursor=page.next_cursor,
            unread=page.unread,
        )


class ReadAllOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [READ_ALL_EXAMPLE]})

    marked: int = Field(description="How many were unread and are now read.")
    unread: int = Field(description="Unread after this: 0, unless a message arrived meanwhile.")
