"""Baseline for benchmarks: a bare FastAPI endpoint that validates a similar body and answers 202."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, Field


class Recipient(BaseModel):
    channel: Literal["email", "webhook"]
    address: str


class Body(BaseModel):
    to: list[Recipient] = Field(min_length=1)
    template: str | None = None
    context: dict[str, Any] = Field(default_factory=dict)
    subject: str | None = None
    text: str | None = None


def create_app() -> FastAPI:
    app = FastAPI()

    @app.post("/notify", status_code=202)
    async def notify(body: Body) -> dict[str, str]:
        return {"id": "ntf_bare", "status": "queued"}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
