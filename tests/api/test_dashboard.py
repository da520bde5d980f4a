"""The dashboard without a browser: login, the signed cookie, CSRF, rendering, retry (httpx over ASGI)."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from api.app import create_app
from api.dashboard_auth import COOKIE_NAME, SESSION_TTL_S, SessionKeys, same_origin
from api.routers import dashboard
from tests.conftest import API_KEY
from tests.support.receiver import Receiver, Reply
from tests.support.waiting import eventually

BEARER = {"Authorization": f"Bearer {API_KEY}"}
KEYS = SessionKeys.derive(API_KEY.encode())


def _tampered(value: str) -> str:
    """``value`` with its last character changed (always changed: a fixed replacement matches 1 time in 64)."""
    return value[:-1] + ("B" if value.endswith("A") else "A")


_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def _csrf_of(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "the page carries no CSRF token"
    return match.group(1)


def _cookie(value: str) -> dict[str, str]:
    return {"Cookie": f"{COOKIE_NAME}={value}"}


async def _login(client: httpx.AsyncClient) -> tuple[str, str]:
    """Log in through the form; the session cookie value and the page's CSRF token."""
    response = await client.post("/dashboard/login", data={"api_key": API_KEY})
    assert response.status_code == 303, response.text
    cookie = response.cookies[COOKIE_NAME]
    page = await client.get("/dashboard", headers=_cookie(cookie))
    assert page.status_code == 200
    return cookie, _csrf_of(page.text)


async def _failed_webhook(client: httpx.AsyncClient, receiver: Receiver, path: str = "/hook") -> tuple[str, str]:
    """A notification whose one webhook delivery failed at once (the receiver answers 400)."""
    receiver.script(path, Reply(status=400, body=b"no thanks"))
    body = {"to": [{"channel": "webhook", "address": receiver.url(path)}], "subject": "Hi", "text": "there"}
    response = await client.post("/notify", json=body, headers=BEARER)
    assert response.status_code == 202, response.text
    notification = response.json()

    async def failed() -> bool:
        got = await client.get(f"/notifications/{notification['id']}", headers=BEARER)
        return bool(got.json()["status"] == "failed")

    await eventually(failed, what="the webhook delivery to fail")
    return notification["id"], notification["deliveries"][0]["id"]


async def _delivery_status(client: httpx.AsyncClient, notification_id: str) -> str:
    got = await client.get(f"/notifications/{notification_id}", headers=BEARER)
    return str(got.json()["deliveries"][0]["status"])


