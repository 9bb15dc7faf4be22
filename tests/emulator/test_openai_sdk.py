"""The official openai SDK drives the emulator: batches end to end, cancel, expiry, errors, sync calls."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest
from openai.types import Batch, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion

from emulator.server import EmulatorControl, running_emulator
from tests.emulator.sdk_polling import poll_until

MODEL = "gpt-4o-mini"
ENDED = ("completed", "failed", "expired", "cancelled")


@pytest.fixture
def sdk(emulator: EmulatorControl) -> openai.OpenAI:
    return openai.OpenAI(base_url=emulator.url + "/v1", api_key="sk-test", max_retries=0)


def _jsonl(n: int, model: str = MODEL, **body: object) -> bytes:
    lines = [
        {
            "custom_id": f"job-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"question {i}"}], **body},
        }
        for i in range(n)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def _submit(sdk: openai.OpenAI, content: bytes, metadata: dict[str, str] | None = None) -> Batch:
    uploaded = sdk.files.create(file=("input.jsonl", content), purpose="batch")
    return sdk.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata=metadata or {"batchshift_batch_id": "b-1"},
    )


def _ended(sdk: openai.OpenAI, batch_id: str) -> Batch:
    return poll_until(lambda: sdk.batches.retrieve(batch_id), lambda b: b.status in ENDED)


def _lines(sdk: openai.OpenAI, file_id: str | None) -> Iterator[dict[str, object]]:
    if file_id is None:
        return iter(())
    return (json.loads(line) for line in sdk.files.content(file_id).text.splitlines())


def test_batch_create_poll_results(sdk: openai.OpenAI) -> None:
    uploaded = sdk.files.create(file=("input.jsonl", _jsonl(4)), purpose="batch")
    assert uploaded.purpose == "batch"
    assert uploaded.bytes == len(_jsonl(4))
    assert sdk.files.retrieve(uploaded.id).filename == "input.jsonl"
    created = sdk.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"batchshift_batch_id": "b-1"},
    )
    assert created.status == "validating"
    assert created.request_counts is not None
    assert created.request_counts.total == 0
    done = _ended(sdk, created.id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (4, 4, 0)
    assert done.metadata == {"batchshift_batch_id": "b-1"}
    assert done.in_progress_at is not None
    assert done.finalizing_at is not None
    assert done.completed_at is not None
    assert done.error_file_id is None
    assert done.usage is not None
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens
    lines = list(_lines(sdk, done.output_file_id))
    assert sorted(str(line["custom_id"]) for line in lines) == [f"job-{i}" for i in range(4)]
    for line in lines:
        response = line["response"]
        assert isinstance(response, dict)
        assert response["status_code"] == 200
        completion = ChatCompletion.model_validate(response["body"])
        assert completion.choices[0].message.content
        assert completion.usage is not None
        assert completion.usage.completion_tokens > 0


def test_request_counts_grow_to_the_total_while_in_progress(
    sdk: openai.OpenAI, emulator: EmulatorControl
) -> None:
    emulator.configure(turnaround_s=0.6)
    batch = _submit(sdk, _jsonl(50))
    seen: list[tuple[str, int]] = []

    def fetch() -> Batch:
        current = sdk.batches.retrieve(batch.id)
        assert current.request_counts is not None
        seen.append((current.status, current.request_counts.completed))
        return current

    poll_until(fetch, lambda b: b.status == "completed")
    completed = [count for _, count in seen]
    assert completed == sorted(completed)
    assert completed[-1] == 50
    assert {status for status, _ in seen} <= {"validating", "in_progress", "finalizing", "completed"}


def test_output_order_is_shuffled_and_reproducible_per_batch(sdk: openai.OpenAI) -> None:
    batch = _ended(sdk, _submit(sdk, _jsonl(30)).id)
    order = [line["custom_id"] for line in _lines(sdk, batch.output_file_id)]
    assert order != [f"job-{i}" for i in range(30)]
    assert order == [line["custom_id"] for line in _lines(sdk, batch.output_file_id)]


def test_cancel_goes_through_cancelling_to_cancelled(sdk: openai.OpenAI, emulator: EmulatorControl) -> None:
    emulator.configure(turnaround_s=60)
    batch = _submit(sdk, _jsonl(3))
    cancelling = sdk.batches.cancel(batch.id)
    assert cancelling.status == "cancelling"
    assert cancelling.cancelling_at is not None
    done = _ended(sdk, batch.id)
    assert done.status == "cancelled"
    assert done.cancelled_at is not None
    codes = {line["custom_id"]: line["error"] for line in _lines(sdk, done.error_file_id)}
    assert set(codes) == {"job-0", "job-1", "job-2"}
    assert all(isinstance(e, dict) and e["code"] == "batch_cancelled" for e in codes.values())
    with pytest.raises(openai.BadRequestError):
        sdk.batches.cancel(batch.id)


def test_expiry_keeps_the_done_share_and_lists_the_rest_as_batch_expired(
    sdk: openai.OpenAI, emulator: EmulatorControl
) -> None:
    emulator.configure(expire={MODEL: 0.5})
    done = _ended(sdk, _submit(sdk, _jsonl(10)).id)
    assert done.status == "expired"
    assert done.expired_at is not None
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (5, 5)
    outputs = list(_lines(sdk, done.output_file_id))
    errors = list(_lines(sdk, done.error_file_id))
    assert len(outputs) == 5
    assert len(errors) == 5
    assert all(e["response"] is None and e["error"]["code"] == "batch_expired" for e in errors)  # type: ignore[index]


def test_line_errors_land_in_the_error_file_with_the_http_error_in_the_body(
    sdk: openai.OpenAI, emulator: EmulatorControl
) -> None:
    emulator.configure(line_error_rate=1.0, line_error_status=500)
    done = _ended(sdk, _submit(sdk, _jsonl(3)).id)
    assert done.status == "completed"
    assert done.output_file_id is None
    errors = list(_lines(sdk, done.error_file_id))
    assert len(errors) == 3
    for line in errors:
        response = line["response"]
        assert isinstance(response, dict)
        assert response["status_code"] == 500
        assert response["body"]["error"]["type"] == "server_error"
        assert line["error"] is None


def test_an_invalid_file_fails_the_batch_with_errors_data(sdk: openai.OpenAI) -> None:
    content = _jsonl(2) + b"not json\n" + _jsonl(1, model="gpt-4o")
    done = _ended(sdk, _submit(sdk, content).id)
    assert done.status == "failed"
    assert done.failed_at is not None
    assert done.errors is not None
    assert done.errors.data is not None
    codes = {(e.code, e.line) for e in done.errors.data}
    assert ("invalid_json_line", 3) in codes
    assert ("duplicate_custom_id", 4) in codes
    assert ("model_mismatch", None) in codes


def test_invalid_file_fault_fails_the_batch(sdk: openai.OpenAI, emulator: EmulatorControl) -> None:
    emulator.configure(invalid_file=[MODEL])
    done = _ended(sdk, _submit(sdk, _jsonl(2)).id)
    assert done.status == "failed"
    assert done.errors is not None
    assert done.errors.data is not None
    assert done.errors.data[0].code == "invalid_file"


def test_list_pages_newest_first_with_after(sdk: openai.OpenAI) -> None:
    ids = [_submit(sdk, _jsonl(1), {"batchshift_batch_id": f"b-{i}"}).id for i in range(3)]
    first = sdk.batches.list(limit=2)
    assert [b.id for b in first.data] == ids[::-1][:2]
    assert first.has_more is True
    assert [b.id for b in sdk.batches.list(limit=2)] == ids[::-1]  # the SDK follows the cursor
    assert [b.id for b in sdk.batches.list(after=ids[2], limit=5).data] == ids[1::-1]


def test_unknown_objects_are_404s(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        sdk.batches.retrieve("batch_nope")
    with pytest.raises(openai.NotFoundError):
        sdk.files.content("file-nope")


def test_injected_429_carries_retry_after(sdk: openai.OpenAI, emulator: EmulatorControl) -> None:
    emulator.configure(fail_next={"POST /v1/chat/completions": [429]}, retry_after_s=3)
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.response.headers["retry-after"] == "3"
    assert caught.value.code == "rate_limit_exceeded"
    answer = sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content


def test_injected_server_errors_and_overloads(sdk: openai.OpenAI, emulator: EmulatorControl) -> None:
    emulator.configure(fail_next={"/v1/embeddings": [500, 529]})
    with pytest.raises(openai.InternalServerError) as first:
        sdk.embeddings.create(model="text-embedding-3-small", input="x")
    assert first.value.status_code == 500
    with pytest.raises(openai.InternalServerError) as second:
        sdk.embeddings.create(model="text-embedding-3-small", input="x")
    assert second.value.status_code == 503  # OpenAI's overload answer


def test_wrong_or_missing_key_is_a_401() -> None:
    with running_emulator(api_key="sk-right") as url:
        wrong = openai.OpenAI(base_url=url + "/v1", api_key="sk-wrong-key", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            wrong.batches.list()
        assert caught.value.code == "invalid_api_key"
        right = openai.OpenAI(base_url=url + "/v1", api_key="sk-right", max_retries=0)
        assert right.batches.list().data == []


def test_chat_completion_passes_service_tier_and_honours_max_tokens(sdk: openai.OpenAI) -> None:
    answer = sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hello"}],
        service_tier="flex",
        max_completion_tokens=3,
    )
    assert answer.service_tier == "flex"
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 3
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 3
    again = sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello"}])
    assert again.service_tier == "default"


def test_flex_can_be_made_unavailable(sdk: openai.OpenAI, emulator: EmulatorControl) -> None:
    emulator.configure(flex_unavailable=1.0)
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], service_tier="flex"
        )
    assert sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}]).choices
    logged = [(c["path"], c["status"], c.get("service_tier")) for c in emulator.requests()]
    assert logged == [("/v1/chat/completions", 429, "flex"), ("/v1/chat/completions", 200, "auto")]


def test_a_long_system_prompt_is_cached_the_second_time(sdk: openai.OpenAI) -> None:
    system = "You are a careful assistant. " * 200  # about 1,450 tokens by the emulator's count
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "hi"}]
    first = sdk.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
    second = sdk.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
    assert first.usage is not None
    assert second.usage is not None
    assert first.usage.prompt_tokens_details is not None
    assert second.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached is not None
    assert cached >= 1024
    assert cached % 128 == 0


def test_embeddings_and_responses(sdk: openai.OpenAI) -> None:
    embedded = sdk.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert isinstance(embedded, CreateEmbeddingResponse)
    assert [d.index for d in embedded.data] == [0, 1]
    assert len(embedded.data[0].embedding) == 8
    assert embedded.usage.prompt_tokens == embedded.usage.total_tokens == 2
    response = sdk.responses.create(model=MODEL, input="hello", service_tier="flex")
    assert response.output_text
    assert response.service_tier == "flex"
    assert response.usage is not None
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


def test_invalid_sync_requests_are_400s(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model=MODEL, messages=[])


def test_a_held_clock_moves_batches_only_when_set(sdk: openai.OpenAI, emulator: EmulatorControl) -> None:
    """With its clock held (as the SLO end-to-end test holds it) a batch progresses only when the
    clock is set forward, however long the machine takes; reset returns to the wall clock."""
    start = 1_700_000_000.0
    emulator.set_clock(start)
    batch = _submit(sdk, _jsonl(2))
    assert batch.created_at == int(start)
    emulator.set_clock(start + 0.01)
    assert sdk.batches.retrieve(batch.id).status in ("validating", "in_progress")
    emulator.set_clock(start + 3600)
    ended = sdk.batches.retrieve(batch.id)
    assert ended.status == "completed"
    assert ended.completed_at is not None
    assert ended.completed_at <= start + 3600
    emulator.reset()  # back on the wall clock
    assert _submit(sdk, _jsonl(1)).created_at > start + 3600
