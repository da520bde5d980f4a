"""The SSRF guard: which addresses are refused, and that the refusal holds at connect time.

Only loopback is ever contacted; the public addresses below are pure function arguments.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import httpcore
import pytest

from core.config import Settings
from core.errors import PermanentError
from tasks.channels.netguard import (
    ForbiddenDestinationError,
    GuardedNetworkBackend,
    forbidden_reason,
    parse_ip_literal,
)
from tasks.delivery import send_webhook
from tests.support.hostile_receivers import LoopbackDialler
from tests.support.receiver import Receiver
from tests.tasks.helpers import delivery_context, make_payload

SettingsFactory = Callable[..., Settings]


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "CGNAT shared address space"),
        ("100.127.255.254", "CGNAT shared address space"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", ""),  # 240/4: "reserved" or "private" depending on the Python version
        # ranges Python 3.11's ipaddress calls global: named explicitly so every version refuses them
        ("192.0.0.8", "reserved for IETF protocol assignments"),
        ("192.88.99.1", "deprecated 6to4 relay anycast"),
        ("fec0::1", "site-local"),
        ("3fff::1", "reserved for documentation"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("::ffff:127.0.0.1", "loopback (embedded in"),  # IPv4-mapped
        ("::ffff:169.254.169.254", "link-local"),
        ("64:ff9b::7f00:1", "loopback (embedded in"),  # NAT64 of 127.0.0.1
        ("64:ff9b:1::a00:1", "private (embedded in"),  # local-use NAT64 of 10.0.0.1
        ("2002:7f00:1::", "loopback (embedded in"),  # 6to4 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "link-local (cloud metadata lives here) (embedded in"),  # NAT64 of metadata
        ("2002:a9fe:a9fe::", "link-local (cloud metadata lives here) (embedded in"),  # 6to4 of metadata
        ("::ffff:0:7f00:1", ""),  # IPv4-translated (SIIT) form of 127.0.0.1
        ("::7f00:1", ""),  # deprecated IPv4-compatible form of 127.0.0.1
        ("2001:db8::1", ""),  # documentation
    ],
)
def test_forbidden_reason_refuses(address: str, why: str) -> None:
    reason = forbidden_reason(ipaddress.ip_address(address))
    assert reason is not None
    assert why in reason


@pytest.mark.parametrize(
    "address",
    [
        "93.184.216.34",
        "2606:4700::1111",
        "64:ff9b::5db8:d822",  # NAT64 of 93.184.216.34
        "::ffff:93.184.216.34",
        "2002:5db8:d822::",  # 6to4 of 93.184.216.34
    ],
)
def test_forbidden_reason_allows_public_unicast(address: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("2130706433", "127.0.0.1"),  # decimal
        ("0x7f000001", "127.0.0.1"),  # hex
        ("0177.0.0.1", "127.0.0.1"),  # octal
        ("127.1", "127.0.0.1"),  # short form
        ("0x7f.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("::ffff:127.0.0.1", "::ffff:127.0.0.1"),
        ("10.0.0.1", "10.0.0.1"),
    ],
)
def test_parse_ip_literal_reads_every_spelling(host: str, expected: str) -> None:
    assert parse_ip_literal(host) == ipaddress.ip_address(expected)


@pytest.mark.parametrize("host", ["example.com", "localhost", "1.2.3.4.5", ""])
def test_parse_ip_literal_is_none_for_names(host: str) -> None:
    assert parse_ip_literal(host) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/hook",
        "http://localhost:{port}/hook",  # a name that resolves to loopback
        "http://[::1]:{port}/hook",
        "http://2130706433:{port}/hook",  # 127.0.0.1 spelled as one decimal number
        "http://0x7f000001:{port}/hook",
        "http://[::ffff:127.0.0.1]:{port}/hook",
    ],
)
async def test_private_destinations_are_refused_at_connect_time(
    make_settings: SettingsFactory, receiver: Receiver, url: str
) -> None:
    payload = make_payload(address=url.format(port=receiver.port))

    async with delivery_context(make_settings(WEBHOOK_ALLOW_PRIVATE=False)) as ctx:
        with pytest.raises(PermanentError, match="destination refused") as caught:
            await send_webhook(ctx, payload)

    assert caught.value.channel == "webhook"
    assert isinstance(caught.value.__cause__, ForbiddenDestinationError)
    assert receiver.received() == []


async def test_private_destinations_are_delivered_when_allowed(
    make_settings: SettingsFactory, receiver: Receiver
) -> None:
    payload = make_payload(address=f"http://127.0.0.1:{receiver.port}/hook")

    async with delivery_context(make_settings(WEBHOOK_ALLOW_PRIVATE=True)) as ctx:
        assert await send_webhook(ctx, payload) == 200

    [request] = receiver.received("/hook")
    assert request.verified is True


async def test_connects_to_the_checked_address_not_the_name(receiver: Receiver) -> None:
    # A name is resolved once and the socket opens to an address that was checked: a second
    # lookup (DNS rebinding) never happens, because the inner backend only ever sees IPs.
    inner = LoopbackDialler()
    backend = GuardedNetworkBackend(allow_private=True, inner=inner)

    stream = await backend.connect_tcp("localhost", receiver.port, timeout=2.0)
    await stream.aclose()

    assert inner.hosts
    assert all(ipaddress.ip_address(host).is_loopback for host in inner.hosts)
    assert "localhost" not in inner.hosts


async def test_refused_name_never_reaches_a_socket(receiver: Receiver) -> None:
    inner = LoopbackDialler()
    backend = GuardedNetworkBackend(allow_private=False, inner=inner)

    with pytest.raises(ForbiddenDestinationError, match=r"localhost resolves to 127\.0\.0\.1 is loopback"):
        await backend.connect_tcp("localhost", receiver.port, timeout=2.0)

    assert inner.hosts == []


async def test_http_request_keeps_the_name_in_host_but_dials_the_address(receiver: Receiver) -> None:
    inner = LoopbackDialler()
    pool = httpcore.AsyncConnectionPool(network_backend=GuardedNetworkBackend(allow_private=True, inner=inner))
    async with pool:
        response = await pool.request("GET", f"http://localhost:{receiver.port}/via-name")

    assert response.status == 200
    assert inner.hosts
    assert inner.hosts[-1] == "127.0.0.1"  # where the receiver listens (a ::1 tried first would fail)
    assert all(ipaddress.ip_address(host).is_loopback for host in inner.hosts)
    [request] = receiver.received("/via-name")
    assert request.headers["host"] == f"localhost:{receiver.port}"


async def test_unix_sockets_are_refused() -> None:
    backend = GuardedNetworkBackend(allow_private=True, inner=LoopbackDialler())

    with pytest.raises(ForbiddenDestinationError, match="unix sockets"):
        await backend.connect_unix_socket("/var/run/docker.sock")
