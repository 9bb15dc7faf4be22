"""The emulator's batch events: one per ended OpenAI batch, of the type its end calls for, signed
so the reference Standard Webhooks library verifies them, and only while events are configured."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest

from emulator.server import EmulatorControl
from tests.workers.receiver import Receiver, running_receiver

SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"  # noqa: S105 -- a test secret
AUTH = {"authorization": "Bearer sk-test"}
LINE = {
    "custom_id": "a",
    "method": "POST",
    "url": "/v1/chat/completions",
    "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
}


def create_batch(url: str) -> str:
    upload = httpx.post(
        f"{url}/v1/files",
        headers=AUTH,
        files={"file": ("in.jsonl", orjson.dumps(LINE))},
        data={"purpose": "batch"},
    )
    upload.raise_for_status()
    created = httpx.post(
        f"{url}/v1/batches",
        headers=AUTH,
        json={"input_file_id": upload.json()["id"], "endpoint": LINE["url"], "completion_window": "24h"},
    )
    created.raise_for_status()
    batch_id: str = created.json()["id"]
    return batch_id


def events_for(receiver: Receiver, count: int) -> list[dict[str, object]]:
    """The first ``count`` events received; the limit only keeps a broken run from hanging."""
    deadline = time.monotonic() + 20
    while len(receiver.requests) < count:
        assert time.monotonic() < deadline, "the events did not arrive"
        time.sleep(0.02)
    assert all(r.verified for r in receiver.requests)
    return [orjson.loads(r.body) for r in receiver.requests]


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"turnaround_s": 0}, "batch.completed"),
        ({"turnaround_s": 0, "invalid_file": True}, "batch.failed"),
        ({"turnaround_s": 0, "expire": {"*": 0.5}}, "batch.expired"),
    ],
)
def test_an_ended_batch_sends_its_event(
    emulator: EmulatorControl, settings: dict[str, object], expected: str
) -> None:
    with running_receiver(secrets=(SECRET,)) as receiver:
        emulator.configure(webhook_url=receiver.url, webhook_secret=SECRET, **settings)
        batch_id = create_batch(emulator.url)
        [event] = events_for(receiver, 1)
    assert event["type"] == expected
    assert event["data"] == {"id": batch_id}
    assert receiver.requests[0].headers["webhook-id"] == event["id"]


def test_a_cancelled_batch_sends_batch_cancelled(emulator: EmulatorControl) -> None:
    with running_receiver(secrets=(SECRET,)) as receiver:
        emulator.configure(webhook_url=receiver.url, webhook_secret=SECRET, turnaround_s=3600, cancel_s=0)
        batch_id = create_batch(emulator.url)
        httpx.post(f"{emulator.url}/v1/batches/{batch_id}/cancel", headers=AUTH).raise_for_status()
        [event] = events_for(receiver, 1)
    assert event["type"] == "batch.cancelled"


def test_events_follow_the_emulator_clock(emulator: EmulatorControl) -> None:
    """With the clock held, a batch ends (and its event goes) only when the clock is stepped past it."""
    with running_receiver(secrets=(SECRET,)) as receiver:
        now = time.time()
        emulator.set_clock(now)
        emulator.configure(webhook_url=receiver.url, webhook_secret=SECRET, turnaround_s=60)
        create_batch(emulator.url)
        emulator.set_clock(now + 30)
        assert emulator.events() == []  # still running at +30 s: nothing sent
        assert receiver.requests == []
        emulator.set_clock(now + 61)
        [event] = events_for(receiver, 1)
    assert event["type"] == "batch.completed"


def test_no_events_without_a_url(emulator: EmulatorControl) -> None:
    """Batches created while events are off are never announced, even once they are turned on."""
    with running_receiver(secrets=(SECRET,)) as receiver:
        emulator.configure(turnaround_s=0)
        create_batch(emulator.url)
        emulator.configure(webhook_url=receiver.url, webhook_secret=SECRET)
        later = create_batch(emulator.url)
        [event] = events_for(receiver, 1)
    assert event["data"] == {"id": later}
    assert len(receiver.requests) == 1
