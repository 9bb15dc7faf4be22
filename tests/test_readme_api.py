"""Every curl example in the README runs against a real API server and succeeds."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from api.app import create_app
from scheduler.ledger.ids import job_id
from scheduler.ledger.jobs import NewJob
from scheduler.ledger.ledger import Finish, Ledger
from tests.api.harness import serve

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def readme_curls() -> list[str]:
    """The README's curl commands: a command runs from a line starting ``curl`` up to the next one
    (a JSON body may span lines inside its quotes); comment lines and trailing comments dropped."""
    block = re.search(r"^## API\n.*?```sh\n(.*?)```", README, re.S | re.M)
    assert block, "README's API section has no sh block"
    commands: list[list[str]] = []
    for line in block.group(1).replace("\\\n", " ").splitlines():
        if line.startswith("curl "):
            commands.append([line])
        elif commands and line.strip() and not line.lstrip().startswith("#"):
            commands[-1].append(line)
    return [re.sub(r"\s+#\s[^'\"]*$", "", "\n".join(lines).rstrip()) for lines in commands]


def test_the_readme_shows_the_main_api_calls():
    shown = " ".join(readme_curls())
    for path in ("/v1/jobs ", "/v1/jobs/bulk", "?wait=", "/cancel", "/v1/costs", "/v1/lanes", "/metrics"):
        assert path in shown, path


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_every_readme_curl_example_succeeds(settings, redis: Redis):
    ledger = Ledger(redis)
    now_ms = int(time.time() * 1000)
    jobs = [
        NewJob(
            id=job_id(),
            tenant="acme",
            provider="openai",
            endpoint="/v1/chat/completions",
            model="gpt-4.1-mini",
            body=b'{"model":"gpt-4.1-mini","messages":[]}',
            deadline_ms=now_ms + 3_600_000,
            created_ms=now_ms,
        )
        for _ in range(2)
    ]
    await ledger.enqueue_many(jobs)
    done, live = jobs
    await ledger.transition(done.id, ["queued"], "batched", batch_id="bat_x")
    await ledger.finish([Finish(done.id, "succeeded", "batch", batch_id="bat_x", result=b"{}")], now_ms)
    with serve(create_app(settings)) as url:
        host = url.removeprefix("http://")
        for command in readme_curls():
            # The long poll asks about a job that has ended (it answers at once); cancel, a live one.
            env = {
                "KEY": "acme-key",
                "ADMIN_KEY": "admin-key",
                "JOB_ID": live.id if "/cancel" in command else done.id,
            }
            script = command.replace("localhost:8000", host) + " -w '\\n%{http_code}'"
            ran = subprocess.run(  # noqa: ASYNC221 - running curl as a reader would is the point
                ["bash", "-c", script], capture_output=True, text=True, timeout=60, env=env, check=False
            )
            assert ran.returncode == 0, (command, ran.stderr)
            body, _, status = ran.stdout.rpartition("\n")
            assert status in ("200", "202"), (command, ran.stdout)
            if "/bulk" in command:  # a bulk request is 200 whatever its items: each must be accepted
                assert {item["status"] for item in json.loads(body)["results"]} == {202}, body
