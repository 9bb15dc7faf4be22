"""The policy lab: small scenarios, deterministic by seed; the CLI's table, JSON and plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from batchshift.cli import main
from batchshift.simulation import engine, scenario
from batchshift.simulation.outcome import as_json
from config.settings import SchedulerSettings, Settings
from scheduler.costs.pricing import Pricing

FIELDS = {
    "jobs",
    "on_time_ratio",
    "actual_usd",
    "sync_equivalent_usd",
    "saved_ratio",
    "duplicate_usd",
    "flipped",
    "needless",
    "relaned",
    "sync_share",
}

LANE = """
[[lanes]]
provider = "openai"
model = "gpt-4o-mini"
jobs_per_hour = {rate}
deadline_h = {deadline}
input_tokens = 800
output_tokens = 200
turnaround = {{ dist = "lognormal", median_min = 5, p90_min = 15 }}
stalls = {stalls}
sync_latency = {{ median_s = 1, p99_s = 4 }}
sync_rpm = {rpm}
sync_concurrency = 16
"""


def write(tmp_path: Path, *, hours=3, seed=1, rate=200, deadline="[1, 2]", stalls="[]", rpm=600) -> Path:
    path = tmp_path / f"small-{seed}.toml"
    head = f"duration_h = {hours}\nseed = {seed}\ntick_s = 60\n"
    path.write_text(head + LANE.format(rate=rate, deadline=deadline, stalls=stalls, rpm=rpm))
    return path


def run(path: Path, **kwargs) -> dict:
    settings = Settings()
    outcomes = engine.simulate(scenario.load(path), settings, Pricing.load(settings.pricing_file), **kwargs)
    return as_json(outcomes)


def test_every_policy_reports_the_contract_fields(tmp_path):
    result = run(write(tmp_path))
    assert list(result) == ["policies"]
    assert set(result["policies"]) == {
        "batchshift",
        "oracle",
        "always_sync",
        "batch_only",
        "fixed_escalation",
    }
    for figures in result["policies"].values():
        assert set(figures) == FIELDS
        assert figures["jobs"] == result["policies"]["batchshift"]["jobs"] > 400  # the same arrivals
    always = result["policies"]["always_sync"]
    assert always["saved_ratio"] == 0.0
    assert always["sync_share"] == 1.0
    assert result["policies"]["batch_only"]["flipped"] == 0


def test_the_same_seed_gives_the_same_run_and_another_seed_another(tmp_path):
    path = write(tmp_path)
    first = run(path)
    assert run(path) == first
    assert run(write(tmp_path, seed=2)) != first


def test_a_healthy_lane_keeps_the_discount_and_every_deadline(tmp_path):
    """Batches of 5 min (15 at p90) against deadlines of 1–2 h: nothing needs to flip."""
    figures = run(write(tmp_path), policies=("batchshift",))["policies"]["batchshift"]
    assert figures["on_time_ratio"] == 1.0
    assert figures["flipped"] == 0
    assert figures["saved_ratio"] == pytest.approx(0.5, abs=1e-6)


def test_a_stalled_lane_flips_in_time_where_batch_only_misses(tmp_path):
    """A 2 h stall from hour 1: batch_only misses deadlines, batchshift flips every job at risk in
    time, paying less than fixed escalation an hour before each deadline."""
    path = write(tmp_path, stalls="[{ start_h = 1, duration_h = 2 }]")
    result = run(path, policies=("batchshift", "batch_only", "fixed_escalation", "oracle"))["policies"]
    assert result["batch_only"]["on_time_ratio"] < 0.9
    assert result["batchshift"]["on_time_ratio"] == 1.0
    assert result["batchshift"]["flipped"] > 0
    assert result["batchshift"]["saved_ratio"] > result["fixed_escalation"]["saved_ratio"]
    assert result["oracle"]["saved_ratio"] - result["batchshift"]["saved_ratio"] < 0.05


def test_flips_start_early_enough_for_a_rate_limited_sync_lane(tmp_path):
    """2,000 jobs an hour on a stalled lane and a sync lane of 60 a minute: only flips that start
    before the last minute (the drain time) keep every deadline."""
    path = write(tmp_path, hours=1, rate=2000, deadline="[1.5, 2]", stalls="[{ start_h = 0, duration_h = 4 }]",
                 rpm=60)  # fmt: skip
    figures = run(path, policies=("batchshift",))["policies"]["batchshift"]
    assert figures["on_time_ratio"] == 1.0
    assert figures["sync_share"] == 1.0


def test_the_cli_prints_json_and_writes_a_plot(tmp_path, capsys):
    path = write(tmp_path, hours=1)
    png = tmp_path / "plot.png"
    assert main(["simulate", str(path), "--json", "--plot", str(png)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["policies"]["oracle"]) == FIELDS
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_cli_prints_a_table(tmp_path, capsys):
    assert main(["simulate", str(write(tmp_path, hours=1))]) == 0
    out = capsys.readouterr().out
    for name in ("batchshift", "oracle", "always_sync", "batch_only", "fixed_escalation"):
        assert name in out


def test_a_bad_scenario_is_refused_with_the_key_named(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(write(tmp_path).read_text().replace("jobs_per_hour", "jobs_per_hr"))
    assert main(["simulate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "jobs_per_hr" in err


def test_the_simulator_does_not_import_workers():
    code = (
        "import sys, batchshift.simulation.engine, batchshift.simulation.report;"
        "sys.exit(any(m == 'workers' or m.startswith('workers.') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize(
    "name", ["healthy", "heavy_tail", "stall", "outage", "expiry_storm", "tight", "sibling"]
)
def test_every_preset_is_a_valid_scenario(name):
    path = Path(__file__).parent.parent / "config" / "scenarios" / f"{name}.toml"
    assert scenario.load(path).lanes


def test_deadline_bands_let_a_late_batchs_jobs_flip_together_instead_of_paying_twice(tmp_path):
    """A stall over deadlines of 1–6 h: with one batch per flush, its early jobs flip and the batch
    then bills them too; cut into deadline bands, a late batch's jobs flip together and it is
    cancelled, so duplicate spend falls at the same on-time ratio."""
    path = write(tmp_path, hours=3, deadline="[1, 6]", stalls="[{ start_h = 1, duration_h = 2 }]")
    spec = scenario.load(path)
    pricing = Pricing.load(Settings().pricing_file)
    outcomes = {}
    for spread in (None, 1.25):
        settings = Settings(scheduler=SchedulerSettings(batch_deadline_spread=spread))
        outcomes[spread] = engine.run_policy(spec, settings, pricing, "batchshift")
    mixed, banded = outcomes[None], outcomes[1.25]
    assert mixed.on_time == mixed.jobs
    assert banded.on_time == banded.jobs
    assert mixed.duplicate_usd > 0
    assert banded.duplicate_usd < mixed.duplicate_usd / 2


def test_batches_ending_between_polls_just_before_their_jobs_last_safe_moment_keep_their_jobs(tmp_path):
    """Every batch takes 54.5 min against 1 h deadlines: it ends a few minutes before its jobs' last
    safe moment, where polls are 5 min apart. The tracker polls it once more a tick before that
    moment, so its jobs stay on the batch (polled only on schedule, every job flipped). What may
    still flip are jobs whose batch ends within the tick between that poll and the flip."""
    path = tmp_path / "between-polls.toml"
    path.write_text(
        "duration_h = 2\nseed = 1\ntick_s = 60\n"
        + LANE.format(rate=200, deadline=1, stalls="[]", rpm=600).replace(
            '{ dist = "lognormal", median_min = 5, p90_min = 15 }', '{ dist = "empirical", minutes = [54.5] }'
        )
    )
    result = run(path, policies=("batchshift", "oracle"))["policies"]
    assert result["oracle"]["flipped"] == 0
    assert result["batchshift"]["on_time_ratio"] == 1.0
    assert result["batchshift"]["flipped"] < result["batchshift"]["jobs"] * 0.02
    assert result["batchshift"]["saved_ratio"] > 0.48  # the oracle: 0.5


def sibling_scenario(tmp_path: Path) -> Path:
    """A lane stalled for 3 of its 4 hours (longer than its deadlines), and a healthy sibling serving
    the same model with light traffic of its own."""
    stalled = LANE.format(rate=200, deadline="[1.5, 3]", stalls="[{ start_h = 1, duration_h = 3 }]", rpm=600)
    sibling = LANE.format(rate=60, deadline="[1.5, 3]", stalls="[]", rpm=600)
    path = tmp_path / "sibling.toml"
    path.write_text(
        "duration_h = 4\nseed = 2\ntick_s = 60\n"
        + stalled
        + "siblings = [1]\n"
        + sibling
        + "siblings = [0]\n"
    )
    return path


def test_a_sibling_lane_takes_a_stalled_lanes_jobs_at_batch_price_instead_of_sync(tmp_path):
    """The same arrivals with and without the sibling: with it, the stalled lane's waiting jobs move
    to the sibling's batches, so fewer flip, more is saved and every deadline is kept."""
    spec = scenario.load(sibling_scenario(tmp_path))
    settings = Settings()
    pricing = Pricing.load(settings.pricing_file)
    with_sibling = engine.run_policy(spec, settings, pricing, "batchshift")
    without = engine.run_policy(spec, settings, pricing, "batchshift", siblings=False)
    assert with_sibling.jobs == without.jobs
    assert with_sibling.on_time == with_sibling.jobs
    assert without.on_time == without.jobs
    assert with_sibling.relaned > 0
    assert without.relaned == 0
    assert with_sibling.as_dict()["relaned"] == with_sibling.relaned
    assert with_sibling.as_dict()["needless"] == with_sibling.needless
    assert with_sibling.flipped < without.flipped / 10
    saved = with_sibling.as_dict()["saved_ratio"], without.as_dict()["saved_ratio"]
    assert saved[0] > saved[1] + 0.05
    print(f"sibling scenario: saved {saved[0]:.2%} with the sibling, {saved[1]:.2%} without")


