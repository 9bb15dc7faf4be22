"""The SSRF guard for outbound webhooks: resolve once, refuse non-public addresses, connect to what was checked.

A producer chooses its callback URL, so a webhook is a request we send wherever a tenant points us.
:class:`AddressPolicy` says whether an address may be called: private, loopback, link-local, CGNAT,
multicast, reserved, documentation and benchmark ranges are refused, for IPv4 and IPv6, and IPv6
forms that embed an IPv4 address (IPv4-mapped, 6to4, NAT64) are judged by the address they embed.
``settings.webhook_allowlist`` (CIDRs or host names) lets tests and the demo call loopback.

Webhooks send through :class:`workers.webhook_http.WebhookClient`, which resolves and connects through
the policy the same way; :func:`guarded_transport` builds the same guard for an httpx client. Its network
backend resolves the host itself, checks every address the name resolves to, and opens the TCP
connection to the checked address; TLS still verifies the certificate against the host name, and the ``Host`` header is the
name, so a DNS answer that changes between check and connect (DNS rebinding) cannot slip through.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

import anyio
import httpcore
import httpx

from workers.errors import UnsafeDestination

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Every IPv4 range that is not the public internet (IANA special-purpose registry).
BLOCKED_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # CGNAT shared address space
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local (cloud metadata endpoints live here)
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation TEST-NET-1
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",  # private
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation TEST-NET-2
        "203.0.113.0/24",  # documentation TEST-NET-3
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and 255.255.255.255 broadcast
    )
)

# Every IPv6 range that is not the public internet. IPv4-mapped, 6to4 and NAT64 are decoded first.
BLOCKED_V6 = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/128",  # unspecified
        "::1/128",  # loopback
        "::/96",  # deprecated IPv4-compatible
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard-only
        "2001::/23",  # IETF protocol assignments (Teredo, benchmarking, ORCHID ...)
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation (RFC 9637)
        "5f00::/16",  # segment routing SIDs
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # deprecated site-local
        "ff00::/8",  # multicast
    )
)
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")


def embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (IPv4-mapped, 6to4, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in SIX_TO_FOUR:
        return ip.sixtofour
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refusal(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public address, or None when it may be called."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return "scoped IPv6 address"
        inner = embedded_v4(ip)
        if inner is not None:
            reason = refusal(inner)
            return f"embeds {inner}: {reason}" if reason else None
        blocked: tuple[IPNetwork, ...] = BLOCKED_V6
    else:
        blocked = BLOCKED_V4
    for net in blocked:
        if ip in net:
            return f"in non-public range {net}"
    return None


class AddressPolicy:
    """Which hosts and addresses webhooks may reach: public ones, plus whatever the allowlist names."""

    def __init__(self, allowlist: Iterable[str] = ()) -> None:
        self.networks: list[IPNetwork] = []
        self.hosts: set[str] = set()
        for entry in allowlist:
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.hosts.add(entry.strip().lower().rstrip("."))

    def host_allowed(self, host: str) -> bool:
        """True when the allowlist names this host, so any address it resolves to may be called."""
        return host.lower().rstrip(".") in self.hosts

    def check(self, host: str, ip: IPAddress) -> None:
        """Raise :class:`UnsafeDestination` unless ``ip`` (which ``host`` resolved to) may be called."""
        if self.host_allowed(host) or any(ip in net for net in self.networks):
            return
        reason = refusal(ip)
        if reason is not None:
            raise UnsafeDestination(host, str(ip), reason)

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address ``host`` resolves to, each checked; raise if any is refused or none exists."""
        literal = _literal(host)
        if literal is not None:
            self.check(host, literal)
            return [literal]
        try:
            infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise UnsafeDestination(host, "", f"cannot resolve: {exc}") from exc
        addresses: list[IPAddress] = []
        for _family, _type, _proto, _canon, sockaddr in infos:
            ip = ipaddress.ip_address(sockaddr[0])
            if ip not in addresses:
                addresses.append(ip)
        if not addresses:
            raise UnsafeDestination(host, "", "resolves to no address")
        # One refused address refuses the name: a mixed answer is how rebinding attacks start.
        for ip in addresses:
            self.check(host, ip)
        return addresses


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore network backend that connects only to addresses the policy accepted."""

    def __init__(self, policy: AddressPolicy, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.policy = policy
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 -- httpcore's backend interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            with anyio.fail_after(timeout):
                addresses = await self.policy.resolve(host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from exc
        last: Exception | None = None
        for ip in addresses:
            try:
                return await self.inner.connect_tcp(
                    str(ip), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 -- httpcore's backend interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise UnsafeDestination(path, "", "unix sockets are never a webhook destination")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with the guarded network backend.

    httpx does not take a network backend as an argument, so the connection pool is rebuilt here
    with the same options; this is the one place that reaches into httpx's transport.
    """

    def __init__(self, policy: AddressPolicy, limits: httpx.Limits) -> None:
        super().__init__(limits=limits, trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(policy),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme not in ("http", "https"):
            raise UnsafeDestination(request.url.host, "", f"scheme {request.url.scheme!r} is not http(s)")
        return await super().handle_async_request(request)


def guarded_transport(allowlist: Iterable[str], *, max_connections: int) -> GuardedTransport:
    """The transport for webhook clients: SSRF-checked connections, pooled up to ``max_connections``."""
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return GuardedTransport(AddressPolicy(allowlist), limits)
