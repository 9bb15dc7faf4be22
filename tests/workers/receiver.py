"""A real HTTP webhook receiver for tests: uvicorn on a free port in a thread, recording every request.

Each request gets the answer ``respond(n)`` gives for the receiver's n-th request (from 0):
``(status, headers, delay_s)``. It verifies each signature with the reference ``standardwebhooks``
library against every secret it is given, and records whether it verified. A hostile receiver
gets a ``plan``: its answer body is ``count`` copies of one chunk, ``interval_s`` apart,
sent until the client hangs up (one chunk object is reused, so a 300 MB answer costs the test
process no more than the chunk).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from standardwebhooks import Webhook

Answer = tuple[int, dict[str, str], float]


def ok(n: int) -> Answer:
    return 200, {}, 0.0


@dataclass(frozen=True)
class BodyPlan:
    """An answer body streamed as ``count`` copies of ``chunk``, ``interval_s`` apart."""

    chunk: bytes
    count: int
    interval_s: float = 0.0


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool


@dataclass
class Receiver:
    url: str
    requests: list[Received] = field(default_factory=list)
    in_flight: int = 0
    peak: int = 0  # most requests being answered at once
    body_bytes_sent: int = 0  # of planned answer bodies, before each client hung up
    hung_up: int = 0  # answers the client left before their planned body ended


@contextmanager
def running_receiver(
    respond: Callable[[int], Answer] = ok, secrets: tuple[str, ...] = (), plan: BodyPlan | None = None
) -> Iterator[Receiver]:
    """A receiver at ``http://127.0.0.1:<port>/hook`` (any path is accepted)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    receiver = Receiver(url=f"http://127.0.0.1:{port}/hook")
    verifiers = [Webhook(s) for s in secrets]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        verified = bool(verifiers)
        for verifier in verifiers:
            try:
                verifier.verify(body, headers)
            except Exception:
                verified = False
        n = len(receiver.requests)
        receiver.requests.append(Received(scope["path"], headers, body, verified))
        status, extra, delay = respond(n)
        receiver.in_flight += 1
        receiver.peak = max(receiver.peak, receiver.in_flight)
        try:
            if delay:
                await asyncio.sleep(delay)
            raw_headers = [(k.encode(), v.encode()) for k, v in extra.items()]
            await send({"type": "http.response.start", "status": status, "headers": raw_headers})
            if plan is None:
                await send({"type": "http.response.body", "body": b"ok"})
            else:
                await stream(plan, receive, send)
        finally:
            receiver.in_flight -= 1

    async def stream(body_plan: BodyPlan, receive: Any, send: Any) -> None:
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch())
        try:
            for _ in range(body_plan.count):
                if gone.is_set():
                    receiver.hung_up += 1
                    return
                await send({"type": "http.response.body", "body": body_plan.chunk, "more_body": True})
                receiver.body_bytes_sent += len(body_plan.chunk)
                if body_plan.interval_s:
                    await asyncio.sleep(body_plan.interval_s)
                else:
                    await asyncio.sleep(0)  # let a hang-up be noticed
            await send({"type": "http.response.body", "body": b""})
        finally:
            watcher.cancel()

    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, access_log=False, ws="none", lifespan="off"
    )  # log_config=None: uvicorn's own setup would detach its loggers from the root for the whole run
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:  # a server that never starts fails the test by its timeout
        if not thread.is_alive():
            raise RuntimeError("receiver did not start")
        time.sleep(0.01)
    try:
        yield receiver
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
