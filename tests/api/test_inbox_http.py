"""The inbox endpoints through the real app, in both modes (arq: on the suite's real Redis)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from core.config import Settings
from tasks.inbox import InboxMessage, InboxStore


@pytest.fixture
def app_for(make_settings: Callable[..., Settings]) -> Callable[..., Any]:
    """``async with app_for(**settings) as (client, inbox)``: the app with its lifespan, and its inbox store."""

    @asynccontextmanager
    async def open_app(**overrides: Any) -> AsyncIterator[tuple[httpx.AsyncClient, InboxStore]]:
        app: FastAPI = create_app(make_settings(**overrides))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://herald.test") as client:
                yield client, app.state.inbox

    return open_app


def new(n: int, user_id: str = "user_42") -> InboxMessage:
    return InboxMessage.new(user_id=user_id, title=f"t{n}", body=f"b{n}", delivery_id=f"dlv_{n}", url=None)


async def test_list_paginates_filters_and_counts(app_for: Any, backend_settings: dict[str, Any]) -> None:
    async with app_for(**backend_settings) as (client, inbox):
        stored = [await inbox.deliver(new(n)) for n in range(5)]
        await inbox.mark_read("user_42", stored[4].id)
        first = await client.get("/users/user_42/inbox", params={"limit": 2})
        second = await client.get("/users/user_42/inbox", params={"limit": 2, "cursor": first.json()["next_cursor"]})
        third = await client.get("/users/user_42/inbox", params={"limit": 2, "cursor": second.json()["next_cursor"]})
        unread = await client.get("/users/user_42/inbox", params={"unread": "true"})
        nobody = await client.get("/users/nobody/inbox")
    assert first.status_code == 200, first.text
    ids = [item["id"] for page in (first, second, third) for item in page.json()["items"]]
    assert ids == [m.id for m in reversed(stored)]
    assert third.json()["next_cursor"] is None
    assert first.json()["unread"] == 4
    assert first.json()["items"][0] == {
        "id": stored[4].id,
        "user_id": "user_42",
        "title": "t4",
        "body": "b4",
        "url": None,
        "created_at": first.json()["items"][0]["created_at"],
        "read_at": first.json()["items"][0]["read_at"],
        "notification_id": None,
        "delivery_id": "dlv_4",
    }
    assert first.json()["items"][0]["read_at"] is not None
    assert [item["id"] for item in unread.json()["items"]] == [m.id for m in reversed(stored[:4])]
    assert nobody.json() == {"items": [], "next_cursor": None, "unread": 0}


async def test_read_one_and_read_all(app_for: Any, backend_settings: dict[str, Any]) -> None:
    async with app_for(**backend_settings) as (client, inbox):
        stored = [await inbox.deliver(new(n)) for n in range(3)]
        one = await client.post(f"/users/user_42/inbox/{stored[0].id}/read")
        again = await client.post(f"/users/user_42/inbox/{stored[0].id}/read")
        everything = await client.post("/users/user_42/inbox/read-all")
        nothing_left = await client.post("/users/user_42/inbox/read-all")
        listed = await client.get("/users/user_42/inbox")
    assert one.status_code == 200, one.text
    assert one.json()["id"] == stored[0].id
    assert one.json()["read_at"] is not None
    assert again.json()["read_at"] == one.json()["read_at"]
    assert everything.json() == {"marked": 2, "unread": 0}
    assert nothing_left.json() == {"marked": 0, "unread": 0}
    assert all(item["read_at"] for item in listed.json()["items"])


async def test_unknown_message_is_a_404_that_says_so(app_for: Any, backend_settings: dict[str, Any]) -> None:
    async with app_for(**backend_settings) as (client, inbox):
        theirs = await inbox.deliver(new(1, user_id="someone_else"))
        response = await client.post(f"/users/user_42/inbox/{theirs.id}/read")
    assert response.status_code == 404
    assert response.json() == {"detail": f"user 'user_42' has no message '{theirs.id}' (never had, or no longer kept)"}


@pytest.mark.parametrize(
    ("method", "path", "where"),
    [
        ("GET", "/users/" + "x" * 129 + "/inbox", ["path", "user_id"]),
        ("GET", "/users/a%20b/inbox", ["path", "user_id"]),
        ("GET", "/users/%7Bada%7D/inbox/stream", ["path", "user_id"]),
        ("POST", "/users/ada/inbox/read-all".replace("ada", "a!b"), ["path", "user_id"]),
        ("POST", "/users/ada/inbox/not-an-id/read", ["path", "message_id"]),
        ("GET", "/users/ada/inbox?cursor=abc", ["query", "cursor"]),
        ("GET", "/users/ada/inbox?limit=0", ["query", "limit"]),
    ],
)
async def test_bad_user_id_message_id_or_query_is_a_clear_422(
    client_for: Any, method: str, path: str, where: list[str]
) -> None:
    async with client_for() as client:
        response = await client.request(method, path)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == where
    if where == ["path", "user_id"]:
        assert error["msg"] == "must be 1 to 128 characters, each a letter, a digit or one of . _ @ : -"


async def test_every_inbox_endpoint_is_documented_with_an_example(client_for: Any) -> None:
    async with client_for() as client:
        paths = (await client.get("/openapi.json")).json()["paths"]
    operations = {
        ("get", "/users/{user_id}/inbox"): "application/json",
        ("post", "/users/{user_id}/inbox/{message_id}/read"): "application/json",
        ("post", "/users/{user_id}/inbox/read-all"): "application/json",
        ("get", "/users/{user_id}/inbox/stream"): "text/event-stream",
    }
    for (method, path), media in operations.items():
        operation = paths[path][method]
        assert operation["summary"], path
        assert operation["description"], path
        assert operation["responses"]["200"]["content"][media]["example"], path
        assert {"401", "422", "503"} <= set(operation["responses"]), path