def test_a_scenario_with_siblings_reports_batchshift_without_them_too(tmp_path):
    result = run(sibling_scenario(tmp_path), policies=("batchshift", "always_sync"))["policies"]
    assert list(result) == ["batchshift", engine.NO_SIBLINGS, "always_sync"]
    assert set(result[engine.NO_SIBLINGS]) == FIELDS


def test_a_sibling_must_be_another_lane_of_the_scenario(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(sibling_scenario(tmp_path).read_text().replace("siblings = [1]", "siblings = [0]"))
    with pytest.raises(scenario.ScenarioError, match="siblings"):
        scenario.load(path)


def test_a_directory_or_an_unwritable_plot_is_refused_in_one_line(tmp_path, capsys):
    assert main(["simulate", str(tmp_path)]) == 2
    assert f"cannot read {tmp_path}" in capsys.readouterr().err
    png = tmp_path / "no-such-dir" / "plot.png"
    assert main(["simulate", str(write(tmp_path, hours=1)), "--plot", str(png)]) == 2
    assert f"cannot write {png}: no directory {png.parent}" in capsys.readouterr().err
    assert main(["simulate", str(write(tmp_path, hours=1)), "--plot", str(tmp_path / "plot.xyz")]) == 2
    assert "--plot writes a PNG: name it *.png" in capsys.readouterr().err
