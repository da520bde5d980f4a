"""What a fault drill measures: sent, delivered, lost, duplicated — deduplicated on ``webhook-id``.

Every webhook carries ``webhook-id`` = its delivery id, unchanged across attempts, so the receiver can
tell a delivery that arrived twice from two deliveries.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from tests.support.processes import Process
from tests.support.receiver import Received, Receiver
from tests.support.waiting import eventually

MAX_RECIPIENTS = 50  # the default MAX_RECIPIENTS: one POST carries this many deliveries


@dataclass(frozen=True)
class Tally:
    sent: int
    delivered: frozenset[str]  # accepted ids that arrived at least once
    lost: frozenset[str]  # accepted ids that never arrived
    duplicated: dict[str, int]  # id -> arrivals, for those that arrived more than once
    strangers: frozenset[str]  # ids that arrived but were never accepted (must be none)
    unverified: int  # arrivals whose signature did not verify (a half-sent or altered body)

    @classmethod
    def of(cls, accepted: Collection[str], arrivals: Sequence[Received]) -> Tally:
        counts = Counter(r.headers["webhook-id"] for r in arrivals)
        wanted = frozenset(accepted)
        return cls(
            sent=len(wanted),
            delivered=wanted & counts.keys(),
            lost=wanted - counts.keys(),
            duplicated={i: n for i, n in counts.items() if n > 1},
            strangers=frozenset(counts.keys() - wanted),
            unverified=sum(r.verified is not True for r in arrivals),
        )

    def assert_exact(self, *, duplicates: bool = False) -> None:
        """Only accepted ids arrived, each signed whole; and, unless ``duplicates``, each at most once."""
        assert not self.strangers, sorted(self.strangers)
        assert not self.unverified, f"{self.unverified} arrivals with a bad signature (half-sent?)"
        if not duplicates:
            assert not self.duplicated, self.duplicated

    def line(self, drill: str, **more: Any) -> str:
        extra = "".join(f" {k}={v}" for k, v in more.items())
        return (
            f"\n{drill}: sent={self.sent} delivered={len(self.delivered)} lost={len(self.lost)} "
            f"duplicated={len(self.duplicated)}{extra}"
        )


def arrivals(receiver: Receiver, prefix: str) -> list[Received]:
    """The requests that reached the paths of ``webhook_bodies(receiver, prefix, ...)``."""
    return [r for r in receiver.received() if r.path.startswith(f"/{prefix}/")]


def webhook_bodies(receiver: Receiver, prefix: str, count: int, **extra: Any) -> list[dict[str, Any]]:
    """POST bodies for ``count`` webhook deliveries, ``MAX_RECIPIENTS`` a request, each to its own path."""
    bodies = []
    for start in range(0, count, MAX_RECIPIENTS):
        to = [
            {"channel": "webhook", "address": receiver.url(f"/{prefix}/{n}")}
            for n in range(start, min(count, start + MAX_RECIPIENTS))
        ]
        bodies.append({"to": to, "subject": prefix, "text": "drill", **extra})
    return bodies


async def post_all(client: httpx.AsyncClient, bodies: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """POST every body (all must be 202); notification id -> its delivery ids."""
    responses = await asyncio.gather(*(client.post("/notify", json=body) for body in bodies))
    accepted: dict[str, list[str]] = {}
    for response in responses:
        assert response.status_code == 202, response.text
        accepted[response.json()["id"]] = [d["id"] for d in response.json()["deliveries"]]
    return accepted


def ids_of(accepted: dict[str, list[str]]) -> list[str]:
    return [delivery_id for ids in accepted.values() for delivery_id in ids]


async def counts(client: httpx.AsyncClient) -> dict[str, int]:
    response = await client.get("/deliveries/counts")
    assert response.status_code == 200, response.text
    body: dict[str, int] = response.json()
    return body


async def wait_http_ready(client: httpx.AsyncClient, process: Process, path: str = "/healthz") -> None:
    """Until ``path`` answers 200 (the process must not exit meanwhile)."""

    async def ready() -> bool:
        assert process.running, f"{process.name} exited during start-up:\n{process.log()}"
        try:
            return (await client.get(path)).status_code == 200
        except httpx.TransportError:
            return False

    await eventually(ready, timeout_s=30, what=f"{process.name} to answer {path}")
