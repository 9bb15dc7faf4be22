"""The provider adapters against the emulator: every batch outcome, faults, limits, sync calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from config.settings import ProviderSettings
from emulator.server import EmulatorControl, running_emulator
from tests.workers.conftest import FAST_HTTP, anthropic_settings, openai_settings
from workers import errors
from workers.providers import make_adapter
from workers.providers.anthropic import AnthropicAdapter
from workers.providers.base import BatchInfo, BatchLine, ProviderAdapter, ResultLine
from workers.providers.openai import OpenAIAdapter

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"


def openai_lines(n: int, model: str = "gpt-4o-mini") -> list[BatchLine]:
    return [
        BatchLine(
            f"job-{i}", orjson.dumps({"model": model, "messages": [{"role": "user", "content": f"q{i}"}]})
        )
        for i in range(n)
    ]


def anthropic_lines(n: int, model: str = "claude-haiku-4-5") -> list[BatchLine]:
    return [
        BatchLine(
            f"job-{i}",
            orjson.dumps(
                {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": f"q{i}"}]}
            ),
        )
        for i in range(n)
    ]


@pytest.fixture(params=["openai", "anthropic"])
def adapter(
    request: pytest.FixtureRequest, openai_adapter: OpenAIAdapter, anthropic_adapter: AnthropicAdapter
) -> ProviderAdapter:
    return openai_adapter if request.param == "openai" else anthropic_adapter


def lines_for(adapter: ProviderAdapter, n: int) -> list[BatchLine]:
    return openai_lines(n) if adapter.kind == "openai" else anthropic_lines(n)


def endpoint_for(adapter: ProviderAdapter) -> str:
    return CHAT if adapter.kind == "openai" else MESSAGES


async def submit(adapter: ProviderAdapter, n: int, batch_id: str = "b-1") -> BatchInfo:
    return await adapter.submit_batch(
        lines_for(adapter, n), endpoint=endpoint_for(adapter), batch_id=batch_id
    )


async def wait_ended(adapter: ProviderAdapter, provider_batch_id: str) -> BatchInfo:
    """Poll until the batch ended; one that never does fails the test by its timeout."""
    while not (info := await adapter.get_batch(provider_batch_id)).ended:  # noqa: ASYNC110 - the emulator's
        await asyncio.sleep(0.02)
    return info


async def collect(adapter: ProviderAdapter, provider_batch_id: str) -> dict[str, ResultLine]:
    found: dict[str, ResultLine] = {}
    async for line in adapter.results(provider_batch_id):
        assert line.custom_id not in found
        found[line.custom_id] = line
    return found


async def test_completed_batch(adapter: ProviderAdapter) -> None:
    submitted = await submit(adapter, 5)
    assert submitted.status in ("validating", "in_progress")
    assert submitted.created_at is not None
    info = await wait_ended(adapter, submitted.provider_batch_id)
    assert (info.status, info.total, info.completed, info.failed) == ("completed", 5, 5, 0)
    assert info.ended_at is not None
    results = await collect(adapter, info.provider_batch_id)
    assert sorted(results) == [f"job-{i}" for i in range(5)]
    for line in results.values():
        assert line.outcome == "succeeded"
        assert line.billed is True
        assert line.error is None
        assert line.usage is not None
        assert line.body is not None
        assert orjson.loads(line.body)["usage"] == line.usage


async def test_openai_batch_carries_our_batch_id_in_metadata(openai_adapter: OpenAIAdapter) -> None:
    submitted = await submit(openai_adapter, 1, batch_id="b-42")
    assert submitted.metadata == {"batchshift_batch_id": "b-42"}
    assert [b.metadata for b in await openai_adapter.list_batches()] == [{"batchshift_batch_id": "b-42"}]


async def test_results_come_back_out_of_order(adapter: ProviderAdapter) -> None:
    info = await wait_ended(adapter, (await submit(adapter, 40)).provider_batch_id)
    order = [line.custom_id async for line in adapter.results(info.provider_batch_id)]
    assert sorted(order) == sorted(f"job-{i}" for i in range(40))
    assert order != [f"job-{i}" for i in range(40)]


@pytest.mark.parametrize(("status", "outcome"), [(400, "failed"), (500, "retriable"), (429, "retriable")])
async def test_partial_line_errors(
    adapter: ProviderAdapter, emulator: EmulatorControl, status: int, outcome: str
) -> None:
    emulator.configure(line_error_rate=0.3, line_error_status=status)
    info = await wait_ended(adapter, (await submit(adapter, 30)).provider_batch_id)
    assert info.status == "completed"
    results = await collect(adapter, info.provider_batch_id)
    assert len(results) == 30
    bad = [r for r in results.values() if r.outcome != "succeeded"]
    assert 0 < len(bad) < 30
    assert info.failed == len(bad)
    assert {r.outcome for r in bad} == {outcome}
    for line in bad:
        assert line.billed is False
        assert line.body is None
        assert line.error is not None
        assert line.error["type"]
        assert line.error["message"]


async def test_invalid_request_bodies_fail_for_good(adapter: ProviderAdapter) -> None:
    model = orjson.loads(lines_for(adapter, 1)[0].body)["model"]
    broken = BatchLine("broken", orjson.dumps({"model": model, "max_tokens": 5, "messages": []}))
    lines = [*lines_for(adapter, 2), broken]
    info = await adapter.submit_batch(lines, endpoint=endpoint_for(adapter), batch_id="b-1")
    results = await collect(adapter, (await wait_ended(adapter, info.provider_batch_id)).provider_batch_id)
    assert results["broken"].outcome == "failed"
    assert results["job-0"].outcome == "succeeded"


async def test_completed_with_only_an_error_file(
    openai_adapter: OpenAIAdapter, emulator: EmulatorControl
) -> None:
    emulator.configure(line_error_rate=1.0)
    info = await wait_ended(openai_adapter, (await submit(openai_adapter, 4)).provider_batch_id)
    assert (info.status, info.completed, info.failed) == ("completed", 0, 4)
    results = await collect(openai_adapter, info.provider_batch_id)
    assert {r.outcome for r in results.values()} == {"failed"}
    assert len(results) == 4


async def test_expired_with_partial_results(adapter: ProviderAdapter, emulator: EmulatorControl) -> None:
    emulator.configure(expire={"*": 0.5})
    info = await wait_ended(adapter, (await submit(adapter, 10)).provider_batch_id)
    assert info.status == "expired"
    assert (info.total, info.completed, info.failed) == (10, 5, 5)
    results = await collect(adapter, info.provider_batch_id)
    outcomes = sorted(r.outcome for r in results.values())
    assert outcomes == ["retriable"] * 5 + ["succeeded"] * 5
    expired = [r for r in results.values() if r.outcome == "retriable"]
    assert all(r.error is not None and "expired" in r.error["type"] for r in expired)


async def test_cancelled(adapter: ProviderAdapter, emulator: EmulatorControl) -> None:
    emulator.configure(turnaround_s=60)
    submitted = await submit(adapter, 3)
    cancelling = await adapter.cancel_batch(submitted.provider_batch_id)
    assert cancelling.status == "cancelling"
    with pytest.raises(errors.BatchNotEnded):
        await collect(adapter, submitted.provider_batch_id)
    info = await wait_ended(adapter, submitted.provider_batch_id)
    assert info.status == "cancelled"
    results = await collect(adapter, info.provider_batch_id)
    assert {r.outcome for r in results.values()} == {"retriable"}
    assert len(results) == 3


async def test_invalid_file_fails_the_batch(openai_adapter: OpenAIAdapter, emulator: EmulatorControl) -> None:
    emulator.configure(invalid_file=True)
    info = await wait_ended(openai_adapter, (await submit(openai_adapter, 2)).provider_batch_id)
    assert info.status == "failed"
    assert info.errors
    assert info.errors[0]["code"] == "invalid_file"
    assert await collect(openai_adapter, info.provider_batch_id) == {}


async def test_rate_limit_then_success(adapter: ProviderAdapter, emulator: EmulatorControl) -> None:
    create = "POST /v1/batches" if adapter.kind == "openai" else "POST /v1/messages/batches"
    emulator.configure(fail_next={create: [429], "GET *": [429, 429]})
    info = await wait_ended(adapter, (await submit(adapter, 2)).provider_batch_id)
    assert info.status == "completed"
    statuses = [c["status"] for c in emulator.requests()]
    assert statuses.count(429) == 3


async def test_server_error_then_success_on_reads_and_sync(
    adapter: ProviderAdapter, emulator: EmulatorControl
) -> None:
    info = await submit(adapter, 2)
    emulator.configure(fail_next={"GET *": [500, 502], f"POST {endpoint_for(adapter)}": [500, 529]})
    assert (await wait_ended(adapter, info.provider_batch_id)).status == "completed"
    assert len(await collect(adapter, info.provider_batch_id)) == 2
    answer = await adapter.send_sync(endpoint_for(adapter), lines_for(adapter, 1)[0].body)
    assert answer.status_code == 200
    assert answer.usage is not None
    assert sorted(c["status"] for c in emulator.requests() if c["status"] >= 500) == [
        500,
        500,
        502,
        503 if adapter.kind == "openai" else 529,
    ]


async def test_server_error_on_create_is_an_unknown_outcome_not_a_retry(
    adapter: ProviderAdapter, emulator: EmulatorControl
) -> None:
    create = "POST /v1/batches" if adapter.kind == "openai" else "POST /v1/messages/batches"
    emulator.configure(fail_next={create: [500]})
    with pytest.raises(errors.BatchCreateUnknown) as caught:
        await submit(adapter, 2, batch_id="b-7")
    assert caught.value.batch_id == "b-7"
    creates = [c for c in emulator.requests() if f"{c['method']} {c['path']}" == create]
    assert len(creates) == 1
    assert await adapter.list_batches() == []  # reconciliation finds nothing: safe to resubmit


async def test_timeout_after_sending_a_create_is_an_unknown_outcome() -> None:
    """A read timeout on create (MockTransport: the emulator cannot hang a create)."""
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path.endswith("/files"):
            return httpx.Response(200, json={"id": "file-1", "object": "file"})
        raise httpx.ReadTimeout("no answer", request=request)

    settings = ProviderSettings(kind="openai", base_url="https://api.example/v1", api_key="k", http=FAST_HTTP)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        adapter = make_adapter("openai", settings, client)
        with pytest.raises(errors.BatchCreateUnknown):
            await adapter.submit_batch(openai_lines(1), endpoint=CHAT, batch_id="b-1")
    assert calls == ["/v1/files", "/v1/batches"]


async def test_anthropic_custom_id_rules_are_checked_before_sending(
    anthropic_adapter: AnthropicAdapter, emulator: EmulatorControl
) -> None:
    body = anthropic_lines(1)[0].body
    for bad in ("has space", "x" * 65, "dots.not.allowed", ""):
        with pytest.raises(errors.InvalidBatchInput):
            await anthropic_adapter.submit_batch([BatchLine(bad, body)], endpoint=MESSAGES, batch_id="b-1")
    with pytest.raises(errors.InvalidBatchInput):
        await anthropic_adapter.submit_batch([BatchLine("a", body)] * 2, endpoint=MESSAGES, batch_id="b-1")
    assert emulator.requests() == []
    ok = await anthropic_adapter.submit_batch(
        [BatchLine("A-z_09" + "x" * 58, body)], endpoint=MESSAGES, batch_id="b"
    )
    assert ok.total == 1


async def test_a_batch_split_by_request_and_byte_limits(
    emulator: EmulatorControl, client: httpx.AsyncClient
) -> None:
    lines = openai_lines(10)
    one_line = len(lines[0].body) + 100
    by_requests = make_adapter("o", openai_settings(emulator.url, max_batch_requests=4), client)
    assert [len(g) for g in by_requests.split(lines, endpoint=CHAT)] == [4, 4, 2]
    by_bytes = make_adapter("o", openai_settings(emulator.url, max_batch_bytes=3 * one_line), client)
    groups = list(by_bytes.split(lines, endpoint=CHAT))
    assert [line.custom_id for group in groups for line in group] == [line.custom_id for line in lines]
    assert all(
        sum(by_bytes.line_size(line, endpoint=CHAT) for line in group) <= 3 * one_line for group in groups
    )
    assert len(groups) == 4
    submitted = [
        await by_bytes.submit_batch(g, endpoint=CHAT, batch_id=f"b-{i}") for i, g in enumerate(groups)
    ]
    ended = [await wait_ended(by_bytes, s.provider_batch_id) for s in submitted]
    assert sum(info.completed for info in ended) == 10
    with pytest.raises(errors.BatchTooLarge):
        await by_requests.submit_batch(lines, endpoint=CHAT, batch_id="too-big")
    with pytest.raises(errors.BatchTooLarge):
        await by_bytes.submit_batch(lines, endpoint=CHAT, batch_id="too-big")
    assert not [c for c in emulator.requests() if c["path"] == "/v1/files" and c["status"] == 200][4:]


async def test_anthropic_split_counts_the_whole_request_body(
    emulator: EmulatorControl, client: httpx.AsyncClient
) -> None:
    lines = anthropic_lines(6)
    limit = sum(len(line.body) + 40 for line in lines[:3])
    adapter = make_adapter("a", anthropic_settings(emulator.url, max_batch_bytes=limit), client)
    groups = list(adapter.split(lines, endpoint=MESSAGES))
    assert sum(len(g) for g in groups) == 6
    for i, group in enumerate(groups):
        info = await adapter.submit_batch(group, endpoint=MESSAGES, batch_id=f"b-{i}")
        assert info.total == len(group)


async def test_submit_accepts_an_async_iterable(openai_adapter: OpenAIAdapter) -> None:
    async def produce() -> AsyncIterator[BatchLine]:
        for line in openai_lines(3):
            yield line

    info = await openai_adapter.submit_batch(produce(), endpoint=CHAT, batch_id="b-1")
    assert (await wait_ended(openai_adapter, info.provider_batch_id)).completed == 3


async def test_list_batches_newest_first_across_pages(adapter: ProviderAdapter) -> None:
    ids = [(await submit(adapter, 1, batch_id=f"b-{i}")).provider_batch_id for i in range(3)]
    assert [b.provider_batch_id for b in await adapter.list_batches()] == ids[::-1]
    assert [b.provider_batch_id for b in await adapter.list_batches(limit=2)] == ids[::-1][:2]


async def test_send_sync_passes_service_tier_and_returns_usage_and_headers(
    openai_adapter: OpenAIAdapter, emulator: EmulatorControl
) -> None:
    answer = await openai_adapter.send_sync(CHAT, openai_lines(1)[0].body, service_tier="flex")
    assert orjson.loads(answer.body)["service_tier"] == "flex"
    assert answer.usage is not None
    assert answer.usage["total_tokens"] == answer.usage["prompt_tokens"] + answer.usage["completion_tokens"]
    assert answer.headers["content-type"] == "application/json"
    assert [c.get("service_tier") for c in emulator.requests()] == ["flex"]


async def test_send_sync_can_fail_fast(openai_adapter: OpenAIAdapter, emulator: EmulatorControl) -> None:
    emulator.configure(flex_unavailable=1.0)
    with pytest.raises(errors.RateLimited):
        await openai_adapter.send_sync(CHAT, openai_lines(1)[0].body, service_tier="flex", max_retries=0)
    assert len(emulator.requests()) == 1


async def test_invalid_sync_request_is_invalid_request(anthropic_adapter: AnthropicAdapter) -> None:
    with pytest.raises(errors.ProviderInvalidRequest) as caught:
        await anthropic_adapter.send_sync(MESSAGES, b'{"model": "claude-haiku-4-5", "messages": []}')
    assert caught.value.type == "invalid_request_error"
    assert caught.value.retriable is False


async def test_openai_compatible_auth_header_and_path_prefix(
    emulator: EmulatorControl, client: httpx.AsyncClient
) -> None:
    """Azure-style: key in ``api-key``, the version path configured as a prefix instead of in base_url."""
    settings = openai_settings(emulator.url, auth_header="api-key", path_prefix="/v1")
    settings = settings.model_copy(update={"base_url": emulator.url})
    adapter = make_adapter("azure", settings, client)
    info = await adapter.submit_batch(openai_lines(1), endpoint=CHAT, batch_id="b-1")
    assert (await wait_ended(adapter, info.provider_batch_id)).completed == 1


async def test_wrong_key_is_an_authentication_error(
    emulator: EmulatorControl, client: httpx.AsyncClient
) -> None:

    with running_emulator(api_key="sk-right") as url:
        adapter = make_adapter("o", openai_settings(url, api_key="sk-wrong"), client)
        with pytest.raises(errors.AuthenticationError):
            await adapter.list_batches()
        anthropic = make_adapter("a", anthropic_settings(url, api_key="sk-wrong"), client)
        with pytest.raises(errors.AuthenticationError):
            await anthropic.list_batches()
