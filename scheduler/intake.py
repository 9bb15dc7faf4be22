"""Intake: turns a producer's request into a validated NewJob, or refuses it naming the field.

Validation is a pipeline of small checks over a ``Draft``; each check tests one thing and fills
what it owns, and the first refusal wins. ``CHECKS`` is the one list: a new rule is one function
appended there. Admission checks that need Redis (a budget, routing a near deadline to the sync
lane) are async checks in ``ADMISSION``, run on the finished NewJob before it is stored.

Everything here is cheap on purpose: bulk intake validates thousands of items per request with
plain dict checks and one orjson serialisation per body (with sorted keys, so the stored body
doubles as the input of the idempotency hash), no per-item pydantic model.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from config.settings import ProviderSettings, Settings
from scheduler.costs import budgets
from scheduler.costs.admission import AdmissionCheck, AdmissionGate
from scheduler.errors import BatchshiftError, BudgetExceeded, InvalidRequest, PayloadTooLarge
from scheduler.ledger import dedup, ids
from scheduler.ledger.jobs import NewJob, lane_name
from scheduler.ledger.ledger import EnqueueOutcome
from scheduler.planning import lanes, prefixes
from scheduler.slo import flips

# The endpoints each provider kind serves; the first is the default.
ENDPOINTS: Final[Mapping[str, tuple[str, ...]]] = {
    "openai": ("/v1/chat/completions", "/v1/embeddings", "/v1/responses"),
    "anthropic": ("/v1/messages",),
    "azure_openai": ("/v1/chat/completions",),  # Global Batch deployments serve chat completions
    "gemini": ("generateContent",),
}

FIELDS: Final = frozenset(
    {"provider", "endpoint", "body", "deadline", "deadline_in", "callback_url", "idempotency_key", "tags"}
)
MAX_TAGS = 32  # tags feed cost aggregates per value; a bound keeps them groups, not ids
MAX_TAG_KEY = 64
MAX_TAG_VALUE = 256
MAX_URL = 2048
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, no spaces: it is part of a key
_TAG_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
# A model name becomes part of the lane's Redis keys (inside a {hash tag}) and of aggregate keys:
# no braces, whitespace or control characters. Slashes, '@' and '+' appear in OpenAI-compatible
# servers' model ids (org/model, ft:... snapshots).
MODEL_NAME = re.compile(r"[A-Za-z0-9._:/@+-]{1,256}")
MAX_MODEL = 256
# Characters that may not appear in a tag value or a URL: controls, DEL and the key-breaking braces.
_UNSAFE_TAG_VALUE = re.compile(r"[\x00-\x1f\x7f{}]")
_UNSAFE_URL = re.compile(r"[\x00-\x20\x7f]")  # space included: a URL never holds a raw space


@dataclass(slots=True)
class Draft:
    """A request on its way to becoming a NewJob; checks read ``raw`` and fill the rest."""

    raw: dict[str, Any]
    tenant: str
    now_ms: int
    settings: Settings
    idempotency_header: str | None = None
    provider: str = ""
    provider_settings: ProviderSettings | None = None
    endpoint: str = ""
    model: str = ""
    body: bytes = b""
    deadline_ms: int = 0
    absolute_deadline: bool = False  # a relative deadline_in is left out of the request hash
    callback_url: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    idempotency_key: str | None = None
    parsed: dict[str, Any] = field(default_factory=dict)  # the body as received, for the prefix key
    # Verdicts of one request's items that are the same for each (a bulk request's, see ``validate``).
    memo: dict[Any, Any] | None = None


Check = Callable[[Draft], None]


def _fields(draft: Draft) -> None:
    if FIELDS.issuperset(draft.raw):
        return
    unknown = sorted(set(draft.raw) - FIELDS)
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r}", unknown[0])


def _provider(draft: Draft) -> None:
    name = draft.raw.get("provider")
    if name is None:
        raise InvalidRequest("provider is required", "provider")
    if not isinstance(name, str):
        raise InvalidRequest("provider must be a string", "provider")
    provider = draft.settings.providers.get(name)
    if provider is None:
        known = ", ".join(sorted(draft.settings.providers)) or "none"
        raise InvalidRequest(f"unknown provider {name!r} (configured: {known})", "provider")
    draft.provider, draft.provider_settings = name, provider


def _endpoint(draft: Draft) -> None:
    assert draft.provider_settings is not None
    served = ENDPOINTS[draft.provider_settings.kind]
    endpoint = draft.raw.get("endpoint")
    if endpoint is None:
        draft.endpoint = served[0]
        return
    if not isinstance(endpoint, str) or endpoint not in served:
        raise InvalidRequest(
            f"endpoint {endpoint!r} is not served by provider {draft.provider!r} (serves: {', '.join(served)})",
            "endpoint",
        )
    draft.endpoint = endpoint


def _body(draft: Draft) -> None:
    body = draft.raw.get("body")
    if body is None:
        raise InvalidRequest("body is required", "body")
    if not isinstance(body, dict):
        raise InvalidRequest("body must be a JSON object (the provider-native request)", "body")
    model = body.get("model")
    if not isinstance(model, str) or not MODEL_NAME.fullmatch(model):  # a match is never blank
        if not isinstance(model, str) or not model.strip():
            raise InvalidRequest("body.model is required (a non-empty string)", "body.model")
        raise InvalidRequest(
            f"body.model must be 1-{MAX_MODEL} characters of letters, digits and ._:/@+-", "body.model"
        )
    if body.get("stream") not in (None, False):
        raise InvalidRequest(
            "body.stream: streaming is not available for batched jobs; leave it unset", "body.stream"
        )
    encoded = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    limit = draft.settings.limits.max_body_bytes
    if len(encoded) > limit:
        raise PayloadTooLarge(f"body is {len(encoded)} bytes, over the limit of {limit}", "body")
    draft.model, draft.body, draft.parsed = model, encoded, body


def _model(draft: Draft) -> None:
    """The model must be in the provider's catalogue: every unknown name would be a new lane."""
    assert draft.provider_settings is not None
    memo, key = draft.memo, ("serves", draft.provider, draft.model)
    if memo is not None and key in memo:
        served = memo[key]
    else:
        served = lanes.serves(draft.settings, draft.provider, draft.provider_settings, draft.model)
        if memo is not None:
            memo[key] = served
    if not served:
        raise InvalidRequest(
            f"body.model {draft.model!r} is not served by provider {draft.provider!r}: use a model of "
            "the pricing file, or list it in the provider's models (or set allow_any_model)",
            "body.model",
        )


