"""SSRF guard for outgoing webhooks.

The host is resolved once, when the connection is made; every address it resolves to is checked,
and the socket connects to a checked address, so no second DNS lookup can swap in another
(rebinding). TLS still verifies the certificate against the URL's host name, because httpcore takes
the SNI name from the request, not from the address we connect to.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpcore
import httpx

from tasks.channels.sharded_pool import sharded

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

DEFAULT_MAX_CONNECTIONS = 100  # httpx's own, for Limits(max_connections=None)

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
# Named here, not left to ``ipaddress``: its answers differ between Python versions (3.11 calls 192.0.0.8 and
# fec0::1 global and 255.255.255.255 merely "private"), and a refusal should say which range it hit.
_SPECIAL_NETWORKS: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = (
    (ipaddress.ip_network("100.64.0.0/10"), "CGNAT shared address space"),
    (ipaddress.ip_network("192.0.0.0/24"), "reserved for IETF protocol assignments"),
    (ipaddress.ip_network("192.88.99.0/24"), "the deprecated 6to4 relay anycast"),
    (ipaddress.ip_network("fec0::/10"), "site-local"),
    (ipaddress.ip_network("3fff::/20"), "reserved for documentation"),
)


class ForbiddenDestinationError(Exception):
    """The destination resolves to an address webhooks may not reach."""


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped, NAT64 or 6to4 IPv6 address, if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64 or address in _NAT64_LOCAL:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    return None


def forbidden_reason(address: IPAddress) -> str | None:
    """Why webhooks may not reach ``address``, or None if it is a public unicast address."""
    if isinstance(address, ipaddress.IPv6Address) and (inner := embedded_ipv4(address)) is not None:
        reason = forbidden_reason(inner)
        return f"{reason} (embedded in {address})" if reason else None
    if address == _BROADCAST:
        return f"{address} is broadcast"
    for network, name in _SPECIAL_NETWORKS:
        if address in network:
            return f"{address} is {name}"
    checks = (
        (address.is_loopback, "loopback"),
        (address.is_unspecified, "unspecified"),
        (address.is_link_local, "link-local (cloud metadata lives here)"),
        (address.is_multicast, "multicast"),
        (address.is_private, "private"),
        (address.is_reserved, "reserved"),
        (not address.is_global, "not globally routable"),
    )
    for hit, reason in checks:
        if hit:
            return f"{address} is {reason}"
    return None


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address if ``host`` spells one in any form the resolver accepts (decimal, hex, octal)."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        packed = socket.inet_aton(host)  # accepts 2130706433, 0x7f.1, 017700000001 like getaddrinfo
    except OSError:
        return None
    return ipaddress.IPv4Address(packed)


async def resolve(host: str, port: int) -> list[IPAddress]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[IPAddress, None] = {}
    for _family, _type, _proto, _name, sockaddr in infos:
        seen[ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])] = None
    return list(seen)


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """Resolves, checks and connects to a checked address; refuses if any address is forbidden.

    ``inner`` dials the checked address (httpcore's anyio backend unless given) and ``resolver`` turns a host
    into addresses (the system's ``getaddrinfo`` unless given): tests pass their own of both to drill the
    guard without any traffic leaving the machine.
    """

    def __init__(
        self,
        *,
        allow_private: bool,
        inner: httpcore.AsyncNetworkBackend | None = None,
        resolver: Resolver = resolve,
    ) -> None:
        self._allow_private = allow_private
        self._inner = inner or httpcore.AnyIOBackend()
        self._resolve = resolver

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                addresses = await self._resolve(host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from exc
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        if not self._allow_private:
            for address in addresses:
                reason = forbidden_reason(address)
                if reason is not None:
                    raise ForbiddenDestinationError(f"{host} resolves to {reason}")
        last_error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        raise last_error or httpcore.ConnectError(f"{host} resolved to no address")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise ForbiddenDestinationError("webhooks may not use unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport with the guarded network backend underneath, its pool sharded.

    httpx 0.28 has no public hook for a network backend, so the pool is rebuilt with the same
    settings; the pinned httpx version keeps this honest. ``limits`` are split over shards of at most
    SHARD_CONNECTIONS connections (see tasks/channels/sharded_pool.py for why). Application tasks use
    it as ``ctx["http"]``; webhooks go through tasks/channels/webhook_client.py.
    """

    def __init__(self, *, allow_private: bool, limits: httpx.Limits) -> None:
        super().__init__(limits=limits, trust_env=False)
        total = DEFAULT_MAX_CONNECTIONS if limits.max_connections is None else limits.max_connections
        keepalive = total if limits.max_keepalive_connections is None else limits.max_keepalive_connections
        self._pool = sharded(  # type: ignore[assignment]
            max_connections=total,
            max_keepalive_connections=keepalive,
            keepalive_expiry=limits.keepalive_expiry,
            ssl_context=httpx.create_ssl_context(trust_env=False),
            network_backend=GuardedNetworkBackend(allow_private=allow_private),
        )
