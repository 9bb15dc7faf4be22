"""The demo's local receivers: a producer's webhook endpoint that verifies every signature, and an
on-call endpoint that speaks PagerDuty's Events API v2.

They are what a real producer and PagerDuty would be: separate HTTP servers that batchshift calls.
The webhook side verifies as a Standard Webhooks consumer must: the HMAC over ``id.timestamp.body``
with the tenant's secret, compared in constant time, and a timestamp within five minutes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

# Seconds a webhook timestamp may differ from the receiver's clock (the reference libraries' value).
TIMESTAMP_TOLERANCE_S = 300


def verify_signature(secret: str, headers: dict[str, str], body: bytes, now: float | None = None) -> bool:
    """Whether one of the ``webhook-signature`` entries is ours over ``id.timestamp.body``."""
    msg_id = headers.get("webhook-id", "")
    stamp = headers.get("webhook-timestamp", "")
    if not msg_id or not stamp.isdigit():
        return False
    if abs((now if now is not None else time.time()) - int(stamp)) > TIMESTAMP_TOLERANCE_S:
        return False
    raw = secret.removeprefix("whsec_")
    key = base64.b64decode(raw + "=" * (-len(raw) % 4))
    expected = base64.b64encode(
        hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    ).decode()
    for entry in headers.get("webhook-signature", "").split():
        version, _, signature = entry.partition(",")
        if version == "v1" and hmac.compare_digest(signature, expected):
            return True
    return False


@dataclass
class Inbox:
    """What the receivers saw."""

    webhook_ids: set[str] = field(default_factory=set)  # distinct events (retries share an id)
    webhook_requests: int = 0
    webhook_types: Counter[str] = field(default_factory=Counter)
    bad_signatures: int = 0
    pages: list[dict[str, Any]] = field(default_factory=list)  # PagerDuty events, in arrival order

    def page_actions(self) -> Counter[str]:
        """How many trigger / resolve events arrived."""
        return Counter(str(p.get("event_action")) for p in self.pages)

    def open_incidents(self) -> set[str]:
        """dedup_keys triggered and not resolved since."""
        open_keys: set[str] = set()
        for page in self.pages:
            key = str(page.get("dedup_key"))
            if page.get("event_action") == "trigger":
                open_keys.add(key)
            elif page.get("event_action") == "resolve":
                open_keys.discard(key)
        return open_keys


def receivers_app(secrets: dict[str, str], inbox: Inbox) -> Starlette:
    """``POST /hooks/{tenant}`` (completion webhooks) and ``POST /pagerduty`` (Events API v2)."""

    async def hook(request: Request) -> Response:
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        secret = secrets.get(request.path_params["tenant"])
        inbox.webhook_requests += 1
        if secret is None or not verify_signature(secret, headers, body):
            inbox.bad_signatures += 1
            return JSONResponse({"error": "bad signature"}, status_code=401)
        if headers["webhook-id"] not in inbox.webhook_ids:
            inbox.webhook_ids.add(headers["webhook-id"])
            inbox.webhook_types[str(orjson.loads(body).get("type"))] += 1
        return Response(status_code=204)

    async def pagerduty(request: Request) -> Response:
        event = orjson.loads(await request.body())
        inbox.pages.append(event)
        return JSONResponse(
            {"status": "success", "message": "Event processed", "dedup_key": event.get("dedup_key")},
            status_code=202,
        )

    return Starlette(
        routes=[
            Route("/hooks/{tenant}", hook, methods=["POST"]),
            Route("/pagerduty", pagerduty, methods=["POST"]),
        ]
    )
