"""All of batchshift's settings: one model, read from the environment and a TOML file.

The environment (prefix ``BATCHSHIFT_``, nested delimiter ``__``) overrides the TOML file named
by ``BATCHSHIFT_CONFIG`` (default ``config/batchshift.toml``), which overrides the defaults
here. The names below are a contract relied on by tooling outside the repo. Nothing reads the
environment at import time: entry points call :func:`load_settings` once and pass the result down.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_CONFIG_PATH = Path(__file__).with_name("batchshift.toml")
TENANT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
DEFAULT_PRICING_PATH = Path(__file__).with_name("pricing.toml")

OPENAI_MAX_BATCH_REQUESTS = 50_000
OPENAI_MAX_BATCH_BYTES = 200 * 1024 * 1024
ANTHROPIC_MAX_BATCH_REQUESTS = 100_000
ANTHROPIC_MAX_BATCH_BYTES = 256 * 1024 * 1024
AZURE_MAX_BATCH_REQUESTS = 100_000  # Azure Global Batch: requests per input file
AZURE_MAX_BATCH_BYTES = 200 * 1024 * 1024
AZURE_MIN_POLL_S = 60.0  # Azure asks batch clients to poll a batch no more than once a minute
GEMINI_MAX_BATCH_REQUESTS = 100_000  # no documented count limit; a bound keeps one batch's bookkeeping sane
GEMINI_MAX_BATCH_BYTES = 2 * 1024**3  # the Files API's largest input file
GEMINI_INLINE_BATCH_BYTES = 20 * 1000 * 1000  # inline requests, in total, below Gemini's 20 MB limit
GEMINI_WINDOW_S = 48 * 3600  # a Gemini batch pending or running this long expires, with no results
# Retention and bucket defaults, defined here once: the fields below and the ledger built without
# settings (scheduler.ledger.Ledger's keyword defaults) both take them.
RESULT_RETENTION_S = 7 * 24 * 3600  # a finished job's result
JOB_TTL_S = 7 * 24 * 3600  # an ended job's record (status, usage, cost)
IDEMPOTENCY_TTL_S = 24 * 3600  # a producer's idempotency key
SLO_BUCKET_S = 10  # width of the ledger's SLO buckets
LANE_IDLE_S = 86400.0  # a lane idle this long is pruned


class _Strict(BaseModel):
    """Base for nested settings: unknown keys are a typo, so they are refused."""

    model_config = ConfigDict(extra="forbid")


class HttpSettings(_Strict):
    """Timeouts and retry schedule for one outbound HTTP client (seconds)."""

    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    write_timeout: float = 60.0
    pool_timeout: float = 10.0
    max_retries: int = Field(default=4, ge=0)
    backoff_base: float = Field(default=0.5, gt=0)
    backoff_max: float = Field(default=30.0, gt=0)


class ProviderSettings(_Strict):
    """One configured provider account: where it lives, how to authenticate, its limits."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)  # never print a secret

    kind: Literal["openai", "anthropic", "azure_openai", "gemini"]
    base_url: str
    api_key: SecretStr = SecretStr("")
    # OpenAI-compatible APIs (Azure, Groq, Together) differ in header and path prefix.
    # Default: "Authorization" (openai), "x-api-key" (anthropic), "x-goog-api-key" (gemini).
    auth_header: str | None = None
    auth_scheme: str | None = None  # default: "Bearer" for Authorization, none otherwise
    path_prefix: str = ""  # prepended to every path after base_url
    anthropic_version: str = "2023-06-01"
    max_batch_requests: int | None = Field(default=None, gt=0)  # None: the kind's documented limit
    max_batch_bytes: int | None = Field(default=None, gt=0)
    completion_window_s: float = Field(default=24 * 3600, gt=0)  # gemini: 48 h unless set
    # Gemini: a batch input up to this size is sent inline in the create call, a larger one is
    # uploaded as a JSONL file through the Files API first.
    max_inline_batch_bytes: int = Field(default=GEMINI_INLINE_BATCH_BYTES, ge=0)
    # Flex: OpenAI's service_tier "flex" is priced like batch but answers synchronously.
    flex: bool = False
    flex_latency_s: float = Field(default=120.0, gt=0)
    # The sync lane's limits for this provider.
    sync_concurrency: int = Field(default=16, gt=0)
    sync_rpm: int | None = Field(default=None, gt=0)
    sync_tpm: int | None = Field(default=None, gt=0)
    http: HttpSettings = HttpSettings()
    # Provider file cleanup (OpenAI files API): the input file once its batch ended, the output
    # and error files once ingested; a failed delete is retried at the next reconciliation.
    delete_input_files: bool = True
    delete_output_files: bool = True
    # The model catalogue: a job's body.model must be priced for this provider in the pricing file
    # or listed here; allow_any_model lifts the check (OpenAI-compatible servers with their own ids).
    models: list[str] = []
    allow_any_model: bool = False
    # Batches of a lane grouping prompt prefixes set OpenAI's prompt_cache_key (kind openai); an
    # OpenAI-compatible host that refuses unknown request fields needs false.
    prompt_cache_key: bool = True
    # Azure OpenAI (kind azure_openai): base_url is the resource's https://RES.openai.azure.com/openai.
    # With api_version, calls go to the dated API (?api-version=...); without, to the v1 API
    # (base_url + /v1). A job's model is a Global Batch deployment's name; deployments maps such a
    # name to the model it runs, for prices and the model catalogue (a name not listed is the model).
    api_version: str | None = None
    deployments: dict[str, str] = {}
    # Seconds an uploaded batch input file lives (Azure: 1209600-2592000; a resource holds 500
    # files without expiry, 10,000 with it); None: the provider's default.
    input_file_expires_s: int | None = Field(default=None, gt=0)
    # The shortest wait between two polls of one batch; None: the kind's (60 s on Azure, else none).
    min_poll_interval_s: float | None = Field(default=None, ge=0)
    # Provider webhooks (OpenAI's batch.* events, Standard Webhooks): with a secret set, a batch's
    # end arrives by event and polling is only the safety net, every webhook_poll_s at most.
    webhook_secret: SecretStr | None = None
    webhook_poll_s: float = Field(default=900.0, gt=0)

    @field_validator("webhook_secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("whsec_"):
            raise ValueError("must be a whsec_<base64> secret, as the provider shows it")
        return value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _gemini_window(self) -> ProviderSettings:
        """Gemini's batch window is 48 h: its batches expire then, not at 24 h."""
        if self.kind == "gemini" and "completion_window_s" not in self.model_fields_set:
            self.completion_window_s = GEMINI_WINDOW_S
        return self

    def batch_request_limit(self) -> int:
        """The most requests one batch may hold for this provider."""
        default = {
            "openai": OPENAI_MAX_BATCH_REQUESTS,
            "azure_openai": AZURE_MAX_BATCH_REQUESTS,
            "gemini": GEMINI_MAX_BATCH_REQUESTS,
        }
        return self.max_batch_requests or default.get(self.kind, ANTHROPIC_MAX_BATCH_REQUESTS)

    def batch_byte_limit(self) -> int:
        """The largest batch input, in bytes, this provider accepts."""
        default = {
            "openai": OPENAI_MAX_BATCH_BYTES,
            "azure_openai": AZURE_MAX_BATCH_BYTES,
            "gemini": GEMINI_MAX_BATCH_BYTES,
        }
        return self.max_batch_bytes or default.get(self.kind, ANTHROPIC_MAX_BATCH_BYTES)

    def priced_model(self, model: str) -> str:
        """The model a job's ``model`` runs (an Azure deployment's, per ``deployments``), for prices."""
        return self.deployments.get(model, model)

    def min_poll_s(self) -> float:
        """The shortest wait between two polls of one of this provider's batches."""
        if self.min_poll_interval_s is not None:
            return self.min_poll_interval_s
        return AZURE_MIN_POLL_S if self.kind == "azure_openai" else 0.0


class DedupSettings(_Strict):
    """Deduplication of identical requests, opt-in because sampled outputs differ between calls.

    A job takes part when its tenant turned it on for all its jobs (``enabled``) or the job's
    ``feature`` tag is listed (``features``). Within ``window_s`` of a group's first job, a request
    with the same provider, model, endpoint and canonical body attaches to that job and shares its
    one provider call; ``cost`` says who pays for it.
    """

    enabled: bool = False
    features: list[str] = []
    window_s: float = Field(default=3600.0, gt=0)
    cost: Literal["split", "first"] = "split"  # split evenly across the group, or the first job pays all
    # A group's followers end in one Lua step with their leader; a full group makes the next identical
    # request lead a new one, so that step stays short.
    max_followers: int = Field(default=1000, gt=0)

    def applies_to(self, feature: str | None) -> bool:
        """Whether a job with this ``feature`` tag takes part."""
        return self.enabled or (feature is not None and feature in self.features)


class TenantSettings(_Strict):
    """A producer team: its API key, webhook signing secrets, budget and deduplication."""

    model_config = ConfigDict(hide_input_in_errors=True)  # an error must not print a secret

    api_key: SecretStr
    webhook_secrets: list[SecretStr] = []
    monthly_budget_usd: float | None = Field(default=None, ge=0)
    budget_policy: Literal["reject", "batch_only"] = "reject"
    max_job_cost_usd: float | None = Field(default=None, gt=0)
    dedup: DedupSettings = DedupSettings()

    @field_validator("webhook_secrets")
    @classmethod
    def _signing_secrets(cls, value: list[SecretStr]) -> list[SecretStr]:
        # A secret that does not decode would make every delivery of the tenant fail in signing
        # and retry for days; refuse it here. The message never holds the secret.
        for position, secret in enumerate(value):
            raw = secret.get_secret_value().removeprefix("whsec_")
            try:
                ok = bool(raw) and bool(base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True))
            except binascii.Error:
                ok = False
            if not ok:
                raise ValueError(f"secret {position} is not whsec_ followed by base64 (Standard Webhooks)")
        return value


