"""Malformed requests: each gets a clear 4xx that says what is wrong and where."""

from __future__ import annotations

import json
from typing import Any

import pytest

EMAIL = {"channel": "email", "address": "ada@example.com"}
HOOK = {"channel": "webhook", "address": "https://hooks.example.com/x"}
OK_LITERAL = {"subject": "Hi", "text": "Hello"}

# (id, body, status, loc, fragment of msg)
CASES: list[tuple[str, Any, int, list[Any] | None, str]] = [
    ("not json", "{not json", 422, ["body", 1], "JSON"),
    ("array body", [], 422, ["body"], "dictionary"),
    ("no recipients", {"to": [], **OK_LITERAL}, 422, ["body", "to"], "at least 1"),
    ("missing to", {**OK_LITERAL}, 422, ["body", "to"], "required"),
    (
        "unknown channel",
        {"to": [{"channel": "pigeon", "address": "x"}], **OK_LITERAL},
        422,
        ["body", "to", 0, "channel"],
        "'email', 'webhook', 'sms' or 'inapp'",
    ),
    (
        "bad email",
        {"to": [{"channel": "email", "address": "not-an-email"}], **OK_LITERAL},
        422,
        ["body", "to", 0, "address"],
        "not a valid email address",
    ),
    (
        "CRLF in email",
        {"to": [{"channel": "email", "address": "a@example.com\r\nBcc: x@example.com"}], **OK_LITERAL},
        422,
        ["body", "to", 0, "address"],
        "control characters",
    ),
    (
        "ftp webhook",
        {"to": [{"channel": "webhook", "address": "ftp://example.com/x"}], **OK_LITERAL},
        422,
        ["body", "to", 0, "address"],
        "http:// or https://",
    ),
    (
        "hostless webhook",
        {"to": [{"channel": "webhook", "address": "https://"}], **OK_LITERAL},
        422,
        ["body", "to", 0, "address"],
        "host",
    ),
    (
        "webhook to metadata IP",
        {"to": [{"channel": "webhook", "address": "http://169.254.169.254/latest"}], **OK_LITERAL},
        422,
        ["body", "to", 0, "address"],
        "link-local",
    ),
    (
        "webhook to decimal loopback",
        {"to": [{"channel": "webhook", "address": "http://2130706433/"}], **OK_LITERAL},
        422,
        ["body", "to", 0, "address"],
        "loopback",
    ),
    (
        "sms number without +",
        {"to": [{"channel": "sms", "address": "14155550123"}], **OK_LITERAL},
        422,
        ["body", "to", 0, "address"],
        "must start with '+' and its country code",
    ),
    (
        "sms number with spaces",
        {"to": [EMAIL, {"channel": "sms", "address": "+1 415 555 0123"}], **OK_LITERAL},
        422,
        ["body", "to", 1, "address"],
        "character 3 is ' '",
    ),
    (
        "sms number too short",
        {"to": [{"channel": "sms", "address": "+1415555"}], **OK_LITERAL},
        422,
        ["body", "to", 0, "address"],
        "this one has 7",
    ),
    (
        "sms email address",
        {"to": [{"channel": "sms", "address": "ada@example.com"}], **OK_LITERAL},
        422,
        ["body", "to", 0, "address"],
        "E.164",
    ),
    ("unknown field", {"to": [EMAIL], **OK_LITERAL, "cc": "x"}, 422, ["body", "cc"], "Extra inputs"),
    ("duplicate recipient", {"to": [EMAIL, EMAIL], **OK_LITERAL}, 422, ["body"], "repeats an earlier recipient"),
    ("neither template nor text", {"to": [EMAIL]}, 422, ["body"], "give 'template'"),
    (
        "template and text",
        {"to": [EMAIL], "template": "welcome", "context": {"name": "A"}, **OK_LITERAL},
        422,
        ["body"],
        "not both",
    ),
    (
        "context without template",
        {"to": [EMAIL], **OK_LITERAL, "context": {"a": 1}},
        422,
        ["body"],
        "only used with 'template'",
    ),
    ("unknown template", {"to": [EMAIL], "template": "nope"}, 422, ["body", "template"], "unknown template 'nope'"),
    ("template path traversal", {"to": [EMAIL], "template": "../etc"}, 422, ["body", "template"], "pattern"),
    (
        "missing template variable",
        {"to": [EMAIL], "template": "welcome", "context": {}},
        422,
        ["body", "context"],
        "variable 'name'",
    ),
    (
        "CRLF in subject",
        {"to": [EMAIL], "subject": "Hi\r\nBcc: x@example.com", "text": "t"},
        422,
        ["body", "subject"],
        "one line",
    ),
    (
        "unicode line separator in subject",
        {"to": [EMAIL], "subject": "Hi\u2028Bcc: x@example.com", "text": "t"},
        422,
        ["body", "subject"],
        "one line",
    ),
    ("subject too long", {"to": [EMAIL], "subject": "s" * 256, "text": "t"}, 422, ["body", "subject"], "255"),
    ("empty text", {"to": [EMAIL], "subject": "s", "text": ""}, 422, ["body", "text"], "at least 1"),
    (
        "context not an object",
        {"to": [EMAIL], "template": "welcome", "context": ["Ada"]},
        422,
        ["body", "context"],
        "dictionary",
    ),
]


