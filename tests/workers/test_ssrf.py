"""The SSRF guard: every non-public address class is refused unless allowlisted; connections go to checked addresses."""

from __future__ import annotations

import ipaddress

import httpx
import pytest

from tests.workers.receiver import running_receiver
from workers.errors import UnsafeDestination
from workers.ssrf import AddressPolicy, guarded_transport
from workers.webhook_http import WebhookClient

REFUSED = [
    "0.0.0.0",  # this network
    "10.1.2.3",  # private
    "172.16.5.4",  # private
    "192.168.1.1",  # private
    "127.0.0.1",  # loopback
    "169.254.169.254",  # link-local: cloud metadata
    "100.64.0.1",  # CGNAT
    "224.0.0.1",  # multicast
    "240.0.0.1",  # reserved
    "255.255.255.255",  # broadcast
    "192.0.2.10",  # documentation
    "198.18.0.1",  # benchmarking
    "::",  # unspecified
    "::1",  # loopback
    "fe80::1",  # link-local
    "fc00::1",  # unique local
    "fd12:3456::1",  # unique local
    "ff02::1",  # multicast
    "2001:db8::1",  # documentation
    "::ffff:10.0.0.1",  # IPv4-mapped private
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "2002:a00:1::1",  # 6to4 embedding 10.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 embedding 169.254.169.254
]

ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "2606:4700:4700::1111",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "2002:808:808::1",
]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused(address: str) -> None:
    with pytest.raises(UnsafeDestination):
        AddressPolicy().check("example.test", ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_pass(address: str) -> None:
    AddressPolicy().check("example.test", ipaddress.ip_address(address))


@pytest.mark.parametrize("address", REFUSED)
def test_allowlisted_cidr_lets_an_address_through(address: str) -> None:
    ip = ipaddress.ip_address(address)
    AddressPolicy([str(ipaddress.ip_network(f"{ip}/{ip.max_prefixlen}"))]).check("example.test", ip)


async def test_a_name_resolving_to_loopback_is_refused() -> None:
    with pytest.raises(UnsafeDestination, match="localhost"):
        await AddressPolicy().resolve("localhost", 80)


async def test_an_allowlisted_host_name_may_resolve_anywhere() -> None:
    addresses = await AddressPolicy(["localhost"]).resolve("localhost", 80)
    assert all(ip.is_loopback for ip in addresses)


async def test_an_unresolvable_name_is_refused() -> None:
    with pytest.raises(UnsafeDestination, match="cannot resolve"):
        await AddressPolicy().resolve("no-such-host.invalid", 80)


async def test_the_transport_refuses_loopback_before_connecting() -> None:
    with running_receiver() as receiver:
        async with httpx.AsyncClient(transport=guarded_transport([], max_connections=4)) as client:
            with pytest.raises(UnsafeDestination):
                await client.post(receiver.url, content=b"{}")
        assert receiver.requests == []


async def test_the_transport_connects_to_an_allowlisted_address_with_the_names_host_header() -> None:
    with running_receiver() as receiver:
        url = receiver.url.replace("127.0.0.1", "localhost")
        transport = guarded_transport(["127.0.0.0/8", "::1/128"], max_connections=4)
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.post(url, content=b"{}")
        assert response.status_code == 200
        assert receiver.requests[0].headers["host"].startswith("localhost:")


async def test_non_http_schemes_are_refused() -> None:
    async with httpx.AsyncClient(transport=guarded_transport([], max_connections=1)) as client:
        with pytest.raises((UnsafeDestination, httpx.UnsupportedProtocol)):
            await client.get("ftp://8.8.8.8/x")


def webhook_client(allowlist: list[str]) -> WebhookClient:
    return WebhookClient(allowlist, timeout_s=2.0, max_connections=4, user_agent="test")


async def post(client: WebhookClient, url: str) -> int:
    response = await client.post(url, content=b"{}", headers={}, deadline_s=2.0, max_body=4096)
    return response.status_code


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
        "localhost.",
        "LOCALHOST",
        "127.1",
        "2130706433",
        "0x7f.1",  # hex and octal forms inet_aton takes: resolved, then refused as loopback
        "0x7f000001",
        "0177.0.0.1",
        "017700000001",
        "127.0.0.1.",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[::127.0.0.1]",  # IPv4-compatible
        "[64:ff9b::7f00:1]",  # NAT64 of loopback
        "[fe80::1%25lo]",  # scoped
    ],
)
async def test_the_webhook_client_refuses_loopback_in_every_spelling_before_connecting(host: str) -> None:
    """A name goes through the guarded resolver; an IP literal (no resolver is asked about
    those) is checked before the send; a non-canonical numeric host is refused outright."""
    with running_receiver() as receiver:
        async with webhook_client([]) as client:
            with pytest.raises(UnsafeDestination):
                await post(client, receiver.url.replace("127.0.0.1", host))
        assert receiver.requests == []


async def test_the_webhook_client_connects_to_an_allowlisted_address_with_the_names_host_header() -> None:
    with running_receiver() as receiver:
        async with webhook_client(["127.0.0.0/8", "::1/128"]) as client:
            assert await post(client, receiver.url.replace("127.0.0.1", "localhost")) == 200
        assert receiver.requests[0].headers["host"].startswith("localhost:")


async def test_the_webhook_client_refuses_non_http_schemes() -> None:
    async with webhook_client([]) as client:
        with pytest.raises(UnsafeDestination, match="scheme"):
            await post(client, "ftp://8.8.8.8/x")
