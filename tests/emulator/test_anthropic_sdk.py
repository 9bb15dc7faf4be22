"""The official anthropic SDK drives the emulator: message batches end to end, cancel, expiry, errors."""

from __future__ import annotations

import anthropic
import httpx
import pytest
from anthropic.types.messages import MessageBatch

from emulator.server import EmulatorControl, running_emulator
from tests.emulator.sdk_polling import poll_until

MODEL = "claude-haiku-4-5"


@pytest.fixture
def sdk(emulator: EmulatorControl) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=emulator.url, api_key="sk-ant-test", max_retries=0)


def _requests(n: int, **params: object) -> list[dict[str, object]]:
    return [
        {
            "custom_id": f"job-{i}",
            "params": {
                "model": MODEL,
                "max_tokens": 16,
                "messages": [{"role": "user", "content": f"question {i}"}],
                **params,
            },
        }
        for i in range(n)
    ]


def _ended(sdk: anthropic.Anthropic, batch_id: str) -> MessageBatch:
    return poll_until(
        lambda: sdk.messages.batches.retrieve(batch_id), lambda b: b.processing_status == "ended"
    )


def test_batch_create_poll_results(sdk: anthropic.Anthropic) -> None:
    created = sdk.messages.batches.create(requests=_requests(4))  # type: ignore[arg-type]
    assert created.processing_status == "in_progress"
    assert created.request_counts.processing == 4
    assert created.request_counts.succeeded == 0
    assert created.results_url is None
    done = _ended(sdk, created.id)
    assert done.request_counts.succeeded == 4
    assert done.request_counts.processing == 0
    assert done.ended_at is not None
    assert done.ended_at >= done.created_at
    assert done.results_url is not None
    results = list(sdk.messages.batches.results(created.id))
    assert sorted(r.custom_id for r in results) == [f"job-{i}" for i in range(4)]
    for entry in results:
        assert entry.result.type == "succeeded"
        message = entry.result.message
        assert message.content[0].type == "text"
        assert message.usage.service_tier == "batch"
        assert message.usage.output_tokens > 0


def test_request_counts_stay_zero_until_the_batch_ends(
    sdk: anthropic.Anthropic, emulator: EmulatorControl
) -> None:
    emulator.configure(turnaround_s=0.5)
    created = sdk.messages.batches.create(requests=_requests(20))  # type: ignore[arg-type]
    seen: list[MessageBatch] = []

    def fetch() -> MessageBatch:
        seen.append(sdk.messages.batches.retrieve(created.id))
        return seen[-1]

    poll_until(fetch, lambda b: b.processing_status == "ended")
    for batch in seen[:-1]:
        counts = batch.request_counts
        assert (counts.processing, counts.succeeded, counts.errored) == (20, 0, 0)
    assert seen[-1].request_counts.succeeded == 20


def test_cancel_goes_through_canceling_to_ended_with_canceled_results(
    sdk: anthropic.Anthropic, emulator: EmulatorControl
) -> None:
    emulator.configure(turnaround_s=60)
    created = sdk.messages.batches.create(requests=_requests(3))  # type: ignore[arg-type]
    canceling = sdk.messages.batches.cancel(created.id)
    assert canceling.processing_status == "canceling"
    assert canceling.cancel_initiated_at is not None
    done = _ended(sdk, created.id)
    assert done.request_counts.canceled == 3
    assert {r.result.type for r in sdk.messages.batches.results(created.id)} == {"canceled"}


def test_expiry_keeps_the_done_share(sdk: anthropic.Anthropic, emulator: EmulatorControl) -> None:
    emulator.configure(expire={"*": 0.5})
    created = sdk.messages.batches.create(requests=_requests(4))  # type: ignore[arg-type]
    done = _ended(sdk, created.id)
    assert (done.request_counts.succeeded, done.request_counts.expired) == (2, 2)
    types = sorted(r.result.type for r in sdk.messages.batches.results(created.id))
    assert types == ["expired", "expired", "succeeded", "succeeded"]


def test_errored_results_carry_the_error_response(
    sdk: anthropic.Anthropic, emulator: EmulatorControl
) -> None:
    emulator.configure(line_error_rate=1.0, line_error_status=529)
    requests = _requests(2)
    requests.append(
        {"custom_id": "bad", "params": {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}}
    )
    created = sdk.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    _ended(sdk, created.id)
    errors = {}
    for entry in sdk.messages.batches.results(created.id):
        assert entry.result.type == "errored"
        errors[entry.custom_id] = entry.result.error.error.type
    assert errors == {
        "job-0": "overloaded_error",
        "job-1": "overloaded_error",
        "bad": "invalid_request_error",
    }