@pytest.mark.parametrize(("body", "status", "loc", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_bad_body_is_refused_with_where_and_what(
    client_for: Any, body: Any, status: int, loc: list[Any] | None, fragment: str
) -> None:
    async with client_for(WEBHOOK_ALLOW_PRIVATE=False) as client:
        content = body if isinstance(body, str) else json.dumps(body)
        response = await client.post("/notify", content=content, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    errors = response.json()["detail"]
    assert any(e["loc"][: len(loc or [])] == loc and fragment in e["msg"] for e in errors), errors
    assert all(set(e) == {"loc", "msg", "type"} for e in errors), "no echoed input or internals"


async def test_webhook_refused_when_no_secret_configured(client_for: Any) -> None:
    async with client_for(WEBHOOK_SECRET=None) as client:
        response = await client.post("/notify", json={"to": [HOOK], **OK_LITERAL})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "to", 0, "channel"]
    assert "WEBHOOK_SECRET is not set" in error["msg"]


async def test_too_many_recipients(client_for: Any) -> None:
    recipients = [{"channel": "email", "address": f"u{n}@example.com"} for n in range(4)]
    async with client_for(MAX_RECIPIENTS=3) as client:
        response = await client.post("/notify", json={"to": recipients, **OK_LITERAL})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "to"]
    assert "at most 3 recipients" in response.json()["detail"][0]["msg"]


async def test_context_too_large(client_for: Any) -> None:
    async with client_for(MAX_CONTEXT_BYTES=100) as client:
        response = await client.post(
            "/notify", json={"to": [EMAIL], "template": "welcome", "context": {"name": "A" * 200}}
        )
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "context"]
    assert "limit is 100" in error["msg"]


async def test_body_too_large_by_content_length(client_for: Any) -> None:
    async with client_for(MAX_BODY_BYTES=1024) as client:
        response = await client.post("/notify", json={"to": [EMAIL], "subject": "s", "text": "x" * 2000})
    assert response.status_code == 413
    assert "larger than 1024 bytes" in response.json()["detail"]


