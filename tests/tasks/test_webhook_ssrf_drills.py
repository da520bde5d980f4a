"""SSRF drills: every forbidden destination fails the delivery for good after one attempt, with the reason.

Each drill runs the real in-process runner and the real WebhookClient; under its guard sits a
``LoopbackDialler``, which records what the guard asked it to dial and never dials anything but
loopback. So "refused" is shown as "nothing was dialled at all", and a guard broken on purpose (to see
these tests fail) still sends nothing off the machine. Only 127.0.0.1 and ::1 are ever connected to.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpcore
import pytest

from core.config import Settings
from core.errors import PermanentError, RetryableError
from core.jobs import JobState
from tasks.channels.netguard import ForbiddenDestinationError, GuardedNetworkBackend
from tasks.delivery import send_webhook
from tests.support.hostile_receivers import (
    HostileReceiver,
    LoopbackDialler,
    ScriptedResolver,
    answer,
    drill_client,
    hostile_receiver,
)
from tests.tasks.helpers import deliver, delivery_context, inline_runner, make_payload

pytestmark = pytest.mark.drill  # docs/guarantees.md; `make drills` runs it with the rest

SettingsFactory = Callable[..., Settings]
PUBLIC = "93.184.216.34"  # passes the guard; the LoopbackDialler never dials it


@pytest.fixture
async def target() -> AsyncIterator[HostileReceiver]:
    """A receiver on 127.0.0.1 that would answer 200: a delivery reaching it means the guard let it through."""
    async with hostile_receiver(answer(200, body=b"ok")) as server:
        yield server


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("10.0.0.1", "10.0.0.1 is private"),
        ("172.16.0.1", "172.16.0.1 is private"),
        ("172.31.255.254", "172.31.255.254 is private"),
        ("192.168.1.1", "192.168.1.1 is private"),
        ("127.0.0.1", "127.0.0.1 is loopback"),
        ("127.255.255.254", "127.255.255.254 is loopback"),
        ("[::1]", "::1 is loopback"),
        ("169.254.169.254", "169.254.169.254 is link-local (cloud metadata"),
        ("169.254.0.1", "169.254.0.1 is link-local"),
        ("[fe80::1]", "fe80::1 is link-local"),
        ("100.64.0.1", "100.64.0.1 is CGNAT"),
        ("100.127.255.254", "100.127.255.254 is CGNAT"),
        ("224.0.0.1", "224.0.0.1 is multicast"),
        ("[ff02::1]", "ff02::1 is multicast"),
        ("0.0.0.0", "0.0.0.0 is unspecified"),
        ("[::]", ":: is unspecified"),
        ("255.255.255.255", "255.255.255.255 is broadcast"),
        ("240.0.0.1", "240.0.0.1 is"),  # 240/4, reserved ("private" in Python's table)
        ("192.0.0.8", "192.0.0.8 is reserved for IETF protocol assignments"),
        ("[fc00::1]", "fc00::1 is private"),
        ("[fec0::1]", "fec0::1 is site-local"),
        ("[::ffff:127.0.0.1]", "127.0.0.1 is loopback (embedded in ::ffff:7f00:1)"),
        ("[::ffff:169.254.169.254]", "169.254.169.254 is link-local (cloud metadata lives here) (embedded in"),
        ("[64:ff9b::7f00:1]", "127.0.0.1 is loopback (embedded in 64:ff9b::7f00:1)"),
        ("[64:ff9b::a9fe:a9fe]", "169.254.169.254 is link-local (cloud metadata lives here) (embedded in"),
        ("[2002:7f00:1::]", "127.0.0.1 is loopback (embedded in 2002:7f00:1::)"),
        ("[2002:a9fe:a9fe::]", "169.254.169.254 is link-local (cloud metadata lives here) (embedded in"),
        ("2130706433", "2130706433 resolves to 127.0.0.1 is loopback"),  # decimal
        ("0x7f000001", "0x7f000001 resolves to 127.0.0.1 is loopback"),  # hex
        ("017700000001", "017700000001 resolves to 127.0.0.1 is loopback"),  # octal, one number
        ("127.1", "127.1 resolves to 127.0.0.1 is loopback"),  # short form
        ("0x7f.1", "0x7f.1 resolves to 127.0.0.1 is loopback"),
        ("0", "0 resolves to 0.0.0.0 is unspecified"),
        ("2852039166", "2852039166 resolves to 169.254.169.254 is link-local"),  # metadata, decimal
        ("localhost", "localhost resolves to"),  # a name (from /etc/hosts) that resolves to loopback
    ],
)
async def test_forbidden_destination_fails_for_good_after_one_attempt(
    make_settings: SettingsFactory, target: HostileReceiver, host: str, why: str
) -> None:
    settings = make_settings(WEBHOOK_ALLOW_PRIVATE=False)
    dialler = LoopbackDialler()
    payload = make_payload(address=f"http://{host}:{target.port}/hook")

    async with inline_runner(settings, webhooks=drill_client(settings, dialler)) as backend:
        record = await deliver(backend, payload)

    assert record.state is JobState.FAILED
    assert record.attempts == 1
    assert record.last_error is not None
    assert record.last_error.startswith("destination refused: ")
    assert why in record.last_error
    assert dialler.hosts == []  # refused before any socket, for every address the name had
    assert target.connections == []


async def test_octal_dotted_quad_is_refused_as_an_invalid_url(
    make_settings: SettingsFactory, target: HostileReceiver
) -> None:
    """``0177.0.0.1`` is 127.0.0.1 to inet_aton; httpx's URL parser refuses it before any lookup."""
    settings = make_settings(WEBHOOK_ALLOW_PRIVATE=False)
    dialler = LoopbackDialler()

    async with inline_runner(settings, webhooks=drill_client(settings, dialler)) as backend:
        record = await deliver(backend, make_payload(address=f"http://0177.0.0.1:{target.port}/hook"))

    assert record.state is JobState.FAILED
    assert record.attempts == 1
    assert record.last_error == "cannot send to this URL: Invalid IPv4 address: '0177.0.0.1'"
    assert dialler.hosts == []
    assert target.connections == []


