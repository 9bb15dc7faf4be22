"""Our OpenAI-compatible routes against OpenAI's contract: every object they answer validates against
the published OpenAPI schemas (../shared/specs/, as tests/emulator/test_schema.py checks the
emulator's), and the edges a ported batch script hits behave as OpenAI's do, through the official
SDK against our API in process (no pipeline: jobs stay queued).

The spec's schemas leave ``nullable`` off the Batch and File fields a fresh object has no value
for, while its own examples (and OpenAI's wire) carry them as ``null``; the SDK types them
``Optional``. We answer as the wire does, so a ``null`` in a property the schema does not require
is checked as absent: every present value is still checked against its type and enum.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI

from config.settings import Settings
from scheduler.compat.intake import BatchIntake, draft
from scheduler.ledger import keys
from tests import test_slo_e2e as slo
from tests.compat.support import CHAT, compat_app, compat_settings, jsonl, openai_sdk
from tests.compat.test_compat_api import api
from tests.conftest import make_settings
from tests.emulator import test_schema as schema
from tests.emulator.test_schema import CURRENT, JUNE_2025, Specs

pytestmark = pytest.mark.timeout(600)

specs = schema.specs  # OpenAI's spec files, loaded once (the emulator's schema tests' fixture)

SCHEMA_REQUIRED = {
    "Batch": {"id", "object", "endpoint", "input_file_id", "completion_window", "status", "created_at"},
    "OpenAIFile": {"id", "object", "bytes", "created_at", "filename", "purpose", "status"},
}


def _as_spec_reads(schema: str, obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with each ``null`` the schema neither requires nor types dropped (see the module)."""
    if schema in ("ListBatchesResponse", "ListFilesResponse"):
        item = "Batch" if schema == "ListBatchesResponse" else "OpenAIFile"
        return {**obj, "data": [_as_spec_reads(item, o) for o in obj["data"]]}
    required = SCHEMA_REQUIRED.get(schema)
    if required is None:
        return obj
    # metadata is typed nullable (anyOf object | null) and stays as sent.
    return {k: v for k, v in obj.items() if v is not None or k in required or k == "metadata"}


def _check(specs: Specs, schema: str, obj: dict[str, Any]) -> None:
    assert specs.errors(CURRENT, schema, _as_spec_reads(schema, obj)) == [], (schema, obj)


@contextlib.asynccontextmanager
async def _raw(app: FastAPI, key: str = "acme-key") -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://api/v1",
        headers={"authorization": f"Bearer {key}"},
    ) as client:
        yield client


async def _upload(client: httpx.AsyncClient, content: bytes) -> dict[str, Any]:
    answer = await client.post("/files", files={"file": ("in.jsonl", content)}, data={"purpose": "batch"})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


async def _create(client: httpx.AsyncClient, content: bytes, window: str = "24h") -> dict[str, Any]:
    file_id = (await _upload(client, content))["id"]
    answer = await client.post(
        "/batches", json={"input_file_id": file_id, "endpoint": CHAT, "completion_window": window}
    )
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


async def _validating(app: FastAPI, settings: Settings, now_ms: int, file_id: str) -> str:
    """A batch whose create died before its first job: recorded, still ``validating``."""
    intake: BatchIntake = app.state.batch_intake
    batch = draft(
        "openai",
        "acme",
        endpoint=CHAT,
        input_file_id=file_id,
        window="24h",
        window_s=86400,
        metadata=None,
        total=2,
        now_ms=now_ms,
    )
    await intake._record(batch)
    return batch.id


