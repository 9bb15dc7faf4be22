"""Batch metadata as job tags: what a tag may hold is kept, the rest dropped (OpenAI allows more)."""

from __future__ import annotations

from scheduler.compat.lines import tags_of


def test_metadata_pairs_a_tag_can_hold_become_tags_the_rest_are_dropped():
    metadata = {"feature": "digest", "team": "a b", "bad key": "v", "brace": "{x}", "long": "x" * 300}
    assert tags_of(metadata, "feature") == {"feature": "digest", "team": "a b"}


def test_the_feature_comes_from_the_configured_metadata_key():
    assert tags_of({"product": "search"}, "product") == {"product": "search", "feature": "search"}
    assert tags_of(None, "feature") == {}
