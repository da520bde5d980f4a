"""Failed deliveries: list them, re-run them — the same in both backends."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.support.receiver import Receiver, Reply
from tests.support.waiting import eventually


async def _notify(client: httpx.AsyncClient, *to: dict[str, str]) -> dict[str, Any]:
    response = await client.post("/notify", json={"to": list(to), "subject": "s", "text": "t"})
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


async def _settled(client: httpx.AsyncClient, notification_id: str, *statuses: str) -> dict[str, Any]:
    async def done() -> bool:
        return (await client.get(f"/notifications/{notification_id}")).json()["status"] in statuses

    await eventually(done, timeout_s=10, what=f"{notification_id} to become {statuses}")
    body: dict[str, Any] = (await client.get(f"/notifications/{notification_id}")).json()
    return body


MAX_PAGES = 20


def _hook(receiver: Receiver, path: str) -> dict[str, str]:
    return {"channel": "webhook", "address": receiver.url(path)}


async def test_failed_deliveries_are_listed_newest_first_and_filtered(
    client_for: Any, backend_settings: dict[str, Any], receiver: Receiver
) -> None:
    receiver.script("/bad", *[Reply(status=400)] * 5)
    async with client_for(**backend_settings) as client:
        failed_ids = []
        for _ in range(5):
            n = await _notify(client, _hook(receiver, "/bad"))
            await _settled(client, n["id"], "failed")
            failed_ids.append(n["deliveries"][0]["id"])
        ok = await _notify(client, _hook(receiver, "/ok"))
        await _settled(client, ok["id"], "delivered")

        pages, cursor = [], None
        for _ in range(MAX_PAGES):
            params = {"status": "failed", "channel": "webhook", "limit": "2", **({"cursor": cursor} if cursor else {})}
            page = (await client.get("/deliveries", params=params)).json()
            pages.append([item["id"] for item in page["items"]])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        else:
            raise AssertionError("paging never ended")
        emails = (await client.get("/deliveries", params={"status": "failed", "channel": "email"})).json()
        counts = (await client.get("/deliveries/counts")).json()
        bad = await client.get("/deliveries", params={"status": "lost"})
    assert [len(p) for p in pages] in ([2, 2, 1], [2, 2, 1, 0])
    assert [i for p in pages for i in p] == list(reversed(failed_ids)), "newest first, each once"
    assert emails["items"] == []
    assert counts["failed"] == 5
    assert counts["delivered"] == 1
    assert bad.status_code == 422


async def test_retry_one_delivery_keeps_its_webhook_id_and_starts_a_new_series(
    client_for: Any, backend_settings: dict[str, Any], receiver: Receiver
) -> None:
    receiver.script("/flaky", Reply(status=400))
    async with client_for(**backend_settings) as client:
        n = await _notify(client, _hook(receiver, "/flaky"))
        [failed] = (await _settled(client, n["id"], "failed"))["deliveries"]
        listed = (await client.get("/deliveries", params={"status": "failed"})).json()["items"]
        retried = await client.post(f"/deliveries/{failed['id']}/retry")
        final = await _settled(client, n["id"], "delivered")
        again = await client.post(f"/deliveries/{failed['id']}/retry")
        unknown = await client.post("/deliveries/dlv_nope/retry")
    assert listed[0]["id"] == failed["id"]
    assert listed[0]["notification_id"] == n["id"]
    assert listed[0]["last_error"] == "HTTP 400: ok"
    assert retried.status_code == 202
    assert retried.json()["status"] in ("queued", "sending", "delivered")
    [delivery] = final["deliveries"]
    assert delivery["attempts"] == 1, "a new attempt series"
    assert [r.headers["webhook-id"] for r in receiver.received("/flaky")] == [failed["id"], failed["id"]]
    assert again.status_code == 409
    assert "only failed" in again.json()["detail"]
    assert unknown.status_code == 404


async def test_retry_a_notification_reruns_only_its_failed_deliveries(
    client_for: Any, backend_settings: dict[str, Any], receiver: Receiver
) -> None:
    receiver.script("/half", Reply(status=410))
    async with client_for(**backend_settings) as client:
        n = await _notify(client, _hook(receiver, "/half"), _hook(receiver, "/fine"))
        first = await _settled(client, n["id"], "partially_delivered")
        retried = await client.post(f"/notifications/{n['id']}/retry")
        final = await _settled(client, n["id"], "delivered")
        unknown = await client.post("/notifications/ntf_nope/retry")
    assert [d["status"] for d in first["deliveries"]] == ["failed", "delivered"]
    assert retried.status_code == 202
    assert len(receiver.received("/half")) == 2
    assert len(receiver.received("/fine")) == 1, "the delivered one is not sent again"
    assert [d["status"] for d in final["deliveries"]] == ["delivered", "delivered"]
    assert unknown.status_code == 404


async def test_paging_never_skips_deliveries_created_in_the_same_millisecond(
    client_for: Any, backend_settings: dict[str, Any], receiver: Receiver
) -> None:
    receiver.default = Reply(status=400)
    recipients = [_hook(receiver, f"/same/{n}") for n in range(7)]
    async with client_for(**backend_settings) as client:
        n = await _notify(client, *recipients)
        await _settled(client, n["id"], "failed")
        seen, cursor = [], None
        for _ in range(MAX_PAGES):
            params = {"status": "failed", "limit": "2", **({"cursor": cursor} if cursor else {})}
            page = (await client.get("/deliveries", params=params)).json()
            seen += [item["id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        else:
            raise AssertionError("paging never ended")
    assert sorted(seen) == sorted(d["id"] for d in n["deliveries"]), "every delivery exactly once"


async def test_concurrent_retries_send_once_and_never_answer_500(
    client_for: Any, backend_settings: dict[str, Any], receiver: Receiver
) -> None:
    receiver.script("/race", Reply(status=400), Reply(delay_s=0.3))
    async with client_for(**backend_settings) as client:
        n = await _notify(client, _hook(receiver, "/race"))
        [failed] = (await _settled(client, n["id"], "failed"))["deliveries"]
        responses = await asyncio.gather(
            *(client.post(f"/deliveries/{failed['id']}/retry") for _ in range(5)),
            client.post(f"/notifications/{n['id']}/retry"),
        )
        await _settled(client, n["id"], "delivered")
    codes = sorted(r.status_code for r in responses)
    assert 500 not in codes, [r.text for r in responses]
    assert codes.count(202) >= 1
    assert set(codes) <= {202, 409}
    assert len(receiver.received("/race")) == 2, "the failed attempt, then exactly one re-run"