def _deadline(draft: Draft) -> None:
    absolute, relative = draft.raw.get("deadline"), draft.raw.get("deadline_in")
    if absolute is not None and relative is not None:
        raise InvalidRequest("give deadline or deadline_in, not both", "deadline_in")
    horizon_ms = int(draft.settings.limits.max_deadline_horizon_s * 1000)
    if absolute is not None:
        deadline_ms = _parse_rfc3339(absolute)
        draft.absolute_deadline = True
        name = "deadline"
    elif relative is not None:
        if isinstance(relative, bool) or not isinstance(relative, int | float) or not math.isfinite(relative):
            raise InvalidRequest("deadline_in must be a number of seconds", "deadline_in")
        if relative <= 0:  # before int(): -1e308 * 1000 is -inf
            raise InvalidRequest("deadline_in must be more than 0 seconds", "deadline_in")
        if relative * 1000 > horizon_ms:  # before int(): a huge float would overflow it
            raise InvalidRequest(
                f"deadline_in is beyond the horizon of {draft.settings.limits.max_deadline_horizon_s:g} seconds",
                "deadline_in",
            )
        deadline_ms = draft.now_ms + int(relative * 1000)
        name = "deadline_in"
    else:
        lane = lane_name(draft.provider, draft.model, draft.endpoint)
        default_s = (
            draft.settings.lane_settings(lane).default_deadline
            or draft.settings.limits.max_deadline_horizon_s
        )
        draft.deadline_ms = draft.now_ms + min(int(default_s * 1000), horizon_ms)
        return
    if deadline_ms <= draft.now_ms:
        raise InvalidRequest(f"{name} is in the past", name)
    if deadline_ms > draft.now_ms + horizon_ms:
        raise InvalidRequest(
            f"{name} is beyond the horizon of {draft.settings.limits.max_deadline_horizon_s:g} seconds", name
        )
    draft.deadline_ms = deadline_ms


