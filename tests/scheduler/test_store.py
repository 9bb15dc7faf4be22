"""Redis clients and the server check: socket timeouts, an evicting policy warned about, and every
"not now" answer of Redis (OOM, READONLY, a blackholed server) a 503 with Retry-After, never a 500."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from redis.asyncio import Redis
from redis.exceptions import DataError
from structlog.testing import capture_logs

from batchshift.embedded_redis import embedded_redis, free_port
from config.settings import Settings
from scheduler.ledger import store
from scheduler.ledger.ledger import Finish, Ledger
from tests.api.harness import ACME, asgi_client
from tests.conftest import make_settings

JOB = {
    "provider": "openai",
    "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
}


def _unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["type"] == "unavailable"


@contextlib.contextmanager
def blackhole() -> Iterator[str]:
    """A TCP port that accepts connections (the kernel's backlog) but never answers a byte."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"redis://127.0.0.1:{sock.getsockname()[1]}/0"


async def test_clients_carry_the_configured_socket_timeouts(redis_url: str):
    settings = make_settings(redis_url, redis={"socket_timeout_s": 2.5, "socket_connect_timeout_s": 1.5})
    for client in (store.connect(settings), store.connect_arq(settings)):
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (2.5, 1.5)
        assert await client.ping()
        await client.aclose()


# Arguments of every kind our commands send: text, bytes, ints, floats, a memoryview, a word pair.
_ARGS: list[tuple[object, ...]] = [
    ("EVALSHA", "abc", 2, "bs:{lane}:q", "é", 0.1, 1e20, 12345678901234567890, -0.0, 1 / 3),
    ("SET", b"k", b"\x00\xff" * 5000, memoryview(b"mv")),
    ("SCRIPT LOAD", "return 1"),
    (b"CLIENT SETNAME", "x"),
]


def test_commands_are_packed_as_redis_py_packs_them(redis_url: str):
    """hiredis packs (scheduler/ledger/store.py): the bytes are those redis-py's own packer sends."""
    from redis.asyncio.connection import Connection
    from redis.exceptions import DataError

    ours = store._pool(make_settings(redis_url)).make_connection()
    assert type(ours).pack_command is not Connection.pack_command  # the packing under test is ours
    theirs = Connection()
    for args in _ARGS:
        assert b"".join(ours.pack_command(*args)) == b"".join(theirs.pack_command(*args))
    for bad in (None, True, object()):
        with pytest.raises(DataError):
            theirs.pack_command("SET", "k", bad)
        with pytest.raises(DataError):
            ours.pack_command("SET", "k", bad)


async def test_a_script_runs_through_the_packed_connection(redis_url: str):
    client = store.connect(make_settings(redis_url))
    try:
        script = client.register_script("return {KEYS[1], ARGV[1], ARGV[2]}")
        assert await script(keys=["bs:k"], args=["é", 0.5]) == [b"bs:k", "é".encode(), b"0.5"]
    finally:
        await client.aclose()


async def test_worker_pool_has_the_socket_timeouts(redis_url: str):
    from workers.worker import worker_settings

    settings = make_settings(redis_url, redis={"socket_timeout_s": 3.0})
    pool = worker_settings(settings)["redis_pool"]
    assert pool.connection_pool.connection_kwargs["socket_timeout"] == 3.0
    await pool.aclose()


def test_blocking_waits_stay_inside_the_socket_timeout(redis_url: str):
    settings = make_settings(redis_url, redis={"socket_timeout_s": 1.0})
    assert store.blocking_wait_s(settings, 5.0) == 0.5
    assert store.blocking_wait_s(settings, 0.2) == 0.2


async def test_server_check_passes_noeviction_and_warns_aof_off(redis: Redis):
    with capture_logs() as logs:
        assert await store.check_server(redis) == "ok"
    events = [e["event"] for e in logs]
    assert "redis.aof_off" in events  # the test server runs without AOF
    assert "redis.evicting_policy" not in events


async def test_server_check_warns_loudly_on_an_evicting_policy(redis: Redis):
    await redis.config_set("maxmemory-policy", "allkeys-lru")
    try:
        with capture_logs() as logs:
            assert await store.check_server(redis) == "unsafe"
    finally:
        await redis.config_set("maxmemory-policy", "noeviction")
    [event] = [e for e in logs if e["event"] == "redis.evicting_policy"]
    assert event["log_level"] == "error"
    assert event["maxmemory_policy"] == "allkeys-lru"


async def test_server_check_says_it_could_not_check_when_config_is_refused(redis: Redis, redis_url: str):
    await redis.execute_command("ACL", "SETUSER", "managed", "on", ">pw", "~*", "&*", "+@all", "-config")
    limited = Redis.from_url(redis_url.replace("redis://", "redis://managed:pw@"))
    try:
        with capture_logs() as logs:
            assert await store.check_server(limited) == "unknown"
    finally:
        await limited.aclose()
        await redis.execute_command("ACL", "DELUSER", "managed")
    assert [e["event"] for e in logs] == ["redis.config_unchecked"]


async def test_out_of_memory_is_a_503(settings: Settings, redis: Redis):
    async with asgi_client(settings, redis) as api:
        await redis.config_set("maxmemory", 1)  # every write is refused with OOM under noeviction
        try:
            response = await api.post("/v1/jobs", json=JOB)
        finally:
            await redis.config_set("maxmemory", 0)
    _unavailable(response)


async def test_a_read_only_replica_is_a_503(redis_url: str):
    with embedded_redis() as replica_url:
        replica = Redis.from_url(replica_url)
        # A replica of a master that is not there: it stays read-only, as after a failover.
        await replica.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
        try:
            async with asgi_client(make_settings(replica_url), replica) as api:
                response = await api.post("/v1/jobs", json=JOB)
        finally:
            await replica.aclose()
    _unavailable(response)


async def test_a_blackholed_redis_gives_503s_not_hung_requests(redis_url: str):
    with blackhole() as url:
        settings = make_settings(url, redis={"socket_timeout_s": 0.2, "socket_connect_timeout_s": 0.2})
        with capture_logs() as logs:
            async with asgi_client(settings) as api:
                response = await api.post("/v1/jobs", json=JOB)
                read = await api.get("/v1/jobs/job_01", headers=ACME)
    _unavailable(response)
    _unavailable(read)
    assert "redis.config_unchecked" in [e["event"] for e in logs]


async def test_a_long_poll_outlasts_the_socket_timeout(redis_url: str, redis: Redis):
    """A wait of many socket timeouts is answered when the job ends, without a lost subscription."""
    # A socket timeout no command of a loaded 2-core machine runs into, yet several pass in the wait.
    settings = make_settings(redis_url, redis={"socket_timeout_s": 1.0})
    with capture_logs() as logs:
        async with asgi_client(settings) as api:
            job_id = (await api.post("/v1/jobs", json=JOB)).json()["id"]
            waiting = asyncio.create_task(api.get(f"/v1/jobs/{job_id}", params={"wait": 30}))
            # Let the wait pass several socket timeouts before the job ends.
            started = time.monotonic()
            while time.monotonic() - started < 3.5:
                assert not waiting.done()
                await asyncio.sleep(0.1)
            done = Finish(job_id, "succeeded", "batch", from_states=("queued",), result=b'{"ok": true}')
            await Ledger(redis).finish([done], int(time.time() * 1000))
            response = await waiting
    assert response.status_code == 200
    assert response.json()["status"] == "succeeded"
    assert "watcher.disconnected" not in [e["event"] for e in logs]


def test_replies_that_mean_not_now_are_told_apart_from_bugs():
    from redis.exceptions import ResponseError

    from api.errors import store_unavailable

    relayed = (
        "ERR Error running script (call to f_1): @user_script:1: -READONLY You can't write against a replica."
    )
    assert store_unavailable(ResponseError(relayed))
    assert store_unavailable(ResponseError("MASTERDOWN Link with MASTER is down"))
    assert store_unavailable(ResponseError("BUSY Redis is busy running a script"))
    assert not store_unavailable(
        ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")
    )
    assert not store_unavailable(ResponseError("ERR user_script:3: attempt to compare nil with number"))


async def test_a_command_cancelled_mid_flight_always_finishes_cancelling(redis_url: str):
    """redis-py's own send timeout (asyncio.wait_for) can leave a cancelled task cancelling forever on
    Python 3.11; our connections' sends never do (the hang is for good, so the bound is generous)."""
    client = store.connect(make_settings(redis_url))
    rng = random.Random(11)

    async def busy() -> None:
        while True:
            await client.set("bs:test:cancel", "v" * 100)
            await client.get("bs:test:cancel")

    try:
        for _ in range(200):
            task = asyncio.create_task(busy())
            await asyncio.sleep(rng.random() * 0.003)
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=5)
            assert done, "a cancelled command never finished cancelling"
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "args",
    [
        ("SET", "k", "v"),
        ("EVALSHA", b"abc", 2, "key:é", b"\x00\xff", 0.1, 1 / 3, 1e20, -0.0, 2**70, memoryview(b"mv")),
        ("SCRIPT LOAD", "return 1"),
        (b"CLIENT SETNAME", "x"),
    ],
)
def test_commands_are_packed_as_redis_pys_own_packer_packs_them(
    redis_url: str, args: tuple[object, ...]
) -> None:
    """hiredis packs our commands; the bytes on the wire are those of redis-py's Python packer."""
    pool = store._pool(make_settings(redis_url))
    ours = pool.make_connection()
    theirs = pool.connection_class.__mro__[1](**pool.connection_kwargs)
    assert b"".join(ours.pack_command(*args)) == b"".join(bytes(p) for p in theirs.pack_command(*args))


def test_a_bool_is_refused_as_redis_py_refuses_it(redis_url: str) -> None:
    ours = store._pool(make_settings(redis_url)).make_connection()
    with pytest.raises(DataError):
        ours.pack_command("SET", "k", True)
