"""Every Redis key batchshift uses, with what it holds and why its TTL.

A lane's keys share the hash tag ``{lane}`` so a move to Redis Cluster keeps a lane on one shard.
All times are epoch milliseconds, UTC. Lua scripts build keys from these same definitions: the
loader (scheduler/ledger/scripts.py) turns every key function and constant here into ``K.<name>``, so a
key function must only interpolate its arguments, and no .lua file spells a key.
"""

from __future__ import annotations

PREFIX = "bs"


def job(job_id: str) -> str:
    """Hash: one job's record (state, lane, tenant, deadline_ms, body, batch_id, attempts ...)."""
    return f"{PREFIX}:job:{job_id}"


def result(job_id: str) -> str:
    """String: the provider-native response body of a finished job, with a TTL (retention)."""
    return f"{PREFIX}:result:{job_id}"


def lane_queue(lane: str) -> str:
    """Sorted set: a lane's queued job ids scored by deadline_ms, so batches take earliest first."""
    return f"{PREFIX}:lane:{{{lane}}}:queue"


def lane_arrivals(lane: str) -> str:
    """Sorted set: a lane's queued job ids scored by enqueue time, for ``max_wait`` and oldest age."""
    return f"{PREFIX}:lane:{{{lane}}}:arrivals"


def lane_bytes(lane: str) -> str:
    """Integer: bytes of request bodies queued in a lane, so the byte cap needs no scan."""
    return f"{PREFIX}:lane:{{{lane}}}:bytes"


def lane_meta(lane: str) -> str:
    """Hash: a lane's provider, model and endpoint (lane names are never parsed)."""
    return f"{PREFIX}:lane:{{{lane}}}:meta"


# Set: every lane that has ever held a job; the scheduler walks it each tick.
LANES = f"{PREFIX}:lanes"

# Sorted set: lanes the scheduler must look at (job enqueued or requeued, or a batch in flight),
# scored by their last enqueue or requeue (ms). enqueue.lua and requeue.lua add; the tick prunes a
# lane idle past scheduler.lane_idle_s, only while its queue is still empty (lua/prune_lanes.lua),
# and then drops it from LANES with its meta too. A tick's work grows with this set, not with LANES.
LANES_ACTIVE = f"{PREFIX}:lanes:active"


def tenant_lanes(tenant: str) -> str:
    """Sorted set: lanes a tenant enqueued to, scored by its last enqueue there (ms); entries older
    than scheduler.lane_idle_s are dropped at each enqueue, so its size is what limits.max_lanes_per_tenant
    caps. Expires lane_idle_s after the tenant's last enqueue."""
    return f"{PREFIX}:tenant:{tenant}:lanes"


# List: a wake-up signal pushed on enqueue so the scheduler ticks early (trimmed to WAKEUP_MAX entries).
WAKEUP = f"{PREFIX}:scheduler:wakeup"
WAKEUP_MAX = 10


def idempotency(tenant: str, key: str) -> str:
    """String "job_id|request_hash": a producer's idempotency key, with the configured TTL."""
    return f"{PREFIX}:idem:{tenant}:{key}"


def dedup_group(tenant: str, digest: str) -> str:
    """String: the job id leading a tenant's group of identical requests (``digest`` of provider,
    model, endpoint and canonical body), set by enqueue.lua with PX = the tenant's dedup window, so
    only requests within the window attach; deleted when that job ends or hands the group on."""
    return f"{PREFIX}:dedup:{tenant}:{digest}"


def dedup_followers(job_id: str) -> str:
    """Set: the jobs attached to a group leader, waiting for its one provider call. No TTL: it lives
    exactly as long as the leader is live (finish.lua and cancel.lua delete it when the leader ends)."""
    return f"{PREFIX}:dedup:followers:{job_id}"


def tenant_jobs(tenant: str) -> str:
    """Sorted set (all scores 0): a tenant's job ids; ids sort by time, so lex order is age order.
    Trimmed with the job records by the retention pass (scheduler/ledger/retention.py)."""
    return f"{PREFIX}:tenant:{tenant}:jobs"


