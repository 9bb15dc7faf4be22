"""The webhook client's HTTP/1.1: keep-alive reuse, answer framings, the pool bound, bad answers, TLS.

The receiver is a scripted asyncio server on loopback: each answer is raw bytes, so framings and
broken answers a real server would never send can be tried.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvloop

from tests.conftest import until
from tests.test_redis_tls import make_certificates
from workers import webhook_http
from workers.errors import ConnectionFailed, ResponseTimeout, UnsafeDestination
from workers.webhook_http import WebhookClient

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

# What the server does with its n-th request (from 0): answer bytes, then whether to close;
# None: hang up without answering.
Script = Callable[[int], tuple[bytes | None, bool]]


@dataclass
class Server:
    url: str
    connections: int = 0
    open_now: int = 0
    peak: int = 0  # most connections open at once
    requests: list[tuple[int, bytes, bytes]] = field(default_factory=list)  # (connection, head, body)


@asynccontextmanager
async def scripted(
    script: Script,
    *,
    delay_s: float = 0.0,
    tls: ssl.SSLContext | None = None,
    host: str = "127.0.0.1",
    bind: str = "127.0.0.1",
) -> AsyncIterator[Server]:
    server = Server(url="")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = server.connections
        server.connections += 1
        server.open_now += 1
        server.peak = max(server.peak, server.open_now)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                body = await reader.readexactly(length)
                answer, close = script(len(server.requests))
                server.requests.append((number, head, body))
                if delay_s:
                    await asyncio.sleep(delay_s)
                if answer is None:
                    writer.transport.abort()
                    return
                writer.write(answer)
                await writer.drain()
                if close:
                    return
        finally:
            server.open_now -= 1
            writer.close()

    listener = await asyncio.start_server(handle, bind, 0, ssl=tls)
    port = listener.sockets[0].getsockname()[1]
    server.url = f"{'https' if tls else 'http'}://{host}:{port}/hook?x=1"
    try:
        yield server
    finally:
        listener.close()


def client(max_connections: int = 4, timeout_s: float = 5.0) -> WebhookClient:
    return WebhookClient(
        ["127.0.0.0/8", "::1/128", "localhost"],
        timeout_s=timeout_s,
        max_connections=max_connections,
        user_agent="ua/1",
    )


async def post(
    c: WebhookClient, url: str, *, max_body: int = 4096, deadline_s: float = 5.0
) -> tuple[int, bytes]:
    response = await c.post(
        url,
        content=b'{"a":1}',
        headers={"content-type": "application/json"},
        deadline_s=deadline_s,
        max_body=max_body,
    )
    return response.status_code, response.body


async def test_sequential_sends_share_one_keep_alive_connection_and_carry_the_request() -> None:
    async with scripted(lambda n: (OK, False)) as server, client() as c:
        for _ in range(3):
            assert await post(c, server.url) == (200, b"ok")
    assert server.connections == 1
    number, head, body = server.requests[0]
    assert head.startswith(b"POST /hook?x=1 HTTP/1.1\r\n")
    lines = head.lower().split(b"\r\n")
    assert f"host: {server.url.split('/')[2]}".encode() in lines
    assert b"user-agent: ua/1" in lines
    assert b"content-type: application/json" in lines
    assert body == b'{"a":1}'


async def test_a_chunked_answer_is_read_whole_and_the_connection_reused() -> None:
    chunked = b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\nRetry-After: 7\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    async with scripted(lambda n: (chunked, False)) as server, client() as c:
        response = await c.post(server.url, content=b"{}", headers={}, deadline_s=5.0, max_body=4096)
        assert (response.status_code, response.body, response.truncated) == (500, b"abcde", False)
        assert response.headers["retry-after"] == "7"
        assert await post(c, server.url) == (500, b"abcde")
    assert server.connections == 1


async def test_connection_close_is_honoured() -> None:
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    async with scripted(lambda n: (closing, True)) as server, client() as c:
        assert await post(c, server.url) == (200, b"ok")
        assert await post(c, server.url) == (200, b"ok")
    assert server.connections == 2


async def test_a_body_ending_at_close_is_an_answer() -> None:
    async with scripted(lambda n: (b"HTTP/1.0 202 Accepted\r\n\r\nqueued", True)) as server, client() as c:
        assert await post(c, server.url) == (202, b"queued")
        assert await post(c, server.url) == (202, b"queued")
    assert server.connections == 2


async def test_a_receiver_closing_an_idle_connection_costs_nothing() -> None:
    """The receiver hangs up after answering (no ``Connection: close``): the next send opens a new one."""
    async with scripted(lambda n: (OK, True)) as server, client() as c:
        assert await post(c, server.url) == (200, b"ok")
        await until(lambda: not any(c._idle.values()))  # the client has seen the close
        assert await post(c, server.url) == (200, b"ok")
    assert server.connections == 2


async def test_a_truncated_answer_drops_its_connection() -> None:
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n" + b"x" * 10000
    async with scripted(lambda n: (big, False)) as server, client() as c:
        response = await c.post(server.url, content=b"{}", headers={}, deadline_s=5.0, max_body=100)
        assert (response.body, response.truncated) == (b"x" * 100, True)
        response = await c.post(server.url, content=b"{}", headers={}, deadline_s=5.0, max_body=100)
        assert response.truncated
    assert server.connections == 2


BROKEN = [
    (b"garbage\r\n\r\n", ConnectionFailed),  # not HTTP
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", ConnectionFailed),  # bad chunk
    (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", ConnectionFailed),  # endless head
    (b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 10_000 + b"\r\n", ConnectionFailed),  # endless fields
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", ResponseTimeout),  # broke off
    (None, ResponseTimeout),  # hung up without an answer
]


@pytest.mark.parametrize(("answer", "error"), BROKEN)
async def test_broken_answers_raise_the_same_errors_as_before(
    answer: bytes | None, error: type[Exception]
) -> None:
    async with client() as c:
        async with scripted(lambda n: (answer, True)) as server:
            with pytest.raises(error):
                await post(c, server.url)
        async with scripted(lambda n: (OK, False)) as server:  # the connection is gone, the client is not
            assert await post(c, server.url) == (200, b"ok")


async def test_an_interim_answer_is_skipped() -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nhi"
    async with scripted(lambda n: (answer, False)) as server, client() as c:
        assert await post(c, server.url) == (201, b"hi")
        assert await post(c, server.url) == (201, b"hi")
    assert server.connections == 1


async def test_connections_stay_within_max_connections() -> None:
    async with scripted(lambda n: (OK, False), delay_s=0.02) as server, client(max_connections=2) as c:
        results = await asyncio.gather(*(post(c, server.url) for _ in range(12)))
    assert results == [(200, b"ok")] * 12
    assert server.connections <= 2
    assert server.peak <= 2


async def test_waiting_for_a_connection_counts_against_the_deadline() -> None:
    async with scripted(lambda n: (OK, False), delay_s=1.0) as server, client(max_connections=1) as c:
        first = asyncio.create_task(post(c, server.url))
        await asyncio.sleep(0.1)
        with pytest.raises(ResponseTimeout, match="deadline"):
            await post(c, server.url, deadline_s=0.2)
        assert await first == (200, b"ok")


async def test_a_stalled_read_times_out_at_timeout_s_within_a_longer_deadline() -> None:
    async with scripted(lambda n: (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", False)) as server:
        async with client(timeout_s=0.2) as c:
            with pytest.raises(ResponseTimeout, match="read timeout"):
                await post(c, server.url, deadline_s=30.0)


async def test_a_refused_connection_is_connection_failed() -> None:
    async with scripted(lambda n: (OK, False)) as server:
        url = server.url
    async with client() as c:
        with pytest.raises(ConnectionFailed):
            await post(c, url)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test certificates")
async def test_tls_verifies_the_certificate_against_the_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_certificates(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    async with scripted(lambda n: (OK, False), tls=context, host="localhost") as server:
        async with client() as c:  # the test CA is not trusted: refused
            with pytest.raises(ConnectionFailed, match="CERTIFICATE_VERIFY_FAILED"):
                await post(c, server.url)
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.crt"))
        async with client() as c:
            assert await post(c, server.url) == (200, b"ok")
            assert await post(c, server.url) == (200, b"ok")
    assert server.connections == 1  # the refused handshake never reached the handler
    # A trusted certificate for another name (it names localhost and 127.0.0.1) is refused too.
    async with scripted(lambda n: (OK, False), tls=context, host="127.0.0.2", bind="127.0.0.2") as server:
        async with client() as c:
            with pytest.raises(ConnectionFailed, match="mismatch"):
                await post(c, server.url)
    assert server.connections == 0


def test_the_client_works_on_uvloop() -> None:
    """Workers run on uvloop, whose transports are not asyncio's classes: the same sends on it."""

    async def scenarios() -> None:
        await test_sequential_sends_share_one_keep_alive_connection_and_carry_the_request()
        await test_a_chunked_answer_is_read_whole_and_the_connection_reused()
        await test_connection_close_is_honoured()
        await test_a_truncated_answer_drops_its_connection()
        await test_connections_stay_within_max_connections()
        await test_a_stalled_read_times_out_at_timeout_s_within_a_longer_deadline()
        for answer, error in BROKEN:
            await test_broken_answers_raise_the_same_errors_as_before(answer, error)
        await test_a_second_answer_in_the_same_read_is_not_mixed_in_and_drops_the_connection()
        await test_a_truncated_answer_followed_by_another_keeps_the_first()
        await test_trailers_are_not_headers_and_are_bounded()
        await test_a_transfer_coding_other_than_chunked_is_a_body_ending_at_close()
        await test_many_failing_sends_leave_no_socket_timer_or_task_behind()

    uvloop.run(scenarios())


