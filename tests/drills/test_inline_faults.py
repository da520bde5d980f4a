"""In-process faults on a real `python -m api`: SIGTERM and SIGKILL with deliveries in flight.

README, "Retries, shutdown and what can be lost": on SIGTERM the queue drains for SHUTDOWN_GRACE_S and what is
left is logged by id (none silently lost); at SIGKILL everything accepted and not yet delivered is lost —
the queue and the records are memory — and nothing else: no half-sent or duplicated delivery.
"""

from __future__ import annotations

import json
import re
import signal

import httpx
import pytest

from tests.drills.conftest import StartApi
from tests.drills.tally import Tally, counts, ids_of, post_all, wait_http_ready, webhook_bodies
from tests.support.drills import drill_size
from tests.support.processes import Process
from tests.support.receiver import Receiver, Reply
from tests.support.waiting import eventually

pytestmark = [pytest.mark.drill, pytest.mark.slow, pytest.mark.timeout(180)]

SENT = drill_size(100, 500)
CONCURRENCY = 10


def _messages(process: Process) -> list[str]:
    return [json.loads(line)["message"] for line in process.log().splitlines() if line.startswith("{")]


async def _terminated(process: Process, *, timeout_s: float) -> None:
    process.send(signal.SIGTERM)
    returncode = await process.exited(timeout_s=timeout_s)
    # uvicorn re-raises the SIGTERM it handled once shutdown is complete.
    assert returncode in (0, -signal.SIGTERM), f"exit code {returncode}:\n{process.log()}"


async def test_sigterm_within_the_grace_delivers_every_accepted_delivery(
    start_api: StartApi, receiver: Receiver
) -> None:
    receiver.default = Reply(delay_s=0.05)
    process, url = start_api(TASK_CONCURRENCY=str(CONCURRENCY), SHUTDOWN_GRACE_S="25")
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        await wait_http_ready(client, process)
        accepted = ids_of(await post_all(client, webhook_bodies(receiver, "drain", SENT)))
    in_flight_at_sigterm = SENT - len(receiver.received())
    await _terminated(process, timeout_s=40)
    tally = Tally.of(accepted, receiver.received())
    print(tally.line("inline SIGTERM within the grace", in_flight_at_sigterm=in_flight_at_sigterm))
    assert in_flight_at_sigterm > SENT // 2, "the drill must SIGTERM with most deliveries still pending"
    assert not tally.lost, sorted(tally.lost)
    tally.assert_exact()
    assert "drain complete: 0 jobs left unfinished" in _messages(process)


async def test_sigterm_past_the_grace_names_every_delivery_it_did_not_send(
    start_api: StartApi, receiver: Receiver
) -> None:
    receiver.default = Reply(delay_s=0.5)
    process, url = start_api(TASK_CONCURRENCY=str(CONCURRENCY), SHUTDOWN_GRACE_S="1")
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        await wait_http_ready(client, process)
        accepted = ids_of(await post_all(client, webhook_bodies(receiver, "grace", SENT)))
    await _terminated(process, timeout_s=30)
    tally = Tally.of(accepted, receiver.received())
    found = [re.fullmatch(r"shutdown left (\d+) jobs unfinished: (.+)", m) for m in _messages(process)]
    matches = [m for m in found if m]
    assert len(matches) == 1, process.log()
    match = matches[0]
    named = set(match.group(2).split(", "))
    print(tally.line("inline SIGTERM past the grace", named_in_log=len(named)))
    assert int(match.group(1)) == len(named) > SENT // 2, "the grace must end with most deliveries unsent"
    assert named <= set(accepted), "the log names accepted deliveries only"
    assert f"drain complete: {len(named)} jobs left unfinished" in _messages(process), "it names all it left"
    # None silently lost: each accepted delivery arrived or is named; a named one can have arrived only
    # if its request was under way when the grace ran out (at most TASK_CONCURRENCY of them).
    assert tally.lost <= named, sorted(tally.lost - named)
    assert len(named & tally.delivered) <= CONCURRENCY
    tally.assert_exact()


async def test_sigkill_loses_exactly_what_was_not_yet_delivered(start_api: StartApi, receiver: Receiver) -> None:
    before_kill = SENT // 5
    process, url = start_api(TASK_CONCURRENCY=str(CONCURRENCY))
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        await wait_http_ready(client, process)
        first = ids_of(await post_all(client, webhook_bodies(receiver, "done", before_kill)))

        async def first_delivered() -> bool:
            return (await counts(client))["delivered"] == before_kill

        await eventually(first_delivered, timeout_s=30, what="the first deliveries")
        # The rest: the receiver takes each request and holds its answer, so exactly TASK_CONCURRENCY of them
        # are on the wire and the others wait in the in-process queue when the SIGKILL lands.
        receiver.default = Reply(delay_s=60)
        held = await post_all(client, webhook_bodies(receiver, "held", SENT - before_kill))
        rest = ids_of(held)
        await eventually(
            lambda: len(receiver.received()) == before_kill + CONCURRENCY, timeout_s=30, what="the held requests"
        )
        at_kill = await counts(client)
    process.kill()
    tally = Tally.of(first + rest, receiver.received())
    print(tally.line("inline SIGKILL", delivered_before_kill=at_kill["delivered"], on_the_wire=CONCURRENCY))
    assert at_kill["delivered"] == before_kill
    assert at_kill["sending"] == CONCURRENCY, at_kill
    assert at_kill["queued"] == SENT - before_kill - CONCURRENCY, at_kill
    # Lost: everything accepted and not yet delivered, except the requests already on the wire, which the
    # receiver got whole (it cannot tell a sender killed while waiting for its answer from a slow one).
    assert tally.lost == set(rest) - tally.delivered
    assert len(tally.lost) == SENT - before_kill - CONCURRENCY
    tally.assert_exact()  # nothing half-sent, nothing twice

    # The records were memory too: a new process knows none of these notifications.
    again, url = start_api()
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        await wait_http_ready(client, again)
        statuses = {(await client.get(f"/notifications/{n}")).status_code for n in held}
    assert statuses == {404}
