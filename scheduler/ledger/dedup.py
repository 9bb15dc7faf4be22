"""Which requests are identical, for deduplication, and which jobs take part.

Two requests are identical when their provider, model, endpoint and canonical body are the same.
The canonical body is the request's JSON with sorted keys and no whitespace, as intake stores it
(scheduler/intake.py), so key order and spacing never split a group, while every field of the body
counts (messages, ``temperature``, ``seed``, ``max_tokens``, ``metadata``, ``user``...). Nothing
outside the body counts: deadline, tags, callback URL and idempotency key may differ.

The group itself lives in Redis (keys.dedup_group, keys.dedup_followers) and changes only in the
Lua steps that own a job's life: enqueue.lua attaches a follower, finish.lua ends the followers with
their leader, cancel.lua detaches one or promotes the next leader (lua/lib/dedup.lua).
"""

from __future__ import annotations

import hashlib

from config.settings import DedupSettings, Settings
from scheduler.ledger.jobs import NewJob


def digest(provider: str, model: str, endpoint: str, body: bytes) -> str:
    """The group name of a request: SHA-256 of provider, model, endpoint and canonical body."""
    h = hashlib.sha256()
    for part in (provider, model, endpoint):
        h.update(part.encode())
        h.update(b"\0")
    h.update(body)
    return h.hexdigest()


def opted_in(settings: Settings, tenant: str, feature: str | None) -> DedupSettings | None:
    """The tenant's dedup settings when a job of ``feature`` takes part, else None."""
    tenant_settings = settings.tenants.get(tenant)
    if tenant_settings is None or not tenant_settings.dedup.applies_to(feature):
        return None
    return tenant_settings.dedup


def mark(job: NewJob, settings: Settings) -> NewJob:
    """Name the job's group (and its window, size and cost rule) when its tenant opted it in."""
    dedup = opted_in(settings, job.tenant, job.tags.get("feature"))
    if dedup is not None:
        job.dedup_digest = digest(job.provider, job.model, job.endpoint, job.body)
        job.dedup_window_ms = int(dedup.window_s * 1000)
        job.dedup_max_followers = dedup.max_followers
        job.dedup_cost = dedup.cost
    return job
