"""validate with one memo for a request's items judges each item as validate alone does."""

from __future__ import annotations

from typing import Any

from config.settings import ProviderSettings
from scheduler.errors import BatchshiftError
from scheduler.intake import validate
from tests.conftest import make_settings

NOW = 1_800_000_000_000


def verdict(item: dict[str, Any], settings: Any, memo: dict[Any, Any] | None) -> tuple[str, str]:
    try:
        job = validate(item, tenant="acme", now_ms=NOW, settings=settings, memo=memo)
    except BatchshiftError as exc:
        return ("refused", str(exc))
    return ("valid", job.lane)


def test_a_memo_shared_by_a_requests_items_changes_no_verdict(redis_url: str):
    catalogued = ProviderSettings(
        kind="openai", base_url="http://127.0.0.1:9/v1", api_key="k", models=["mine"]
    )
    settings = make_settings(redis_url, providers={"openai": catalogued})
    models = ["gpt-4o-mini", "nope", "mine", "nope", "gpt-4o-mini-2024-07-18", "mine", "gpt-4o-mini"]
    items = [{"provider": "openai", "body": {"model": m}} for m in models]
    memo: dict[Any, Any] = {}
    with_memo = [verdict(item, settings, memo) for item in items]
    assert with_memo == [verdict(item, settings, None) for item in items]
    assert [v[0] for v in with_memo] == ["valid", "refused", "valid", "refused", "valid", "valid", "valid"]


def test_a_tag_refused_in_one_item_is_refused_in_the_next_and_a_passed_one_passes(redis_url: str):
    settings = make_settings(redis_url)
    tags: list[Any] = [
        {"feature": "a"},
        {"feature": "a{b}"},
        {"feature": "a{b}"},
        {"feature": ["a"]},
        {"bad key": "a"},
        {"feature": "a", "team": "x"},
        {"feature": "a"},
    ]
    items = [{"provider": "openai", "body": {"model": "m"}, "tags": t} for t in tags]
    memo: dict[Any, Any] = {}
    with_memo = [verdict(item, settings, memo) for item in items]
    assert with_memo == [verdict(item, settings, None) for item in items]
    assert [v[0] for v in with_memo] == [
        "valid",
        "refused",
        "refused",
        "refused",
        "refused",
        "valid",
        "valid",
    ]