async def test_every_batch_status_and_file_object_matches_the_spec(redis, redis_url, specs: Specs):
    settings = make_settings(redis_url)
    seen: dict[str, dict[str, Any]] = {}
    async with api(settings, redis) as (app, clock), _raw(app) as client:
        uploaded = await _upload(client, jsonl(["a", "b"]))
        _check(specs, "OpenAIFile", uploaded)
        _check(specs, "OpenAIFile", (await client.get(f"/files/{uploaded['id']}")).json())
        seen["validating"] = (
            await client.get(f"/batches/{await _validating(app, settings, clock.ms, uploaded['id'])}")
        ).json()
        seen["in_progress"] = await _create(client, jsonl(["a", "b"]), window="2h")
        seen["failed"] = await _create(client, b'{"custom_id": "x"\n')
        to_cancel = await _create(client, jsonl(["c", "d"]))
        # cancelling: the state is set, its lines not cancelled yet (what a client sees meanwhile).
        intake: BatchIntake = app.state.batch_intake
        await intake.batches.request_cancel(to_cancel["id"], clock.ms)
        seen["cancelling"] = (await client.get(f"/batches/{to_cancel['id']}")).json()
        seen["cancelled"] = (await client.post(f"/batches/{to_cancel['id']}/cancel")).json()
        expiring = await _create(client, jsonl(["e"]), window="1h")
        clock.advance(3601)
        seen["expired"] = (await client.get(f"/batches/{expiring['id']}")).json()
        assert {name: obj["status"] for name, obj in seen.items()} == {name: name for name in seen}
        for obj in seen.values():
            _check(specs, "Batch", obj)
        assert seen["failed"]["errors"]["data"][0]["line"] == 1
        error_file = seen["cancelled"]["error_file_id"]
        meta = (await client.get(f"/files/{error_file}")).json()
        _check(specs, "OpenAIFile", meta)
        assert meta["purpose"] == "batch_output"
        lines = [
            json.loads(line)
            for line in (await client.get(f"/files/{error_file}/content")).content.splitlines()
        ]
        assert [line["custom_id"] for line in lines] == ["c", "d"]
        for line in lines:
            assert specs.errors(JUNE_2025, "BatchRequestOutput", line) == []
        listed = (await client.get("/batches", params={"limit": 100})).json()
        _check(specs, "ListBatchesResponse", listed)
        assert {b["status"] for b in listed["data"]} == set(seen) - {"cancelling"}
        files = (await client.get("/files")).json()
        _check(specs, "ListFilesResponse", files)
        deleted = (await client.delete(f"/files/{uploaded['id']}")).json()
        _check(specs, "DeleteFileResponse", deleted)
        assert deleted == {"id": uploaded["id"], "object": "file", "deleted": True}