def batch(batch_id: str) -> str:
    """Hash: one batch record (state, lane, provider, provider_batch_id, counts, timestamps)."""
    return f"{PREFIX}:batch:{batch_id}"


def batch_jobs(batch_id: str) -> str:
    """Set: the job ids reserved into a batch."""
    return f"{PREFIX}:batch:{batch_id}:jobs"


def batch_cursor(batch_id: str) -> str:
    """Integer: result lines of a batch already applied, so a resumed ingestion skips them."""
    return f"{PREFIX}:batch:{batch_id}:cursor"


# Sorted set: batches in the `planned` state scored by planning time, for reconciliation.
BATCHES_PLANNED = f"{PREFIX}:batches:planned"

# Sorted set: batches in flight scored by their next poll time (ms); the scheduler enqueues due polls.
BATCHES_POLL = f"{PREFIX}:batches:poll"

# Sorted set: every batch not yet ingested, scored by submission time, for the SLO tracker.
BATCHES_LIVE = f"{PREFIX}:batches:live"

# Sorted set: jobs routed to the sync lane, scored by deadline_ms.
SYNC_QUEUE = f"{PREFIX}:sync:queue"

# String with PX: the scheduler leader lease, value = holder id.
LEADER_LEASE = f"{PREFIX}:scheduler:leader"

# Integer: the fencing token, incremented at every lease acquisition.
LEADER_FENCE = f"{PREFIX}:scheduler:fence"

# Sorted set: webhook delivery ids scored by next attempt time (ms); claimed with a lease.
WEBHOOKS_DUE = f"{PREFIX}:webhooks:due"

# Sorted set: dead-lettered webhook delivery ids scored by when they died.
WEBHOOKS_DEAD = f"{PREFIX}:webhooks:dead"


def webhook_delivery(delivery_id: str) -> str:
    """Hash: one webhook delivery (job, tenant, url, event id, payload, attempts, status, last error)."""
    return f"{PREFIX}:webhook:{delivery_id}"


def tenant_deliveries(tenant: str) -> str:
    """Sorted set: a tenant's delivery ids scored by creation time, for the deliveries API. Ended
    deliveries older than retention are deleted with their entry by the retention pass."""
    return f"{PREFIX}:tenant:{tenant}:deliveries"


def disabled_url(url_hash: str) -> str:
    """String: set when a tenant's receiver answered 410; that tenant's deliveries to that URL stop."""
    return f"{PREFIX}:webhooks:disabled:{url_hash}"


# Cost and SLO aggregates are written by the Lua scripts in scheduler/ledger/lua/ (lib/costs.lua, with
# the functions below). Per UTC day and per tenant, so reports cost O(groups):
#   bs:agg:{day}:tenants                       set of tenants with figures that day
#   bs:agg:{day}:t:{tenant}:{dim}              set of values of one dimension (feature, lane, model, route)
#   bs:agg:{day}:t:{tenant}:{dim}:{value}      hash: jobs, input_tokens, output_tokens, actual_usd,
#                                              sync_equivalent_usd, saved_usd, sync_jobs, flex_jobs,
#                                              duplicate_usd, wasted_usd, on_time, late,
#                                              deduplicated_jobs, deduplicated_saved_usd
#   bs:agg:{day}:t:{tenant}:all                hash: the tenant's day total (same fields)
# They expire after AGG_TTL_S.
AGG_TTL_S = 400 * 24 * 3600
AGG_DIMENSIONS = ("feature", "lane", "model", "route")


def agg_tenants(day: str) -> str:
    """Set: tenants with cost figures on ``day`` (YYYY-MM-DD, UTC)."""
    return f"{PREFIX}:agg:{day}:tenants"


def agg_values(day: str, tenant: str, dim: str) -> str:
    """Set: the values of one dimension a tenant had figures for on ``day``."""
    return f"{PREFIX}:agg:{day}:t:{tenant}:{dim}"


def agg_group(day: str, tenant: str, dim: str, value: str) -> str:
    """Hash: one group's figures for a tenant on ``day``."""
    return f"{PREFIX}:agg:{day}:t:{tenant}:{dim}:{value}"


