"""The Redis clients batchshift creates, and the startup check of the server's settings.

Every client (the API's, the scheduler's, the worker's and the arq pools) is built here, so each has
the socket timeouts of ``settings.redis``: a blackholed Redis then fails a command after
``socket_timeout_s`` (the API answers 503) instead of hanging it. Commands are packed by hiredis in C
(:func:`_timeout_safe`), as redis-py's synchronous client already does: its asyncio connections pack
in Python, a third of the API's CPU in a bulk enqueue of 1,000 jobs. Blocking reads wait in slices
shorter than the socket timeout (the scheduler's wake-up wait, the API's long-poll subscription).

redis-py bounds a command's send with ``asyncio.wait_for`` when a socket timeout is set, and on
Python 3.11 a task cancelled inside that ``wait_for`` may never finish cancelling (a worker's
shutdown, a heartbeat stopped, a test's teardown then hang for good). So the connections here
bound the send with ``asyncio.timeout`` instead (:func:`_timeout_safe`); reads already do. They
also pack commands with hiredis, as redis-py's own synchronous client does (its asyncio client packs
in Python, arg by arg: a single enqueue's EVALSHA of about 70 args spent 7% of its server time there).

batchshift keeps leases, cursors and counters in Redis that must never be evicted, and loses
acknowledged jobs on a restart without persistence, so at startup :func:`check_server` reads
``maxmemory-policy`` and ``appendonly`` and warns loudly when they are not ``noeviction`` and
``yes``. Managed Redis services often refuse ``CONFIG``; then it logs that it could not check.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import hiredis
import structlog
from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import DataError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from config.settings import Settings
from scheduler.ledger import tasks

log = structlog.get_logger(__name__)

# The only eviction policy under which Redis refuses writes instead of dropping keys.
SAFE_POLICY = "noeviction"


_SAFE: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def _timeout_safe(base: type[AbstractConnection]) -> type[AbstractConnection]:
    """``base`` (a plain or TLS connection) sending under ``asyncio.timeout`` (see the module docstring),
    its commands packed by hiredis."""
    if base not in _SAFE:

        class TimeoutSafe(base):  # type: ignore[valid-type,misc]
            def pack_command(self, *args: Any) -> list[bytes]:
                """redis-py's ``HiredisRespSerializer.pack``: the same bytes as its Python packer (floats
                as ``repr``; a bool or other type refused with ``DataError``), one C call per command."""
                if isinstance(args[0], str):
                    args = (*args[0].encode().split(), *args[1:])
                elif b" " in args[0]:
                    args = (*args[0].split(), *args[1:])
                try:
                    return [hiredis.pack_command(args)]
                except TypeError as exc:
                    raise DataError(str(exc)) from exc

            async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
                timeout: float | None = self.socket_timeout  # type: ignore[has-type]
                if not timeout:
                    await super().send_packed_command(command, check_health)
                    return
                self.socket_timeout = None  # redis-py's own wait_for is skipped; one command at a time
                try:
                    async with asyncio.timeout(timeout):
                        await super().send_packed_command(command, check_health)
                except TimeoutError as exc:  # the send was cut off; redis-py has closed the connection
                    raise RedisTimeoutError("Timeout writing to socket") from exc
                finally:
                    self.socket_timeout = timeout

        TimeoutSafe.__name__ = f"TimeoutSafe{base.__name__}"
        _SAFE[base] = TimeoutSafe
    return _SAFE[base]


def _pool(settings: Settings) -> ConnectionPool:
    """Connections to ``settings.redis_url`` with the configured socket timeouts (made lazily)."""
    pool = ConnectionPool.from_url(
        settings.redis_url,
        socket_timeout=settings.redis.socket_timeout_s,
        socket_connect_timeout=settings.redis.socket_connect_timeout_s,
    )
    pool.connection_class = _timeout_safe(pool.connection_class)
    return pool


def connect(settings: Settings) -> Redis:
    """A client for ``settings.redis_url`` with the configured socket timeouts (connects lazily)."""
    return Redis(connection_pool=_pool(settings))


def connect_arq(settings: Settings) -> ArqRedis:
    """An arq pool (enqueues tasks; the worker's own connection) with the configured socket timeouts.

    arq's ``create_pool`` sets only a connect timeout, so the pool is built here instead.
    """
    connections = _pool(settings)
    # msgpack, never pickle (scheduler.ledger.tasks): whoever writes to Redis cannot run code in a worker.
    return ArqRedis(
        connection_pool=connections, job_serializer=tasks.serialize, job_deserializer=tasks.deserialize
    )


def blocking_wait_s(settings: Settings, wanted_s: float) -> float:
    """How long one blocking read may wait: ``wanted_s``, but well inside the socket timeout."""
    return min(wanted_s, settings.redis.socket_timeout_s / 2)


ServerCheck = Literal["ok", "unsafe", "unknown"]


async def check_server(redis: Redis) -> ServerCheck:
    """Warn when the server may evict keys or loses writes on restart; ``unknown`` if CONFIG is refused."""
    try:
        policy_raw = await redis.config_get("maxmemory-policy")
        aof_raw = await redis.config_get("appendonly")
    except RedisError as exc:
        log.warning("redis.config_unchecked", error_class=type(exc).__name__, reason=str(exc)[:200])
        return "unknown"
    policy = _value(policy_raw, "maxmemory-policy")
    aof = _value(aof_raw, "appendonly")
    verdict: ServerCheck = "ok"
    if policy != SAFE_POLICY:
        log.error(
            "redis.evicting_policy",
            maxmemory_policy=policy,
            wanted=SAFE_POLICY,
            consequence="Redis may evict job records, leases, cursors and budget counters under memory pressure",
        )
        verdict = "unsafe"
    if aof != "yes":
        log.warning("redis.aof_off", appendonly=aof, consequence="a Redis restart loses recent jobs")
    return verdict


def _value(raw: dict[bytes | str, bytes | str], name: str) -> str:
    for key, value in raw.items():
        k = key.decode() if isinstance(key, bytes) else key
        if k == name:
            return value.decode() if isinstance(value, bytes) else value
    return ""