# --- hostile URLs and header values: the request is never split, the Host header is aiohttp's


def request_head(url: str, headers: dict[str, str] | None = None) -> bytes:
    """The bytes the client would send for a 2-byte body to ``url`` (built, not sent)."""
    c = client()
    return c._request(c._target(url), b"{}", headers or {})


@pytest.mark.parametrize(
    ("url", "line", "host"),
    [
        ("http://example.com", b"POST / HTTP/1.1", b"example.com"),  # no path: "/"
        ("http://example.com?x=1#frag", b"POST /?x=1 HTTP/1.1", b"example.com"),  # query kept, no fragment
        ("http://example.com:80/a", b"POST /a HTTP/1.1", b"example.com"),  # the default port omitted
        ("https://example.com:443/a", b"POST /a HTTP/1.1", b"example.com"),
        ("http://example.com:443/a", b"POST /a HTTP/1.1", b"example.com:443"),
        ("http://example.com./a", b"POST /a HTTP/1.1", b"example.com"),  # no trailing dot (as aiohttp)
        ("http://[2001:4860::8888]:8080/", b"POST / HTTP/1.1", b"[2001:4860::8888]:8080"),
        ("http://user:secret@example.com:81/a", b"POST /a HTTP/1.1", b"example.com:81"),  # no userinfo
        ("http://example.com/a%0d%0aX-Injected: y", b"POST /a%0D%0AX-Injected:%20y HTTP/1.1", b"example.com"),
        ("http://example.com/a\r\nX-Injected: y", b"POST /aX-Injected:%20y HTTP/1.1", b"example.com"),
        ("http://example.com/a\x00b c?q=\x01 #\r\nX: y", b"POST /a%00b%20c?q=%01+ HTTP/1.1", b"example.com"),
        ("http://bücher.example/ä", b"POST /%C3%A4 HTTP/1.1", b"xn--bcher-kva.example"),
    ],
)
def test_the_request_line_and_host_cannot_be_split_or_smuggled(url: str, line: bytes, host: bytes) -> None:
    head, body = request_head(url).split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    assert lines[0] == line
    assert lines[1] == b"Host: " + host
    assert b"Content-Length: 2" in lines
    assert body == b"{}"
    assert not any(line.lower().startswith((b"x-injected", b"x:")) for line in lines)
    assert all(0x20 <= byte < 0x7F for byte in head.replace(b"\r\n", b""))


