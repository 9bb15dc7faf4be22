"""The webhook client's HTTP/1.1: keep-alive reuse, answer framings, the pool bound, bad answers, TLS.

The receiver is a scripted asyncio server on loopback: each answer is raw bytes, so framings and
broken answers a real server would never send can be tried.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvloop

from tests.test_redis_tls import make_certificates
from workers.errors import ConnectionFailed, ResponseTimeout
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
        ["127.0.0.0/8", "localhost"], timeout_s=timeout_s, max_connections=max_connections, user_agent="ua/1"
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
        for _ in range(200):  # until the client has seen the close
            if not any(c._idle.values()):
                break
            await asyncio.sleep(0.01)
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

    uvloop.run(scenarios())
