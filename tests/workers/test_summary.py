"""Task logs: a task's lines carry its ids from structlog's contextvars, none reach the next task,
and every run ends with one ``task.finished`` event naming its outcome and duration."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import httpx
import orjson
import pytest
import structlog
from arq import Retry
from structlog.contextvars import bound_contextvars, get_contextvars, merge_contextvars
from structlog.testing import capture_logs
from structlog.typing import EventDict

from config.logging import configure_logging
from scheduler.ledger import tasks
from scheduler.planning.batches import Batches
from tests.conftest import make_settings
from tests.workers.batch_harness import enqueue_jobs, make_ctx, run_batch
from tests.workers.conftest import FAST_HTTP, openai_settings
from workers.context import WorkerContext
from workers.http import build_client
from workers.summary import note, summarised
from workers.tasks.outcomes import SyncOutcome
from workers.tasks.sync import run_sync
from workers.worker import run_burst


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with build_client(FAST_HTTP) as client:
        yield client


@pytest.fixture
def logs() -> Iterator[list[EventDict]]:
    """Captured events, with the contextvars merged in as the configured processors do."""
    with capture_logs(processors=[merge_contextvars]) as entries:
        yield entries


def finished(logs: list[EventDict], task: str) -> list[EventDict]:
    return [e for e in logs if e["event"] == "task.finished" and e["task"] == task]


async def test_a_tasks_lines_carry_its_ids_and_none_reach_the_next_task(
    redis_url, redis, emulator, http, logs
) -> None:
    ctx = await make_ctx(make_settings(redis_url, providers={"openai": openai_settings(emulator.url)}), http)
    await enqueue_jobs(ctx["ledger"], 3)
    bid = await run_batch(ctx)  # submit_batch, then poll_batch until the batch ended
    assert await run_sync(ctx, "job_gone") is SyncOutcome.MISSING
    record = await Batches(redis).get(bid)
    assert record is not None
    [ended] = [e for e in logs if e["event"] == "batch.ended"]  # logged without ids of its own
    assert (ended["task"], ended["batch_id"], ended["lane"], ended["provider"]) == (
        "poll_batch",
        bid,
        record.lane,
        "openai",
    )
    [sync] = finished(logs, "run_sync")
    assert sync["job_id"] == "job_gone"
    assert sync["outcome"] == "missing"
    assert not {"batch_id", "lane", "provider"} & sync.keys(), "the batch task's ids leaked"
    assert get_contextvars() == {}


async def test_a_task_leaves_the_callers_context_as_it_was(redis_url, redis, http, logs) -> None:
    ctx = await make_ctx(make_settings(redis_url), http)
    with bound_contextvars(request_id="r-1", job_id="outer"):
        await run_sync(ctx, "job_gone")
        assert get_contextvars() == {"request_id": "r-1", "job_id": "outer"}
    [summary] = finished(logs, "run_sync")
    assert (summary["request_id"], summary["job_id"]) == ("r-1", "job_gone")


async def test_the_configured_json_lines_carry_the_tasks_ids(redis_url, redis, http) -> None:
    """config/logging.py merges the contextvars: a production line names its task and job."""
    saved_config, root = structlog.get_config(), logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    out = io.StringIO()
    configure_logging("INFO", "json", stream=out)
    try:
        await run_sync(await make_ctx(make_settings(redis_url), http), "job_gone")
    finally:
        structlog.configure(**saved_config)
        root.handlers, root.level = saved_handlers, saved_level
    [line] = [orjson.loads(raw) for raw in out.getvalue().splitlines()]
    assert line.items() >= {"event": "task.finished", "task": "run_sync", "job_id": "job_gone"}.items()


@summarised("toy")
async def toy(ctx: WorkerContext, how: str) -> Any:
    """A task that ends the way ``how`` says, for the summary's every branch."""
    structlog.contextvars.bind_contextvars(batch_id="bat_toy")
    note(seen=how)
    if how == "retry":
        raise Retry(defer=2.5)
    if how == "error":
        raise ValueError("boom")
    if how == "counts":
        return {"sent": 2}
    return SyncOutcome.DEFERRED


@pytest.mark.parametrize(
    ("how", "level", "expected"),
    [
        ("member", "info", {"outcome": "deferred"}),
        ("counts", "info", {"outcome": "done", "counts": {"sent": 2}}),
        ("retry", "info", {"outcome": "retry", "defer_s": 2.5}),
        ("error", "warning", {"outcome": "error", "error": "ValueError"}),
    ],
)
async def test_the_summary_names_how_a_run_ended(
    logs, how: str, level: str, expected: dict[str, Any]
) -> None:
    ctx = cast(WorkerContext, {"job_id": "arq-1"})
    started = time.perf_counter()
    try:
        await toy(ctx, how)
    except (Retry, ValueError):
        assert how in ("retry", "error")
    [summary] = finished(logs, "toy")
    assert summary.items() >= {**expected, "log_level": level, "task_id": "arq-1", "seen": how}.items()
    assert summary["batch_id"] == "bat_toy"
    assert 0 <= summary["duration_s"] <= time.perf_counter() - started + 0.001
    assert get_contextvars() == {}


async def test_under_a_worker_every_task_logs_one_summary_with_its_ids(redis_url, redis, logs) -> None:
    """Every registered task, run by a real worker on ids it does not know (no provider needed)."""
    settings = make_settings(redis_url, providers={})
    runs = {
        tasks.SUBMIT_BATCH: ("bat_a", "submit:bat_a:0"),
        tasks.POLL_BATCH: ("bat_b", "poll:bat_b:1"),
        tasks.CANCEL_BATCH: ("bat_c", "cancel:bat_c"),
        tasks.INGEST_BATCH: ("bat_d", "ingest:bat_d"),
        tasks.RUN_SYNC: ("job_e", "sync:job_e"),
        tasks.RECONCILE_BATCHES: (int(time.time() * 1000), "reconcile"),
        tasks.DELIVER_WEBHOOKS: (None, "webhooks:1"),
        tasks.SEND_ALERTS: (None, "send_alerts:1"),
    }
    assert set(runs) == set(tasks.ALL)
    pool = await tasks.create_pool(redis_url)
    try:
        for name, (arg, task_id) in runs.items():
            assert await tasks.enqueue(pool, name, *([] if arg is None else [arg]), job_id=task_id)
    finally:
        await pool.aclose()
    worker = await run_burst(settings)
    assert worker.jobs_complete == len(runs)
    summaries = {e["task"]: e for e in logs if e["event"] == "task.finished"}
    assert {name: e["task_id"] for name, e in summaries.items()} == {n: r[1] for n, r in runs.items()}
    for name in (tasks.SUBMIT_BATCH, tasks.POLL_BATCH, tasks.CANCEL_BATCH, tasks.INGEST_BATCH):
        assert summaries[name]["batch_id"] == runs[name][0]
    assert summaries[tasks.RUN_SYNC]["job_id"] == "job_e"
    assert all(e["outcome"] in ("missing", "done") for e in summaries.values())