@pytest.mark.parametrize(
    ("url", "credentials"),
    [("http://user:secret@example.com/", b"user:secret"), ("http://:secret@example.com/", b":secret")],
)
def test_userinfo_is_sent_as_basic_authorization_only(url: str, credentials: bytes) -> None:
    head = request_head(url)
    assert b"Authorization: Basic " + base64.b64encode(credentials) + b"\r\n" in head
    assert b"secret" not in head


@pytest.mark.parametrize("value", ["a\r\nX-Injected: y", "a\nb", "a\rb", "a\x00b"])
async def test_a_header_value_with_a_line_break_or_nul_is_refused_before_connecting(value: str) -> None:
    async with scripted(lambda n: (OK, False)) as server, client() as c:
        with pytest.raises(ValueError, match="header"):
            await c.post(server.url, content=b"{}", headers={"x-a": value}, deadline_s=5.0, max_body=4096)
    assert server.connections == 0


@pytest.mark.parametrize(
    "host", ["localhost\x00.evil.example", "localhost\x00", "local host", "localhost\x0b", "a\x7fb", "a<b"]
)
async def test_a_host_with_control_characters_is_refused_before_resolving(host: str) -> None:
    """getaddrinfo stops at a NUL: ``localhost\\0.evil.example`` would resolve as localhost (and be
    sent as the Host header), so a name is refused unless every character may be in a host name."""
    async with scripted(lambda n: (OK, False)) as server, client() as c:
        port = server.url.split(":")[2].split("/")[0]
        with pytest.raises(UnsafeDestination):
            await post(c, f"http://{host}:{port}/hook")
    assert server.connections == 0


