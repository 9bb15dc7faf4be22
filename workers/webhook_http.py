"""The webhook client: HTTP/1.1 keep-alive on SSRF-guarded connections, one deadline per send, an answer cap.

Why not a general client: a webhook is one small POST with a small answer, and at the outbox's 64
sends in flight httpx spent over ten times, and aiohttp about twice, the CPU per request that an
asyncio Protocol with httptools' (llhttp) answer parser does (benchmarks/webhooks.py), and the
sends were most of a worker's CPU in the pipeline.

The guard is :class:`workers.ssrf.AddressPolicy`, as for :func:`workers.ssrf.guarded_transport`: a
name is resolved by the policy, every address it resolves to is checked, and the connection goes to
exactly those addresses (TLS still verifies the certificate against the name, and the ``Host``
header is the name), so a DNS answer that changes between check and connect cannot slip through.
An IP literal is checked when the URL is first parsed, a host that looks numeric but is not a
canonical address is refused, and only http(s) is spoken. Redirects are never followed (an answer
is returned as it is), no proxy is ever used, and an answer is never inflated: its first
``max_body`` raw bytes are read and the connection is then dropped. A connection is reused only
after an answer read to its end that did not ask to close and had nothing after it (a second answer
is never read into the first); one idle for ``KEEPALIVE_S`` is closed; at most ``max_connections``
are open. A host name is refused unless it is made of host-name characters (a NUL would cut the name
the resolver sees), and no header value may hold CR, LF or NUL.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import re
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import cast
from urllib.parse import unquote

import httptools
from yarl import URL

from workers.errors import ConnectionFailed, ResponseTimeout, UnsafeDestination
from workers.http import CappedResponse
from workers.ssrf import AddressPolicy, IPAddress, _literal

# Most URLs whose parse and literal check are remembered (all are forgotten when it is reached).
CHECKED_URLS = 10_000
# Seconds an idle keep-alive connection is kept for reuse (aiohttp's default keepalive_timeout).
KEEPALIVE_S = 15.0
# Bytes of an answer's status line and headers read before it is refused as bad (aiohttp's limits:
# 8,190 bytes a line).
MAX_HEAD_BYTES = 64 * 1024
MAX_FIELD_BYTES = 8190

_Key = tuple[bool, str, int]
# What a host name may hold once yarl has parsed it (lower case, IDNA as punycode; percent-escapes are
# left as they are): control characters, spaces and the like would reach the resolver (which stops
# at a NUL) and the Host header, and no name that resolves holds them.
_HOST_NAME = re.compile(r"[A-Za-z0-9._%-]+")


@dataclass(frozen=True, slots=True)
class _Target:
    """A URL parsed and checked once: where to connect and the request head up to its length."""

    key: _Key  # (tls, host, port): the pool a connection belongs to
    host: str  # as resolved: punycode, IPv6 without brackets
    server_name: str  # TLS's SNI and the name the certificate must match (no trailing dot)
    port: int
    tls: bool
    literal: IPAddress | None  # the checked address of an IP literal host
    head: str  # request line, Host and Authorization, up to "Content-Length: "
    lines: int  # CRLFs in ``head``


class _Connection(asyncio.Protocol):
    """One keep-alive connection and the answer being read on it (one request at a time)."""

    def __init__(self, client: WebhookClient, key: _Key, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.key = key
        self.loop = loop
        self.generation = client._generation
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.counted = False  # holds one of the client's max_connections
        self.lost = False
        self.idle_since = 0.0
        self.used = 0  # exchanges begun on this connection
        self.waiter: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self._reset(0, "", 0.0, 0.0, 0.0)

    def _reset(self, max_body: int, url: str, deadline: float, deadline_s: float, idle_s: float) -> None:
        self.url = url
        self.max_body = max_body
        self.deadline = deadline
        self.deadline_s = deadline_s
        self.idle_s = idle_s  # the per-read timeout, only tracked when shorter than the deadline
        self.last_read = 0.0
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.parts: list[bytes] = []
        self.kept = 0
        self.head_bytes = 0  # raw bytes of a head not yet complete
        self.field_bytes = 0  # bytes of header (and trailer) lines
        self.headers_done = False
        self.framed = False  # content-length or transfer-encoding: the body does not end at close
        self.keep_alive = False
        self.truncated = False
        self.done = False
        self.reusable = False
        self.refusal = ""  # why an answer's head was refused, when it was by us rather than the parser
        self.received = False  # any byte of an answer
        self.unheard = False  # the peer closed before a byte of answer came

    # --- one exchange

    async def exchange(
        self, data: bytes, url: str, deadline: float, deadline_s: float, idle_s: float, max_body: int
    ) -> None:
        """Send ``data`` and read the answer into this connection's fields, or raise our error."""
        if self.lost or self.transport is None:
            raise ResponseTimeout("POST", url, "ServerDisconnectedError: Server disconnected")
        self._reset(max_body, url, deadline, deadline_s, idle_s if idle_s < deadline_s else 0.0)
        self.used += 1
        waiter = self.waiter = self.loop.create_future()
        self.transport.write(data)
        when = deadline
        if self.idle_s:
            self.last_read = self.loop.time()
            when = min(deadline, self.last_read + self.idle_s)
        self.timer = self.loop.call_at(when, self._on_timer)
        try:
            await waiter
        finally:
            self.timer.cancel()
            self.timer = None
            self.waiter = None

    def _on_timer(self) -> None:
        now = self.loop.time() + 0.001  # call_at may fire up to the clock's resolution early
        if now >= self.deadline or not self.idle_s:
            self._fail(
                ResponseTimeout(
                    "POST", self.url, f"no complete answer within the {self.deadline_s:g} s deadline"
                )
            )
            return
        idle_end = self.last_read + self.idle_s
        if now >= idle_end:
            self._fail(
                ResponseTimeout("POST", self.url, f"timeout: no data for {self.idle_s:g} s (read timeout)")
            )
            return
        self.timer = self.loop.call_at(min(self.deadline, idle_end), self._on_timer)

    def _finish(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: Exception) -> None:
        self.reusable = False
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():  # bytes no request asked for: never reuse this connection
            self.reusable = False
            if self.transport is not None:
                self.transport.abort()
            return
        self.received = True
        if self.idle_s:
            self.last_read = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # 101 and the like: the answer ends at its head
            if self.headers_done:
                self._finish()
            else:
                self._bad("upgrade without an answer head")
            self.reusable = False
        except httptools.HttpParserError as exc:
            self._bad(self.refusal or f"{type(exc).__name__}: {exc}")
            return
        if not self.headers_done:  # the parser holds an unfinished head: bound it
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES:
                self._bad(f"answer head over {MAX_HEAD_BYTES} bytes")

    def _bad(self, reason: str) -> None:
        """Not HTTP: the same error aiohttp's ClientResponseError mapped to."""
        self._fail(ConnectionFailed("POST", self.url, f"bad answer: {reason}"))

    def eof_received(self) -> bool | None:
        return None  # close; connection_lost judges whether the answer was complete

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.reusable = False
        self.client._lost(self)
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self.headers_done and not self.framed and exc is None:  # a body ended by a clean close
            self._finish()
            return
        self.unheard = not self.received
        reason = "answer broke off" if self.headers_done else "ServerDisconnectedError: Server disconnected"
        if exc is not None:
            reason += f": {type(exc).__name__}: {exc}"
        self._fail(ResponseTimeout("POST", self.url, reason))

    # --- httptools callbacks

    def on_message_begin(self) -> None:
        if self.headers_done:  # bytes after the answer (a second answer, a body a 204 may not have)
            # Stop here: the parser would go on in the same read and overwrite the status, headers
            # and body of the answer already given, and the connection must never be reused.
            self.refusal = "bytes after the answer"
            raise httptools.HttpParserError(self.refusal)

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(value) > MAX_FIELD_BYTES or len(name) > MAX_FIELD_BYTES:
            self.refusal = f"header field over {MAX_FIELD_BYTES} bytes"
            raise httptools.HttpParserError(self.refusal)  # stops the parser; data_received reports it
        # The fields' total (a head that ends within one read is not bounded by data_received's count).
        self.field_bytes += len(name) + len(value) + 4  # with ": " and CRLF
        if self.field_bytes > MAX_HEAD_BYTES:
            self.refusal = f"answer head or trailers over {MAX_HEAD_BYTES} bytes"
            raise httptools.HttpParserError(self.refusal)
        if self.headers_done:  # a trailer after a chunked body: counted above, never kept
            return
        if len(name) == 14 and name.lower() == b"content-length":
            self.framed = True
        elif len(name) == 17 and name.lower() == b"transfer-encoding":
            # Chunked only when it is the last coding; otherwise the body ends at the close (RFC 9112 6.3).
            self.framed = value.rstrip().lower().endswith(b"chunked")
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        if self.truncated:
            return
        room = self.max_body - self.kept
        if len(body) > room:
            if room:
                self.parts.append(body[:room])
            self.kept = self.max_body
            self.truncated = True
            self.reusable = False
            self._finish()
            if self.transport is not None:
                self.transport.abort()  # drop the connection: the rest is never read
            return
        self.parts.append(body)
        self.kept += len(body)

    def on_message_complete(self) -> None:
        if self.truncated:
            return
        if 100 <= self.status < 200 and self.status != 101:  # interim answer: the real one follows
            self.headers = []
            self.headers_done = False
            self.framed = False
            self.head_bytes = self.field_bytes = 0
            return
        self.done = True
        self.reusable = self.keep_alive
        self._finish()


