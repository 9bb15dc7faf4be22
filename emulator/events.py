"""OpenAI batch events: the webhooks the emulator sends when a batch ends, signed like OpenAI's.

With ``webhook_url`` and ``webhook_secret`` set, every OpenAI batch created meanwhile is watched;
once its status (computed from the emulator's clock, :mod:`emulator.openai_batch`) is terminal,
one event is posted: ``{"id": "evt_…", "object": "event", "created_at", "type":
"batch.completed" | "batch.failed" | "batch.expired" | "batch.cancelled", "data": {"id":
<batch id>}}`` with Standard Webhooks headers (``webhook-id``, ``webhook-timestamp``,
``webhook-signature``: ``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body`` keyed by the base64
after ``whsec_``). A send that fails (no answer, or not 2xx) is tried again under the same event id
a few times with a growing delay, as a provider does. Batch state stays a pure function of time:
one watcher task per emulator checks its watched batches every ``CHECK_S`` and sends what ended,
started by the first batch it watches (the emulator has no startup hook) and ended with the server.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from emulator import openai_batch
from emulator.state import EmulatorState, new_id

CHECK_S = 0.02  # how often watched batches are looked at (wall time)
SEND_TIMEOUT_S = 5.0
RETRY_DELAYS_S = (0.1, 0.5, 2.0, 5.0)  # after each failed send; then the event is given up

TYPES = {
    "completed": "batch.completed",
    "failed": "batch.failed",
    "expired": "batch.expired",
    "cancelled": "batch.cancelled",
}


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header of one message under a ``whsec_`` secret."""
    raw = secret.removeprefix("whsec_")
    key = base64.b64decode(raw + "=" * (-len(raw) % 4))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def event_for(batch_id: str, status: str, created_at: float) -> dict[str, Any]:
    """The event OpenAI sends when batch ``batch_id`` ends with ``status``."""
    return {
        "id": new_id("evt_"),
        "object": "event",
        "created_at": int(created_at),
        "type": TYPES[status],
        "data": {"id": batch_id},
    }


@dataclass
class Watcher:
    """The batches of one emulator waiting for their end to be announced, and the task that does it."""

    state: EmulatorState
    batch_ids: set[str] = field(default_factory=set)
    task: asyncio.Task[None] | None = None
    sent: list[dict[str, Any]] = field(default_factory=list)  # events delivered (2xx), oldest first

    def forget(self) -> None:
        """Back to nothing watched and nothing sent (the emulator's reset)."""
        self.batch_ids.clear()
        self.sent.clear()

    def due(self) -> list[dict[str, Any]]:
        """Events for the watched batches that have ended; they are no longer watched."""
        now = self.state.now()
        out = []
        for batch_id in sorted(self.batch_ids):
            batch = self.state.openai_batches.get(batch_id)
            if batch is None:  # forgotten by a reset
                self.batch_ids.discard(batch_id)
                continue
            status, _ = openai_batch.status(self.state, batch, now)
            if status in TYPES:
                self.batch_ids.discard(batch_id)
                out.append(event_for(batch_id, status, now))
        return out

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=SEND_TIMEOUT_S) as client:
            sends: set[asyncio.Task[None]] = set()
            while True:
                for event in self.due():
                    send = asyncio.create_task(self.send(client, event))
                    sends.add(send)
                    send.add_done_callback(sends.discard)
                await asyncio.sleep(CHECK_S)

    async def send(self, client: httpx.AsyncClient, event: dict[str, Any]) -> None:
        """Post one event, retrying under the same id; the settings in force at each try apply."""
        body = orjson.dumps(event)
        for delay in (*RETRY_DELAYS_S, None):
            url, secret = self.state.config["webhook_url"], self.state.config["webhook_secret"]
            if not url or not secret:
                return
            stamp = int(time.time())  # the receiver checks it against its own clock
            headers = {
                "content-type": "application/json",
                "webhook-id": event["id"],
                "webhook-timestamp": str(stamp),
                "webhook-signature": signature(secret, event["id"], stamp, body),
            }
            try:
                response = await client.post(url, content=body, headers=headers)
                if response.is_success:
                    self.sent.append(event)
                    return
            except httpx.HTTPError:
                pass
            if delay is None:
                return
            await asyncio.sleep(delay)


_WATCHERS: weakref.WeakKeyDictionary[EmulatorState, Watcher] = weakref.WeakKeyDictionary()


def watcher(state: EmulatorState) -> Watcher:
    """The emulator's watcher (made on first use)."""
    found = _WATCHERS.get(state)
    if found is None:
        found = _WATCHERS[state] = Watcher(state)
    return found


def watch(state: EmulatorState, batch_id: str) -> None:
    """Announce batch ``batch_id``'s end, if events are configured now; starts the watcher task."""
    if not state.config["webhook_url"] or not state.config["webhook_secret"]:
        return
    found = watcher(state)
    found.batch_ids.add(batch_id)
    if found.task is None or found.task.done():
        found.task = asyncio.get_running_loop().create_task(found.run())
