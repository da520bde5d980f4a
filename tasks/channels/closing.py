"""``async with`` for the channels' long-lived clients: leaving the block closes the client."""

from __future__ import annotations

from typing import Self


class AsyncClosing:
    """Gives a class with ``aclose()`` the async context manager protocol."""

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
