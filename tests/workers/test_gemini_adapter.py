"""The Gemini adapter against the emulator: inline and file batches, line errors, cancel, expiry,
list, cleanup and generateContent. The emulator's clock is held and stepped, so nothing here
depends on timing."""

from __future__ import annotations

import httpx
import orjson
import pytest

from config.settings import ProviderSettings
from emulator.server import EmulatorControl
from scheduler.costs import pricing
from tests.workers.conftest import FAST_HTTP
from workers import errors
from workers.providers import make_adapter
from workers.providers.base import BATCH_ID_METADATA_KEY, BatchLine, ResultLine
from workers.providers.gemini import GeminiAdapter, batch_error

MODEL = "gemini-2.5-flash"
ENDPOINT = "generateContent"
T0 = 1_800_000_000.0


def gemini_settings(url: str, **overrides: object) -> ProviderSettings:
    return ProviderSettings.model_validate(
        {"kind": "gemini", "base_url": url, "api_key": "gemini-test", "http": FAST_HTTP, **overrides}
    )


def lines(n: int, model: str = MODEL) -> list[BatchLine]:
    return [
        BatchLine(
            f"job-{i}",
            orjson.dumps({"model": model, "contents": [{"role": "user", "parts": [{"text": f"q{i}"}]}]}),
        )
        for i in range(n)
    ]


@pytest.fixture
def gemini(emulator: EmulatorControl, client: httpx.AsyncClient) -> GeminiAdapter:
    emulator.set_clock(T0)
    emulator.configure(turnaround_s=60)
    adapter = make_adapter("gemini", gemini_settings(emulator.url), client)
    assert isinstance(adapter, GeminiAdapter)
    return adapter


async def results(adapter: GeminiAdapter, provider_batch_id: str) -> dict[str, ResultLine]:
    return {line.custom_id: line async for line in adapter.results(provider_batch_id)}


def test_settings_default_to_gemini_limits() -> None:
    settings = gemini_settings("http://127.0.0.1:9")
    assert settings.completion_window_s == 48 * 3600
    assert settings.batch_byte_limit() == 2 * 1024**3
    assert gemini_settings("http://127.0.0.1:9", completion_window_s=3600).completion_window_s == 3600


@pytest.mark.parametrize("inline", [True, False])
async def test_batch_to_results(gemini: GeminiAdapter, emulator: EmulatorControl, *, inline: bool) -> None:
    if not inline:
        gemini.account.settings = gemini.account.settings.model_copy(update={"max_inline_batch_bytes": 0})
    info = await gemini.submit_batch(lines(4), endpoint=ENDPOINT, batch_id="b-1")
    assert info.status == "validating"  # PENDING until its clock moves
    assert info.metadata == {BATCH_ID_METADATA_KEY: "b-1"}
    assert info.model == MODEL
    assert ("input_file_id" in info.files) is not inline
    calls = [c["path"] for c in emulator.requests()]
    assert ("/upload/v1beta/files" in calls) is not inline
    assert f"/v1beta/models/{MODEL}:batchGenerateContent" in calls
    emulator.set_clock(T0 + 61)
    done = await gemini.get_batch(info.provider_batch_id)
    assert done.status == "completed"
    assert done.ended
    assert (done.total, done.completed, done.failed) == (4, 4, 0)
    got = await results(gemini, info.provider_batch_id)
    assert sorted(got) == [f"job-{i}" for i in range(4)]
    for line in got.values():
        assert line.outcome == "succeeded"
        assert line.billed
        assert line.body is not None
        assert orjson.loads(line.body)["candidates"][0]["content"]["parts"][0]["text"]
        usage = pricing.normalize_usage("gemini", line.usage)
        assert usage is not None
        assert usage.input_tokens > 0
        assert usage.output_tokens > 0


async def test_the_model_leaves_the_request(gemini: GeminiAdapter, emulator: EmulatorControl) -> None:
    """The same request sent sync and in a batch gets the same answer: the model moved to the URL."""
    body = lines(1)[0].body
    sync = await gemini.send_sync(ENDPOINT, body)
    info = await gemini.submit_batch(lines(1), endpoint=ENDPOINT, batch_id="b-2")
    emulator.set_clock(T0 + 61)
    batched = (await results(gemini, info.provider_batch_id))["job-0"]
    assert batched.body is not None
    assert orjson.loads(batched.body) == orjson.loads(sync.body)
    assert sync.usage == batched.usage


async def test_line_errors_by_code(gemini: GeminiAdapter, emulator: EmulatorControl) -> None:
    emulator.configure(turnaround_s=60, line_error_rate=1.0, line_error_status=429)
    info = await gemini.submit_batch(lines(2), endpoint=ENDPOINT, batch_id="b-3")
    emulator.set_clock(T0 + 61)
    got = await results(gemini, info.provider_batch_id)
    assert {line.outcome for line in got.values()} == {"retriable"}
    assert {line.error["type"] for line in got.values() if line.error} == {"RESOURCE_EXHAUSTED"}
    emulator.configure(line_error_status=400)
    info = await gemini.submit_batch(lines(2), endpoint=ENDPOINT, batch_id="b-4")
    emulator.set_clock(T0 + 200)
    got = await results(gemini, info.provider_batch_id)
    assert {line.outcome for line in got.values()} == {"failed"}
    assert not any(line.billed for line in got.values())