@pytest.mark.parametrize(
    ("answers", "why"),
    [
        (["127.0.0.1"], "hooks.drill.test resolves to 127.0.0.1 is loopback"),
        (["169.254.169.254"], "hooks.drill.test resolves to 169.254.169.254 is link-local (cloud metadata lives here)"),
        (["::ffff:10.1.2.3"], "hooks.drill.test resolves to 10.1.2.3 is private (embedded in ::ffff:a01:203)"),
        # one bad address among good ones refuses the name: the others could be tried after a failure
        ([PUBLIC, "127.0.0.1"], "hooks.drill.test resolves to 127.0.0.1 is loopback"),
        (["2606:4700::1111", "fd00::1"], "hooks.drill.test resolves to fd00::1 is private"),
    ],
)
async def test_a_name_resolving_to_a_forbidden_address_is_refused(
    make_settings: SettingsFactory, target: HostileReceiver, answers: list[str], why: str
) -> None:
    settings = make_settings(WEBHOOK_ALLOW_PRIVATE=False)
    dialler = LoopbackDialler()
    resolver = ScriptedResolver(answers)
    client = drill_client(settings, dialler, resolver=resolver)

    async with inline_runner(settings, webhooks=client) as backend:
        record = await deliver(backend, make_payload(address=f"http://hooks.drill.test:{target.port}/hook"))

    assert record.state is JobState.FAILED
    assert record.attempts == 1
    assert record.last_error == f"destination refused: {why}"
    assert resolver.asked == ["hooks.drill.test"]
    assert dialler.hosts == []
    assert target.connections == []


async def test_dns_rebinding_dials_the_checked_address_never_a_second_answer(target: HostileReceiver) -> None:
    """The name answers a public address to the check and 127.0.0.1 to any later lookup: the guard looks it
    up once and dials what it checked, so the loopback answer is never asked for and never dialled."""
    dialler = LoopbackDialler()
    resolver = ScriptedResolver([PUBLIC], ["127.0.0.1"])
    guard = GuardedNetworkBackend(allow_private=False, inner=dialler, resolver=resolver)

    with pytest.raises(httpcore.ConnectError, match="not loopback, not dialling it"):  # stands in for the internet
        await guard.connect_tcp("rebind.drill.test", target.port, timeout=1.0)

    assert resolver.asked == ["rebind.drill.test"]
    assert dialler.hosts == [PUBLIC]
    assert target.connections == []


async def test_dns_rebinding_through_send_webhook(make_settings: SettingsFactory, target: HostileReceiver) -> None:
    """The same through the webhook client: the first attempt dials the public address it checked (the test
    dialler refuses it: a retryable connect error, nothing reaches 127.0.0.1); when the name later answers
    127.0.0.1, the next attempt is refused for good."""
    settings = make_settings(WEBHOOK_ALLOW_PRIVATE=False)
    dialler = LoopbackDialler()
    resolver = ScriptedResolver([PUBLIC], ["127.0.0.1"])
    payload = make_payload(address=f"http://rebind.drill.test:{target.port}/hook")

    async with delivery_context(settings) as ctx, drill_client(settings, dialler, resolver=resolver) as client:
        ctx["webhooks"] = client
        with pytest.raises(RetryableError, match="connection failed"):
            await send_webhook(ctx, payload)
        with pytest.raises(PermanentError, match=r"rebind\.drill\.test resolves to 127\.0\.0\.1 is loopback") as caught:
            await send_webhook(ctx, payload)

    assert isinstance(caught.value.__cause__, ForbiddenDestinationError)
    assert resolver.asked == ["rebind.drill.test", "rebind.drill.test"]  # once per connection, not per check
    assert dialler.hosts == [PUBLIC]
    assert target.connections == []


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_to_cloud_metadata_is_not_followed(make_settings: SettingsFactory, status: int) -> None:
    metadata = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
    settings = make_settings(WEBHOOK_ALLOW_PRIVATE=True)  # the receiver is on loopback; the redirect is the attack
    dialler = LoopbackDialler()

    async with (
        hostile_receiver(answer(status, headers=[("location", metadata)])) as server,
        inline_runner(settings, webhooks=drill_client(settings, dialler)) as backend,
    ):
        record = await deliver(backend, make_payload(address=server.url("/hook")))

    assert record.state is JobState.FAILED
    assert record.attempts == 1
    assert record.last_error == f"HTTP {status} (redirects are not followed; Location: {metadata})"
    assert dialler.hosts == ["127.0.0.1"]  # the receiver, once; never 169.254.169.254
    assert len(server.connections) == 1
