"""Prompt prefixes: which jobs of a lane share a cacheable leading prompt, and the cache hints a batch carries.

A job's *prefix key* is a short stable hash of its leading content, computed once at intake and
stored with the job (field ``prefix``), so planning and batch building group jobs without parsing
bodies. Leading content is the request's tools, then its system prompt / instructions, then its
messages (or input items), each block serialised canonically:

- Anthropic: the blocks up to and including the last one carrying ``cache_control`` (the producer's
  own cache breakpoint; the ``cache_control`` values themselves are left out, so two jobs differing
  only in a TTL share a group). Without a breakpoint, the rule below.
- Otherwise: the first ``prefix_tokens`` tokens' worth of leading content (4 bytes a token). A
  request shorter than that has no prefix key (``""``): no provider caches so short a prompt (intake
  applies this to the whole encoded body first, for both rules, so a short job costs no hashing).

Jobs sharing a key go into the same batch, adjacent (:mod:`scheduler.planning.planner`,
:mod:`workers.tasks.batches`), and their bodies carry the providers' cache hints
(:func:`with_cache_hints`): OpenAI's ``prompt_cache_key`` per group unless the producer set one,
and Anthropic's one-hour ``cache_control`` TTL on every breakpoint unless the producer chose a TTL
(Anthropic's recipe for prompt caching inside Message Batches).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any, Final

import orjson

from config.settings import Settings

BYTES_PER_TOKEN: Final = 4  # the same rough rule the cost estimates use
KEY_HEX: Final = 16  # 64 bits of sha256: collisions between a lane's groups are negligible
PROMPT_CACHE_KEY_PREFIX: Final = "bs-"
ANTHROPIC_BATCH_TTL: Final = "1h"
# Endpoints whose requests accept OpenAI's prompt_cache_key.
PROMPT_CACHE_KEY_ENDPOINTS: Final = frozenset({"/v1/chat/completions", "/v1/responses"})


def _blocks(body: dict[str, Any]) -> Iterator[tuple[Any, bool]]:
    """The body's leading content in prompt order: (block, carries cache_control)."""
    for name in ("tools", "system", "systemInstruction", "instructions"):
        value = body.get(name)
        for block in value if isinstance(value, list) else ([value] if value is not None else []):
            yield from _parts(block)
    for name in ("messages", "input", "contents"):
        value = body.get(name)
        for item in value if isinstance(value, list) else ([value] if value is not None else []):
            if isinstance(item, dict) and isinstance(item.get("content"), list):
                yield {"role": item.get("role")}, False
                for block in item["content"]:
                    yield from _parts(block)
            else:
                yield from _parts(item)


def _parts(block: Any) -> Iterator[tuple[Any, bool]]:
    if isinstance(block, dict) and "cache_control" in block:
        yield {k: v for k, v in block.items() if k != "cache_control"}, True
    else:
        yield block, False


def prefix_key(body: dict[str, Any], *, kind: str, endpoint: str, prefix_tokens: int) -> str:
    """The job's prefix key (``""``: too short to share a cache)."""
    if endpoint == "/v1/embeddings":
        return ""
    encoded = [(orjson.dumps(block, option=orjson.OPT_SORT_KEYS), marked) for block, marked in _blocks(body)]
    if kind == "anthropic":
        last = max((i for i, (_, marked) in enumerate(encoded) if marked), default=-1)
        if last >= 0:
            digest = hashlib.sha256(b"a\0")
            for part, _ in encoded[: last + 1]:
                digest.update(part)
                digest.update(b"\0")
            return digest.hexdigest()[:KEY_HEX]
    want = prefix_tokens * BYTES_PER_TOKEN
    digest, have = hashlib.sha256(b"n\0"), 0
    for part, _ in encoded:
        take = part[: want - have]
        digest.update(take)
        have += len(take)
        if have >= want:
            return digest.hexdigest()[:KEY_HEX]
    return ""


def for_lane(
    settings: Settings, lane: str, parsed: dict[str, Any], size: int, *, kind: str, endpoint: str
) -> str:
    """The prefix key of a request of ``size`` bytes (``parsed``) in ``lane``, by that lane's
    ``group_prefixes`` and ``prefix_tokens`` ("" when the lane does not group, or it is too short).

    Intake keys a job by its own lane; a job moved to a sibling lane is keyed again by the sibling's.
    """
    # The two fields read directly: merging a lane's whole settings per job would cost bulk intake.
    defaults = settings.lane_defaults
    override = settings.lanes.get(lane)
    group, tokens = defaults.group_prefixes, defaults.prefix_tokens
    if override is not None:
        group = group if override.group_prefixes is None else override.group_prefixes
        tokens = override.prefix_tokens or tokens
    tokens = tokens or 1024
    if group is False or size < tokens * BYTES_PER_TOKEN:
        return ""  # a whole request this short is below what any provider caches: no group to join
    return prefix_key(parsed, kind=kind, endpoint=endpoint, prefix_tokens=tokens)


def with_cache_hints(body: bytes, prefix: str, *, kind: str, endpoint: str) -> bytes:
    """``body`` with the provider's cache hints for prefix group ``prefix`` (unchanged when none apply)."""
    if not prefix:
        return body
    if kind == "openai" and endpoint in PROMPT_CACHE_KEY_ENDPOINTS:
        if b'"prompt_cache_key"' in body:
            return body
        parsed = orjson.loads(body)
        if "prompt_cache_key" in parsed:
            return body
        parsed["prompt_cache_key"] = PROMPT_CACHE_KEY_PREFIX + prefix
        return orjson.dumps(parsed, option=orjson.OPT_SORT_KEYS)
    if kind == "anthropic" and b'"cache_control"' in body:
        parsed = orjson.loads(body)
        markers = list(_markers(parsed))
        if not markers or any("ttl" in marker for marker in markers):
            return body  # the producer chose its TTLs: mixing ours in could break their order
        for marker in markers:
            marker["ttl"] = ANTHROPIC_BATCH_TTL
        return orjson.dumps(parsed, option=orjson.OPT_SORT_KEYS)
    return body


def _markers(value: Any) -> Iterator[dict[str, Any]]:
    """Every ``cache_control`` object in a request body."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "cache_control" and isinstance(item, dict):
                yield item
            else:
                yield from _markers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _markers(item)


def group_order(candidates: Sequence[tuple[str, int, str]], *, urgent_until_ms: int) -> list[str]:
    """The order a grouping batch takes a deadline band's jobs in, ``(job id, deadline ms, prefix)``
    given earliest deadline first.

    Jobs due before ``urgent_until_ms`` (under deadline pressure) come first, in deadline order, so
    grouping never holds back a job that must go now. The rest follow group by group, the group with
    the earliest deadline first, each group's jobs adjacent in deadline order; a job without a
    prefix is a group of its own. A job left out of this batch by its cap is not urgent: a later
    batch takes it before it would be.
    """
    urgent: list[str] = []
    groups: dict[str, list[str]] = {}
    for job_id, deadline_ms, prefix in candidates:
        if deadline_ms <= urgent_until_ms:
            urgent.append(job_id)
        else:
            groups.setdefault(prefix or f"\0{job_id}", []).append(job_id)
    return urgent + [job_id for members in groups.values() for job_id in members]