def agg_total(day: str, tenant: str) -> str:
    """Hash: a tenant's figures for ``day``, all groups together."""
    return f"{PREFIX}:agg:{day}:t:{tenant}:all"


def slo_buckets(lane: str) -> str:
    """Hash: a lane's finished-job outcomes in time buckets: ``<bucket_s>:good|bad|sync|all`` → count.

    The SLO tracker sums buckets over its burn-rate windows and deletes those older than the longest.
    """
    return f"{PREFIX}:slo:{{{lane}}}:buckets"


def budget_spend(tenant: str, month: str) -> str:
    """Float string: what a tenant spent in ``month`` (YYYY-MM, UTC), actual + duplicate + wasted."""
    return f"{PREFIX}:budget:{tenant}:{month}"


def budget_committed(tenant: str, month: str) -> str:
    """Float string: the expected cost of a tenant's jobs admitted in ``month`` and not ended yet.

    enqueue.lua reserves each job's estimate here (checking spend + committed against a ``reject``
    envelope in the same step) and names this key on the job (``reserve_key``); finish.lua and
    cancel.lua release it when the job ends. Same TTL as the spend key (BUDGET_TTL_S).
    """
    return f"{PREFIX}:budget:{tenant}:{month}:committed"


# Seconds a month's budget keys (spend, committed) outlive their last write: longer than any month,
# so a tenant's spend is kept until its month is over.
BUDGET_TTL_S = 40 * 24 * 3600


# SLO samples, written where the I/O happens and read by the SLO tracker. Capped lists, newest
# first, each entry "<end_ms>:<seconds>", trimmed to settings.slo.history_size.
def lane_turnarounds(lane: str) -> str:
    """List: recent batch turnarounds (submission to end) of a lane, pushed when a batch ends."""
    return f"{PREFIX}:lane:{{{lane}}}:turnarounds"


def lane_sync_latencies(lane: str) -> str:
    """List: recent sync call latencies of a lane, pushed by the sync task."""
    return f"{PREFIX}:lane:{{{lane}}}:sync_latencies"


# -- batch planning and the scheduler (engineer C) -------------------------------------------------


def provider_batches(provider: str) -> str:
    """Hash: provider batch id -> our batch id, for every provider batch we know (reconciliation
    adopts only provider batches nobody claimed, and spots a second one carrying our id)."""
    return f"{PREFIX}:batches:provider:{provider}"


# A provider retries an event for days (Standard Webhooks: about three); its id is remembered longer.
PROVIDER_EVENT_TTL_S = 7 * 24 * 3600


def provider_event(provider: str, event_id: str) -> str:
    """String: a provider webhook event already taken (its ``webhook-id``), so a repeat changes
    nothing; set NX when the event arrives, TTL ``PROVIDER_EVENT_TTL_S``."""
    return f"{PREFIX}:provider_events:{provider}:{event_id}"


def provider_early_end(provider: str, provider_batch_id: str) -> str:
    """String: the status an event reported for a provider batch not recorded as ours yet (the event
    outran the submission's last step); that step then polls the batch at once. TTL
    ``PROVIDER_EVENT_TTL_S``: events for other clients' batches of the same account expire unread."""
    return f"{PREFIX}:provider_events:early:{provider}:{provider_batch_id}"


def provider_files_pending(provider: str) -> str:
    """Set: file ids at a provider waiting to be deleted (the input file of an ended batch, the
    output and error files of an ingested one); a failed delete stays and is retried at each
    reconciliation, so no TTL."""
    return f"{PREFIX}:files:delete:{provider}"


def prefix_warmup(lane: str, prefix: str) -> str:
    """String: the id of the one-request warm-up batch sent for a prefix group (lane setting
    ``warmup_min_group``); the group's other jobs wait until that batch has ended. Expires after
    PREFIX_WARMUP_TTL_S, the cache TTL the warm-up's entry was written with, so a group that comes
    back later is warmed again."""
    return f"{PREFIX}:lane:{{{lane}}}:warmup:{prefix}"