class LaneSettings(_Strict):
    """How one lane batches. Every field is optional so a lane override names only what it changes."""

    max_batch_requests: int | None = Field(default=None, gt=0)
    max_batch_bytes: int | None = Field(default=None, gt=0)
    max_wait: float | None = Field(default=None, ge=0)
    min_batch_requests: int | None = Field(default=None, gt=0)
    cron: list[str] | None = None  # croniter expressions; a window opens at each match
    cron_window_s: float | None = Field(default=None, gt=0)  # how long a window stays open
    timezone: str | None = None
    default_deadline: float | None = Field(default=None, gt=0)
    # Prefix-aware grouping (scheduler/planning/prefixes.py): jobs sharing a leading prompt go into
    # the same batch, adjacent, with the providers' cache hints. prefix_tokens is how much leading
    # content (in tokens) two jobs must share to be grouped when no Anthropic cache breakpoint says.
    group_prefixes: bool | None = None
    prefix_tokens: int | None = Field(default=None, gt=0)
    # A prefix group this large gets a one-request warm-up batch first, and its other jobs wait until
    # it ended (within their deadlines), so they read the cache the warm-up wrote. None: off.
    warmup_min_group: int | None = Field(default=None, gt=1)


class LaneDefaults(LaneSettings):
    """Defaults every lane starts from."""

    max_wait: float | None = Field(default=60.0, ge=0)
    default_deadline: float | None = Field(default=24 * 3600.0, gt=0)
    cron_window_s: float | None = Field(default=3600.0, gt=0)
    timezone: str | None = "UTC"
    group_prefixes: bool | None = True
    prefix_tokens: int | None = Field(default=1024, gt=0)  # the smallest prompt OpenAI and Anthropic cache


