"""The emulator's batch clock: status as a pure function of time, stalls, expiry and cancellation."""

from __future__ import annotations

import random

import pytest

from emulator import faults
from emulator.state import EmulatorState, Lines, OpenAIBatch, Run

T0 = 1_000_000.0


def run(turnaround: float = 10.0, *, validating: bool = True, expire: float | None = None) -> Run:
    return Run(created=T0, turnaround=turnaround, validating=validating, expire_fraction=expire, cancel_s=1.0)


def test_openai_phases_split_the_turnaround() -> None:
    clock = run()
    assert (clock.work_start, clock.work_end, clock.turnaround) == (1.0, 9.0, 10.0)
    assert clock.processed(clock.elapsed(T0 + 0.5), 100) == 0
    assert clock.processed(clock.elapsed(T0 + 5.0), 100) == 50
    assert clock.processed(clock.elapsed(T0 + 9.5), 100) == 100


def test_anthropic_works_from_the_start_to_the_end() -> None:
    clock = run(validating=False)
    assert (clock.work_start, clock.work_end) == (0.0, 10.0)
    assert clock.processed(5.0, 10) == 5


def test_an_expiring_batch_reaches_its_fraction_at_the_end() -> None:
    clock = run(expire=0.3)
    assert clock.work_end == 10.0
    assert clock.processed(clock.elapsed(T0 + 10), 100) == 30
    assert clock.processed(clock.elapsed(T0 + 99), 100) == 30


def test_a_stall_stops_the_clock_and_lifting_it_shifts_the_batch() -> None:
    clock = run()
    clock.stall(T0 + 3)
    assert clock.elapsed(T0 + 3) == clock.elapsed(T0 + 500) == 3.0
    clock.resume(T0 + 500)
    assert clock.elapsed(T0 + 501) == 4.0
    assert clock.wall(10.0) == T0 + 507


def test_cancel_freezes_progress_then_ends_after_cancel_s() -> None:
    clock = run()
    clock.cancel(T0 + 5)
    assert clock.cancel_elapsed == 5.0
    assert not clock.cancel_done(T0 + 5.5)
    assert clock.cancel_done(T0 + 6)


def test_stall_config_stops_and_resumes_live_batches() -> None:
    state = EmulatorState({"turnaround_s": {"slow-model": 10, "*": 1}}, None)
    stalled = state.new_run("slow-model", T0, validating=True)
    other = state.new_run("other", T0, validating=True)
    assert (stalled.turnaround, other.turnaround) == (10.0, 1.0)
    batch = OpenAIBatch(
        "batch_1", "/v1/chat/completions", "file-1", "24h", None, "slow-model", stalled, 0, False, 0, 400
    )
    batch.lines = Lines(["a"], [None], [False])
    state.openai_batches[batch.id] = batch
    state.configure({"stall": ["slow-model"]}, now=T0 + 2)
    assert stalled.elapsed(T0 + 100) == 2.0
    state.configure({"stall": []}, now=T0 + 100)
    assert stalled.elapsed(T0 + 101) == 3.0


def test_a_batch_created_while_its_model_is_stalled_waits() -> None:
    state = EmulatorState({"stall": ["*"]}, None)
    clock = state.new_run("any", T0, validating=False)
    assert clock.elapsed(T0 + 60) == 0.0


@pytest.mark.parametrize(
    "patch",
    [{"nope": 1}, {"turnaround_s": -1}, {"stall": "gpt"}, {"fail_next": {"/x": 429}}, {"rate_limit": 0.5}],
)
def test_bad_settings_are_refused(patch: dict[str, object]) -> None:
    with pytest.raises(faults.ConfigError):
        faults.merged(faults.DEFAULTS, patch)


def test_fail_next_is_spent_in_order_and_matches_methods() -> None:
    config = faults.initial({"fail_next": {"POST /v1/batches": [429, 500], "/v1/files/*": [503]}})
    rng = random.Random(0)
    assert faults.injected_status(config, rng, "GET", "/v1/batches") is None
    assert faults.injected_status(config, rng, "POST", "/v1/batches") == 429
    assert faults.injected_status(config, rng, "POST", "/v1/batches") == 500
    assert faults.injected_status(config, rng, "POST", "/v1/batches") is None
    assert faults.injected_status(config, rng, "GET", "/v1/files/file-1") == 503


def test_line_failures_are_a_stable_share_of_custom_ids() -> None:
    ids = [f"job-{i}" for i in range(2000)]
    failing = [cid for cid in ids if faults.line_fails(cid, 0.25)]
    assert 400 < len(failing) < 600
    assert failing == [cid for cid in ids if faults.line_fails(cid, 0.25)]
