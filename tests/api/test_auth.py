from __future__ import annotations

from typing import Any

import pytest

from api.app import create_app
from tests.conftest import API_KEY

pytestmark = pytest.mark.drill  # docs/guarantees.md; `make drills` runs it with the rest

OPEN_PATHS = {"/healthz", "/readyz"}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {API_KEY}"}, {"Authorization": API_KEY}],
    ids=["missing", "wrong", "wrong-scheme", "no-scheme"],
)
async def test_every_protected_route_refuses_without_the_key(
    client_for: Any, make_settings: Any, headers: dict[str, str]
) -> None:
    # Walks the whole route table, so a new endpoint cannot slip through without auth.
    paths = create_app(make_settings()).openapi()["paths"]
    operations = [(m.upper(), p) for p, ops in paths.items() if p not in OPEN_PATHS for m in ops]
    assert len(operations) >= 2, operations
    async with client_for(API_KEY=API_KEY) as client:
        for method, template in operations:
            path = template.replace("{notification_id}", "ntf_x")
            response = await client.request(method, path, headers=headers, json={})
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            assert API_KEY not in response.text


async def test_right_key_is_accepted_and_health_is_open(client_for: Any) -> None:
    async with client_for(API_KEY=API_KEY) as client:
        health = await client.get("/healthz")
        ok = await client.get("/notifications/ntf_x", headers={"Authorization": f"Bearer {API_KEY}"})
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "backend": "inline"}
    assert ok.status_code == 404


async def test_open_server_warns_at_start_up(client_for: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="herald.app")
    async with client_for(API_KEY=None):
        pass
    assert any("API_KEY is not set" in record.getMessage() for record in caplog.records)
