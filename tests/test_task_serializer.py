"""Task arguments and results travel as msgpack, never pickle; a task's exception comes back as TaskFailed."""

from __future__ import annotations

import inspect
import pickle
from typing import Any

import msgspec
import pytest
from arq.worker import Worker, func

from scheduler import errors
from scheduler.errors import TaskFailed
from scheduler.ledger import tasks
from scheduler.ledger.tasks import create_pool
from tests.conftest import make_settings
from workers.worker import close_worker, worker_settings

# Set by the pickle payload below if a worker ever unpickles it.
RAN: list[str] = []


class Payload:
    """What an attacker with write access to Redis would plant: unpickling it runs code."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (RAN.append, ("unpickled",))


async def _fail(ctx: dict[str, Any]) -> None:
    raise errors.NotFound("no job job_123", "id")


async def _echo(ctx: dict[str, Any], *args: Any) -> list[Any]:
    return list(args)


async def _burst(redis_url: str, *functions: Any) -> Worker:
    options = worker_settings(make_settings(redis_url))
    options["functions"] = list(functions)
    worker = Worker(**options, burst=True, poll_delay=0, handle_signals=False)
    try:
        await worker.main()
    finally:
        await close_worker(worker)
    return worker


async def test_a_job_is_stored_as_msgpack_and_its_result_read_back(redis, redis_url) -> None:
    pool = await create_pool(redis_url)
    try:
        job = await pool.enqueue_job("echo", "bat_1", 3, _job_id="echo-1")
        assert job is not None
        raw = await redis.get("arq:job:echo-1")
        stored = msgspec.msgpack.decode(raw)
        assert stored["f"] == "echo"
        assert stored["a"] == ["bat_1", 3]
        await _burst(redis_url, func(_echo, name="echo"))  # type: ignore[arg-type]
        assert await job.result(timeout=5) == ["bat_1", 3]
    finally:
        await pool.aclose()


async def test_a_pickled_job_planted_in_redis_is_never_unpickled(redis, redis_url) -> None:
    planted = pickle.dumps({"t": 1, "f": "echo", "a": (Payload(),), "k": {}, "et": 1})
    await redis.set("arq:job:planted", planted)
    await redis.zadd("arq:queue", {"planted": 1})
    worker = await _burst(redis_url, func(_echo, name="echo"))  # type: ignore[arg-type]
    assert RAN == []
    assert worker.jobs_failed == 1
    assert await redis.zcard("arq:queue") == 0


async def test_a_failed_task_raises_task_failed_with_its_error_class_and_message(redis, redis_url) -> None:
    pool = await create_pool(redis_url)
    try:
        job = await pool.enqueue_job("fail", _job_id="fail-1")
        assert job is not None
        await _burst(redis_url, func(_fail, name="fail"))  # type: ignore[arg-type]
        with pytest.raises(TaskFailed) as raised:
            await job.result(timeout=5)
        assert raised.value.error_type == "NotFound"
        assert str(raised.value) == "NotFound: id: no job job_123"
    finally:
        await pool.aclose()


ERRORS = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, errors.BatchshiftError) and cls.__module__ == errors.__name__
]


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_every_error_class_travels_as_its_name_and_message(cls: type[errors.BatchshiftError]) -> None:
    error = cls("something is wrong", "body.model")
    back = tasks.deserialize(tasks.serialize({"r": error, "s": False}))
    assert isinstance(back["r"], TaskFailed)
    assert (back["r"].error_type, back["r"].message) == (cls.__name__, str(error))


def test_a_result_msgpack_cannot_hold_is_named_not_dropped() -> None:
    back = tasks.deserialize(tasks.serialize({"r": object(), "s": True}))
    assert isinstance(back["r"], TaskFailed)
    assert back["r"].error_type == "object"


def test_task_failed_round_trips_itself() -> None:
    failed = TaskFailed("ProviderError", "429 from openai")
    back = tasks.deserialize(tasks.serialize({"r": failed}))["r"]
    assert (back.error_type, back.message) == ("ProviderError", "429 from openai")


def test_a_rediss_url_turns_tls_on_and_passes_user_and_password() -> None:
    conn = tasks.redis_settings("rediss://app:s3cret@redis.example.com:6380/2")
    assert (conn.ssl, conn.username, conn.password) == (True, "app", "s3cret")
    assert (conn.host, conn.port, conn.database) == ("redis.example.com", 6380, 2)
    assert tasks.redis_settings("redis://localhost:6379/0").ssl is False


async def test_pool_and_worker_log_in_to_a_redis_with_a_password() -> None:
    from batchshift.embedded_redis import running_server
    from workers.worker import run_burst

    with running_server(password="pw-with-letters-9") as server:
        assert ":pw-with-letters-9@" in server.url
        pool = await create_pool(server.url)
        try:
            job = await pool.enqueue_job(tasks.SUBMIT_BATCH, "bat_unknown", _job_id="auth-1")
            assert job is not None
            worker = await run_burst(make_settings(server.url))
            assert worker.jobs_complete == 1
            assert await job.result(timeout=5) == "missing"
        finally:
            await pool.aclose()
