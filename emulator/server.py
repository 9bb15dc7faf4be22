"""Running the emulator: in the foreground (:func:`serve`, for the CLI) or in a background thread.

:func:`running_emulator` is for test suites, benchmarks and the demo: it binds 127.0.0.1 on a
free port, starts uvicorn in a daemon thread, yields the base URL (no trailing ``/v1``) once the
server accepts connections, and stops it on exit.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn

from emulator.app import create_app

STARTUP_TIMEOUT_S = 10.0


def _config(app: Any, host: str, port: int, log_level: str, *, own_logging: bool = True) -> uvicorn.Config:
    """No websockets, no lifespan: the emulator needs neither, and skipping them keeps imports quiet.

    Run on its own it sets up uvicorn's logging; run inside another program (``own_logging=False``)
    it leaves the host's logging alone: uvicorn's own setup would detach the ``uvicorn`` loggers
    from the root logger for the whole process.
    """
    if own_logging:
        return uvicorn.Config(app, host=host, port=port, log_level=log_level, ws="none", lifespan="off")
    return uvicorn.Config(
        app, host=host, port=port, log_config=None, access_log=False, ws="none", lifespan="off"
    )


def serve(
    host: str = "127.0.0.1",
    port: int = 8090,
    *,
    api_key: str | None = None,
    log_level: str = "info",
    **faults: Any,
) -> None:
    """Run the emulator until interrupted; ``faults`` are emulator settings (``turnaround_s=5`` ...)."""
    uvicorn.Server(_config(create_app(faults or None, api_key), host, port, log_level)).run()


@contextmanager
def running_emulator(
    config: dict[str, Any] | None = None,
    *,
    api_key: str | None = None,
    host: str = "127.0.0.1",
    log_level: str = "warning",
) -> Iterator[str]:
    """An emulator on a free port in a background thread; yields its base URL, e.g. ``http://127.0.0.1:5123``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(_config(create_app(config, api_key), host, port, log_level, own_logging=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="emulator", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the emulator did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=STARTUP_TIMEOUT_S)
        sock.close()


class EmulatorControl:
    """The ``/_emulator`` admin routes of a running emulator, for tests and the demo."""

    def __init__(self, url: str) -> None:
        self.url = url

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Merge settings (``turnaround_s=0.2``, ``fail_next={...}``); returns the settings now in force."""
        response = httpx.post(f"{self.url}/_emulator/config", json=settings)
        response.raise_for_status()
        config: dict[str, Any] = response.json()
        return config

    def set_clock(self, now: float | None) -> None:
        """Hold the emulator's clock at ``now`` (epoch seconds), so batches progress only as a test
        steps it; None returns to the wall clock (as ``reset`` does)."""
        httpx.post(f"{self.url}/_emulator/clock", json={"now": now}).raise_for_status()

    def reset(self) -> None:
        """Forget every file, batch and logged request; back to the start settings."""
        httpx.post(f"{self.url}/_emulator/reset").raise_for_status()

    def events(self) -> list[dict[str, Any]]:
        """The batch events delivered (answered 2xx) so far, oldest first (:mod:`emulator.events`)."""
        response = httpx.get(f"{self.url}/_emulator/events")
        response.raise_for_status()
        sent: list[dict[str, Any]] = response.json()
        return sent

    def requests(self) -> list[dict[str, Any]]:
        """The calls received since the last reset: method, path, query, status, and model/tier on sync calls."""
        response = httpx.get(f"{self.url}/_emulator/requests")
        response.raise_for_status()
        calls: list[dict[str, Any]] = response.json()
        return calls