async def test_body_too_large_when_chunked(client_for: Any) -> None:
    async def chunks() -> Any:
        for _ in range(10):
            yield b" " * 200

    async with client_for(MAX_BODY_BYTES=1024) as client:
        response = await client.post("/notify", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


async def test_chunked_body_under_the_limit_is_accepted(client_for: Any) -> None:
    payload = json.dumps({"to": [EMAIL], **OK_LITERAL}).encode()

    async def chunks() -> Any:
        yield payload[:10]
        yield payload[10:]

    async with client_for(MAX_BODY_BYTES=1024) as client:
        response = await client.post("/notify", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 202, response.text


async def test_bad_idempotency_key(client_for: Any) -> None:
    async with client_for() as client:
        response = await client.post(
            "/notify", json={"to": [EMAIL], **OK_LITERAL}, headers={"Idempotency-Key": "has space"}
        )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]


async def test_nan_in_context_or_metadata_is_a_422_not_a_500(client_for: Any) -> None:
    async with client_for() as client:
        for name, body in [
            (
                "context",
                '{"to": [{"channel": "email", "address": "a@example.com"}], "template": "welcome", '
                '"context": {"name": NaN}}',
            ),
            (
                "metadata",
                '{"to": [{"channel": "email", "address": "a@example.com"}], "subject": "s", "text": "t", '
                '"metadata": {"big": 1e400}}',
            ),
        ]:
            response = await client.post("/notify", content=body, headers={"content-type": "application/json"})
            assert response.status_code == 422, response.text
            assert response.json()["detail"][0]["loc"] == ["body", name]


async def test_send_at_outside_the_date_range_is_a_422(client_for: Any) -> None:
    async with client_for() as client:
        response = await client.post(
            "/notify", json={"to": [EMAIL], **OK_LITERAL, "send_at": "9999-12-31T23:00:00-14:00"}
        )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "send_at"]


async def test_a_rendered_subject_longer_than_255_is_a_422(client_for: Any) -> None:
    async with client_for() as client:
        response = await client.post(
            "/notify", json={"to": [EMAIL], "template": "welcome", "context": {"name": "A" * 300}}
        )
    assert response.status_code == 422
    assert "at most 255" in response.json()["detail"][0]["msg"]


def _documented(openapi: dict[str, Any], method: str, path: str, status: int) -> bool:
    return str(status) in openapi["paths"][path][method.lower()]["responses"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param(b'{"to": "\xc3\x28"}', "not UTF-8", id="invalid UTF-8"),
        pytest.param(b"\x80\x81\x82\x1a", "not UTF-8", id="no encoding at all"),
        pytest.param(b"[" * 100_000, "nested too deeply", id="100,000 brackets"),
    ],
)
@pytest.mark.parametrize(("method", "path"), [("POST", "/notify"), ("PUT", "/users/user_42/preferences")])
async def test_an_undecodable_json_body_is_a_422_naming_the_body(
    client_for: Any, method: str, path: str, content: bytes, problem: str
) -> None:
    # Found by tests/api/test_schemathesis.py: FastAPI answered these with an undocumented bare 400.
    async with client_for() as client:
        response = await client.request(method, path, content=content, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json() == {
        "detail": [{"loc": ["body"], "msg": f"the body is not valid JSON: it is {problem}", "type": "json_invalid"}]
    }


async def test_other_http_errors_keep_their_status_and_headers(client_for: Any) -> None:
    async with client_for(API_KEY="k" * 32) as client:
        missing = await client.get("/no-such-page")
        unauthorized = await client.get("/deliveries")
    assert (missing.status_code, missing.json()) == (404, {"detail": "Not Found"})
    assert unauthorized.status_code == 401
    assert unauthorized.headers["www-authenticate"] == "Bearer"


async def test_a_preferences_body_over_max_body_bytes_is_a_documented_413(client_for: Any) -> None:
    async with client_for(MAX_BODY_BYTES=1024) as client:
        response = await client.put("/users/user_42/preferences", json={"channels": {"x" * 2000: False}})
        openapi = (await client.get("/openapi.json")).json()
    assert response.status_code == 413
    assert "larger than 1024 bytes" in response.json()["detail"]
    assert _documented(openapi, "PUT", "/users/{user_id}/preferences", 413)