class WebhookClient:
    """A process's client for URLs tenants chose (one per worker process, shared by its delivery tasks).

    Pools up to ``max_connections`` keep-alive connections (over all hosts; a send waits for one
    when all are busy); ``timeout_s`` bounds each connect and each read, :meth:`post`'s deadline
    the whole call.
    """

    def __init__(
        self, allowlist: Iterable[str], *, timeout_s: float, max_connections: int, user_agent: str
    ) -> None:
        self.policy = AddressPolicy(allowlist)
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.user_agent = user_agent
        # URLs parsed and passed by _check_literal (the same URL's verdict never changes; names are
        # checked by the policy at each connect): a backfill sends thousands to one URL.
        self._checked: dict[str, _Target] = {}
        self._idle: dict[_Key, list[_Connection]] = {}
        self._open = 0  # connections counted against max_connections (connecting, busy or idle)
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._generation = 0  # bumped by aclose: older connections are closed, never reused
        self._ssl: ssl.SSLContext | None = None
        self._sweeper: asyncio.TimerHandle | None = None  # closes connections idle for KEEPALIVE_S

    def _check_literal(self, target: URL) -> None:
        """Refuse what needs no resolver to reach: a scheme other than http(s), or an IP literal the
        policy refuses (a host that looks numeric but is not a canonical address is refused too)."""
        host = target.raw_host or ""
        if target.scheme not in ("http", "https"):
            raise UnsafeDestination(host, "", f"scheme {target.scheme!r} is not http(s)")
        literal = _literal(host)
        if literal is not None:
            self.policy.check(host, literal)
        elif ":" in host or host.replace(".", "").isdigit():
            raise UnsafeDestination(host, "", "not a canonical IP address")
        elif host and not _HOST_NAME.fullmatch(host):
            raise UnsafeDestination(host, "", "invalid URL: not a host name")

    def _target(self, url: str) -> _Target:
        try:
            parsed = URL(url)
        except (TypeError, ValueError) as exc:
            raise UnsafeDestination(url, "", f"not a URL: {exc}") from exc
        self._check_literal(parsed)
        host, port = parsed.raw_host, parsed.port
        if not host or port is None:
            raise UnsafeDestination(url, "", "invalid URL: no host")
        tls = parsed.scheme == "https"
        # aiohttp's Host: IPv6 in brackets, no default port, no trailing dot, never the userinfo.
        authority = parsed.host_port_subcomponent
        # The path and query as yarl re-quoted them (no fragment): CR, LF and TAB are dropped, other
        # control characters and spaces percent-encoded, so the request line cannot be split.
        lines = [f"POST {parsed.raw_path_qs or '/'} HTTP/1.1", f"Host: {authority}"]
        if parsed.raw_user is not None or parsed.raw_password is not None:
            # credentials in the URL: HTTP Basic, as aiohttp sends them (base64: no line break gets in)
            pair = f"{unquote(parsed.raw_user or '')}:{unquote(parsed.raw_password or '')}"
            lines.append("Authorization: Basic " + base64.b64encode(pair.encode("latin-1")).decode())
        head = "\r\n".join(lines) + "\r\nContent-Length: "
        if "\n" in head.replace("\r\n", "") or "\r" in head.replace("\r\n", ""):
            raise UnsafeDestination(url, "", "invalid URL: line break")
        server_name = host.rstrip(".")  # as aiohttp: a certificate never names the root's dot
        target = _Target((tls, host, port), host, server_name, port, tls, _literal(host), head, len(lines))
        if len(self._checked) >= CHECKED_URLS:
            self._checked.clear()
        self._checked[url] = target
        return target

    def _request(self, target: _Target, content: bytes, headers: dict[str, str]) -> bytes:
        parts = [target.head, str(len(content)), "\r\n"]
        agent = True
        for name, value in headers.items():
            if len(name) == 10 and name.lower() == "user-agent":
                agent = False
            parts += (name, ": ", value, "\r\n")
        if agent:
            parts += ("User-Agent: ", self.user_agent, "\r\n")
        parts.append("\r\n")
        head = "".join(parts)
        expected = target.lines + 2 + len(headers) + agent
        if head.count("\n") != expected or head.count("\r") != expected or "\0" in head:
            raise ValueError("Newline, carriage return or NUL character detected in an HTTP header")
        return head.encode() + content

    async def post(
        self, url: str, *, content: bytes, headers: dict[str, str], deadline_s: float, max_body: int
    ) -> CappedResponse:
        """POST to a URL someone else chose, costing at most ``deadline_s`` seconds and ``max_body`` bytes.

        The deadline covers the whole send (connect, request, answer head, body), not each read, so
        a receiver trickling a byte at a time cannot hold the call open. Raises
        :class:`UnsafeDestination` for a destination the guard refuses, :class:`ResponseTimeout`
        when the deadline passes or the answer broke off, :class:`ConnectionFailed` when the request
        never reached the receiver (or the answer was not HTTP).

        A kept-alive connection the receiver closed as the request went out (its idle timeout ran
        out first; before any byte of answer) is not the receiver's answer: the request is sent once
        more on a new connection within the same deadline, as browsers do (a webhook is delivered at
        least once anyway: the outbox would send it again, only later).
        """
        target = self._checked.get(url) or self._target(url)
        data = self._request(target, content, headers)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + deadline_s
        conn = None if self._waiters else self._take_idle(target.key, loop)
        if conn is None:
            conn = await self._connection(target, url, loop, deadline, deadline_s)
        try:
            await conn.exchange(data, url, deadline, deadline_s, self.timeout_s, max_body)
        except ResponseTimeout:
            if not conn.unheard or conn.used < 2:
                raise
        else:
            return CappedResponse(conn.status, conn.headers, b"".join(conn.parts), conn.truncated)
        finally:
            self._release(conn, loop)
        conn = await self._connection(target, url, loop, deadline, deadline_s, reuse=False)
        try:
            await conn.exchange(data, url, deadline, deadline_s, self.timeout_s, max_body)
        finally:
            self._release(conn, loop)
        return CappedResponse(conn.status, conn.headers, b"".join(conn.parts), conn.truncated)

    # --- the pool

    def _take_idle(self, key: _Key, loop: asyncio.AbstractEventLoop) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        stale = loop.time() - KEEPALIVE_S
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have been closed
            if not conn.lost and conn.idle_since > stale:
                return conn
            self._discard(conn)
        return None

    def _release(self, conn: _Connection, loop: asyncio.AbstractEventLoop) -> None:
        if conn.reusable and not conn.lost and conn.generation == self._generation:
            conn.reusable = False
            conn.idle_since = now = loop.time()
            self._idle.setdefault(conn.key, []).append(conn)
            if self._sweeper is None:
                self._sweeper = loop.call_at(now + KEEPALIVE_S, self._sweep, loop)
            self._wake()
        else:
            self._discard(conn)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close connections idle for KEEPALIVE_S (as aiohttp's keepalive_timeout did), even when no send
        comes to take them: a receiver that never hangs up must not hold our sockets."""
        self._sweeper = None
        stale = loop.time() - KEEPALIVE_S
        oldest = None
        for key, idle in list(self._idle.items()):
            while idle and idle[0].idle_since <= stale:  # oldest first: released in time order
                self._discard(idle.pop(0))
            if not idle:
                del self._idle[key]  # one entry per host ever called would grow without end
            elif oldest is None or idle[0].idle_since < oldest:
                oldest = idle[0].idle_since
        if oldest is not None:
            self._sweeper = loop.call_at(oldest + KEEPALIVE_S, self._sweep, loop)

    def _discard(self, conn: _Connection) -> None:
        if conn.transport is not None and not conn.lost:
            conn.transport.abort()
        if conn.counted:
            conn.counted = False
            self._open -= 1
            self._wake()

    def _lost(self, conn: _Connection) -> None:
        """A connection closed by the peer: forget it if idle (a busy one is discarded on release)."""
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)
            self._discard(conn)

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _evict_idle(self) -> bool:
        """Close the longest idle connection to another host to make room; False if there is none."""
        oldest: _Connection | None = None
        for idle in self._idle.values():
            if idle and (oldest is None or idle[0].idle_since < oldest.idle_since):
                oldest = idle[0]
        if oldest is None:
            return False
        self._idle[oldest.key].remove(oldest)
        self._discard(oldest)
        return True

    async def _connection(
        self,
        target: _Target,
        url: str,
        loop: asyncio.AbstractEventLoop,
        deadline: float,
        deadline_s: float,
        *,
        reuse: bool = True,
    ) -> _Connection:
        """A connection for ``target``: an idle one (unless not ``reuse``), or a new one once there is
        room (within the deadline)."""
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    conn = self._take_idle(target.key, loop) if reuse else None
                    if conn is not None:
                        return conn
                    if self._open < self.max_connections or self._evict_idle():
                        break
                    waiter = loop.create_future()
                    self._waiters.append(waiter)
                    try:
                        await waiter
                    except BaseException:
                        if waiter.done() and not waiter.cancelled():
                            self._wake()  # pass the room it was given on
                        elif waiter in self._waiters:  # (a wake may have skipped it already)
                            self._waiters.remove(waiter)
                        raise
                self._open += 1
                try:
                    conn = await self._connect(target, url, loop)
                except BaseException:
                    self._open -= 1
                    self._wake()
                    raise
                conn.counted = True
                return conn
        except TimeoutError as exc:
            raise ResponseTimeout(
                "POST", url, f"no complete answer within the {deadline_s:g} s deadline"
            ) from exc

    async def _connect(self, target: _Target, url: str, loop: asyncio.AbstractEventLoop) -> _Connection:
        """Connect to the first of the checked addresses that answers, each try within ``timeout_s``."""
        if target.literal is not None:
            addresses = [target.literal]
        else:
            addresses = await self.policy.resolve(target.host, target.port)
        context = self._ssl_context() if target.tls else None
        failure: BaseException | None = None
        # Every connection made here: a cancellation (the deadline, a timeout) that lands just as
        # create_connection returns loses its result, and nothing else would ever close it.
        made: list[_Connection] = []

        def connection() -> _Connection:
            conn = _Connection(self, target.key, loop)
            made.append(conn)
            return conn

        try:
            for ip in addresses:
                try:
                    async with asyncio.timeout(self.timeout_s) as within:
                        _, conn = await loop.create_connection(
                            connection,
                            str(ip),
                            target.port,
                            ssl=context,
                            server_hostname=target.server_name if context is not None else None,
                        )
                    made.remove(conn)
                    return conn
                except OSError as exc:
                    failure = exc
                except TimeoutError as exc:
                    if not within.expired():
                        raise  # the whole call's deadline, not this connect's
                    failure = exc
        finally:
            for lost in made:
                if lost.transport is not None:
                    lost.transport.abort()
        raise ConnectionFailed(
            "POST", url, f"cannot connect to {target.host}:{target.port}: {type(failure).__name__}: {failure}"
        )

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()  # verifies the certificate and the host name
        return self._ssl

    async def aclose(self) -> None:
        """Close idle connections; busy ones are closed when their send ends."""
        self._generation += 1
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                self._discard(conn)
        await asyncio.sleep(0)  # let the transports finish closing

    async def __aenter__(self) -> WebhookClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