class LimitSettings(_Strict):
    """What one API request may carry."""

    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    max_bulk_items: int = Field(default=10_000, gt=0)
    max_deadline_horizon_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    idempotency_ttl_s: int = Field(default=IDEMPOTENCY_TTL_S, gt=0)
    max_wait_s: float = Field(default=60.0, gt=0)  # the longest long poll on GET /v1/jobs/{id}?wait=
    # Lanes one tenant may have used within scheduler.lane_idle_s: each lane costs every tick work.
    max_lanes_per_tenant: int = Field(default=100, gt=0)


class SchedulerSettings(_Strict):
    """The tick loop, its leader lease, submission and polling."""

    tick_interval_s: float = Field(default=1.0, gt=0)
    lease_ttl_s: float = Field(default=5.0, gt=0)
    reserve_chunk: int = Field(default=5_000, gt=0)  # jobs moved per Lua call, so Redis never blocks long
    planned_timeout_s: float = Field(default=120.0, gt=0)  # a planned batch older than this is reconciled
    reconcile_interval_s: float = Field(default=60.0, gt=0)
    poll_initial_s: float = Field(default=5.0, gt=0)
    poll_max_s: float = Field(default=300.0, gt=0)
    poll_backoff: float = Field(default=1.5, ge=1)
    max_attempts: int = Field(default=3, gt=0)
    token_limit_backoff_s: float = Field(default=300.0, ge=0)
    # A batch still running this long past its provider's completion window is cancelled and its
    # jobs go back to their lane (or on to sync): some providers (Azure Global Batch) never expire.
    overdue_grace_s: float = Field(default=3600.0, ge=0)
    # The sync lane's dispatch: run_sync tasks handed out per tick, and how long one dispatch holds its
    # job before the tick hands it out again (a dead worker's task comes back after this).
    sync_dispatch_limit: int = Field(default=500, gt=0)
    sync_lease_s: float = Field(default=180.0, gt=0)
    # One create per batch: a submission holds a lease on its batch, renewed by a heartbeat every
    # third of it while it spools, uploads and creates; reconciliation touches a planned batch only
    # once that lease has lapsed and its create call began longer ago than create_timeout_s.
    submit_lease_s: float = Field(default=30.0, gt=0)
    create_timeout_s: float = Field(default=120.0, gt=0)
    # A lane with nothing queued, no batch and a healthy SLO state, this long after its last enqueue, is pruned.
    lane_idle_s: float = Field(default=LANE_IDLE_S, gt=0)
    # A batch holds jobs due within this factor of its earliest job's time left (and at least
    # batch_deadline_band_min_s past it), so a late batch's jobs share its fate: they flip together
    # and the emptied batch is cancelled, instead of some flipping and the rest billing them twice.
    # None: one batch spans any deadlines.
    batch_deadline_spread: float | None = Field(default=1.25, ge=1)
    batch_deadline_band_min_s: float = Field(default=1800.0, ge=0)


