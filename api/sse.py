"""Server-Sent Events of a user's inbox: the wire format, and a response that always ends its feed."""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from api.inbox_schemas import InboxMessageOut
from tasks.inbox import InboxMessage, InboxStore, Subscription

RECONNECT_MS = 3000
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering (nginx)


def message_event(message: InboxMessage) -> str:
    """``id:`` the message's position (what ``Last-Event-ID`` sends back), ``event: message``, JSON ``data``."""
    data = InboxMessageOut.of(message).model_dump_json()
    return f"id: {message.position}\nevent: message\ndata: {data}\n\n"


async def inbox_events(
    inbox: InboxStore, subscription: Subscription, *, after: int | None, heartbeat_s: float
) -> AsyncIterator[str]:
    """What a stream sends: a first comment once live, replayed messages after ``after`` (``Last-Event-ID``),
    then each new message, and a comment every ``heartbeat_s`` without one. Ends when the feed ends."""
    yield f"retry: {RECONNECT_MS}\n: live\n\n"
    sent = 0
    if after is not None:
        # Subscribed first, then read: a message stored in between is both replayed and live; sent-up-to skips it.
        for missed in await inbox.since(subscription.user_id, after):
            yield message_event(missed)
            sent = missed.position
    while not subscription.ended:
        message = await subscription.next(heartbeat_s)
        if message is None:
            if not subscription.ended:
                yield ": heartbeat\n\n"
        elif message.position > sent:
            yield message_event(message)
            sent = message.position


class EventStream(StreamingResponse):
    """A ``text/event-stream`` that closes its feed however the response ends: finished, client gone (Starlette
    cancels the stream), or never started (a generator that never ran has no ``finally`` to rely on)."""

    def __init__(self, events: AsyncIterator[str], subscription: Subscription) -> None:
        super().__init__(events, media_type="text/event-stream", headers=HEADERS)
        self._subscription = subscription

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._subscription.close()


__all__ = ["EventStream", "inbox_events", "message_event"]