async def test_an_ipv6_literal_is_bracketed_in_host_and_connected_to() -> None:
    async with scripted(lambda n: (OK, False), host="[::1]", bind="::1") as server, client() as c:
        assert await post(c, server.url) == (200, b"ok")
    head = server.requests[0][1]
    assert f"\r\nHost: {server.url.split('/')[2]}\r\n".encode() in head
    assert server.url.split("/")[2].startswith("[::1]:")


# --- hostile answers: nothing after the answer is read into it, trailers are bounded


async def test_a_second_answer_in_the_same_read_is_not_mixed_in_and_drops_the_connection() -> None:
    twice = OK + b"HTTP/1.1 500 Oops\r\nContent-Length: 3\r\nX-Second: 1\r\n\r\nbad"
    async with scripted(lambda n: (twice, False)) as server, client() as c:
        response = await c.post(server.url, content=b"{}", headers={}, deadline_s=5.0, max_body=4096)
        assert (response.status_code, response.body, response.truncated) == (200, b"ok", False)
        assert "x-second" not in response.headers
        assert await post(c, server.url) == (200, b"ok")
    assert server.connections == 2  # never reused with the stray answer in it


async def test_a_body_on_a_204_is_stray_bytes_and_drops_the_connection() -> None:
    answer = b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello"
    async with scripted(lambda n: (answer, False)) as server, client() as c:
        assert await post(c, server.url) == (204, b"")
        assert await post(c, server.url) == (204, b"")
    assert server.connections == 2


async def test_a_truncated_answer_followed_by_another_keeps_the_first() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n"
    async with scripted(lambda n: (answer, False)) as server, client() as c:
        response = await c.post(server.url, content=b"{}", headers={}, deadline_s=5.0, max_body=4)
    assert (response.status_code, response.body, response.truncated) == (200, b"0123", True)