class WorkerSettings(_Strict):
    """The arq worker."""

    max_jobs: int = Field(default=50, gt=0)
    job_timeout_s: float = Field(default=300.0, gt=0)
    ingest_chunk: int = Field(default=500, gt=0)
    result_retention_s: int = Field(default=RESULT_RETENTION_S, gt=0)
    sync_max_attempts: int | None = Field(
        default=None, gt=0
    )  # None: retriable errors retry until the deadline
    # A sync call's own read timeout: long generations (reasoning models, 8k max_tokens) outlast the
    # providers' 60 s, and every timed-out try is billed all the same.
    sync_timeout_s: float = Field(default=600.0, gt=0)


class RetentionSettings(_Strict):
    """How long ended work stays in Redis, so memory stays bounded however long batchshift runs."""

    # Seconds a terminal job record (status, usage, cost, no request body) is kept after it ended;
    # per-tenant indexes, delivery records and ended batches are trimmed on the same horizon.
    job_ttl_s: int = Field(default=JOB_TTL_S, gt=0)
    # Dead-lettered webhook deliveries: kept at most this long, and at most this many.
    dead_letter_ttl_s: int = Field(default=7 * 24 * 3600, gt=0)
    dead_letter_max: int = Field(default=10_000, gt=0)
    trim_chunk: int = Field(default=1_000, gt=0)  # index entries examined per Lua call of a trim


