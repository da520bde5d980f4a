"""POST /notify to inapp recipients, through the real app in both modes: the message lands in the user's inbox
(GET /users/{id}/inbox), and, with a separate worker process, on a live stream of the web app."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tasks.rendering import TemplateLibrary
from tests.api.test_inbox_stream import opened, serve  # noqa: F401  (serve: the uvicorn fixture)
from tests.support.processes import Processes, child_env
from tests.support.templates import template_library
from tests.support.waiting import eventually

USER = "user_42"
INAPP = {"channel": "inapp", "address": USER}
WELCOME = {"template": "welcome", "context": {"name": "Ada", "login_url": "https://app.example.com/login"}}


async def _accepted(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/notify", json=body)
    assert response.status_code == 202, response.text
    accepted: dict[str, Any] = response.json()
    return accepted


async def _delivered(client: httpx.AsyncClient, notification_id: str) -> list[dict[str, Any]]:
    """The deliveries of the notification, once every one is delivered."""
    deliveries: list[dict[str, Any]] = []

    async def done() -> bool:
        deliveries[:] = (await client.get(f"/notifications/{notification_id}")).json()["deliveries"]
        return all(d["status"] == "delivered" for d in deliveries)

    await eventually(done, timeout_s=10, what=f"notification {notification_id} to be delivered")
    return deliveries


async def _inbox(client: httpx.AsyncClient, user_id: str = USER) -> list[dict[str, Any]]:
    response = await client.get(f"/users/{user_id}/inbox")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_a_template_lands_in_the_users_inbox_as_its_inapp_txt(
    client_for: Any, backend_settings: dict[str, Any]
) -> None:
    async with client_for(**backend_settings) as client:
        accepted = await _accepted(client, {"to": [INAPP], **WELCOME})
        [delivery] = await _delivered(client, accepted["id"])
        [message] = await _inbox(client)
        job = (await client.get(f"/tasks/{delivery['id']}")).json()
        others = await _inbox(client, "user_43")

    assert (delivery["channel"], delivery["address"], delivery["attempts"]) == ("inapp", USER, 1)
    assert message["title"] == "Welcome to Herald, Ada!"
    assert message["body"] == "Your account is ready. Sign in to get started."
    assert message["url"] == "https://app.example.com/login"
    assert (message["delivery_id"], message["notification_id"]) == (delivery["id"], accepted["id"])
    assert (job["task"], job["state"], job["result"]) == ("send_inapp", "succeeded", message["id"])
    assert others == []


async def test_literal_subject_and_text_are_the_title_and_body(
    client_for: Any, backend_settings: dict[str, Any]
) -> None:
    async with client_for(**backend_settings) as client:
        accepted = await _accepted(client, {"to": [INAPP], "subject": "Build #12 failed", "text": "  see the log\n"})
        await _delivered(client, accepted["id"])
        [message] = await _inbox(client)
    assert (message["title"], message["body"], message["url"]) == ("Build #12 failed", "  see the log\n", None)


async def test_a_repeated_request_with_its_idempotency_key_stores_one_message(
    client_for: Any, backend_settings: dict[str, Any]
) -> None:
    headers = {"Idempotency-Key": "signup-42"}
    async with client_for(**backend_settings) as client:
        first = await client.post("/notify", json={"to": [INAPP], **WELCOME}, headers=headers)
        await _delivered(client, first.json()["id"])
        again = await client.post("/notify", json={"to": [INAPP], **WELCOME}, headers=headers)
        items = await _inbox(client)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(items) == 1


@pytest.mark.parametrize("address", ["user 42", "user{42}", "x" * 129, "ünïcode"])
async def test_an_address_that_is_not_a_user_id_is_refused_where_it_is(
    client_for: Any, address: str, backend_settings: dict[str, Any]
) -> None:
    async with client_for(**backend_settings) as client:
        response = await client.post(
            "/notify",
            json={"to": [{"channel": "email", "address": "a@example.com"}, {"channel": "inapp", "address": address}]}
            | WELCOME,
        )
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "to", 1, "address"]
    assert "user id" in error["msg"]
    assert "1 to 128 characters" in error["msg"]


async def test_user_ids_are_case_sensitive_so_two_cases_are_two_recipients(client_for: Any) -> None:
    async with client_for() as client:
        to = [INAPP, {"channel": "inapp", "address": USER.upper()}]
        accepted = await _accepted(client, {"to": to, **WELCOME})
        await _delivered(client, accepted["id"])
        assert len(await _inbox(client)) == len(await _inbox(client, USER.upper())) == 1


@pytest.fixture
def library(tmp_path: Path) -> TemplateLibrary:
    """``email_only`` has no inapp.txt; the ``bad_*`` ones have a broken one."""
    return template_library(
        tmp_path,
        {
            "email_only": {"subject.txt": "Hello {{ name }}", "body.txt": "\nA long email, {{ name }}.\n\nBye.\n"},
            "bad_url": {"subject.txt": "s", "body.txt": "b", "inapp.txt": "Title\nurl: {{ link }}\n\nBody"},
            "bad_title": {"subject.txt": "s", "body.txt": "b", "inapp.txt": "{{ 'x' * 256 }}\n\nBody"},
            "no_blank": {"subject.txt": "s", "body.txt": "b", "inapp.txt": "Title\nBody right away"},
        },
    )


async def test_a_template_without_inapp_txt_sends_its_subject_and_body_txt(
    client_for: Any, backend_settings: dict[str, Any], library: TemplateLibrary
) -> None:
    async with client_for(templates=library, **backend_settings) as client:
        accepted = await _accepted(client, {"to": [INAPP], "template": "email_only", "context": {"name": "Ada"}})
        await _delivered(client, accepted["id"])
        [message] = await _inbox(client)
    assert (message["title"], message["body"], message["url"]) == ("Hello Ada", "A long email, Ada.\n\nBye.", None)


@pytest.mark.parametrize(
    ("template", "context", "problem"),
    [
        ("bad_url", {"link": "javascript:alert(1)"}, "the url: line must give an http:// or https:// URL"),
        ("bad_url", {"link": "/relative"}, "the url: line must give an http:// or https:// URL"),
        ("bad_title", {}, "the title is 256 characters; at most 255"),
        ("no_blank", {}, "must be followed by a blank line"),
    ],
)
async def test_a_broken_inapp_txt_is_refused_naming_the_template_and_nothing_is_stored(
    client_for: Any, library: TemplateLibrary, template: str, context: Any, problem: str
) -> None:
    async with client_for(templates=library) as client:
        response = await client.post("/notify", json={"to": [INAPP], "template": template, "context": context})
        items = await _inbox(client)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["msg"].startswith(f"template {template!r} (inapp.txt): ")
    assert problem in error["msg"]
    assert items == []


async def test_arq_a_separate_worker_process_delivers_to_a_stream_open_on_the_web_app(
    serve: Any,  # noqa: F811
    processes: Processes,
    redis_url: str,
) -> None:
    web = {"TASK_BACKEND": "arq", "REDIS_URL": redis_url, "WORKER_MODE": "separate"}
    worker = processes.start(
        "worker",
        [sys.executable, "-m", "tasks.worker"],
        child_env(REDIS_URL=redis_url, WORKER_POLL_DELAY_S="0.05", CRON_ENABLED="false"),
    )
    async with (
        serve(**web) as served,
        opened(served.url, USER) as events,
        httpx.AsyncClient(base_url=served.url, timeout=10) as client,
    ):
        accepted = await _accepted(client, {"to": [INAPP], **WELCOME})
        event = await events.next_message()  # within the stream's deadline, once the worker is up
        [delivery] = await _delivered(client, accepted["id"])
        [stored] = await _inbox(client)
    assert worker.running, worker.log()
    assert event["event"] == "message"
    data = json.loads(event["data"])
    assert (data["title"], data["url"]) == ("Welcome to Herald, Ada!", "https://app.example.com/login")
    assert data["delivery_id"] == delivery["id"] == stored["delivery_id"]
    assert data["id"] == stored["id"]