def _parse_rfc3339(value: object) -> int:
    if not isinstance(value, str):
        raise InvalidRequest("deadline must be an RFC 3339 timestamp string", "deadline")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"deadline {value!r} is not an RFC 3339 timestamp", "deadline") from None
    if parsed.tzinfo is None:
        raise InvalidRequest("deadline needs a time zone offset (e.g. Z or +02:00)", "deadline")
    return int(parsed.timestamp() * 1000)


def _callback_url(draft: Draft) -> None:
    url = draft.raw.get("callback_url")
    if url is None:
        return
    if not isinstance(url, str) or len(url) > MAX_URL:
        raise InvalidRequest(
            f"callback_url must be a URL string of at most {MAX_URL} characters", "callback_url"
        )
    _check_callback_url(url)
    tenant = draft.settings.tenants.get(draft.tenant)
    if tenant is None or not tenant.webhook_secrets:
        # Completion webhooks are always signed: without a secret the event could only be
        # dead-lettered days later, so say so now.
        raise InvalidRequest(
            "callback_url needs a webhook signing secret: the tenant has no webhook_secrets configured",
            "callback_url",
        )
    draft.callback_url = url


def check_url(url: str, name: str) -> None:
    """Refuse (naming ``name``) anything but an absolute http(s) URL with a host and a valid port.

    Spaces and control characters are refused outright: a CR/LF would split the request line
    or a header when the URL is sent, and a receiver never serves such a path anyway.
    """
    if _UNSAFE_URL.search(url):
        raise InvalidRequest(f"{name} must not contain spaces or control characters", name)
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError when out of 0-65535 or not a number
    except ValueError:
        raise InvalidRequest(f"{name} is not a valid URL (check its port)", name) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"{name} must be an absolute http(s) URL with a host", name)
    if port == 0:
        raise InvalidRequest(f"{name}: port 0 is not a port a receiver listens on", name)


def _tags(draft: Draft) -> None:
    tags = draft.raw.get("tags")
    if tags is None:
        return
    if not isinstance(tags, dict):
        raise InvalidRequest("tags must be an object of string to string", "tags")
    if len(tags) > MAX_TAGS:
        raise InvalidRequest(f"tags: at most {MAX_TAGS} tags per job", "tags")
    memo = draft.memo  # a request's items mostly share their tags: each is checked once per request
    for key, value in tags.items():
        if memo is not None and isinstance(value, str) and ("tag", key, value) in memo:
            continue
        if not _TAG_KEY.fullmatch(key):  # fullmatch: `$` would let a trailing newline through
            raise InvalidRequest(f"tags: name {key!r} must match [A-Za-z0-9_.:-]{{1,{MAX_TAG_KEY}}}", "tags")
        if not isinstance(value, str) or len(value) > MAX_TAG_VALUE:
            raise InvalidRequest(
                f"tags.{key} must be a string of at most {MAX_TAG_VALUE} characters", f"tags.{key}"
            )
        if _UNSAFE_TAG_VALUE.search(value):  # a value is part of aggregate key names
            raise InvalidRequest(f"tags.{key} must not contain braces or control characters", f"tags.{key}")
        if memo is not None:
            memo["tag", key, value] = True  # it passed
    draft.tags = tags


@functools.lru_cache(maxsize=256)
def _check_callback_url(url: str) -> None:
    """``check_url`` for a callback URL, remembered when it passes: a producer sends the same few URLs
    with every job, and parsing one was a tenth of a bulk item's validation."""
    check_url(url, "callback_url")


def tag_allowed(key: str, value: object) -> bool:
    """Whether one tag passes :func:`_tags`' rules (for callers that drop a tag rather than refuse)."""
    return (
        bool(_TAG_KEY.fullmatch(key))
        and isinstance(value, str)
        and len(value) <= MAX_TAG_VALUE
        and not _UNSAFE_TAG_VALUE.search(value)
    )


def _idempotency_key(draft: Draft) -> None:
    in_body, header = draft.raw.get("idempotency_key"), draft.idempotency_header
    if in_body is not None and not isinstance(in_body, str):
        raise InvalidRequest("idempotency_key must be a string", "idempotency_key")
    if in_body is not None and header is not None and in_body != header:
        raise InvalidRequest("the Idempotency-Key header and idempotency_key differ", "idempotency_key")
    key = in_body if in_body is not None else header
    if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
        raise InvalidRequest("idempotency_key must be 1-255 printable ASCII characters", "idempotency_key")
    draft.idempotency_key = key