class ConsoleSettings(_Strict):
    """The web console at ``/ui/`` (api/console/): its sessions and uploaded audit reports."""

    # Seconds a console session lasts after sign-in (its Redis key's TTL); sign in again after.
    session_ttl_s: int = Field(default=8 * 3600, gt=0)
    # Mark the session cookie ``Secure`` even on plain-HTTP requests (a TLS-terminating proxy in front).
    # Requests that arrive over HTTPS always get a Secure cookie.
    secure_cookie: bool = False
    # Seconds between the lanes page's refreshes of its table.
    refresh_s: float = Field(default=5.0, gt=0)
    # Bytes an uploaded audit report (``batchshift audit --html/--json`` output) may hold.
    audit_max_bytes: int = Field(default=5 * 1024 * 1024, gt=0)
    # Uploaded audit reports kept; the oldest goes when one more is uploaded.
    audit_max_reports: int = Field(default=50, gt=0)


class RedisClientSettings(_Strict):
    """Every Redis client batchshift creates (API, scheduler, worker, arq pools)."""

    # A blackholed Redis fails a command after this many seconds instead of hanging it. Blocking
    # reads (the scheduler's wake-up wait, long polls) wait in slices shorter than this.
    socket_timeout_s: float = Field(default=5.0, gt=0)
    socket_connect_timeout_s: float = Field(default=5.0, gt=0)


OTLP_PROTOCOLS = ("grpc", "http/protobuf")
# Where the OTel spec reads the OTLP protocol from, most specific first.
OTLP_PROTOCOL_VARS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")


class TracingSettings(_Strict):
    """OpenTelemetry tracing (config/tracing.py): off by default, exported over OTLP when on."""

    enabled: bool = False
    # OTLP over gRPC or HTTP (protobuf); unset: the standard OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
    # else OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf.
    protocol: Literal["grpc", "http/protobuf"] = Field(default=None, validate_default=True)
    # The collector's base URL (HTTP: ``/v1/traces`` is appended); unset: the SDK reads
    # OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT, else its default
    # (http://localhost:4318 over HTTP, http://localhost:4317 over gRPC).
    endpoint: str | None = None
    service_name: str | None = None  # unset: OTEL_SERVICE_NAME, else "batchshift"
    export_timeout_s: float = Field(default=10.0, gt=0)  # one export call; never blocks a request
    # One leader tick in this many is traced (a ``scheduler.tick`` span with a span per step), so a
    # 1 s tick sends one trace a minute, not sixty; 0: ticks are never traced.
    tick_sample_every: int = Field(default=60, ge=0)

    @field_validator("protocol", mode="before")
    @classmethod
    def _standard_protocol(cls, value: str | None) -> str:
        """Unset, the protocol the standard OTel variables name; a value the SDK cannot export says so."""
        if value is not None:
            return value
        for name in OTLP_PROTOCOL_VARS:
            found = os.environ.get(name)
            if found:
                if found not in OTLP_PROTOCOLS:
                    raise ValueError(f"{name}={found!r}: must be one of {', '.join(OTLP_PROTOCOLS)}")
                return found
        return "http/protobuf"


class _OutboxSettings(_Strict):
    """What the two outboxes (workers/outbox.py: webhooks, alerts) share."""

    SECTION: ClassVar[str]
    # Bytes of a receiver's answer read (for the error message); the rest is never read.
    max_response_bytes: int = Field(default=4096, gt=0)

    @field_validator("lease_s", check_fields=False)
    @classmethod
    def _lease_outlives_a_send(cls, value: float, info: Any) -> float:
        """A claim must last longer than one send, or no claimed item could ever be sent."""
        timeout = info.data.get("timeout_s")
        if timeout is not None and value <= timeout:
            raise ValueError(f"must be longer than {cls.SECTION}.timeout_s ({timeout:g} s)")
        return value


class WebhookSettings(_OutboxSettings):
    """Completion webhook delivery."""

    SECTION = "webhooks"

    # The whole send (connect, request, answer) must end within it: a deadline, not a per-read timeout.
    timeout_s: float = Field(default=15.0, gt=0)
    # Delays after each failed attempt, close to the Standard Webhooks example (about three days).
    retry_schedule_s: list[float] = [5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400]
    jitter: float = Field(default=0.2, ge=0, le=1)
    concurrency: int = Field(default=64, gt=0)
    claim_batch: int = Field(default=500, gt=0)
    lease_s: float = Field(default=60.0, gt=0)
    # Fairness: sends in flight at once per tenant and per (tenant, URL), so one slow receiver
    # holds only its own slots; a worker also claims at most twice a tenant's limit at a time.
    per_tenant_concurrency: int = Field(default=32, gt=0)
    per_url_concurrency: int = Field(default=16, gt=0)


