"""Answers schemathesis cannot provoke, held to the OpenAPI as its drill holds the rest: Redis down, a full
queue, a retry whose content is gone. Each status must be documented for its operation, with a message."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from core.config import Settings
from core.jobs import spec_key
from tests.support.redis_server import RedisServer
from tests.support.smtp import free_port
from tests.support.waiting import eventually

pytestmark = pytest.mark.drill  # docs/guarantees.md; `make drills` runs it with the rest

STREAM = "/users/{user_id}/inbox/stream"  # never ends while Redis is up; its 503 is documented (test_inbox_http)
IDS = {
    "notification_id": "ntf_0",
    "delivery_id": "dlv_0",
    "task_id": "job_0",
    "user_id": "user_42",
    "message_id": "msg_0",
}
BODIES: dict[str, Any] = {
    "/notify": {"to": [{"channel": "email", "address": "ada@example.com"}], "subject": "s", "text": "t"},
    "/users/{user_id}/preferences": {},
}


def assert_documented(openapi: dict[str, Any], method: str, path: str, response: httpx.Response) -> None:
    documented = openapi["paths"][path][method.lower()]["responses"]
    where = f"{method.upper()} {path} answered {response.status_code} ({response.text[:120]})"
    assert str(response.status_code) in documented, f"{where}; documented: {sorted(documented)}"
    if response.status_code >= 400 and path != "/readyz":  # readyz's 503 is its Readiness body, saying what is down
        assert response.json()["detail"], where


@asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://herald.test") as client:
            yield app, client


async def _failed_webhook(client: httpx.AsyncClient) -> dict[str, Any]:
    """A notification whose one delivery failed: a webhook to a closed port on 127.0.0.1, one attempt."""
    accepted = await client.post(
        "/notify",
        json={
            "to": [{"channel": "webhook", "address": f"http://127.0.0.1:{free_port()}/closed"}],
            "subject": "s",
            "text": "t",
        },
    )
    assert accepted.status_code == 202, accepted.text
    url = f"/notifications/{accepted.json()['id']}"

    async def failed() -> bool:
        return bool((await client.get(url)).json()["status"] == "failed")

    await eventually(failed, what="the webhook delivery to fail")
    view: dict[str, Any] = (await client.get(url)).json()
    return view


async def test_every_operation_documents_its_answer_while_redis_is_down(
    make_settings: Callable[..., Settings], redis_server: RedisServer, redis_url: str
) -> None:
    settings = make_settings(TASK_BACKEND="arq", REDIS_URL=redis_url, WORKER_MODE="embedded", WORKER_POLL_DELAY_S=0.02)
    answers: list[tuple[str, str, httpx.Response]] = []
    async with served(settings) as (app, client):
        openapi = app.openapi()
        redis_server.stop()
        try:
            for path, operations in openapi["paths"].items():
                if path == STREAM:
                    continue
                for method in operations:
                    body = BODIES.get(path) if method in ("post", "put") else None
                    response = await client.request(method, path.format(**IDS), json=body)
                    answers.append((method, path, response))
        finally:
            redis_server.start()
    assert sum(response.status_code == 503 for _, _, response in answers) >= 15, "Redis was down"
    for method, path, response in answers:
        assert_documented(openapi, method, path, response)


async def test_a_retry_into_a_full_queue_is_a_documented_503(make_settings: Callable[..., Settings]) -> None:
    async with served(make_settings(TASK_QUEUE_MAX=1, WEBHOOK_MAX_ATTEMPTS=1)) as (app, client):
        view = await _failed_webhook(client)
        send_at = (datetime.now(UTC) + timedelta(minutes=30)).isoformat()
        waiting = await client.post("/notify", json={**BODIES["/notify"], "send_at": send_at})
        assert waiting.status_code == 202, waiting.text  # scheduled: the one place in the queue, taken
        openapi = app.openapi()
        retries = [
            ("post", "/notifications/{notification_id}/retry", f"/notifications/{view['id']}/retry"),
            ("post", "/deliveries/{delivery_id}/retry", f"/deliveries/{view['deliveries'][0]['id']}/retry"),
        ]
        for method, path, url in retries:
            response = await client.request(method, url)
            assert response.status_code == 503, response.text
            assert_documented(openapi, method, path, response)


async def test_retrying_a_failure_whose_content_is_gone_is_a_documented_409(
    make_settings: Callable[..., Settings],
) -> None:
    async with served(make_settings(WEBHOOK_MAX_ATTEMPTS=1)) as (app, client):
        view = await _failed_webhook(client)
        await app.state.backend.documents.delete(spec_key(view["deliveries"][0]["id"]))  # as if its TTL ran out
        response = await client.post(f"/notifications/{view['id']}/retry")
    assert response.status_code == 409, response.text
    assert "no longer kept" in response.json()["detail"]
    assert_documented(app.openapi(), "post", "/notifications/{notification_id}/retry", response)


async def test_a_task_name_filter_is_any_string_and_documented_as_one(client_for: Any) -> None:
    # `list[str] | None` was documented as anyOf [array, null]: schemathesis sent `?name=true` as a "wrong type"
    # and called the 200 a schema-violating request accepted. A query string has no null; "true" is a name.
    async with client_for() as client:
        response = await client.get("/tasks", params={"name": "true"})
        openapi = (await client.get("/openapi.json")).json()
    assert response.status_code == 200, response.text
    assert response.json() == {"items": [], "next_cursor": None}
    [name] = [p for p in openapi["paths"]["/tasks"]["get"]["parameters"] if p["name"] == "name"]
    assert name["schema"]["type"] == "array"
    assert name["schema"]["items"] == {"type": "string"}