# The validation pipeline, in order; the first refusal wins. Append a rule here.
CHECKS: tuple[Check, ...] = (
    _fields,
    _provider,
    _endpoint,
    _body,
    _model,
    _deadline,
    _callback_url,
    _tags,
    _idempotency_key,
)


def request_hash(draft: Draft) -> str:
    """What makes two requests "the same" for an idempotency key.

    Covers provider, endpoint, body, callback URL, tags and an absolute deadline; a relative
    ``deadline_in`` is left out, because a retry sent later would otherwise never match.
    """
    digest = hashlib.sha256()
    for part in (
        draft.provider,
        draft.endpoint,
        draft.callback_url or "",
        str(draft.deadline_ms) if draft.absolute_deadline else "",
    ):
        digest.update(part.encode())
        digest.update(b"\0")
    digest.update(orjson.dumps(draft.tags, option=orjson.OPT_SORT_KEYS))
    digest.update(b"\0")
    digest.update(draft.body)
    return digest.hexdigest()


def validate(
    raw: object,
    *,
    tenant: str,
    now_ms: int,
    settings: Settings,
    idempotency_header: str | None = None,
    memo: dict[Any, Any] | None = None,
) -> NewJob:
    """Run every check on one request; return the NewJob or raise the first refusal. ``memo``: one dict
    for all the items of one request, so what is the same for each (whether the provider serves a
    model: a set built from the pricing table) is worked out once per request."""
    if not isinstance(raw, dict):
        raise InvalidRequest("a job must be a JSON object")
    draft = Draft(raw, tenant, now_ms, settings, idempotency_header, memo=memo)
    for check in CHECKS:
        check(draft)
    job = NewJob(
        id=ids.job_id(now_ms),
        tenant=tenant,
        provider=draft.provider,
        endpoint=draft.endpoint,
        model=draft.model,
        body=draft.body,
        deadline_ms=draft.deadline_ms,
        created_ms=now_ms,
        callback_url=draft.callback_url,
        tags=draft.tags,
        idempotency_key=draft.idempotency_key,
        request_hash=request_hash(draft) if draft.idempotency_key else "",
        prefix=_prefix(draft),
    )
    return dedup.mark(job, settings)


def _prefix(draft: Draft) -> str:
    """The job's prompt prefix group, when its lane groups by prefix (else "")."""
    assert draft.provider_settings is not None
    return prefixes.for_lane(
        draft.settings,
        lane_name(draft.provider, draft.model, draft.endpoint),
        draft.parsed,
        len(draft.body),
        kind=draft.provider_settings.kind,
        endpoint=draft.endpoint,
    )


# Async admission checks (scheduler/costs/admission.py), run in order on each validated job before it is
# stored. Append yours.
ADMISSION: tuple[AdmissionCheck, ...] = (
    flips.route_at_enqueue,  # a deadline no batch can meet goes straight to sync
    budgets.admission,  # then priced at that route: ceiling 422, envelope 402 (and its reservation)
)


async def admit(job: NewJob, gate: AdmissionGate) -> NewJob:
    """Run the admission checks on a validated job; raise the first refusal."""
    for check in ADMISSION:
        await check(job, gate)
    return job


def refusal(job: NewJob, outcome: EnqueueOutcome, settings: Settings) -> BatchshiftError | None:
    """The error for an enqueue the script refused (a lane past the cap, a spent envelope), else None."""
    if outcome.status == "lanes":
        idle = settings.scheduler.lane_idle_s
        return InvalidRequest(
            f"tenant {job.tenant!r} already has {outcome.job_id} lanes in use within {idle:g} seconds "
            f"(limits.max_lanes_per_tenant); send body.model {job.model!r} to a lane in use, or later",
            "body.model",
        )
    if outcome.status == "budget":
        return BudgetExceeded(
            f"tenant {job.tenant!r} has ${float(outcome.job_id):.4f} billed or committed of its "
            f"${job.envelope_usd or 0:.2f} monthly budget; this job's expected ${job.reserve_usd:.4f} "
            "would pass it"
        )
    return None
