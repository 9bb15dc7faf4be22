"""The official openai SDK's AzureOpenAI client (and its OpenAI client on Azure's v1 API) drives the
emulator: files, Global Batch batches, cancel, the token-limit refusal, deployments' chat completions."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from openai.types import Batch, FileObject
from openai.types.chat import ChatCompletion

from emulator.server import EmulatorControl
from tests.emulator.sdk_polling import poll_until

DEPLOYMENT = "gpt-4o-mini-batch"  # a Global Batch deployment's name, as Azure's batch lines use it
API_VERSION = "2024-10-21"
ENDED = ("completed", "failed", "expired", "cancelled")


@pytest.fixture
def azure(emulator: EmulatorControl) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        azure_endpoint=emulator.url, api_key="azure-key", api_version=API_VERSION, max_retries=0
    )


@pytest.fixture
def azure_v1(emulator: EmulatorControl) -> openai.OpenAI:
    return openai.OpenAI(base_url=emulator.url + "/openai/v1", api_key="azure-key", max_retries=0)


def _jsonl(n: int, deployment: str = DEPLOYMENT) -> bytes:
    lines = [
        {
            "custom_id": f"task-{i}",
            "method": "POST",
            "url": "/chat/completions",
            "body": {"model": deployment, "messages": [{"role": "user", "content": f"question {i}"}]},
        }
        for i in range(n)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def _submit(client: openai.OpenAI, content: bytes) -> Batch:
    uploaded = client.files.create(file=("input.jsonl", content), purpose="batch")
    return client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/chat/completions",
        completion_window="24h",
        metadata={"batchshift_batch_id": "b-az"},
    )


def _ended(client: openai.OpenAI, batch_id: str) -> Batch:
    return poll_until(lambda: client.batches.retrieve(batch_id), lambda b: b.status in ENDED)


def test_files_and_batch_through_the_dated_api(azure: openai.AzureOpenAI, emulator: EmulatorControl) -> None:
    uploaded = azure.files.create(file=("input.jsonl", _jsonl(3)), purpose="batch")
    assert isinstance(uploaded, FileObject)
    assert uploaded.purpose == "batch"
    assert azure.files.retrieve(uploaded.id).bytes == len(_jsonl(3))
    assert uploaded.id in [f.id for f in azure.files.list(purpose="batch")]
    created = azure.batches.create(
        input_file_id=uploaded.id, endpoint="/chat/completions", completion_window="24h"
    )
    assert created.status == "validating"
    assert created.endpoint == "/chat/completions"
    assert created.model == DEPLOYMENT
    done = _ended(azure, created.id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (3, 3)
    assert done.output_file_id
    assert done.error_file_id == ""  # Azure names no error file with an empty string
    lines = [json.loads(line) for line in azure.files.content(done.output_file_id).text.splitlines()]
    assert sorted(line["custom_id"] for line in lines) == ["task-0", "task-1", "task-2"]
    assert all(line["response"]["status_code"] == 200 for line in lines)
    assert all(line["response"]["body"]["model"] == DEPLOYMENT for line in lines)
    assert created.id in [b.id for b in azure.batches.list()]
    assert azure.files.delete(uploaded.id).deleted is True
    calls = [r for r in emulator.requests() if r["path"].startswith("/openai/")]
    assert calls
    assert all(f"api-version={API_VERSION}" in r["query"] for r in calls)


def test_chat_on_a_deployment(azure: openai.AzureOpenAI, emulator: EmulatorControl) -> None:
    answer = azure.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert isinstance(answer, ChatCompletion)
    assert answer.model == "gpt-4o-mini"
    assert answer.usage is not None
    assert answer.usage.prompt_tokens > 0
    paths = [r["path"] for r in emulator.requests()]
    assert paths[-1] == "/openai/deployments/gpt-4o-mini/chat/completions"


def test_the_v1_api_needs_no_api_version(azure_v1: openai.OpenAI, emulator: EmulatorControl) -> None:
    done = _ended(azure_v1, _submit(azure_v1, _jsonl(2)).id)
    assert done.status == "completed"
    answer = azure_v1.chat.completions.create(model=DEPLOYMENT, messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content
    assert {r["path"] for r in emulator.requests()} >= {"/openai/v1/files", "/openai/v1/batches"}


def test_cancel_returns_the_done_share(azure: openai.AzureOpenAI, emulator: EmulatorControl) -> None:
    emulator.configure(stall=["*"])
    created = _submit(azure, _jsonl(2))
    cancelling = azure.batches.cancel(created.id)
    assert cancelling.status == "cancelling"
    assert _ended(azure, created.id).status == "cancelled"


def test_a_full_quota_fails_the_create_fast(azure: openai.AzureOpenAI, emulator: EmulatorControl) -> None:
    emulator.configure(token_limit_exceeded=[DEPLOYMENT], turnaround_s=3600)
    created = _submit(azure, _jsonl(2))
    assert created.status == "failed"  # at once, not after validation
    assert created.failed_at is not None
    assert created.errors is not None
    assert created.errors.data is not None
    assert [e.code for e in created.errors.data] == ["token_limit_exceeded"]
    assert created.output_file_id == ""
    emulator.configure(token_limit_exceeded=False)
    assert _submit(azure, _jsonl(2)).status == "validating"  # quota free again: the create is accepted


def test_the_dated_api_refuses_a_call_without_api_version(emulator: EmulatorControl) -> None:
    answer = httpx.get(emulator.url + "/openai/batches", headers={"api-key": "k"})
    assert answer.status_code == 404
    assert "api-version" in answer.json()["error"]["message"]


def test_a_call_without_a_key_is_refused(emulator: EmulatorControl) -> None:
    answer = httpx.get(emulator.url + "/openai/v1/batches")
    assert answer.status_code == 401