class PagerDutySettings(_Strict):
    routing_key: SecretStr
    url: str = "https://events.pagerduty.com/v2/enqueue"


class SlackSettings(_Strict):
    webhook_url: SecretStr


class AlertWebhookSettings(_Strict):
    url: str
    secret: SecretStr | None = None


class AlertSettings(_OutboxSettings):
    """Where on-call hears about lanes (contract: ``BATCHSHIFT_ALERTS``)."""

    SECTION = "alerts"

    pagerduty: PagerDutySettings | None = None
    slack: SlackSettings | None = None
    webhook: AlertWebhookSettings | None = None
    renotify_s: float = Field(default=4 * 3600.0, gt=0)
    resolve_after_s: float = Field(default=300.0, ge=0)
    # Delivery (workers/alerts.py): per-call deadline, delays after each failed attempt (then the
    # notification is dropped as dead), how long a claimed notification stays hidden from others.
    timeout_s: float = Field(default=10.0, gt=0)
    retry_schedule_s: list[float] = [5, 30, 120, 300, 900, 1800, 3600]
    # Random share (±) of each retry delay, so notifications that failed together do not retry together.
    jitter: float = Field(default=0.2, ge=0, le=1)
    lease_s: float = Field(default=60.0, gt=0)
    claim_batch: int = Field(default=100, gt=0)


class BurnRule(_Strict):
    """One multi-window burn-rate rule (SRE Workbook): fire when both windows burn faster than ``factor``."""

    severity: Literal["page", "ticket"]
    factor: float = Field(gt=0)
    long_window_s: float = Field(gt=0)
    short_window_s: float = Field(gt=0)


class SloSettings(_Strict):
    """The SLO tracker: predictions, flips, lane states."""

    on_time_target: float = Field(default=0.999, gt=0, lt=1)
    turnaround_quantile: float = Field(default=0.95, gt=0, lt=1)
    history_size: int = Field(default=200, gt=0)
    history_max_age_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    min_samples: int = Field(default=5, gt=0)
    prior_turnaround_s: float | None = None  # None: the provider's completion window
    sync_retry_allowance: float = Field(default=2.0, ge=1)
    default_sync_latency_s: float = Field(default=30.0, gt=0)
    lagging_factor: float = Field(default=2.0, gt=1)
    recover_ticks: int = Field(default=3, gt=0)
    sync_share_alert: float = Field(default=0.2, gt=0, le=1)
    sync_share_window_s: float = Field(default=3600.0, gt=0)  # the window the sync share is measured over
    sync_share_min_jobs: int = Field(default=20, gt=0)  # fewer finished jobs than this say nothing
    # Width of the ledger's SLO buckets (Ledger(slo_bucket_s=)).
    bucket_s: int = Field(default=SLO_BUCKET_S, gt=0)
    max_flips_per_tick: int = Field(default=1000, gt=0)  # bounds one tick's work; the rest flip next tick
    # A waiting job loads the sync lane's drain time once its batch has at least this chance of
    # still running at its deadline less the sync margin (scheduler/slo/flip_plan.py).
    flip_risk_probability: float = Field(default=0.05, gt=0, lt=1)
    # A job flips before its latest safe moment only when its batch has more than this chance of
    # still running at its deadline less the sync margin. Almost sure: a flip that was not needed
    # pays twice, and the latest safe moment already keeps the deadline (the policy lab: at 0.99 an
    # outage's batches, stalled for hours, made batches after it look doomed; half its flips were needless).
    flip_early_probability: float = Field(default=0.9999, gt=0, lt=1)
    burn_rules: list[BurnRule] = [
        BurnRule(severity="page", factor=14.4, long_window_s=3600, short_window_s=300),
        BurnRule(severity="page", factor=6, long_window_s=6 * 3600, short_window_s=1800),
        BurnRule(severity="ticket", factor=1, long_window_s=3 * 86400, short_window_s=6 * 3600),
    ]


