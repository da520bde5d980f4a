"""What every POST /notify pays for, kept cheap: nothing leaves the event loop, nothing is looked up twice.

Figures are in the modules' comments (issue 7); these tests keep the reasons from coming back.
"""

from __future__ import annotations

import gc
import inspect
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import uvloop
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api.__main__ import freeze_startup_objects, uvicorn_options
from api.app import create_app
from api.auth import require_api_key
from api.routers import dashboard, deliveries, health, inbox, metrics, notifications, tasks
from api.schemas import normalized_email, webhook_host
from tasks.rendering import TEMPLATE_ROOT, TemplateLibrary
from tests.support.receiver import Receiver

ROUTERS = (dashboard, deliveries, health, inbox, metrics, notifications, tasks)


def _calls(dependant: Dependant) -> list[Any]:
    found = []
    for sub in dependant.dependencies:
        found.append(sub.call)
        found.extend(_calls(sub))
    return found


def _runs_on_the_loop(call: Any) -> bool:
    # a function, or an object whose __call__ is one (a security scheme such as ApiKeyBearer)
    return inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(type(call).__call__)


def test_no_dependency_runs_in_the_thread_pool() -> None:
    # FastAPI runs a plain `def` dependency in its thread pool: a thread hop and a GIL hand-over per dependency
    # per request. Four of them on POST /notify made it 3-7x slower at 50 connections than it is now.
    routes = [route for module in ROUTERS for route in module.router.routes if isinstance(route, APIRoute)]
    assert any(route.path == "/notify" for route in routes)
    in_threads = {
        f"{route.path}: {getattr(call, '__qualname__', type(call).__qualname__)}"
        for route in routes
        for call in [route.endpoint, require_api_key, *_calls(route.dependant)]
        if not _runs_on_the_loop(call)
    }
    assert not in_threads


def test_a_template_is_compiled_once_and_a_new_one_is_found(tmp_path: Path) -> None:
    shutil.copytree(TEMPLATE_ROOT / "welcome", tmp_path / "welcome")
    library = TemplateLibrary(tmp_path)
    first = library.render("welcome", {"name": "Ada"})

    shutil.rmtree(tmp_path / "welcome")  # rendering again reads nothing from disk
    again = library.render("welcome", {"name": "Ada"})
    shutil.copytree(TEMPLATE_ROOT / "welcome", tmp_path / "later")

    assert again == first
    assert library.render("later", {"name": "Bo"}).subject == "Welcome to Herald, Bo!"


async def test_a_recipient_seen_before_is_not_checked_again(client_for: Any, receiver: Receiver) -> None:
    normalized_email.cache_clear()
    webhook_host.cache_clear()
    body = {
        "to": [
            {"channel": "email", "address": "Ada@Example.com"},
            {"channel": "webhook", "address": receiver.url("/seen")},
        ],
        "subject": "s",
        "text": "t",
    }
    async with client_for() as client:
        responses = [await client.post("/notify", json=body) for _ in range(3)]
        bad = [await client.post("/notify", json={**body, "to": [{"channel": "email", "address": "a@b"}]})]
        bad.append(await client.post("/notify", json={**body, "to": [{"channel": "email", "address": "a@b"}]}))

    assert [r.status_code for r in responses] == [202, 202, 202]
    assert responses[0].json()["deliveries"][0]["address"] == "Ada@example.com"  # normalised, as before
    assert normalized_email.cache_info().misses == 3  # the good address once, the bad one each time
    assert normalized_email.cache_info().hits == 2
    assert webhook_host.cache_info().misses == 1  # also answers the IP-literal check of the router
    assert [r.status_code for r in bad] == [422, 422]  # a failed check is not kept
    assert "not a valid email address" in bad[1].json()["detail"][0]["msg"]


async def test_a_full_queue_is_refused_before_the_body_is_checked(client_for: Any, receiver: Receiver) -> None:
    # Under overload the 503 comes before validation and rendering: in-process that work is CPU the deliveries
    # need to make room (50 connections, same run: 610-633 accepted/s without the early refusal, 713-721 with).
    to = [{"channel": "webhook", "address": receiver.url("/full")}]
    later = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    async with client_for(TASK_QUEUE_MAX=1) as client:
        held = await client.post("/notify", json={"to": to, "subject": "s", "text": "t", "send_at": later})
        refused = await client.post("/notify", json={"to": to, "template": "welcome", "context": {}})
        await client.delete(held.headers["location"])  # room again
        checked = await client.post("/notify", json={"to": to, "template": "welcome", "context": {}})

    assert held.status_code == 202
    assert refused.status_code == 503, refused.text  # not the 422 its missing variable earns once there is room
    assert refused.headers["retry-after"] == "5"
    assert "limit 1" in refused.json()["detail"]
    assert checked.status_code == 422
    assert "'name'" in checked.json()["detail"][0]["msg"]


@pytest.mark.parametrize(("level", "access_log"), [("DEBUG", True), ("INFO", True), ("WARNING", False)])
def test_uvicorn_runs_uvloop_and_httptools_and_drops_the_access_log_only_when_it_is_not_logged(
    make_settings: Any, level: str, access_log: bool
) -> None:
    settings = make_settings(LOG_LEVEL=level)
    options = uvicorn_options(settings)
    config = uvicorn.Config(create_app(settings), **options)
    config.load()
    factory = config.get_loop_factory()
    assert factory is not None
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
    assert config.http_protocol_class is HttpToolsProtocol
    assert options["access_log"] is access_log


def test_start_up_objects_are_kept_out_of_full_collections() -> None:
    before = gc.get_freeze_count()
    try:
        freeze_startup_objects()
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()
