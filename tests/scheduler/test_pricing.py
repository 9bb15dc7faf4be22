"""Pricing: usage from both providers' shapes, per-route costs against hand-computed values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from structlog.testing import capture_logs

from config.settings import DEFAULT_PRICING_PATH, SettingsError
from emulator.server import running_emulator
from scheduler.costs.pricing import Pricing, RouteName, Usage, normalize_usage


@pytest.fixture(scope="module")
def pricing() -> Pricing:
    return Pricing.load(DEFAULT_PRICING_PATH)


def usd(x: float) -> Any:
    return pytest.approx(x, rel=1e-9, abs=1e-12)


def test_openai_prompt_tokens_include_cached_ones():
    usage = normalize_usage(
        "openai",
        {"prompt_tokens": 2048, "completion_tokens": 10, "prompt_tokens_details": {"cached_tokens": 1024}},
    )
    assert usage == Usage(2048, 10, 1024, 0)
    assert usage.uncached_input_tokens == 1024


def test_openai_responses_and_embeddings_shapes():
    responses = {"input_tokens": 50, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 7}
    assert normalize_usage("openai", responses) == Usage(50, 7, 0, 0)
    assert normalize_usage("openai", {"prompt_tokens": 9, "total_tokens": 9}) == Usage(9, 0, 0, 0)


def test_anthropic_input_tokens_exclude_cache_tokens():
    usage = normalize_usage(
        "anthropic",
        {
            "input_tokens": 100,
            "output_tokens": 50,
            "cache_read_input_tokens": 2000,
            "cache_creation_input_tokens": 1500,
            "cache_creation": {"ephemeral_5m_input_tokens": 500, "ephemeral_1h_input_tokens": 1000},
        },
    )
    assert usage == Usage(3600, 50, 2000, 500, 1000)
    assert usage.uncached_input_tokens == 100


def test_missing_or_odd_usage_never_raises():
    assert normalize_usage("openai", None) is None
    assert normalize_usage("anthropic", {"input_tokens": -3, "output_tokens": "x"}) == Usage(0, 0, 0, 0)


def test_openai_batch_flex_and_sync_prices(pricing: Pricing):
    """gpt-4o-mini: $0.15 in / $0.60 out per MTok; batch and flex at half."""
    usage = {"prompt_tokens": 1000, "completion_tokens": 200}
    sync_usd = (1000 * 0.15 + 200 * 0.60) / 1e6
    routes: list[tuple[RouteName, float]] = [
        ("batch", sync_usd / 2),
        ("flex", sync_usd / 2),
        ("sync", sync_usd),
    ]
    for route, actual in routes:
        cost = pricing.job_cost("openai", "openai", "gpt-4o-mini", route, usage)
        assert cost.actual_usd == usd(actual)
        assert cost.sync_equivalent_usd == usd(sync_usd)
        assert cost.saved_usd == usd(sync_usd - actual)


def test_openai_cached_tokens_priced_at_cached_rate(pricing: Pricing):
    """gpt-4.1: $2 in, $0.50 cached, $8 out; cached reads stack with the batch discount."""
    usage = {
        "prompt_tokens": 2048,
        "completion_tokens": 100,
        "prompt_tokens_details": {"cached_tokens": 1024},
    }
    sync_usd = (1024 * 2.0 + 1024 * 0.50 + 100 * 8.0) / 1e6
    cost = pricing.job_cost("openai", "openai", "gpt-4.1", "batch", usage)
    assert cost.sync_equivalent_usd == usd(sync_usd)
    assert cost.actual_usd == usd(sync_usd / 2)


def test_anthropic_cache_reads_and_writes_stack_with_batch(pricing: Pricing):
    """claude-sonnet-4-5: $3 in, $0.30 read, $3.75 5m write, $6 1h write, $15 out."""
    usage = {
        "input_tokens": 100,
        "output_tokens": 50,
        "cache_read_input_tokens": 2000,
        "cache_creation_input_tokens": 1500,
        "cache_creation": {"ephemeral_5m_input_tokens": 500, "ephemeral_1h_input_tokens": 1000},
    }
    sync_usd = (100 * 3 + 2000 * 0.30 + 500 * 3.75 + 1000 * 6.0 + 50 * 15) / 1e6
    cost = pricing.job_cost("anthropic", "anthropic", "claude-sonnet-4-5", "batch", usage)
    assert cost.sync_equivalent_usd == usd(sync_usd)
    assert cost.actual_usd == usd(sync_usd / 2)
    assert cost.as_dict() == {
        "actual_usd": cost.actual_usd,
        "sync_equivalent_usd": cost.sync_equivalent_usd,
        "saved_usd": cost.saved_usd,
    }


def test_dated_snapshots_price_as_their_base(pricing: Pricing):
    usage = {"prompt_tokens": 10, "completion_tokens": 10}
    base = pricing.job_cost("openai", "openai", "gpt-4o-mini", "sync", usage)
    dated = pricing.job_cost("openai", "openai", "gpt-4o-mini-2024-07-18", "sync", usage)
    assert dated.actual_usd == base.actual_usd is not None
    claude = {"input_tokens": 10, "output_tokens": 10}
    assert pricing.job_cost("anthropic", "anthropic", "claude-sonnet-4-5-20250929", "sync", claude).actual_usd


def test_unknown_model_costs_none_and_warns_once(pricing: Pricing):
    with capture_logs() as logs:
        for _ in range(3):
            cost = pricing.job_cost("openai", "openai", "no-such-model", "batch", {"prompt_tokens": 5})
    assert cost.as_dict() is None
    assert cost.finish_fields() == {
        "input_tokens": 5,
        "output_tokens": 0,
        "cached_tokens": 0,
        "actual_usd": 0.0,
        "sync_usd": 0.0,
        "cost": None,
    }
    assert [e["event"] for e in logs] == ["pricing.model_unknown"]


def test_non_stacking_provider_bills_cache_at_sync_cache_price(tmp_path: Path):
    table = tmp_path / "pricing.toml"
    table.write_text(
        "[providers.gemini]\nbatch_discount = 0.5\ncache_stacks_with_batch = false\n"
        '[providers.gemini.models."m"]\ninput = 1.0\noutput = 2.0\ncache_read = 0.1\n'
    )
    pricing = Pricing.load(table)
    usage = {"prompt_tokens": 1000, "completion_tokens": 100, "prompt_tokens_details": {"cached_tokens": 600}}
    cost = pricing.job_cost("gemini", "openai", "m", "batch", usage)
    assert cost.actual_usd == usd((400 * 1.0 + 100 * 2.0) / 2 / 1e6 + 600 * 0.1 / 1e6)


def test_bad_pricing_file_names_the_problem(tmp_path: Path):
    table = tmp_path / "pricing.toml"
    table.write_text('[providers.openai.models."m"]\ninput = -1\noutput = 1\n')
    with pytest.raises(SettingsError, match="input"):
        Pricing.load(table)
    with pytest.raises(SettingsError, match="not found"):
        Pricing.load(tmp_path / "missing.toml")


def test_shipped_table_prices_the_required_models(pricing: Pricing):
    for kind, model in [
        ("openai", "gpt-4o-mini"),
        ("openai", "gpt-4.1-mini"),
        ("openai", "gpt-4.1"),
        ("anthropic", "claude-haiku-4-5"),
        ("anthropic", "claude-sonnet-4-5"),
    ]:
        assert pricing.model_price(kind, kind, model) is not None, model


async def test_costs_from_emulator_usage_match_hand_computation(pricing: Pricing):
    """Real usage objects from the emulator's sync endpoints, cache hits included."""
    system = "cached system prompt " * 300  # well over 1,024 emulated tokens
    async with httpx.AsyncClient(timeout=10) as client:
        with running_emulator() as base:
            openai_body = {
                "model": "gpt-4.1-mini",
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": "hi"}],
                "max_tokens": 20,
            }
            anthropic_body = {
                "model": "claude-haiku-4-5",
                "max_tokens": 20,
                "system": [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
                "messages": [{"role": "user", "content": "hi"}],
            }
            oa, ant = [], []
            for _ in range(2):  # the second call reads what the first cached
                r = await client.post(
                    f"{base}/v1/chat/completions",
                    content=orjson.dumps(openai_body),
                    headers={"authorization": "Bearer sk-test", "content-type": "application/json"},
                )
                oa.append(r.json()["usage"])
                r = await client.post(
                    f"{base}/v1/messages",
                    content=orjson.dumps(anthropic_body),
                    headers={"x-api-key": "sk-ant", "anthropic-version": "2023-06-01"},
                )
                ant.append(r.json()["usage"])
    hit = oa[1]
    cached = hit["prompt_tokens_details"]["cached_tokens"]
    assert cached > 0
    expected = (
        (hit["prompt_tokens"] - cached) * 0.40 + cached * 0.10 + hit["completion_tokens"] * 1.60
    ) / 1e6
    cost = pricing.job_cost("openai", "openai", "gpt-4.1-mini", "flex", hit)
    assert cost.sync_equivalent_usd == usd(expected)
    assert cost.actual_usd == usd(expected / 2)

    write, read = ant
    assert write["cache_creation_input_tokens"] > 0
    assert read["cache_read_input_tokens"] > 0
    w = pricing.job_cost("anthropic", "anthropic", "claude-haiku-4-5", "batch", write)
    assert w.actual_usd == usd(
        (
            write["input_tokens"] * 1.0
            + write["cache_creation_input_tokens"] * 1.25
            + write["output_tokens"] * 5.0
        )
        / 2
        / 1e6
    )
    r_cost = pricing.job_cost("anthropic", "anthropic", "claude-haiku-4-5", "sync", read)
    assert r_cost.actual_usd == usd(
        (read["input_tokens"] * 1.0 + read["cache_read_input_tokens"] * 0.10 + read["output_tokens"] * 5.0)
        / 1e6
    )
    assert r_cost.usage is not None
    assert r_cost.usage.input_tokens == read["input_tokens"] + read["cache_read_input_tokens"]