async def test_expired_at_48_hours_has_no_results(gemini: GeminiAdapter, emulator: EmulatorControl) -> None:
    emulator.configure(turnaround_s=60, stall=[MODEL])
    info = await gemini.submit_batch(lines(3), endpoint=ENDPOINT, batch_id="b-5")
    emulator.set_clock(T0 + 48 * 3600)
    expired = await gemini.get_batch(info.provider_batch_id)
    assert expired.status == "expired"
    assert expired.ended_at == T0 + 48 * 3600
    assert await results(gemini, info.provider_batch_id) == {}


async def test_cancel_then_no_results(gemini: GeminiAdapter, emulator: EmulatorControl) -> None:
    info = await gemini.submit_batch(lines(2), endpoint=ENDPOINT, batch_id="b-6")
    emulator.set_clock(T0 + 10)
    assert (await gemini.cancel_batch(info.provider_batch_id)).status == "in_progress"
    emulator.set_clock(T0 + 11)
    cancelled = await gemini.get_batch(info.provider_batch_id)
    assert cancelled.status == "cancelled"
    assert await results(gemini, info.provider_batch_id) == {}


async def test_results_before_the_end_are_refused(gemini: GeminiAdapter) -> None:
    info = await gemini.submit_batch(lines(1), endpoint=ENDPOINT, batch_id="b-7")
    with pytest.raises(errors.BatchNotEnded):
        await results(gemini, info.provider_batch_id)


async def test_list_newest_first_across_pages(gemini: GeminiAdapter, emulator: EmulatorControl) -> None:
    made = []
    for i in range(3):
        emulator.set_clock(T0 + i)
        made.append(
            (await gemini.submit_batch(lines(1), endpoint=ENDPOINT, batch_id=f"b-{i}")).provider_batch_id
        )
    gemini.list_page = 2
    listed = await gemini.list_batches(10)
    assert [i.provider_batch_id for i in listed] == made[::-1]
    assert [i.metadata[BATCH_ID_METADATA_KEY] for i in listed] == ["b-2", "b-1", "b-0"]


async def test_delete_stored_batch_and_files(gemini: GeminiAdapter, emulator: EmulatorControl) -> None:
    gemini.account.settings = gemini.account.settings.model_copy(update={"max_inline_batch_bytes": 0})
    info = await gemini.submit_batch(lines(1), endpoint=ENDPOINT, batch_id="b-8")
    emulator.set_clock(T0 + 61)
    done = await gemini.get_batch(info.provider_batch_id)
    assert set(done.files) == {"input_file_id", "output_file_id", "results_batch_id"}
    for object_id in done.files.values():
        await gemini.delete_stored(object_id)
        await gemini.delete_stored(object_id)  # already gone: still deleted
    with pytest.raises(errors.ProviderNotFound):
        await gemini.get_batch(info.provider_batch_id)


async def test_sync_errors_and_retries(gemini: GeminiAdapter, emulator: EmulatorControl) -> None:
    emulator.configure(fail_next={f"POST /v1beta/models/{MODEL}:generateContent": [503]})
    answer = await gemini.send_sync(ENDPOINT, lines(1)[0].body)
    assert answer.status_code == 200
    assert answer.usage is not None
    assert answer.usage["totalTokenCount"] > 0
    bad = orjson.dumps({"model": MODEL, "contents": []})
    with pytest.raises(errors.ProviderInvalidRequest):
        await gemini.send_sync(ENDPOINT, bad)


async def test_request_ids_once_shown_else_only_the_display_name_tells(
    gemini: GeminiAdapter, emulator: EmulatorControl
) -> None:
    """Reconciliation's evidence: a running batch shows no keys (matching then trusts only our id in
    ``displayName``); an ended one shows its results' keys."""
    info = await gemini.submit_batch(lines(2), endpoint=ENDPOINT, batch_id="b-9")
    with pytest.raises(errors.ProviderNotFound):
        [block async for block in gemini.request_ids(info)]
    emulator.set_clock(T0 + 61)
    ended = await gemini.get_batch(info.provider_batch_id)
    ids = [r for block in [b async for b in gemini.request_ids(ended)] for r in block]
    assert sorted(r.custom_id for r in ids) == ["job-0", "job-1"]
    assert {r.model for r in ids} == {MODEL}


async def test_a_failed_batch_names_its_error(gemini: GeminiAdapter, emulator: EmulatorControl) -> None:
    emulator.configure(invalid_file=[MODEL])
    info = await gemini.submit_batch(lines(1), endpoint=ENDPOINT, batch_id="b-10")
    assert info.status == "failed"
    assert info.errors == [{"code": "INVALID_ARGUMENT", "message": "The batch input could not be processed."}]
    assert await results(gemini, info.provider_batch_id) == {}


def test_quota_and_overload_failures_are_the_lanes_not_the_jobs() -> None:
    assert batch_error({"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "quota"})["code"] == (
        "token_limit_exceeded"
    )
    assert batch_error({"code": 503, "status": "UNAVAILABLE"})["code"] == "server_error"