PREFIX_WARMUP_TTL_S = 3600  # Anthropic's one-hour cache TTL, which grouped batches ask for


def lane_hold(lane: str) -> str:
    """String: epoch ms before which the lane must not flush (set after a token-limit refusal); PX
    clears it HOLD_GRACE_S after that time."""
    return f"{PREFIX}:lane:{{{lane}}}:hold"


# Sorted set: batches refused or failed for good, scored by when, so operators can list them.
BATCHES_FAILED = f"{PREFIX}:batches:failed"

# Sorted set: batches that reached ingested, failed or cancelled, scored by when (ms). The reconcile
# pass checks each once for jobs still `batched` in it (stranded: nothing would ever move them) and
# sends them back to their lane or on to sync, then removes it; so it stays small, and needs no TTL.
BATCHES_CLOSED = f"{PREFIX}:batches:closed"


# -- the SLO tracker and alerting (engineer E) -----------------------------------------------------


def lane_slo(lane: str) -> str:
    """String (JSON): a lane's SLO snapshot written every tick (state with its hysteresis counters,
    burn rates, sync share, predictions). The scheduler reads it back after a restart or a leader
    change; GET /v1/lanes shows it. Expires after LANE_SLO_TTL_S so a removed lane fades away."""
    return f"{PREFIX}:slo:{{{lane}}}:status"


# Seconds a lane's SLO snapshot outlives the last tick that wrote it.
LANE_SLO_TTL_S = 7 * 24 * 3600


def batch_deadlines(batch_id: str) -> str:
    """Sorted set: a batch's job ids scored by deadline_ms, written as jobs are reserved into the batch
    (or built when the SLO tracker first sees a batch without one), so finding its at-risk jobs is one
    ZRANGEBYSCORE instead of a scan. Flipped and finished jobs are removed; expires with
    BATCH_DEADLINES_TTL_S."""
    return f"{PREFIX}:slo:batch:{batch_id}:deadlines"


# Seconds a batch's deadline index is kept: past any provider's completion window (24 h) with room.
BATCH_DEADLINES_TTL_S = 3 * 24 * 3600


def alert_state(lane: str) -> str:
    """Hash: per alert rule of a lane, the open incident as JSON (opened, last notified, clear since)."""
    return f"{PREFIX}:alerts:{{{lane}}}:state"


# Sorted set: alert notification ids (``<event_id>.<channel>``) scored by next attempt time (ms). A
# worker claims due ones by moving their score to now + lease, so a dead worker's claims come back.
ALERTS_DUE = f"{PREFIX}:alerts:due"

# Sorted set: alert notifications given up on (retries exhausted or refused for good), by when.
ALERTS_DEAD = f"{PREFIX}:alerts:dead"


def alert_notification(notification_id: str) -> str:
    """Hash: one alert notification (channel, event JSON, attempts, last error); deleted once sent."""
    return f"{PREFIX}:alert:{notification_id}"


# Seconds a dead alert notification is kept for inspection.
ALERT_DEAD_TTL_S = 7 * 24 * 3600


# Pub/sub channel: a job's id, published when the job turns terminal (every terminal transition
# passes through lib/outbox.lua's enqueue_webhook), so a long poll on GET /v1/jobs/{id}?wait= answers at
# once. Messages are not kept: a waiter subscribes first, then re-reads the job, then waits.
JOBS_ENDED = f"{PREFIX}:jobs:ended"


# Prometheus counters and histogram buckets, read by scheduler/costs/metrics.py at scrape time. They
# never expire: counters must only grow (Prometheus handles resets, not shrinking). Bounded: one
# hash per lane plus one global hash, whatever the job count.

# Upper bounds (seconds) of the latency histograms, whose bucket fields the hashes below hold: past
# 24 h (a batch's completion window) to 48 h. Lua gets them through the script prelude.
LATENCY_BUCKETS_S = (
    1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 21600, 43200, 86400, 129600, 172800,
)  # fmt: skip