class CompatSettings(_Strict):
    """The OpenAI- and Anthropic-compatible batch endpoints (``/v1/files``, ``/v1/batches``,
    ``/v1/messages/batches``): what a client's batch may hold and how its lines become jobs."""

    # OpenAI's own limits for a batch input file: 200 MB and 50,000 requests.
    max_file_bytes: int = Field(default=200 * 1024 * 1024, gt=0)
    max_requests: int = Field(default=50_000, gt=0)
    # The batch metadata key whose value becomes each job's ``feature`` tag (costs per feature).
    feature_metadata_key: str = "feature"
    # Anthropic's Message Batches take no window; their jobs get this one (Anthropic's own: 24 h).
    anthropic_window_s: float = Field(default=24 * 3600.0, gt=0)
    # Seconds after which a batch still `validating` counts as a create that died (creating 50,000
    # lines takes seconds): its owner may then cancel it, which cancels every line it enqueued.
    stale_create_s: float = Field(default=600.0, gt=0)


class Settings(BaseSettings):
    """Every setting batchshift reads. See README's configuration reference."""

    model_config = SettingsConfigDict(
        env_prefix="BATCHSHIFT_",
        env_nested_delimiter="__",
        extra="forbid",
        toml_file=None,
    )

    redis_url: str = "redis://localhost:6379/0"
    admin_api_key: SecretStr | None = None
    tenants: dict[str, TenantSettings] = {}
    providers: dict[str, ProviderSettings] = {}
    lane_defaults: LaneDefaults = LaneDefaults()
    lanes: dict[str, LaneSettings] = {}
    # Groups of lanes serving the same model (``provider:model:endpoint`` each), in order of
    # preference: a lagging or quota-full lane's jobs move to its group's first healthy lane whose
    # turnaround fits their deadlines, before any flip to flex or sync (scheduler/slo/siblings.py).
    sibling_lanes: list[list[str]] = []
    limits: LimitSettings = LimitSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    worker: WorkerSettings = WorkerSettings()
    webhooks: WebhookSettings = WebhookSettings()
    webhook_allowlist: list[str] = []
    alerts: AlertSettings = AlertSettings()
    slo: SloSettings = SloSettings()
    retention: RetentionSettings = RetentionSettings()
    console: ConsoleSettings = ConsoleSettings()
    redis: RedisClientSettings = RedisClientSettings()
    # Built at load, not at import: its protocol defaults to the OTEL_* variables of that moment.
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    compat: CompatSettings = CompatSettings()
    pricing_file: Path = DEFAULT_PRICING_PATH
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "INFO"
    # The one access line per API request (``request.completed``). Off by default: the hot path then
    # logs nothing at info (per-job lines are at debug); the line was a quarter of a single enqueue's
    # server time. A proxy or load balancer in front usually keeps the access log anyway.
    log_access: bool = False

    @field_validator("tenants")
    @classmethod
    def _tenant_names(cls, value: dict[str, TenantSettings]) -> dict[str, TenantSettings]:
        # Tenant names are parts of Redis keys (bs:idem:{tenant}:{key}); a ':' could make two
        # tenants' keys meet.
        for name in value:
            if not TENANT_NAME.fullmatch(name):
                raise ValueError(f"tenant name {name!r} must match {TENANT_NAME.pattern}")
        return value

    @field_validator("sibling_lanes")
    @classmethod
    def _sibling_groups(cls, value: list[list[str]]) -> list[list[str]]:
        # A job moves between siblings with its body as is (only its model renamed): the lanes of a
        # group must speak one endpoint, and a lane in two groups would have no one preference order.
        seen: set[str] = set()
        for group in value:
            if len(group) < 2:
                raise ValueError(f"a sibling group needs at least two lanes: {group}")
            endpoints = set()
            for lane in group:
                provider, _, rest = lane.partition(":")
                model, _, endpoint = rest.rpartition(":")
                if not (provider and model and endpoint.startswith("/")):
                    raise ValueError(f"sibling lane {lane!r} is not provider:model:endpoint")
                if lane in seen:
                    raise ValueError(f"lane {lane!r} is in two sibling groups")
                seen.add(lane)
                endpoints.add(endpoint)
            if len(endpoints) > 1:
                raise ValueError(f"sibling lanes must share one endpoint: {group}")
        return value

    @model_validator(mode="after")
    def _sibling_wire_formats(self) -> Settings:
        # A moved job's body goes to the sibling as is (only its model renamed): OpenAI and Azure
        # OpenAI speak one format, Anthropic and Gemini each their own.
        family = {"openai": "openai", "azure_openai": "openai", "anthropic": "anthropic", "gemini": "gemini"}
        for group in self.sibling_lanes:
            kinds = {
                family[account.kind]
                for lane in group
                if (account := self.providers.get(lane.partition(":")[0])) is not None
            }
            if len(kinds) > 1:
                raise ValueError(
                    f"sibling lanes must speak one wire format (OpenAI and Azure OpenAI do): {group}"
                )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = _config_path()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_path is not None:
            sources.append(
                _ShadowedTomlSource(settings_cls, toml_path, shadowed_by=(init_settings, env_settings))
            )
        return tuple(sources)

    def siblings_of(self, lane: str) -> list[str]:
        """The lanes ``lane``'s jobs may move to, in order of preference (its sibling group less itself)."""
        for group in self.sibling_lanes:
            if lane in group:
                return [other for other in group if other != lane]
        return []

    def lane_settings(self, lane: str) -> LaneSettings:
        """The lane's effective settings: its overrides on top of the defaults."""
        merged = self.lane_defaults.model_dump()
        override = self.lanes.get(lane)
        if override is not None:
            merged.update(override.model_dump(exclude_none=True))
        return LaneSettings(**merged)


