"""The Python client against the real API over real HTTP: calls, pagination, typed errors."""

from __future__ import annotations

import asyncio
import pickle
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from api.app import create_app
from batchshift import client as bc
from batchshift.client import BatchshiftClient, job_request
from batchshift.embedded_redis import free_port
from scheduler.ledger.ledger import Finish, Ledger
from tests.api.harness import serve
from tests.conftest import make_settings

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def api_url(redis_url: str) -> Iterator[str]:
    with serve(create_app(make_settings(redis_url))) as url:
        yield url


@pytest.fixture
async def bs(api_url: str, redis: Redis) -> AsyncIterator[BatchshiftClient]:
    async with BatchshiftClient(api_url, "acme-key", timeout=10) as client:
        yield client


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def test_enqueue_get_and_cancel(bs: BatchshiftClient):
    job = await bs.enqueue("openai", BODY, deadline_in=3600, tags={"feature": "f"}, idempotency_key="k1")
    assert job.status == "queued"
    assert job.tags == {"feature": "f"}
    assert (
        await bs.enqueue("openai", BODY, deadline_in=3600, tags={"feature": "f"}, idempotency_key="k1")
    ).id == job.id
    assert (await bs.get(job.id)).id == job.id
    cancelled = await bs.cancel(job.id)
    assert cancelled.status == "cancelled"
    assert cancelled.terminal


async def test_wait_returns_the_ended_job(bs: BatchshiftClient, redis: Redis):
    job = await bs.enqueue("openai", BODY)

    async def finish_later() -> None:
        await asyncio.sleep(0.2)
        await Ledger(redis).finish(
            [
                Finish(
                    id=job.id, state="succeeded", route="batch", from_states=("queued",), result=b'{"x": 1}'
                )
            ],
            now_ms(),
        )

    finisher = asyncio.create_task(finish_later())
    done = await bs.wait(job.id, timeout=30)
    await finisher
    assert done.status == "succeeded"
    assert done.result == {"x": 1}


async def test_wait_follows_a_server_whose_long_poll_limit_is_below_a_minute(redis_url: str, redis: Redis):
    """A server configured with limits.max_wait_s under 60 refuses the client's first slice with a 422."""
    settings = make_settings(redis_url, limits={"max_wait_s": 0.3})
    with serve(create_app(settings)) as url:
        async with BatchshiftClient(url, "acme-key", timeout=10) as short:
            job = await short.enqueue("openai", BODY)

            async def finish_later() -> None:
                await asyncio.sleep(0.5)
                await Ledger(redis).finish(
                    [Finish(id=job.id, state="succeeded", route="batch", from_states=("queued",))], now_ms()
                )

            finisher = asyncio.create_task(finish_later())
            done = await short.wait(job.id, timeout=30)
            await finisher
            assert done.status == "succeeded"
            again = await short.enqueue("openai", BODY)
            with pytest.raises(bc.WaitTimeout):
                await short.wait(again.id, timeout=0.5)


async def test_wait_gives_up_with_wait_timeout(bs: BatchshiftClient):
    job = await bs.enqueue("openai", BODY)
    with pytest.raises(bc.WaitTimeout) as caught:
        await bs.wait(job.id, timeout=0.2)
    assert caught.value.job_id == job.id
    assert isinstance(caught.value, TimeoutError)


async def test_enqueue_many_answers_per_item_in_order(bs: BatchshiftClient, redis: Redis):
    items = [job_request("openai", BODY, tags={"n": str(n)}) for n in range(5)]
    items.insert(2, job_request("nope", BODY))
    results = await bs.enqueue_many(items, chunk_size=2)
    assert [type(r).__name__ for r in results] == ["Job", "Job", "InvalidRequest", "Job", "Job", "Job"]
    error = results[2]
    assert isinstance(error, bc.InvalidRequest)
    assert error.field == "provider"
    assert [r.tags["n"] for r in results if isinstance(r, bc.Job)] == ["0", "1", "2", "3", "4"]


async def test_list_pages_and_iterates(bs: BatchshiftClient):
    made = [(await bs.enqueue("openai", BODY, tags={"feature": "p"})).id for _ in range(5)]
    page = await bs.list(limit=2)
    assert [j.id for j in page.jobs] == made[::-1][:2]
    assert page.next_cursor is not None
    assert [j.id async for j in bs.iter_jobs(feature="p", page_size=2)] == made[::-1]