def lane_metrics(lane: str) -> str:
    """Hash: a lane's counters since it first held a job.

    Written by finish.lua: ``jobs:<succeeded|failed>:<route>``, ``actual_usd``,
    ``sync_equivalent_usd``, ``saved_usd``, ``duplicate_usd``, ``wasted_usd``,
    ``deduplicated_saved_usd``, ``on_time``, ``late``, and the end-to-end histogram ``e2e:<le>`` / ``e2e:sum`` / ``e2e:count`` (per-bucket counts, not
    cumulative). Written by ``metrics.observe_turnaround``: ``turnaround:<le>`` / ``:sum`` / ``:count``.
    Written by relane.lua: ``relaned`` (jobs moved from this lane to a sibling lane).
    """
    return f"{PREFIX}:metrics:{{{lane}}}"


# Hash: counters that are not per lane: ``webhook:<outcome>`` and ``alert:<severity>:<action>``.
METRICS_GLOBAL = f"{PREFIX}:metrics:global"


# The sync lane's dispatch (scheduler/planning/sync_dispatch.py): which sync jobs have a run_sync task out.
# Sorted set: job id -> the time (ms) its dispatch lease ends; past it, the tick dispatches it again.
SYNC_LEASES = f"{PREFIX}:sync:leases"

# Hash: job id -> how many times it was dispatched; the n-th run_sync has arq id ``sync:{job_id}:{n}``
# and a run whose n is no longer current stops at once (a newer dispatch owns the job).
SYNC_DISPATCHES = f"{PREFIX}:sync:dispatches"


def sync_slots(provider: str) -> str:
    """Sorted set: the sync calls in flight to a provider, scored by when their slot lapses (ms), so
    a worker that dies gives its slot back; bounds them by ``sync_concurrency``."""
    return f"{PREFIX}:sync:{provider}:slots"


def sync_rate(provider: str, unit: str, minute: int) -> str:
    """Integer: requests or tokens (``unit``) sent to a provider's sync API in one epoch minute, for
    ``sync_rpm`` / ``sync_tpm``; expires after two minutes."""
    return f"{PREFIX}:sync:{provider}:rate:{unit}:{minute}"


def sync_hold(provider: str) -> str:
    """String: epoch ms before which no sync call goes to a provider (its rate-limit headers or a 429's
    retry-after said so); PX clears it HOLD_GRACE_S after that time."""
    return f"{PREFIX}:sync:{provider}:hold"


# A hold (lane_hold, sync_hold) ends when its stamp, compared with the reader's "now" (the injected
# clock: Redis TIME in production, a virtual one in tests), has passed. The key's PX runs on Redis's
# own clock, which a virtual clock does not move, so it only clears a hold away well after it can
# matter; were it the hold's end, a test holding its clock still would see holds lapse early.
HOLD_GRACE_S = 3600


# -- retention (issue 12): every index below is trimmed by scheduler/ledger/retention.py -----------------

# An ended job's record is kept settings.retention.job_ttl_s: finish.lua and cancel.lua drop its
# request body and set that TTL when the job ends.


def tenant_status(tenant: str, state: str) -> str:
    """Sorted set (all scores 0): a tenant's job ids in one state, for listings filtered by status.

    Every Lua step that changes a job's state moves the id between these in the same step; ids whose
    record expired are trimmed by the retention pass."""
    return f"{PREFIX}:tenant:{tenant}:status:{state}"


def tenant_feature(tenant: str, feature: str) -> str:
    """Sorted set (all scores 0): a tenant's job ids tagged with one ``feature``, written at enqueue;
    trimmed with the job records by the retention pass (an empty one is gone, as Redis does)."""
    return f"{PREFIX}:tenant:{tenant}:feature:{feature}"


def tenant_features(tenant: str) -> str:
    """Set: the tenant's feature index keys that may hold ids, so the retention pass can find them;
    a key is removed once its index is empty."""
    return f"{PREFIX}:tenant:{tenant}:features"


# Set: tenants that may have job indexes, so the retention pass trims them even after a tenant left
# the settings; a tenant leaves it once it has no index left.
TENANTS_INDEXED = f"{PREFIX}:tenants"


