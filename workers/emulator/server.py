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

import uvicorn

from workers.emulator.app import create_app

STARTUP_TIMEOUT_S = 10.0


def _config(app: Any, host: str, port: int, log_level: str) -> uvicorn.Config:
    # No websockets, no lifespan: the emulator needs neither, and skipping them keeps imports quiet.
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, ws="none", lifespan="off")


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
    server = uvicorn.Server(_config(create_app(config, api_key), host, port, log_level))
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
