"""``batch.completed``: one signed webhook per client batch with a ``callback_url`` (batchshift's
extension, sent through the SDKs' ``extra_body``), carrying the batch as its own API shows it."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import orjson
import pytest

from tests import test_slo_e2e as slo
from tests.compat.support import (
    ANTHROPIC_MODEL,
    CHAT,
    anthropic_sdk,
    compat_app,
    compat_settings,
    jsonl,
    openai_sdk,
)
from tests.workers.receiver import Receiver, running_receiver

pytestmark = pytest.mark.timeout(600)

emulator_url = slo.emulator_url
emulator = slo.emulator
pagerduty = slo.pagerduty
harness = slo.harness

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # acme's signing secret in tests.conftest


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver(secrets=(SECRET,)) as rx:
        yield rx


async def test_each_client_batch_sends_one_signed_batch_completed(
    redis, redis_url, emulator, pagerduty, receiver, harness
):
    settings = compat_settings(redis_url, emulator, pagerduty).model_copy(
        update={"webhook_allowlist": ["127.0.0.0/8"]}
    )
    pipeline = harness(settings)
    async with (
        compat_app(settings, redis, pipeline) as app,
        openai_sdk(app) as sdk,
        anthropic_sdk(app) as claude,
    ):
        uploaded = await sdk.files.create(file=("in.jsonl", jsonl(["a", "b", "c"])), purpose="batch")
        batch = await sdk.batches.create(
            input_file_id=uploaded.id,
            endpoint=CHAT,
            completion_window="24h",
            extra_body={"callback_url": receiver.url},
        )
        message_batch = await claude.messages.batches.create(
            requests=[
                {
                    "custom_id": "x",
                    "params": {
                        "model": ANTHROPIC_MODEL,
                        "max_tokens": 8,
                        "messages": [{"role": "user", "content": "x"}],
                    },
                }
            ],
            extra_body={"callback_url": receiver.url},
        )
        plain = await sdk.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
        dropped = await sdk.batches.create(
            input_file_id=uploaded.id,
            endpoint=CHAT,
            completion_window="24h",
            extra_body={"callback_url": receiver.url},
        )
        assert (await sdk.batches.cancel(dropped.id)).status == "cancelled"

        async def both_called() -> bool:
            return len(receiver.requests) >= 3

        await pipeline.run_until(both_called, within_s=20)
        await pipeline.run_for(1)  # nothing more comes: one event per batch, none without a callback
        assert (await sdk.batches.retrieve(plain.id)).status == "completed"
        async with openai_sdk(app, key="globex-key") as globex:  # no signing secret: refused at create
            theirs = await globex.files.create(file=("in.jsonl", jsonl(["g"])), purpose="batch")
            with pytest.raises(openai.BadRequestError, match="webhook_secrets"):
                await globex.batches.create(
                    input_file_id=theirs.id,
                    endpoint=CHAT,
                    completion_window="24h",
                    extra_body={"callback_url": receiver.url},
                )
    assert len(receiver.requests) == 3
    assert all(r.verified for r in receiver.requests)
    events = {orjson.loads(r.body)["data"]["id"]: orjson.loads(r.body) for r in receiver.requests}
    assert {batch_id: e["type"] for batch_id, e in events.items()} == {
        batch.id: "batch.completed",
        message_batch.id: "batch.completed",
        dropped.id: "batch.cancelled",
    }
    assert events[dropped.id]["data"]["status"] == "cancelled"
    openai_event = events[batch.id]["data"]
    assert openai_event["status"] == "completed"
    assert openai_event["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert openai_event["output_file_id"] == f"file-{batch.id}-output"
    anthropic_event = events[message_batch.id]["data"]
    assert anthropic_event["processing_status"] == "ended"
    assert anthropic_event["request_counts"]["succeeded"] == 1
    assert {r.headers["webhook-id"] for r in receiver.requests} == {f"msg_{b}" for b in events}
