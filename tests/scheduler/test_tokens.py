"""Token estimates: one rule for budgets, reservations and the sync lane's token limits."""

from __future__ import annotations

import orjson

from scheduler.costs import tokens
from workers.sync_limits import estimate_tokens


def test_input_tokens_come_from_the_size_and_are_never_zero():
    assert tokens.input_tokens(4000) == 1000
    assert tokens.input_tokens(0) == 1


def test_the_output_cap_is_the_first_whole_number_cap_field():
    assert tokens.output_cap({"max_output_tokens": 7}) == 7
    assert tokens.output_cap({"max_tokens": 0, "max_completion_tokens": 500}) == 0
    assert tokens.output_cap({"max_tokens": True, "max_completion_tokens": 9}) == 9  # a bool is no cap
    assert tokens.output_cap({"max_tokens": -1}) is None
    assert tokens.output_cap({}) is None


def test_a_body_estimates_as_its_size_and_its_cap():
    body = orjson.dumps({"model": "m", "max_tokens": 100})
    assert tokens.estimate(body) == (len(body) // 4, 100)
    assert tokens.estimate(b"not json") == (2, 0)
    assert tokens.estimate(b"[1, 2]") == (1, 0)


def test_the_sync_lane_counts_what_the_budget_counts():
    """A body whose caps the two rules used to read differently (0, then 500) now counts one way."""
    body = orjson.dumps({"max_tokens": 0, "max_completion_tokens": 500})
    assert estimate_tokens(body) == tokens.input_tokens(len(body)) + 0
