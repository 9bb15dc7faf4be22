"""The emulator's OpenAI objects validate against OpenAI's published OpenAPI schemas (../shared/specs/).

Batch, file and list objects are checked against the current spec; batch input and output lines
against the June 2025 edition, the last to carry ``BatchRequestInput``/``BatchRequestOutput``.
OpenAPI's ``nullable: true`` is rewritten as JSON Schema's ``type: [..., "null"]``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from emulator.server import EmulatorControl
from tests.emulator.sdk_polling import poll_until
from workers.providers.base import BatchLine
from workers.providers.batch_input import OPENAI_FORMAT

SPECS = Path(__file__).resolve().parents[3] / "shared" / "specs"
CURRENT, JUNE_2025 = "openai-openapi.yaml", "openai-openapi-2025-06.yaml"
MODEL = "gpt-4o-mini"


def _nullable_to_json_schema(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _nullable_to_json_schema(v) for k, v in node.items()}
        if out.pop("nullable", False) is True and isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        return out
    if isinstance(node, list):
        return [_nullable_to_json_schema(v) for v in node]
    return node


class Specs:
    """Both spec files loaded once, with ``$ref``s resolved through one registry."""

    def __init__(self) -> None:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        resources = []
        for name in (CURRENT, JUNE_2025):
            doc = _nullable_to_json_schema(yaml.load((SPECS / name).read_text(), Loader=loader))  # noqa: S506
            resources.append((name, Resource.from_contents(doc, default_specification=DRAFT202012)))
        self.registry: Registry[Any] = Registry().with_resources(resources)

    def errors(self, spec: str, schema: str, instance: Any) -> list[str]:
        validator = Draft202012Validator(
            {"$ref": f"{spec}#/components/schemas/{schema}"}, registry=self.registry
        )
        return [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(instance)
        ]


@pytest.fixture(scope="session")
def specs() -> Specs:
    if not (SPECS / CURRENT).exists():
        # CI lays shared/ beside the clone: there a missing spec is a failure, not a quiet skip.
        if os.environ.get("CI"):
            pytest.fail(f"OpenAI specs not found in {SPECS}")
        pytest.skip(f"OpenAI specs not found in {SPECS}")
    return Specs()


@pytest.fixture
def api(emulator: EmulatorControl) -> httpx.Client:
    return httpx.Client(base_url=emulator.url + "/v1", headers={"authorization": "Bearer sk-test"})


@pytest.fixture
def sdk(emulator: EmulatorControl) -> openai.OpenAI:
    return openai.OpenAI(base_url=emulator.url + "/v1", api_key="sk-test", max_retries=0)


def _jsonl(n: int, model: str = MODEL) -> bytes:
    lines = [
        BatchLine(
            f"job-{i}",
            json.dumps({"model": model, "messages": [{"role": "user", "content": str(i)}]}).encode(),
        )
        for i in range(n)
    ]
    return b"".join(OPENAI_FORMAT.encode(line, "/v1/chat/completions") + b"\n" for line in lines)


def _upload(api: httpx.Client, content: bytes) -> dict[str, Any]:
    response = api.post("/files", files={"file": ("in.jsonl", content)}, data={"purpose": "batch"})
    response.raise_for_status()
    uploaded: dict[str, Any] = response.json()
    return uploaded


def _create(api: httpx.Client, content: bytes) -> dict[str, Any]:
    body = {
        "input_file_id": _upload(api, content)["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "metadata": {"batchshift_batch_id": "b-1"},
    }
    response = api.post("/batches", json=body)
    response.raise_for_status()
    created: dict[str, Any] = response.json()
    return created


def _until(api: httpx.Client, batch_id: str, *statuses: str) -> dict[str, Any]:
    def fetch() -> dict[str, Any]:
        doc: dict[str, Any] = api.get(f"/batches/{batch_id}").json()
        return doc

    return poll_until(fetch, lambda b: b["status"] in statuses)


def test_batch_input_lines_from_our_builder_match_batch_request_input(specs: Specs) -> None:
    for line in _jsonl(3).splitlines():
        assert specs.errors(JUNE_2025, "BatchRequestInput", json.loads(line)) == []


def test_files_match_openai_file(specs: Specs, api: httpx.Client) -> None:
    uploaded = _upload(api, _jsonl(2))
    assert specs.errors(CURRENT, "OpenAIFile", uploaded) == []
    assert specs.errors(CURRENT, "OpenAIFile", api.get(f"/files/{uploaded['id']}").json()) == []


def test_file_list_and_delete_match_their_schemas(specs: Specs, api: httpx.Client) -> None:
    uploaded = _upload(api, _jsonl(2))
    listed = api.get("/files").json()
    assert specs.errors(CURRENT, "ListFilesResponse", listed) == []
    assert [f["id"] for f in listed["data"]] == [uploaded["id"]]
    deleted = api.delete(f"/files/{uploaded['id']}")
    assert deleted.status_code == 200
    assert specs.errors(CURRENT, "DeleteFileResponse", deleted.json()) == []
    assert deleted.json() == {"id": uploaded["id"], "object": "file", "deleted": True}
    assert api.get(f"/files/{uploaded['id']}").status_code == 404
    assert api.delete(f"/files/{uploaded['id']}").status_code == 404


def test_batches_in_every_state_match_batch(
    specs: Specs, api: httpx.Client, emulator: EmulatorControl
) -> None:
    seen: dict[str, dict[str, Any]] = {}
    created = _create(api, _jsonl(3))
    seen["validating"] = created
    completed = _until(api, created["id"], "completed")
    seen["completed"] = completed
    seen["output file"] = api.get(f"/files/{completed['output_file_id']}").json()
    emulator.configure(expire={MODEL: 0.5})
    seen["expired"] = _until(api, _create(api, _jsonl(4))["id"], "expired")
    emulator.configure(expire={}, invalid_file=True)
    seen["failed"] = _until(api, _create(api, _jsonl(2))["id"], "failed")
    emulator.configure(invalid_file=False, turnaround_s=60)
    slow = _create(api, _jsonl(2))
    seen["cancelling"] = api.post(f"/batches/{slow['id']}/cancel").json()
    seen["cancelled"] = _until(api, slow["id"], "cancelled")
    for state, obj in seen.items():
        schema = "OpenAIFile" if state == "output file" else "Batch"
        assert specs.errors(CURRENT, schema, obj) == [], state
    listed = api.get("/batches", params={"limit": 10}).json()
    assert specs.errors(CURRENT, "ListBatchesResponse", listed) == []
    assert {b["status"] for b in listed["data"]} == {"completed", "expired", "failed", "cancelled"}


def test_output_and_error_lines_match_batch_request_output(
    specs: Specs, api: httpx.Client, emulator: EmulatorControl
) -> None:
    emulator.configure(expire={MODEL: 0.5}, line_error_rate=0.3)
    done = _until(api, _create(api, _jsonl(20))["id"], "expired")
    lines = []
    for key in ("output_file_id", "error_file_id"):
        lines += [json.loads(raw) for raw in api.get(f"/files/{done[key]}/content").content.splitlines()]
    assert len(lines) == 20
    for line in lines:
        assert specs.errors(JUNE_2025, "BatchRequestOutput", line) == []
    assert {line["error"]["code"] for line in lines if line["error"]} == {"batch_expired"}
    assert {line["response"]["status_code"] for line in lines if line["response"]} == {200, 400}


def test_the_sdk_reads_the_same_objects(sdk: openai.OpenAI, api: httpx.Client) -> None:
    created = _create(api, _jsonl(1))
    batch = sdk.batches.retrieve(created["id"])
    assert batch.id == created["id"]
    assert batch.endpoint == "/v1/chat/completions"
    assert batch.completion_window == "24h"
