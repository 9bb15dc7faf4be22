"""The webhook client: aiohttp on SSRF-guarded connections, every send under one deadline and an answer cap.

Why not the httpx client the provider calls use: a webhook is one small POST, and at the outbox's
64 sends in flight httpx with httpcore spent over ten times the CPU per request that aiohttp does
(benchmarks/webhooks.py), which made delivery the whole pipeline's bottleneck.

The guard is :class:`workers.ssrf.AddressPolicy`, as for :func:`workers.ssrf.guarded_transport`:
:class:`GuardedResolver` resolves a name, checks every address it resolves to, and aiohttp
connects to exactly those addresses (TLS still verifies the certificate against the name, and the
``Host`` header is the name), so a DNS answer that changes between check and connect cannot slip
through. aiohttp never asks a resolver about an IP literal, so :meth:`WebhookClient.post` checks
those itself before sending. Redirects are never followed, the environment's proxies are ignored
and an answer is never inflated (``auto_decompress`` off): its first ``max_body`` raw bytes are read
and the connection is then dropped.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from types import TracebackType

import aiohttp
import httpx
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from workers.errors import ConnectionFailed, ResponseTimeout, UnsafeDestination
from workers.http import CappedResponse
from workers.ssrf import AddressPolicy, _literal

# Most URLs whose parse and literal check are remembered (all are forgotten when it is reached).
CHECKED_URLS = 10_000


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver for webhooks: every address a name resolves to is checked, or the call is refused."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = await self.policy.resolve(host, port)
        return [
            {
                "hostname": host,
                "host": str(ip),
                "port": port,
                "family": socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for ip in addresses
        ]

    async def close(self) -> None:
        """Nothing to release: resolution is the policy's (the loop's getaddrinfo)."""


class WebhookClient:
    """A process's client for URLs tenants chose (one per worker process, shared by its delivery tasks).

    The aiohttp session is made on first use, inside the running loop, and pools up to
    ``max_connections`` keep-alive connections; ``timeout_s`` bounds each connect and read
    (:meth:`post`'s deadline bounds the whole call).
    """

    def __init__(
        self, allowlist: Iterable[str], *, timeout_s: float, max_connections: int, user_agent: str
    ) -> None:
        self.policy = AddressPolicy(allowlist)
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        # URLs parsed and passed by _check_literal (the same URL's verdict never changes; names are
        # checked by the resolver at each connect): a backfill sends thousands to one URL.
        self._checked: dict[str, URL] = {}

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.max_connections, resolver=GuardedResolver(self.policy), enable_cleanup_closed=True
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self.timeout_s, sock_read=self.timeout_s
                ),
                headers={"user-agent": self.user_agent},
                auto_decompress=False,
                trust_env=False,
            )
        return self._session

    def _check_literal(self, target: URL) -> None:
        """Refuse what aiohttp would connect to without asking the resolver: a scheme other than
        http(s), or an IP literal the policy refuses (a host aiohttp takes for an address but that is
        not a canonical one is refused too)."""
        host = target.raw_host or ""
        if target.scheme not in ("http", "https"):
            raise UnsafeDestination(host, "", f"scheme {target.scheme!r} is not http(s)")
        literal = _literal(host)
        if literal is not None:
            self.policy.check(host, literal)
        elif ":" in host or host.replace(".", "").isdigit():
            raise UnsafeDestination(host, "", "not a canonical IP address")

    async def post(
        self, url: str, *, content: bytes, headers: dict[str, str], deadline_s: float, max_body: int
    ) -> CappedResponse:
        """POST to a URL someone else chose, costing at most ``deadline_s`` seconds and ``max_body`` bytes.

        The deadline covers the whole send (connect, request, answer head, body), not each read, so
        a receiver trickling a byte at a time cannot hold the call open. Raises
        :class:`UnsafeDestination` for a destination the guard refuses, :class:`ResponseTimeout`
        when the deadline passes or the answer broke off, :class:`ConnectionFailed` when the request
        never reached the receiver.
        """
        target = self._checked.get(url)
        if target is None:
            try:
                target = URL(url)
            except (TypeError, ValueError) as exc:
                raise UnsafeDestination(url, "", f"not a URL: {exc}") from exc
            self._check_literal(target)
            if len(self._checked) >= CHECKED_URLS:
                self._checked.clear()
            self._checked[url] = target
        session = self._open()
        try:
            async with asyncio.timeout(deadline_s):
                with _translate_errors(url):
                    async with session.post(
                        target, data=content, headers=headers, allow_redirects=False
                    ) as response:
                        body, truncated = await _read_capped(response.content, max_body)
                        if truncated:
                            response.close()  # drop the connection: the rest is never read
                        return CappedResponse(
                            response.status, httpx.Headers(list(response.headers.items())), body, truncated
                        )
        except TimeoutError as exc:
            raise ResponseTimeout(
                "POST", url, f"no complete answer within the {deadline_s:g} s deadline"
            ) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> WebhookClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


@contextmanager
def _translate_errors(url: str) -> Iterator[None]:
    """aiohttp's errors as ours: refused before sending, never sent, or sent without a complete answer."""
    try:
        yield
    except aiohttp.InvalidURL as exc:  # a host no resolver was asked about (e.g. "127.1")
        raise UnsafeDestination(str(exc.url), "", f"invalid URL: {exc}") from exc
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        raise ConnectionFailed("POST", url, f"{type(exc).__name__}: {exc}") from exc
    except aiohttp.ServerTimeoutError as exc:  # a read stalled past the per-read timeout
        raise ResponseTimeout("POST", url, f"timeout: {type(exc).__name__}: {exc}") from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError) as exc:
        raise ResponseTimeout("POST", url, f"{type(exc).__name__}: {exc}") from exc
    except aiohttp.ClientError as exc:  # anything aiohttp adds later: the receiver got nothing usable
        raise ConnectionFailed("POST", url, f"{type(exc).__name__}: {exc}") from exc


async def _read_capped(stream: aiohttp.StreamReader, max_body: int) -> tuple[bytes, bool]:
    """At most ``max_body`` raw bytes of the answer, and whether more was sent."""
    parts: list[bytes] = []
    kept = 0
    while True:
        chunk = await stream.readany()
        if not chunk:
            return b"".join(parts), False
        room = max_body - kept
        if len(chunk) > room:
            parts.append(chunk[:room])
            return b"".join(parts), True
        parts.append(chunk)
        kept += len(chunk)