async def test_errors_match_the_spec_with_openais_status_codes(redis, redis_url, specs: Specs):
    settings = make_settings(redis_url)
    async with api(settings, redis) as (app, _), _raw(app) as client:
        done = await _create(client, jsonl(["a"]))
        answers = {
            "unknown batch": await client.get("/batches/batch_01JZZZZZZZZZZZZZZZZZZZZZZZ"),
            "unknown file": await client.get("/files/file-nope/content"),
            "bad window": await client.post(
                "/batches",
                json={"input_file_id": done["input_file_id"], "endpoint": CHAT, "completion_window": "1d"},
            ),
            "bad purpose": await client.post(
                "/files", files={"file": ("in.jsonl", b"{}")}, data={"purpose": "fine-tune"}
            ),
        }
        await client.post(f"/batches/{done['id']}/cancel")
        answers["cancel a cancelled batch"] = await client.post(f"/batches/{done['id']}/cancel")
        async with _raw(app, key="wrong") as stranger:
            answers["bad key"] = await stranger.get("/batches")
        assert {name: a.status_code for name, a in answers.items()} == {
            "unknown batch": 404,
            "unknown file": 404,
            "bad window": 400,
            "bad purpose": 400,
            "cancel a cancelled batch": 409,
            "bad key": 401,
        }
        for answer in answers.values():
            assert specs.errors(CURRENT, "ErrorResponse", answer.json()) == []
        conflict = answers["cancel a cancelled batch"].json()["error"]
        assert conflict == {
            "message": "Cannot cancel a batch with status 'cancelled'.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }


async def test_unknown_and_other_tenants_ids_read_as_not_found_for_every_call(redis, redis_url):
    settings = make_settings(redis_url)
    async with (
        api(settings, redis) as (app, _),
        openai_sdk(app) as sdk,
        openai_sdk(app, "globex-key") as globex,
    ):
        uploaded = await sdk.files.create(file=("in.jsonl", jsonl(["a"])), purpose="batch")
        batch = await sdk.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
        for call in (
            lambda: globex.batches.retrieve(batch.id),
            lambda: globex.batches.cancel(batch.id),
            lambda: globex.files.retrieve(uploaded.id),
            lambda: globex.files.content(uploaded.id),
            lambda: globex.files.delete(uploaded.id),
            lambda: sdk.batches.retrieve("batch_nope"),
            lambda: sdk.batches.cancel("batch_nope"),
            lambda: sdk.files.content(f"file-{batch.id}-output"),  # not ended: no output file yet
        ):
            with pytest.raises(openai.NotFoundError):
                await call()
        with pytest.raises(openai.BadRequestError, match="input_file_id"):
            await globex.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
        assert (await sdk.batches.retrieve(batch.id)).status == "in_progress"  # the stranger changed nothing
        assert (await sdk.files.content(uploaded.id)).content == jsonl(["a"])


async def test_cancel_twice_and_cancel_a_completed_or_failed_batch(redis, redis_url):
    """A second cancel of a batch still ``cancelling`` finishes it and answers it; a batch that is
    over refuses with OpenAI's 409 (the SDK's ConflictError), nothing changed."""
    settings = make_settings(redis_url)
    async with api(settings, redis) as (app, clock), openai_sdk(app) as sdk:
        uploaded = await sdk.files.create(file=("in.jsonl", jsonl(["a", "b"])), purpose="batch")
        batch = await sdk.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
        intake: BatchIntake = app.state.batch_intake
        # A cancel that died after its state change, before cancelling the lines:
        await intake.batches.request_cancel(batch.id, clock.ms)
        assert (await sdk.batches.retrieve(batch.id)).status == "cancelling"
        again = await sdk.batches.cancel(batch.id)
        assert again.status == "cancelled"
        assert again.request_counts is not None
        assert (again.request_counts.completed, again.request_counts.failed) == (0, 2)
        with pytest.raises(openai.ConflictError, match="status 'cancelled'"):
            await sdk.batches.cancel(batch.id)
        bad = await sdk.files.create(file=("bad.jsonl", b"not json\n"), purpose="batch")
        failed = await sdk.batches.create(input_file_id=bad.id, endpoint=CHAT, completion_window="24h")
        with pytest.raises(openai.ConflictError, match="status 'failed'"):
            await sdk.batches.cancel(failed.id)
        expiring = await sdk.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="1h")
        clock.advance(3601)
        with pytest.raises(openai.ConflictError, match="status 'expired'"):
            await sdk.batches.cancel(expiring.id)
        expired = await sdk.batches.retrieve(expiring.id)
        assert expired.status == "expired"
        assert expired.error_file_id is not None  # its lines still live, the window passed: over
        assert (await sdk.files.delete(expired.error_file_id)).deleted is True
        with pytest.raises(openai.NotFoundError):
            await sdk.files.content(expired.error_file_id)


async def test_files_delete_then_content_is_404_for_uploads_and_result_files(redis, redis_url):
    """A ported script's clean-up: delete the input, download then delete the error file. Each
    reads as missing after, and the batch still names its error file, as OpenAI's does."""
    settings = make_settings(redis_url)
    async with api(settings, redis) as (app, _), openai_sdk(app) as sdk:
        uploaded = await sdk.files.create(file=("in.jsonl", jsonl(["a"])), purpose="batch")
        batch = await sdk.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
        with pytest.raises(openai.NotFoundError):  # not ended: it has no error file yet
            await sdk.files.delete(f"file-{batch.id}-errors")
        assert (await sdk.files.delete(uploaded.id)).deleted is True
        # The batch made from it runs on (its lines are jobs already), as OpenAI's does.
        assert (await sdk.batches.retrieve(batch.id)).status == "in_progress"
        cancelled = await sdk.batches.cancel(batch.id)
        error_file = cancelled.error_file_id
        assert error_file is not None
        assert len((await sdk.files.content(error_file)).text.splitlines()) == 1
        async with openai_sdk(app, "globex-key") as globex:
            with pytest.raises(openai.NotFoundError):
                await globex.files.delete(error_file)
        deleted = await sdk.files.delete(error_file)
        assert (deleted.id, deleted.deleted) == (error_file, True)
        for gone in (uploaded.id, error_file):
            for call in (sdk.files.content, sdk.files.retrieve, sdk.files.delete):
                with pytest.raises(openai.NotFoundError):
                    await call(gone)
        after = await sdk.batches.retrieve(batch.id)
        assert (after.status, after.error_file_id) == ("cancelled", error_file)