async def test_trailers_are_not_headers_and_are_bounded() -> None:
    trailed = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Trailer: 1\r\n\r\n"
    endless = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n" + b"X-T: aaaa\r\n" * 20_000
    )
    async with scripted(lambda n: (trailed, False)) as server, client() as c:
        response = await c.post(server.url, content=b"{}", headers={}, deadline_s=5.0, max_body=4096)
        assert (response.status_code, response.body) == (200, b"ok")
        assert "x-trailer" not in response.headers
        assert await post(c, server.url) == (200, b"ok")
    assert server.connections == 1
    async with scripted(lambda n: (endless, False)) as server, client() as c:
        with pytest.raises(ConnectionFailed, match="trailers over"):
            await post(c, server.url, deadline_s=30.0)


async def test_a_transfer_coding_other_than_chunked_is_a_body_ending_at_close() -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nhello"
    async with scripted(lambda n: (answer, True)) as server, client() as c:
        assert await post(c, server.url) == (200, b"hello")
        assert await post(c, server.url) == (200, b"hello")
    assert server.connections == 2


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    ],
)
async def test_an_ambiguous_framing_is_a_bad_answer_and_never_reused(answer: bytes) -> None:
    """Smuggling's tools (both framings, two lengths, bare LFs): refused as not HTTP, the connection dropped."""
    async with scripted(lambda n: (answer if n == 0 else OK, False)) as server, client() as c:
        with pytest.raises(ConnectionFailed, match="bad answer"):
            await post(c, server.url)
        assert await post(c, server.url) == (200, b"ok")
    assert server.connections == 2


async def test_a_receiver_answering_before_reading_the_body_is_an_answer_or_a_retriable_error() -> None:
    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()  # the body unread: the kernel may answer it with a reset

    listener = await asyncio.start_server(early, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}/hook"
    try:
        async with client() as c:
            for _ in range(5):
                try:
                    response = await c.post(
                        url, content=b"x" * 4_000_000, headers={}, deadline_s=5.0, max_body=64
                    )
                except (ResponseTimeout, ConnectionFailed):
                    continue  # retried by the outbox, as aiohttp's disconnect errors were
                assert response.status_code == 413
            assert not any(c._idle.values())
    finally:
        listener.close()


# --- resources: idle connections closed after KEEPALIVE_S, nothing left open by failing sends


