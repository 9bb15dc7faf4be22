"""The long-running processes survive what production throws at them."""

from __future__ import annotations

import asyncio

from batchshift.embedded_redis import embedded_redis, free_port
from batchshift.processes import SupervisedWorker
from scheduler.ledger import tasks
from scheduler.ledger.tasks import create_pool
from tests.conftest import make_settings, until
from workers.tasks.outcomes import SubmitOutcome


async def test_a_worker_outlives_a_redis_restart_and_runs_tasks_again() -> None:
    """arq's own worker ends when Redis goes away; ours starts a new one when Redis is back."""
    port = free_port()
    with embedded_redis(port) as url:
        supervised = SupervisedWorker(make_settings(url), max_backoff_s=0.5)
        running = asyncio.create_task(supervised.run())
        # connected: arq's worker holds its pool once it has reached Redis
        await until(lambda: getattr(supervised.worker, "_pool", None) is not None)
    # Redis is gone: the worker fails and is restarted, again and again (however long that takes here).
    await until(lambda: supervised.restarts >= 1 or running.done())
    assert not running.done()
    assert supervised.restarts >= 1
    with embedded_redis(port) as url:
        pool = await create_pool(url)
        try:
            job = await pool.enqueue_job(tasks.SUBMIT_BATCH, "bat_unknown", _job_id="after-restart")
            assert job is not None
            # run by the restarted worker, however long that takes here (the test timeout bounds it)
            assert await job.result(timeout=None) == SubmitOutcome.MISSING
        finally:
            await supervised.drain(1.0)
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await pool.aclose()