@pytest.mark.parametrize("shape", ["bom", "crlf", "no final newline", "blank last lines"])
async def test_jsonl_a_text_editor_writes_is_read_as_its_lines(redis, redis_url, shape: str):
    plain = jsonl(["a", "b", "c"])
    content = {
        "bom": b"\xef\xbb\xbf" + plain,
        "crlf": plain.replace(b"\n", b"\r\n"),
        "no final newline": plain.rstrip(b"\n"),
        "blank last lines": plain + b"\n\r\n  \n",
    }[shape]
    settings = make_settings(redis_url)
    async with api(settings, redis) as (app, _), openai_sdk(app) as sdk:
        uploaded = await sdk.files.create(file=("in.jsonl", content), purpose="batch")
        assert (await sdk.files.content(uploaded.id)).content == content  # kept byte for byte
        batch = await sdk.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
        assert (batch.status, batch.errors) == ("in_progress", None)
        assert batch.request_counts is not None
        assert batch.request_counts.total == 3


def _line(custom_id: str, *, url: str = CHAT, model: str = "gpt-4o-mini") -> str:
    return json.dumps(
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": url,
            "body": {"model": model, "messages": [{"role": "user", "content": "hi"}]},
        }
    )


@pytest.mark.parametrize(
    ("content", "code", "line"),
    [
        ((_line("a") + "\n" + _line("a") + "\n").encode(), "duplicate_custom_id", 2),
        ((_line("a") + "\n" + _line("b", url="/v1/embeddings") + "\n").encode(), "url_mismatch", 2),
        (b"", "empty_file", None),
        (b"\n\n", "empty_file", None),
        (b"\xef\xbb\xbf", "empty_file", None),
    ],
    ids=["duplicate custom_id", "endpoint mismatch", "0 bytes", "only blank lines", "only a BOM"],
)
async def test_invalid_files_fail_the_batch_as_openai_reports_them(
    redis, redis_url, content: bytes, code: str, line: int | None
):
    settings = make_settings(redis_url)
    async with api(settings, redis) as (app, _), openai_sdk(app) as sdk:
        uploaded = await sdk.files.create(file=("in.jsonl", content), purpose="batch")
        assert uploaded.bytes == len(content)
        batch = await sdk.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
        assert batch.status == "failed"
        assert batch.errors is not None
        assert batch.errors.data is not None
        assert [(e.code, e.line) for e in batch.errors.data] == [(code, line)]
        assert batch.request_counts is not None
        assert batch.request_counts.total == 0
    assert await redis.zcard(keys.tenant_jobs("acme")) == 0


async def test_mixed_models_in_one_file_run_each_line_on_its_own_lane(redis, redis_url):
    """OpenAI wants one model per batch file; batchshift routes each line by its model (issue 18's
    pooling), so a mixed file runs, and the batch's ``model`` names every model in it."""
    settings = make_settings(redis_url)
    content = (_line("a") + "\n" + _line("b", model="gpt-4o") + "\n").encode()
    async with api(settings, redis) as (app, _), openai_sdk(app) as sdk:
        uploaded = await sdk.files.create(file=("in.jsonl", content), purpose="batch")
        batch = await sdk.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
    assert (batch.status, batch.model) == ("in_progress", "gpt-4o,gpt-4o-mini")


# The SLO end-to-end emulator, pager and pipeline harness, shared by name (a completed batch).
emulator_url = slo.emulator_url
emulator = slo.emulator
pagerduty = slo.pagerduty
harness = slo.harness


