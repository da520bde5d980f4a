"""Bearer-token auth: with API_KEY set, every endpoint but the health check needs it."""

from __future__ import annotations

import hmac

from fastapi import HTTPException, status
from fastapi.security import HTTPBearer
from starlette.requests import HTTPConnection

from core.config import Settings


class ApiKeyBearer(HTTPBearer):
    """``Authorization: Bearer <API_KEY>``, checked in constant time; nothing is asked when API_KEY is unset.

    One dependency that is also the OpenAPI security scheme, rather than a function depending on an
    ``HTTPBearer``: FastAPI resolves each dependency level on every request.
    """

    def __init__(self) -> None:
        super().__init__(auto_error=False, scheme_name="HTTPBearer", description="The value of API_KEY.")

    async def __call__(self, request: HTTPConnection) -> None:
        settings: Settings = request.app.state.settings
        if settings.API_KEY is None:
            return
        credentials = await super().__call__(request)
        expected = settings.API_KEY.get_secret_value().encode()
        given = credentials.credentials.encode() if credentials is not None else b""
        if not hmac.compare_digest(given, expected):
            raise HTTPException(
                status_code=status.HTTP_401_UNAUTHORIZED,
                detail="missing or wrong API key: send 'Authorization: Bearer <API_KEY>'",
                headers={"WWW-Authenticate": "Bearer"},
            )


require_api_key = ApiKeyBearer()