# Sorted set: batches that reached an end state (ingested, failed, cancelled), scored by when. The
# retention pass deletes each one's record, job set, cursor and provider-id entry after retention.
BATCHES_ENDED = f"{PREFIX}:batches:ended"


# -- the web console (api/console/) ----------------------------------------------------------------


def console_session(token_hash: str) -> str:
    """Hash: one console session (``tenant``, empty for the admin; ``csrf``, its form token), keyed by
    the SHA-256 of the cookie's token so the stored key cannot be replayed as a cookie. The API key
    that signed in is never stored. TTL ``console.session_ttl_s``; sign-out deletes it."""
    return f"{PREFIX}:console:session:{token_hash}"


def console_audit(report_id: str) -> str:
    """Hash: one uploaded audit report (``name``, ``kind`` html|json, ``size``, ``uploaded_ms``,
    ``body``), at most ``console.audit_max_bytes``; deleted when it falls out of CONSOLE_AUDITS."""
    return f"{PREFIX}:console:audit:{report_id}"


# Sorted set: uploaded audit report ids scored by their upload's number (CONSOLE_AUDIT_SEQ), so two
# uploads in one millisecond keep their order; kept to console.audit_max_reports, the oldest report
# deleted with its entry by the upload that overflows it.
CONSOLE_AUDITS = f"{PREFIX}:console:audits"

# Integer: uploads of audit reports so far, numbering them for CONSOLE_AUDITS. Never expires (one key).
CONSOLE_AUDIT_SEQ = f"{PREFIX}:console:audits:seq"
# -- client batches (issue 18): the OpenAI- and Anthropic-compatible batch endpoints ------------------


def client_file(file_id: str) -> str:
    """Hash: an uploaded file's metadata (id, tenant, purpose, filename, bytes, created_ms). Deleted by
    DELETE /v1/files/{id}; expires with CLIENT_FILE_TTL_S."""
    return f"{PREFIX}:cfile:{file_id}"


def client_file_content(file_id: str) -> str:
    """String: an uploaded file's bytes, appended chunk by chunk as the upload streams in; same
    lifetime as its metadata hash."""
    return f"{PREFIX}:cfile:{file_id}:content"


def tenant_client_files(tenant: str) -> str:
    """Sorted set (all scores 0): a tenant's uploaded file ids (time-sortable), for GET /v1/files;
    ids past CLIENT_FILE_TTL_S are trimmed at each upload, a deleted file's id at its delete."""
    return f"{PREFIX}:tenant:{tenant}:cfiles"


# Seconds an uploaded input file is kept: OpenAI keeps batch files until deleted; we keep them past
# the longest completion window with room, as their lines are copied into jobs at batch creation.
CLIENT_FILE_TTL_S = 7 * 24 * 3600


def client_batch(batch_id: str) -> str:
    """Hash: one client batch (api, tenant, endpoint, window, state, timestamps, metadata, errors) and
    its counters ``total``, ``ended``, ``succeeded``, ``failed``, ``cancelled``, which the job-end
    scripts (lib/client_batch.lua) bump in the same step that ends each of its jobs."""
    return f"{PREFIX}:cbatch:{batch_id}"


def client_batch_lines(batch_id: str) -> str:
    """List: the batch's job ids in input line order; an output file is streamed by walking it."""
    return f"{PREFIX}:cbatch:{batch_id}:lines"


def tenant_client_batches(tenant: str) -> str:
    """Sorted set (all scores 0): a tenant's client batch ids; ids sort by time, so lex order lists
    newest first."""
    return f"{PREFIX}:tenant:{tenant}:cbatches"


# Sorted set: client batches still ``validating`` (being created), scored by their creation ms. A
# batch leaves it in the step that moves it on; one still in it past ``compat.stale_create_s`` is a
# create that died, and the reconcile pass cancels it (scheduler/compat/intake.py).
CLIENT_BATCHES_VALIDATING = f"{PREFIX}:cbatches:validating"

# Seconds a client batch (record, lines, listing entry) is kept after it was created: past the
# longest completion window (24 h) and the job records' default retention (7 days).
CLIENT_BATCH_TTL_S = 8 * 24 * 3600