class _ShadowedTomlSource(TomlConfigSettingsSource):
    """The TOML file, minus every top-level key a higher source sets.

    pydantic-settings deep-merges sources; for ``tenants`` that would keep the file's development
    tenant (and its well-known key) alive beside production's. A key set in the environment
    replaces the file's value whole instead.
    """

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        path: Path,
        shadowed_by: tuple[PydanticBaseSettingsSource, ...],
    ) -> None:
        super().__init__(settings_cls, toml_file=path)
        self._shadowed_by = shadowed_by

    def __call__(self) -> dict[str, Any]:
        values = super().__call__()
        for source in self._shadowed_by:
            for key in source():
                values.pop(key, None)
        return values


class SettingsError(Exception):
    """Raised when a setting is invalid; the message names the setting."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


def _config_path() -> Path | None:
    """The TOML file to read, or None when ``BATCHSHIFT_CONFIG`` is set empty (tests do that)."""
    raw = os.environ.get("BATCHSHIFT_CONFIG")
    if raw is None:
        return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None
    if raw == "":
        return None
    path = Path(raw)
    if not path.exists():
        raise SettingsError(f"BATCHSHIFT_CONFIG: file not found: {raw}")
    return path


def load_settings(**overrides: Any) -> Settings:
    """Build the settings once for an entry point; raise SettingsError naming any bad setting."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = "BATCHSHIFT_" + "__".join(str(p).upper() for p in err["loc"] if not isinstance(p, int))
            problems.append(f"{name}: {err['msg']}")
        # "from None": pydantic's error carries the input values, provider and tenant keys included,
        # and a traceback printed anywhere would show them.
        raise SettingsError("invalid settings:\n  " + "\n  ".join(problems)) from None
    except ValueError as exc:  # malformed JSON in an env var surfaces as SettingsError from pydantic
        raise SettingsError(f"invalid settings: {_env_json_problem(exc) or exc}") from None


def _env_json_problem(exc: ValueError) -> str | None:
    """Name the variable and the JSON error where pydantic-settings says only "error parsing value for
    field ... from source EnvSettingsSource"; the decoder's message holds a position, not the value."""
    field = re.search(r'field "([^"]+)" from source "EnvSettingsSource"', str(exc))
    cause = exc.__cause__
    if field is None or not isinstance(cause, json.JSONDecodeError):
        return None
    return f"BATCHSHIFT_{field.group(1).upper()} is not valid JSON: {cause.msg} at column {cause.colno}"