def _stateless(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """No cookie jar: each test sends exactly the cookie it means to, or none."""

    async def forget(_: httpx.Response) -> None:
        client.cookies.clear()

    client.event_hooks["response"].append(forget)
    return client


@pytest.fixture
async def keyed(client_for: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(API_KEY=API_KEY) as client:
        yield _stateless(client)


# --- who gets in -----------------------------------------------------------------------------------------------


def _dashboard_operations() -> list[tuple[str, str]]:
    # FastAPI 0.165 keeps included routers lazily (app.routes holds a private wrapper), so walk the router itself.
    return sorted(
        (method, route.path)
        for route in dashboard.router.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    )


OTHER_KEY = SessionKeys.derive(b"another-api-key-" + b"y" * 24)
BAD_COOKIES = {
    "none": None,
    "garbage": "not-a-session",
    "other-key": OTHER_KEY.issue(),
    "expired": KEYS.issue(now_s=time.time() - SESSION_TTL_S - 1),
    # a valid signature, expiry pushed forward: the signature covers the expiry
    "extended": re.sub(r"^v1\.(\d+)\.", lambda m: f"v1.{int(m.group(1)) + 10**6}.", KEYS.issue()),
    "bad-signature": _tampered(KEYS.issue()),
}


@pytest.mark.parametrize("cookie", list(BAD_COOKIES.values()), ids=list(BAD_COOKIES))
async def test_every_dashboard_route_refuses_without_a_valid_session(
    keyed: httpx.AsyncClient, cookie: str | None
) -> None:
    # Walks the route table (the dashboard is not in the OpenAPI schema), so a new route cannot slip through.
    operations = _dashboard_operations()
    assert len(operations) >= 7, operations
    headers = {**BEARER, **(_cookie(cookie) if cookie else {})}  # the API's Bearer key is not a dashboard session
    data = {"csrf_token": KEYS.csrf_token(cookie) if cookie else "x"}  # even a token that matches the cookie
    for method, template in operations:
        path = template.replace("{delivery_id}", "dlv_x").replace("{notification_id}", "ntf_x")
        response = await keyed.request(method, path, headers=headers, data=data if method == "POST" else None)
        if path == "/dashboard/login":  # the way in: the form, and a wrong key is refused
            assert response.status_code == (200 if method == "GET" else 401), (method, path)
        elif method == "GET" and path != "/dashboard/fragment":
            assert response.status_code == 303, (method, path, response.status_code)
            assert response.headers["location"] == "/dashboard/login"
        else:
            assert response.status_code in (401, 403), (method, path, response.status_code)
        assert "set-cookie" not in response.headers, (method, path)
        assert API_KEY not in response.text


async def test_dashboard_is_not_in_the_openapi_schema(make_settings: Any) -> None:
    paths = create_app(make_settings()).openapi()["paths"]
    assert not [path for path in paths if path.startswith(("/dashboard", "/static"))]


async def test_wrong_key_redisplays_the_form_with_an_error(keyed: httpx.AsyncClient) -> None:
    response = await keyed.post("/dashboard/login", data={"api_key": API_KEY + "x"})
    assert response.status_code == 401
    assert "That is not the API key." in response.text
    assert '<form method="post" action="/dashboard/login"' in response.text
    assert "set-cookie" not in response.headers
    assert API_KEY not in response.text


@pytest.mark.parametrize(("base_url", "secure"), [("http://herald.test", False), ("https://herald.test", True)])
async def test_right_key_sets_a_signed_httponly_strict_cookie(client_for: Any, base_url: str, secure: bool) -> None:
    async with client_for(API_KEY=API_KEY) as client:
        _stateless(client)
        client.base_url = httpx.URL(base_url)
        response = await client.post("/dashboard/login", data={"api_key": API_KEY})
        assert response.status_code == 303
        assert response.headers["location"] == "/dashboard"
        set_cookie = response.headers["set-cookie"]
        attributes = {part.strip().split("=")[0].lower(): part.strip() for part in set_cookie.split(";")[1:]}
        assert "httponly" in attributes
        assert attributes["samesite"].lower() == "samesite=strict"
        assert attributes["path"] == "Path=/dashboard"
        assert attributes["max-age"] == f"Max-Age={SESSION_TTL_S}"
        assert ("secure" in attributes) is secure
        value = response.cookies[COOKIE_NAME]
        assert KEYS.verify(value)
        assert API_KEY not in set_cookie
        page = await client.get("/dashboard", headers=_cookie(value))
        assert page.status_code == 200
        assert "Log out" in page.text


@pytest.mark.parametrize(
    "headers", [{"Origin": "https://herald.test"}, {"X-Forwarded-Proto": "https"}], ids=["origin", "forwarded-proto"]
)
async def test_cookie_is_secure_behind_a_tls_proxy(keyed: httpx.AsyncClient, headers: dict[str, str]) -> None:
    response = await keyed.post("/dashboard/login", data={"api_key": API_KEY}, headers=headers)
    assert response.status_code == 303
    assert "; Secure" in response.headers["set-cookie"]


async def test_login_and_logout_are_guarded_too(keyed: httpx.AsyncClient) -> None:
    cookie, csrf = await _login(keyed)
    foreign = await keyed.post(
        "/dashboard/login", data={"api_key": API_KEY}, headers={"Origin": "https://evil.example"}
    )
    assert foreign.status_code == 403
    assert "set-cookie" not in foreign.headers
    no_token = await keyed.post("/dashboard/logout", headers=_cookie(cookie))
    assert no_token.status_code == 403
    out = await keyed.post("/dashboard/logout", headers=_cookie(cookie), data={"csrf_token": csrf})
    assert out.status_code == 303
    assert out.headers["location"] == "/dashboard/login"
    cleared = out.headers["set-cookie"]
    assert cleared.startswith(f'{COOKIE_NAME}="";')
    assert "Max-Age=0" in cleared
    assert "Path=/dashboard" in cleared


# --- what it shows ---------------------------------------------------------------------------------------------


async def test_page_shows_counts_the_failed_list_and_recent_notifications(
    keyed: httpx.AsyncClient, receiver: Receiver
) -> None:
    notification_id, delivery_id = await _failed_webhook(keyed, receiver)
    cookie, csrf = await _login(keyed)
    page = await keyed.get("/dashboard", headers=_cookie(cookie))
    html = page.text
    assert page.status_code == 200
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert "API_KEY</code> is not set" not in html
    assert re.search(r'data-status="failed">\s*<span class="count-n">1</span>', html)
    assert re.search(r'data-status="delivered">\s*<span class="count-n">0</span>', html)
    failed = html.split('id="failed"')[1].split('id="recent"')[0]
    assert f'data-delivery-id="{delivery_id}" data-status="failed"' in failed
    assert "1 attempt" in failed
    assert "HTTP 400" in failed  # the last error
    assert f'action="/dashboard/deliveries/{delivery_id}/retry"' in failed
    assert f'action="/dashboard/notifications/{notification_id}/retry"' in failed
    assert f'value="{csrf}"' in failed
    recent = html.split('id="recent"')[1]
    assert f'data-notification-id="{notification_id}" data-status="failed"' in recent
    assert f'data-delivery-id="{delivery_id}" data-status="failed"' in recent
    assert '<script src="/static/dashboard/dashboard.js" defer>' in html
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"

    fragment = await keyed.get("/dashboard/fragment", headers=_cookie(cookie))
    assert fragment.status_code == 200
    assert "<html" not in fragment.text
    assert f'data-delivery-id="{delivery_id}" data-status="failed"' in fragment.text


async def test_content_is_escaped(keyed: httpx.AsyncClient, receiver: Receiver) -> None:
    body = {"to": [{"channel": "webhook", "address": receiver.url("/ok")}], "subject": "<img src=x>", "text": "t"}
    assert (await keyed.post("/notify", json=body, headers=BEARER)).status_code == 202
    cookie, _ = await _login(keyed)
    html = (await keyed.get("/dashboard", headers=_cookie(cookie))).text
    assert "&lt;img src=x&gt;" in html
    assert "<img src=x>" not in html


async def test_static_assets_are_served_without_a_session(keyed: httpx.AsyncClient) -> None:
    script = await keyed.get("/static/dashboard/dashboard.js")
    style = await keyed.get("/static/dashboard/dashboard.css")
    assert script.status_code == style.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert "/dashboard/fragment" not in script.text  # the URL comes from the page, which knows its root path


# --- CSRF and retry --------------------------------------------------------------------------------------------


async def test_retry_needs_the_sessions_csrf_token(keyed: httpx.AsyncClient, receiver: Receiver) -> None:
    notification_id, delivery_id = await _failed_webhook(keyed, receiver)
    cookie, csrf = await _login(keyed)
    other_session_token = KEYS.csrf_token(KEYS.issue())
    url = f"/dashboard/deliveries/{delivery_id}/retry"
    json_accept = {**_cookie(cookie), "Accept": "application/json"}
    for data in ({}, {"csrf_token": ""}, {"csrf_token": other_session_token}, {"csrf_token": _tampered(csrf)}):
        refused = await keyed.post(url, headers=json_accept, data=data)
        assert refused.status_code == 403, (data, refused.text)
    refused = await keyed.post(url, headers={**json_accept, "X-CSRF-Token": other_session_token})
    assert refused.status_code == 403
    cross = await keyed.post(url, headers={**json_accept, "Origin": "https://evil.example"}, data={"csrf_token": csrf})
    assert cross.status_code == 403
    cross = await keyed.post(
        url, headers={**json_accept, "Referer": "https://evil.example/x"}, data={"csrf_token": csrf}
    )
    assert cross.status_code == 403
    assert await _delivery_status(keyed, notification_id) == "failed", "a refused POST must not retry"
    assert len(receiver.received("/hook")) == 1

    ok = await keyed.post(
        url,
        headers={**json_accept, "Origin": "http://herald.test", "Referer": "http://herald.test/dashboard"},
        data={"csrf_token": csrf},
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["notice"] == "retried"

    async def delivered() -> bool:
        return await _delivery_status(keyed, notification_id) == "delivered"

    await eventually(delivered, what="the retried delivery to be delivered")
    assert len(receiver.received("/hook")) == 2

    again = await keyed.post(url, headers=json_accept, data={"csrf_token": csrf})
    assert again.status_code == 409
    unknown = await keyed.post("/dashboard/deliveries/dlv_nope/retry", headers=json_accept, data={"csrf_token": csrf})
    assert unknown.status_code == 404


async def test_retry_by_header_token_and_per_notification(
    client_for: Any, backend_settings: dict[str, Any], receiver: Receiver
) -> None:
    async with client_for(API_KEY=API_KEY, **backend_settings) as client:
        _stateless(client)
        notification_id, _ = await _failed_webhook(client, receiver)
        cookie, csrf = await _login(client)
        headers = {**_cookie(cookie), "Accept": "application/json", "X-CSRF-Token": csrf}
        url = f"/dashboard/notifications/{notification_id}/retry"
        response = await client.post(url, headers=headers)
        assert response.status_code == 200, response.text

        async def delivered() -> bool:
            return await _delivery_status(client, notification_id) == "delivered"

        await eventually(delivered, what="the notification's failed delivery to be delivered")
        nothing_failed = await client.post(url, headers=headers)
        assert nothing_failed.status_code == 409
        unknown = await client.post("/dashboard/notifications/ntf_nope/retry", headers=headers)
        assert unknown.status_code == 404


async def test_plain_form_post_redirects_back_with_a_notice(keyed: httpx.AsyncClient, receiver: Receiver) -> None:
    _, delivery_id = await _failed_webhook(keyed, receiver)
    cookie, csrf = await _login(keyed)
    response = await keyed.post(
        f"/dashboard/deliveries/{delivery_id}/retry", headers=_cookie(cookie), data={"csrf_token": csrf}
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard?notice=retried"
    page = await keyed.get(response.headers["location"], headers=_cookie(cookie))
    assert "Queued again." in page.text
    made_up = await keyed.get("/dashboard?notice=<b>pwned</b>", headers=_cookie(cookie))
    assert "pwned" not in made_up.text


# --- open mode (no API_KEY) ------------------------------------------------------------------------------------


async def test_open_dashboard_warns_and_still_needs_csrf(client_for: Any, receiver: Receiver) -> None:
    async with client_for() as client:
        _stateless(client)
        notification_id, delivery_id = await _failed_webhook(client, receiver)
        assert (await client.get("/dashboard/login")).headers["location"] == "/dashboard"
        page = await client.get("/dashboard")
        assert page.status_code == 200
        assert "API_KEY</code> is not set" in page.text
        assert "Log out" not in page.text
        cookie = page.cookies[COOKIE_NAME]
        url = f"/dashboard/deliveries/{delivery_id}/retry"
        headers = {**_cookie(cookie), "Accept": "application/json"}
        assert (await client.post(url, headers=headers)).status_code == 403
        assert (await client.post(url, data={"csrf_token": _csrf_of(page.text)})).status_code == 401  # no cookie
        # A cookie signed with a key anyone could derive (the empty API key) is worthless here.
        forged = SessionKeys.derive(b"").issue()
        forged_headers = {**_cookie(forged), "Accept": "application/json"}
        data = {"csrf_token": SessionKeys.derive(b"").csrf_token(forged)}
        assert (await client.post(url, headers=forged_headers, data=data)).status_code == 401
        ok = await client.post(url, headers=headers, data={"csrf_token": _csrf_of(page.text)})
        assert ok.status_code == 200, ok.text
        again = await client.get("/dashboard", headers=_cookie(cookie))
        assert "set-cookie" not in again.headers, "a valid session is kept, not replaced"
        assert await _delivery_status(client, notification_id) in ("queued", "sending", "delivered")


# --- the signing itself ----------------------------------------------------------------------------------------


def test_session_cookie_signature_and_expiry() -> None:
    now = 1_800_000_000.0
    value = KEYS.issue(now_s=now, ttl_s=60)
    assert KEYS.verify(value, now_s=now + 59)
    assert not KEYS.verify(value, now_s=now + 60)
    assert not OTHER_KEY.verify(value, now_s=now)
    payload, _, signature = value.rpartition(".")
    version, expires, nonce = payload.split(".")
    assert not KEYS.verify(f"{version}.{int(expires) + 3600}.{nonce}.{signature}", now_s=now)
    assert not KEYS.verify(f"{version}.{expires}.{nonce}x.{signature}", now_s=now)
    assert not KEYS.verify(f"v2.{expires}.{nonce}.{signature}", now_s=now)
    assert not KEYS.verify(f"{payload}.", now_s=now)
    assert not KEYS.verify("", now_s=now)
    assert not KEYS.verify("v1.é.x.y", now_s=now)
    assert KEYS.issue(now_s=now) != KEYS.issue(now_s=now), "every login is its own session"


def test_csrf_token_is_bound_to_its_session() -> None:
    one, two = KEYS.issue(), KEYS.issue()
    assert KEYS.csrf_ok(one, KEYS.csrf_token(one))
    assert not KEYS.csrf_ok(one, KEYS.csrf_token(two))
    assert not KEYS.csrf_ok(one, OTHER_KEY.csrf_token(one))
    assert not KEYS.csrf_ok(one, None)
    assert not KEYS.csrf_ok(one, "")
    assert KEYS.csrf_token(one) not in one  # the token is not readable off the cookie


@pytest.mark.parametrize(
    ("origin", "referer", "expected"),
    [
        (None, None, True),
        ("https://herald.test", None, True),
        ("https://herald.test", "https://evil.example/", True),  # Origin wins when both are sent
        ("https://evil.example", None, False),
        ("http://herald.test", None, False),  # another scheme is another origin
        ("https://herald.test:8443", None, False),
        ("null", None, False),
        (None, "https://herald.test/dashboard?x=1", True),
        (None, "https://evil.example/https://herald.test", False),
        (None, "https://herald.test.evil.example/", False),
        (None, "http://herald.test/dashboard", False),
    ],
)
def test_same_origin(origin: str | None, referer: str | None, expected: bool) -> None:
    assert same_origin("https://herald.test", origin, referer) is expected


@pytest.mark.parametrize(
    ("origin", "referer", "expected"),
    [
        ("https://herald.test", None, True),  # TLS ended at a proxy uvicorn does not trust
        (None, "https://herald.test/dashboard", True),
        ("https://evil.example", None, False),
        ("https://herald.test:8443", None, False),
    ],
)
def test_same_origin_behind_a_tls_proxy(origin: str | None, referer: str | None, expected: bool) -> None:
    assert same_origin("http://herald.test", origin, referer) is expected
