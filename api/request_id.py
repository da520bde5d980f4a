"""``X-Request-ID``: taken from the request when it is sane, else made up; returned and put on every log line."""

from __future__ import annotations

import re
import secrets

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.logging import log_context

HEADER = "X-Request-ID"
# Visible ASCII only: the value is echoed in a response header and written in logs.
_SANE = re.compile(rb"[\x21-\x7e]{1,128}")


def request_id_of(scope: Scope) -> str:
    """The client's ``X-Request-ID`` if it is 1-128 visible ASCII characters, else a new random one."""
    given: bytes | None = next((value for name, value in scope["headers"] if name == b"x-request-id"), None)
    if given is not None and _SANE.fullmatch(given):
        return given.decode("ascii")
    return secrets.token_hex(16)


class RequestId:
    """Pure ASGI middleware: binds ``request_id`` for the request's log lines and sets it on the response."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        request_id = request_id_of(scope)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        with log_context(request_id=request_id):
            await self._app(scope, receive, send_with_id)