@pytest.mark.parametrize(
    "custom_ids",
    [["ok", "has space"], ["x" * 65], [""], ["dup", "dup"]],
    ids=["space", "too-long", "empty", "duplicate"],
)
def test_custom_ids_are_validated_at_create(sdk: anthropic.Anthropic, custom_ids: list[str]) -> None:
    params = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    requests = [{"custom_id": cid, "params": params} for cid in custom_ids]
    with pytest.raises(anthropic.BadRequestError) as caught:
        sdk.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


def test_list_pages_newest_first(sdk: anthropic.Anthropic) -> None:
    ids = [sdk.messages.batches.create(requests=_requests(1)).id for _ in range(3)]  # type: ignore[arg-type]
    first = sdk.messages.batches.list(limit=2)
    assert [b.id for b in first.data] == ids[::-1][:2]
    assert first.has_more is True
    assert [b.id for b in sdk.messages.batches.list(limit=2)] == ids[::-1]
    assert [b.id for b in sdk.messages.batches.list(after_id=ids[2], limit=5).data] == ids[1::-1]
    assert [b.id for b in sdk.messages.batches.list(before_id=ids[0], limit=1).data] == [ids[1]]


def test_delete_only_after_the_end(sdk: anthropic.Anthropic) -> None:
    created = sdk.messages.batches.create(requests=_requests(1))  # type: ignore[arg-type]
    with pytest.raises(anthropic.BadRequestError):
        sdk.messages.batches.delete(created.id)
    _ended(sdk, created.id)
    deleted = sdk.messages.batches.delete(created.id)
    assert (deleted.id, deleted.type) == (created.id, "message_batch_deleted")
    with pytest.raises(anthropic.NotFoundError):
        sdk.messages.batches.retrieve(created.id)


def test_results_before_the_end_are_refused(sdk: anthropic.Anthropic, emulator: EmulatorControl) -> None:
    emulator.configure(turnaround_s=60)
    created = sdk.messages.batches.create(requests=_requests(1))  # type: ignore[arg-type]
    with pytest.raises(anthropic.AnthropicError):
        list(sdk.messages.batches.results(created.id))


def test_messages_create_with_usage_and_prompt_caching(sdk: anthropic.Anthropic) -> None:
    system = [{"type": "text", "text": "Reference text. " * 300, "cache_control": {"type": "ephemeral"}}]
    messages = [{"role": "user", "content": "summarise"}]
    first = sdk.messages.create(model=MODEL, max_tokens=4, system=system, messages=messages)  # type: ignore[arg-type]
    second = sdk.messages.create(model=MODEL, max_tokens=4, system=system, messages=messages)  # type: ignore[arg-type]
    assert first.stop_reason == "max_tokens"
    assert first.usage.output_tokens == 4
    assert first.usage.cache_creation_input_tokens is not None
    assert first.usage.cache_creation_input_tokens >= 1024
    assert first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert second.usage.cache_creation_input_tokens == 0
    assert second.usage.input_tokens == first.usage.input_tokens
    plain = sdk.messages.create(model=MODEL, max_tokens=4, messages=messages)  # type: ignore[arg-type]
    assert plain.usage.cache_read_input_tokens == 0
    assert plain.usage.service_tier == "standard"


def test_injected_overload_is_a_529(sdk: anthropic.Anthropic, emulator: EmulatorControl) -> None:
    emulator.configure(fail_next={"/v1/messages": [529]})
    with pytest.raises(anthropic.InternalServerError) as caught:
        sdk.messages.create(model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 529
    assert caught.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]


def test_auth_and_version_headers_are_required(emulator: EmulatorControl) -> None:
    body = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "x"}]}
    url = emulator.url + "/v1/messages"
    missing_key = httpx.post(url, json=body, headers={"anthropic-version": "2023-06-01"})
    assert missing_key.status_code == 401
    assert missing_key.json()["error"]["type"] == "authentication_error"
    missing_version = httpx.post(url, json=body, headers={"x-api-key": "k"})
    assert missing_version.status_code == 400
    assert missing_version.json()["error"]["type"] == "invalid_request_error"
    with running_emulator(api_key="sk-ant-right") as other:
        wrong = anthropic.Anthropic(base_url=other, api_key="sk-ant-wrong", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError):
            wrong.messages.batches.list()
