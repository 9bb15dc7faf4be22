"""docker-compose.yml validates against the Compose Specification (no Docker engine needed)."""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose_schema() -> dict[str, Any]:
    """The Compose Specification schema as check-jsonschema vendors it."""
    text = (
        resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    )
    schema: dict[str, Any] = json.loads(text)
    return schema


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_compose_file_matches_the_compose_specification(compose, compose_schema):
    jsonschema.validate(compose, compose_schema)


def test_the_schema_refuses_a_broken_compose_file(compose, compose_schema):
    """Guards the test above: a misspelt service key must not validate."""
    broken = copy.deepcopy(compose)
    broken["services"]["api"]["comand"] = ["api"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, compose_schema)


def test_compose_runs_every_process_and_keeps_redis_durable(compose):
    services = compose["services"]
    assert {"redis", "api", "scheduler", "worker", "emulator"} <= set(services)
    assert "--appendonly" in services["redis"]["command"]
    assert services["redis"]["volumes"]
    assert services["emulator"]["profiles"] == ["emulator"]
    assert services["worker"]["command"] == ["worker"]


def test_redis_requires_the_password_from_env_and_every_process_uses_it(compose):
    """The compose Redis has a password (REDIS_PASSWORD from .env) and every batchshift process sends it."""
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--requirepass") + 1].startswith("${REDIS_PASSWORD:?")
    assert redis["environment"]["REDISCLI_AUTH"].startswith("${REDIS_PASSWORD:?")
    for name in ("api", "scheduler", "worker"):
        url = compose["services"][name]["environment"]["BATCHSHIFT_REDIS_URL"]
        assert url.startswith("redis://:${REDIS_PASSWORD:?")
        assert url.endswith("@redis:6379/0")
    example = (ROOT / ".env.example").read_text().splitlines()
    assert any(line.startswith("REDIS_PASSWORD=") for line in example)
