"""What a newcomer sees when a command is given something wrong: one line saying what, exit status 2."""

from __future__ import annotations

import pytest

from batchshift.cli import main
from emulator.faults import DEFAULTS


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("{bad", "--config is not JSON"),
        ("[1]", "--config must be a JSON object"),
        ('{"nope": 1}', "unknown emulator setting 'nope'; known: "),
        ('{"turnaround_s": "x"}', "turnaround_s: a number"),
    ],
)
def test_a_bad_emulator_config_is_one_line_before_the_server_starts(config, message, capsys):
    assert main(["emulator", "--port", "1", "--config", config]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_the_emulator_help_states_its_turnaround_default(capsys):
    with pytest.raises(SystemExit):
        main(["emulator", "--help"])
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
    assert f"seconds from submission to a batch's end (default {DEFAULTS['turnaround_s']:g})" in shown


@pytest.mark.parametrize(
    "command",
    ["api", "scheduler", "worker", "run", "emulator", "demo", "costs", "lanes", "simulate", "audit"],
)
def test_each_commands_help_opens_with_what_it_does(command, capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    listing = " ".join(capsys.readouterr().out.split()).replace("- ", "-")  # argparse wraps at hyphens too
    with pytest.raises(SystemExit):
        main([command, "--help"])
    paragraphs = capsys.readouterr().out.split("\n\n")
    description = " ".join(paragraphs[1].split()).replace("- ", "-")  # after the usage, before the arguments
    assert not description.startswith(("options:", "positional arguments:"))
    assert f"{command} {description}" in listing  # the line `batchshift --help` lists for it
