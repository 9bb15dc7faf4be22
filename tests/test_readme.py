"""README contract tests: every setting is in the configuration reference; every command shown runs."""

from __future__ import annotations

import re
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from config.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _model_of(annotation: object) -> type[BaseModel] | None:
    """The BaseModel inside an annotation such as ``X | None``, ``dict[str, X]`` or ``list[X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        for arg in typing.get_args(annotation):
            found = _model_of(arg)
            if found is not None:
                return found
    return None


def setting_names(model: type[BaseModel] = Settings, prefix: str = "BATCHSHIFT_") -> list[str]:
    """Every documented name: BATCHSHIFT_X for top-level fields, BATCHSHIFT_X__Y for nested models'
    fields, and ``X.y`` for the fields of entries in JSON maps and lists (tenants, providers, ...)."""
    names = []
    for field_name, info in model.model_fields.items():
        env = prefix + field_name.upper()
        names.append(env)
        nested = _model_of(info.annotation)
        if nested is None:
            continue
        origin = typing.get_origin(info.annotation)
        if origin in (dict, list):
            names.extend(f"{field_name}.{sub}" for sub in _leaf_fields(nested))
        else:
            names.extend(setting_names(nested, env + "__"))
    return names


def _leaf_fields(model: type[BaseModel], path: str = "") -> list[str]:
    out = []
    for name, info in model.model_fields.items():
        nested = _model_of(info.annotation)
        if nested is not None and typing.get_origin(info.annotation) not in (dict, list):
            out.extend(_leaf_fields(nested, f"{path}{name}."))
        else:
            out.append(f"{path}{name}")
    return out


def config_reference() -> str:
    match = re.search(r"^## Configuration\n(.*?)^## ", README, re.S | re.M)
    assert match, "README has no Configuration section"
    return match.group(1)


@pytest.mark.parametrize("name", setting_names())
def test_every_setting_is_in_the_configuration_reference(name: str):
    assert f"`{name}`" in config_reference(), f"README's configuration reference lacks {name}"


def test_the_reference_names_no_setting_that_does_not_exist():
    known = set(setting_names())
    documented = set(re.findall(r"`(BATCHSHIFT_[A-Z0-9_]+)`", config_reference()))
    documented -= {"BATCHSHIFT_CONFIG"}  # the file's path is read before the settings model
    assert documented <= known, f"README documents unknown settings: {sorted(documented - known)}"


def readme_commands() -> list[list[str]]:
    """Every distinct `batchshift <command>` the README shows."""
    commands = sorted(set(re.findall(r"`batchshift ([a-z]+)", README)))
    return [[c] for c in commands]


@pytest.mark.parametrize("command", readme_commands(), ids=lambda c: " ".join(c))
def test_every_readme_command_runs_with_help(command: list[str]):
    done = subprocess.run(
        [sys.executable, "-m", "batchshift.cli", *command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "usage" in done.stdout.lower()


def test_no_file_holds_a_merge_conflict_marker():
    """A conflict resolved in a hurry once left both sides of a README paragraph on main."""
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    marker = re.compile(r"^(<{7} |>{7} |={7}$)", re.M)
    found = [
        name
        for name in tracked
        if (ROOT / name).is_file()
        and (ROOT / name).suffix in {".md", ".py", ".toml", ".lua", ".yml", ".txt", ""}
        and marker.search((ROOT / name).read_text(errors="replace"))
    ]
    assert found == []