async def test_a_completed_batch_its_output_file_and_lines_match_the_spec(
    redis, redis_url, emulator, pagerduty, harness, specs: Specs
):
    settings = compat_settings(redis_url, emulator, pagerduty)
    pipeline = harness(settings)
    async with compat_app(settings, redis, pipeline) as app, _raw(app) as client:
        created = await _create(client, jsonl(["a", "b", "c"]))

        async def completed() -> bool:
            return bool((await client.get(f"/batches/{created['id']}")).json()["status"] == "completed")

        await pipeline.run_until(completed, within_s=30)
        done = (await client.get(f"/batches/{created['id']}")).json()
        _check(specs, "Batch", done)
        assert done["error_file_id"] is None
        meta = (await client.get(f"/files/{done['output_file_id']}")).json()
        _check(specs, "OpenAIFile", meta)
        content = (await client.get(f"/files/{done['output_file_id']}/content")).content
        assert meta["bytes"] == len(content)
        lines = [json.loads(line) for line in content.splitlines()]
        assert sorted(line["custom_id"] for line in lines) == ["a", "b", "c"]
        for line in lines:
            assert specs.errors(JUNE_2025, "BatchRequestOutput", line) == []
        _check(specs, "ListBatchesResponse", (await client.get("/batches")).json())


async def test_a_script_uploading_an_open_file_with_the_newer_expiry_options_runs(redis, redis_url, tmp_path):
    """What a current script sends: an open file, ``expires_after`` on the upload and
    ``output_expires_after`` on the create (taken; files follow batchshift's retention)."""
    path = tmp_path / "requests.jsonl"
    path.write_bytes(jsonl(["a", "b"]))
    settings = make_settings(redis_url)
    async with api(settings, redis) as (app, _), openai_sdk(app) as sdk:
        with path.open("rb") as handle:
            uploaded = await sdk.files.create(
                file=handle, purpose="batch", expires_after={"anchor": "created_at", "seconds": 3600}
            )
        assert (uploaded.filename, uploaded.bytes) == ("requests.jsonl", path.stat().st_size)
        batch = await sdk.batches.create(
            input_file_id=uploaded.id,
            endpoint=CHAT,
            completion_window="24h",
            output_expires_after={"anchor": "created_at", "seconds": 7200},
        )
        assert batch.request_counts is not None
        assert (batch.status, batch.request_counts.total) == ("in_progress", 2)
        with pytest.raises(openai.BadRequestError, match="endpoint"):
            await sdk.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/completions", completion_window="24h"
            )


async def test_a_line_the_provider_refused_is_in_the_error_file_as_openai_writes_it(
    redis, redis_url, emulator, pagerduty, harness, specs: Specs
):
    """A request the provider answered with a 400: its error-file line carries the ``response``
    (status and OpenAI's error body, the job id as request id) and ``error: null``, as OpenAI's do."""
    settings = compat_settings(redis_url, emulator, pagerduty)
    pipeline = harness(settings)
    emulator.configure(line_error_rate=1.0)
    async with compat_app(settings, redis, pipeline) as app, _raw(app) as client:
        created = await _create(client, jsonl(["a", "b"]))

        async def over() -> bool:
            return bool((await client.get(f"/batches/{created['id']}")).json()["status"] == "completed")

        await pipeline.run_until(over, within_s=30)
        done = (await client.get(f"/batches/{created['id']}")).json()
        _check(specs, "Batch", done)
        assert done["request_counts"] == {"total": 2, "completed": 0, "failed": 2}
        assert done["output_file_id"] is None
        content = (await client.get(f"/files/{done['error_file_id']}/content")).content
    lines = [json.loads(line) for line in content.splitlines()]
    assert sorted(line["custom_id"] for line in lines) == ["a", "b"]
    for line in lines:
        assert specs.errors(JUNE_2025, "BatchRequestOutput", line) == []
        assert line["error"] is None
        assert line["response"]["status_code"] == 400
        assert line["response"]["request_id"].startswith("job_")
        assert line["response"]["body"]["error"] == {
            "message": "Emulated invalid request.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_value",
        }