async def test_errors_are_typed_and_name_the_field(bs: BatchshiftClient, api_url: str):
    with pytest.raises(bc.InvalidRequest) as invalid:
        await bs.enqueue("openai", {"messages": []})
    assert invalid.value.field == "body.model"
    assert invalid.value.status_code == 422
    with pytest.raises(bc.NotFound):
        await bs.get("job_00000000000000000000000000")
    job = await bs.enqueue("openai", BODY)
    await bs.cancel(job.id)
    with pytest.raises(bc.IllegalTransition):
        await bs.cancel(job.id)
    await bs.enqueue("openai", BODY, idempotency_key="once")
    with pytest.raises(bc.IdempotencyConflict):
        await bs.enqueue("openai", {**BODY, "temperature": 0}, idempotency_key="once")
    async with BatchshiftClient(api_url, "wrong-key") as stranger:
        with pytest.raises(bc.Unauthorized):
            await stranger.list()


async def test_unreachable_api_is_a_transport_error():
    async with BatchshiftClient(f"http://127.0.0.1:{free_port()}", "k", timeout=2) as client:
        with pytest.raises(bc.TransportError):
            await client.get("job_x")


def test_repr_never_shows_the_key():
    client = BatchshiftClient("http://example.invalid", "super-secret-key")
    assert "super-secret-key" not in repr(client)


@pytest.mark.parametrize(
    "error",
    [
        bc.TransportError("down"),
        bc.WaitTimeout("job_1", 2.0),
        bc.ApiError(418, "teapot", "no"),
        bc.InvalidRequest(422, "invalid_request", "bad", "body.model"),
        bc.MalformedJSON(400, "malformed_json", "bad"),
        bc.IdempotencyConflict(409, "idempotency_conflict", "again", "idempotency_key"),
        bc.ServerError(500, "internal_error", "boom"),
    ],
)
def test_client_errors_pickle(error: bc.BatchshiftClientError):
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes, made one line above
    assert type(copy) is type(error)
    assert str(copy) == str(error)


def test_api_error_maps_type_then_status():
    assert type(bc.api_error(409, {"type": "illegal_transition", "message": "m"})) is bc.IllegalTransition
    assert type(bc.api_error(404, {"type": "something_new", "message": "m"})) is bc.NotFound
    assert type(bc.api_error(503, None)) is bc.ServerError


def test_server_max_wait_reads_the_stated_limit_or_halves():
    def refused(message: str, field: str = "wait") -> bc.InvalidRequest:
        return bc.InvalidRequest(422, "invalid_request", message, field)

    assert bc.server_max_wait(refused("wait must be more than 0 and at most 30 seconds"), 60) == 30
    assert bc.server_max_wait(refused("wait is too long"), 60) == 30
    assert bc.server_max_wait(refused("wait must be ... at most 60 seconds"), 60) is None  # no progress
    assert bc.server_max_wait(refused("limit: too big", "limit"), 60) is None


@pytest.mark.parametrize("command", [["costs", "--group-by", "feature"], ["lanes"]])
def test_cli_reports_go_through_the_client(api_url: str, redis: Redis, command: list[str], capsys):
    """`batchshift costs` and `lanes` print the API's report (a lane the SLO tracker has not seen yet
    included), and a refused key exits 1 saying why."""
    from batchshift.cli import main

    async def enqueue() -> None:
        async with BatchshiftClient(api_url, "acme-key") as client:
            await client.enqueue("openai", BODY, tags={"feature": "report"})

    asyncio.run(enqueue())
    assert main([*command, "--url", api_url, "--api-key", "admin-key"]) == 0
    shown = capsys.readouterr().out
    # whole, not cut to 80 columns as rich does by default when the output is not a terminal
    assert (
        "costs by feature" if command[0] == "costs" else "openai:gpt-4o-mini:/v1/chat/completions"
    ) in shown
    assert "…" not in shown
    assert main([*command, "--url", api_url, "--api-key", "wrong-key"]) == 1
    assert "401 unauthorized" in capsys.readouterr().err
