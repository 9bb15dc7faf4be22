"""The official google-genai SDK drives the emulator: batches inline and from a file, get, list,
cancel, delete, the Files API's resumable upload and download, and generateContent.

The emulator's clock is held and stepped by each test, so batch progress depends on no timing.
The SDK is pinned to ``v1beta`` (what batchshift calls): the emulator serves Gemini there only,
since Gemini's ``/v1/batches`` and ``/v1/files`` would collide with OpenAI's paths.
"""

from __future__ import annotations

import io

import httpx
import orjson
import pytest
from google import genai
from google.genai import errors, types

from emulator.server import EmulatorControl

MODEL = "gemini-2.5-flash"
T0 = 1_800_000_000.0


@pytest.fixture
def sdk(emulator: EmulatorControl) -> genai.Client:
    emulator.set_clock(T0)
    return genai.Client(
        api_key="gemini-test-key",
        http_options=types.HttpOptions(base_url=emulator.url, api_version="v1beta"),
    )


def _inline(n: int) -> list[types.InlinedRequestDict]:
    return [
        {
            "contents": [{"parts": [{"text": f"question {i}"}], "role": "user"}],
            "metadata": {"key": f"job-{i}"},
        }
        for i in range(n)
    ]


def _jsonl(n: int) -> bytes:
    return b"".join(
        orjson.dumps({"key": f"job-{i}", "request": {"contents": [{"parts": [{"text": f"q {i}"}]}]}}) + b"\n"
        for i in range(n)
    )


def test_generate_content(sdk: genai.Client) -> None:
    answer = sdk.models.generate_content(model=MODEL, contents="Say something")
    assert answer.text
    assert answer.candidates is not None
    assert answer.candidates[0].finish_reason == types.FinishReason.STOP
    usage = answer.usage_metadata
    assert usage is not None
    assert usage.prompt_token_count is not None
    assert usage.prompt_token_count > 0
    assert usage.candidates_token_count is not None
    assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count
    again = sdk.models.generate_content(model=MODEL, contents="Say something")
    assert again.text == answer.text  # deterministic: same request, same answer


def test_a_call_without_a_key_is_refused(emulator: EmulatorControl) -> None:
    answer = httpx.post(
        f"{emulator.url}/v1beta/models/{MODEL}:generateContent",
        json={"contents": [{"parts": [{"text": "x"}]}]},
    )
    assert answer.status_code == 403
    assert answer.json()["error"]["status"] == "PERMISSION_DENIED"