async def test_an_idle_connection_is_closed_after_the_keep_alive_time_without_another_send(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(webhook_http, "KEEPALIVE_S", 0.2)
    async with scripted(lambda n: (OK, False)) as server, client() as c:
        assert await post(c, server.url) == (200, b"ok")
        assert server.open_now == 1
        await until(lambda: server.open_now == 0)
        assert server.open_now == 0
        assert c._idle == {}
        assert await post(c, server.url) == (200, b"ok")
    assert server.connections == 2


async def test_a_connection_made_as_the_connect_is_cancelled_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The deadline can cancel create_connection just as it made the connection: it is closed, not leaked."""
    loop = asyncio.get_running_loop()
    real = loop.create_connection

    async def cancelled_on_return(*args: Any, **kwargs: Any) -> Any:
        await real(*args, **kwargs)
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(0)  # raises CancelledError: the connection is made but never returned

    monkeypatch.setattr(loop, "create_connection", cancelled_on_return)
    async with scripted(lambda n: (OK, False)) as server, client() as c:
        with pytest.raises(asyncio.CancelledError):
            await post(c, server.url)
        await until(lambda: server.connections == 1 and server.open_now == 0)
        assert (server.connections, server.open_now) == (1, 0)
        assert c._open == 0


def open_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone by now
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts sockets through /proc")
async def test_many_failing_sends_leave_no_socket_timer_or_task_behind() -> None:
    async with scripted(lambda n: (OK, False)) as closed:
        refused = closed.url
    failures: list[tuple[bytes | None, bool]] = [
        (None, True),  # hung up
        (b"garbage\r\n\r\n", False),  # not HTTP
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", True),  # broke off
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", False),  # stalls: the deadline
        (b"HTTP/1.1 200 OK\r\nContent-Length: 9000\r\n\r\n" + b"x" * 9000, False),  # truncated
        (OK + OK, False),  # two answers
    ]
    tasks = len(asyncio.all_tasks())
    async with client(max_connections=3) as c:
        before = open_sockets()
        async with scripted(lambda n: failures[n % len(failures)]) as server:
            for n in range(60):
                with contextlib.suppress(ResponseTimeout, ConnectionFailed):
                    await post(c, server.url if n % 7 else refused, deadline_s=0.2)
            with contextlib.suppress(UnsafeDestination):
                await post(c, "http://127.1/")
        # The receiver's side of each connection closes as it sees ours close.
        await until(lambda: open_sockets() <= before and len(asyncio.all_tasks()) <= tasks)
        assert open_sockets() <= before
        assert c._open == 0
        assert len(asyncio.all_tasks()) <= tasks


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test certificates")
async def test_tls_sends_the_name_as_sni_never_an_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection goes to the checked address, but SNI and the certificate check use the name;
    an IP literal host sends no SNI (RFC 6066) and is checked against the certificate's IP SAN."""
    make_certificates(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.crt"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    names: list[str | None] = []

    def sni(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        names.append(name)

    context.sni_callback = sni
    for host, sent in [("localhost", "localhost"), ("127.0.0.1", None)]:
        async with scripted(lambda n: (OK, False), tls=context, host=host) as server, client() as c:
            assert await post(c, server.url) == (200, b"ok")
        assert names.pop() == sent
        assert f"\r\nHost: {server.url.split('/')[2]}\r\n".encode() in server.requests[0][1]


# --- a kept-alive connection closed by the receiver as the request went out


async def test_a_reused_connection_closed_before_any_answer_is_sent_again_on_a_new_one() -> None:
    """The receiver's keep-alive ran out just as the request was sent: not its answer, so the request
    goes once more on a new connection (aiohttp reported it, and the outbox sent it again later)."""
    script: list[tuple[bytes | None, bool]] = [(OK, False), (None, True), (OK, False)]
    async with scripted(lambda n: script[n]) as server, client() as c:
        assert await post(c, server.url) == (200, b"ok")
        assert await post(c, server.url) == (200, b"ok")
    assert [number for number, _, _ in server.requests] == [0, 0, 1]


async def test_it_is_sent_again_only_once_and_never_after_part_of_an_answer() -> None:
    async with scripted(lambda n: (OK, False) if n == 0 else (None, True)) as server, client() as c:
        assert await post(c, server.url) == (200, b"ok")
        with pytest.raises(ResponseTimeout, match="disconnected"):
            await post(c, server.url)
    assert len(server.requests) == 3  # the first send, the reused connection, one new connection
    partial = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"
    async with scripted(lambda n: (OK, False) if n == 0 else (partial, True)) as server, client() as c:
        assert await post(c, server.url) == (200, b"ok")
        with pytest.raises(ResponseTimeout, match="broke off"):
            await post(c, server.url)
    assert len(server.requests) == 2
    async with scripted(lambda n: (None, True)) as server, client() as c:  # a new connection: its answer
        with pytest.raises(ResponseTimeout, match="disconnected"):
            await post(c, server.url)
    assert len(server.requests) == 1


async def test_a_connection_is_reused_only_for_the_same_scheme_host_and_port() -> None:
    """The pool's key is (tls, host, port): a connection made for one name never carries another's
    requests, even to the same address (each name was resolved and checked for itself)."""
    async with scripted(lambda n: (OK, False)) as server, client() as c:
        by_name = server.url.replace("127.0.0.1", "localhost")
        for url in (server.url, by_name, server.url, by_name):
            assert await post(c, url) == (200, b"ok")
    hosts = [(number, head.split(b"\r\n")[1]) for number, head, _ in server.requests]
    assert server.connections == 2
    assert hosts[0][0] == hosts[2][0] != hosts[1][0] == hosts[3][0]
    assert hosts[0][1] == hosts[2][1] != hosts[1][1] == hosts[3][1]