def test_inline_batch_create_get_and_results(sdk: genai.Client, emulator: EmulatorControl) -> None:
    emulator.configure(turnaround_s=60)
    job = sdk.batches.create(model=MODEL, src=_inline(3), config={"display_name": "bs-inline"})
    assert job.name is not None
    assert job.name.startswith("batches/")
    assert job.display_name == "bs-inline"
    assert job.state == types.JobState.JOB_STATE_PENDING
    assert job.model == f"models/{MODEL}"
    emulator.set_clock(T0 + 30)
    assert sdk.batches.get(name=job.name).state == types.JobState.JOB_STATE_RUNNING
    emulator.set_clock(T0 + 61)
    done = sdk.batches.get(name=job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    assert done.end_time is not None
    assert done.dest is not None
    responses = done.dest.inlined_responses
    assert responses is not None
    assert [r.metadata for r in responses] == [{"key": f"job-{i}"} for i in range(3)]
    for entry in responses:
        assert entry.error is None
        assert entry.response is not None
        assert entry.response.text
        assert entry.response.usage_metadata is not None


def test_file_batch_upload_create_download(sdk: genai.Client, emulator: EmulatorControl) -> None:
    emulator.configure(turnaround_s=10, line_error_rate={MODEL: 0.5})
    uploaded = sdk.files.upload(
        file=io.BytesIO(_jsonl(6)), config={"mime_type": "application/jsonl", "display_name": "input"}
    )
    assert uploaded.name is not None
    assert uploaded.name.startswith("files/")
    assert uploaded.size_bytes == len(_jsonl(6))
    assert uploaded.mime_type == "application/jsonl"
    job = sdk.batches.create(model=MODEL, src=uploaded.name)
    assert job.name is not None
    emulator.set_clock(T0 + 11)
    done = sdk.batches.get(name=job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    assert done.dest is not None
    assert done.dest.file_name is not None
    content = sdk.files.download(file=done.dest.file_name)
    lines = [orjson.loads(line) for line in content.splitlines()]
    assert [line["key"] for line in lines] == [f"job-{i}" for i in range(6)]  # input order
    failed = [line for line in lines if "error" in line]
    succeeded = [line for line in lines if "response" in line]
    assert len(failed) + len(succeeded) == 6
    assert failed  # the 50% line error rate hits some of six stable draws
    assert succeeded
    for line in failed:
        assert line["error"]["code"] == 400
    for line in succeeded:
        assert line["response"]["usageMetadata"]["candidatesTokenCount"] > 0


def test_upload_in_chunks(sdk: genai.Client, emulator: EmulatorControl) -> None:
    """A file larger than the SDK's chunk size goes up in several upload calls, then finalizes."""
    big = b"x" * (9 * 1024 * 1024) + b"\n"
    uploaded = sdk.files.upload(file=io.BytesIO(big), config={"mime_type": "application/jsonl"})
    assert uploaded.size_bytes == len(big)
    uploads = [c for c in emulator.requests() if c["path"] == "/upload/v1beta/files"]
    assert len(uploads) == 3  # start, one full chunk, the finalizing rest
    assert sdk.files.get(name=uploaded.name or "").size_bytes == len(big)


def test_list_cancel_delete(sdk: genai.Client, emulator: EmulatorControl) -> None:
    emulator.configure(turnaround_s=100, cancel_s=1)
    first = sdk.batches.create(model=MODEL, src=_inline(1))
    emulator.set_clock(T0 + 1)
    second = sdk.batches.create(model=MODEL, src=_inline(2))
    assert first.name is not None
    assert second.name is not None
    listed = [job.name for job in sdk.batches.list(config={"page_size": 1})]
    assert listed == [second.name, first.name]  # newest first, across pages
    sdk.batches.cancel(name=first.name)
    emulator.set_clock(T0 + 3)
    cancelled = sdk.batches.get(name=first.name)
    assert cancelled.state == types.JobState.JOB_STATE_CANCELLED
    assert cancelled.dest is None  # a cancelled batch has no output
    sdk.batches.delete(name=first.name)
    with pytest.raises(errors.ClientError) as caught:
        sdk.batches.get(name=first.name)
    assert caught.value.code == 404
    assert [job.name for job in sdk.batches.list()] == [second.name]


def test_stall_and_expiry_at_48_hours(sdk: genai.Client, emulator: EmulatorControl) -> None:
    emulator.configure(turnaround_s=60, stall=[MODEL])
    job = sdk.batches.create(model=MODEL, src=_inline(2))
    assert job.name is not None
    emulator.set_clock(T0 + 47 * 3600)
    assert sdk.batches.get(name=job.name).state == types.JobState.JOB_STATE_PENDING
    emulator.set_clock(T0 + 48 * 3600)
    expired = sdk.batches.get(name=job.name)
    assert expired.state == types.JobState.JOB_STATE_EXPIRED
    assert expired.dest is None  # Gemini keeps nothing of an expired batch


def test_injected_faults_use_google_errors(sdk: genai.Client, emulator: EmulatorControl) -> None:
    emulator.configure(fail_next={"POST /v1beta/models/*": [429, 529]})
    with pytest.raises(errors.ClientError) as limited:
        sdk.models.generate_content(model=MODEL, contents="hi")
    assert limited.value.code == 429
    assert limited.value.status == "RESOURCE_EXHAUSTED"
    with pytest.raises(errors.ServerError) as overloaded:
        sdk.models.generate_content(model=MODEL, contents="hi")
    assert overloaded.value.code == 503
