"""Settings: TOML file, environment over it, nested delimiter, clear errors, the shipped file."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from batchshift import cli
from config.settings import DEFAULT_CONFIG_PATH, OTLP_PROTOCOL_VARS, Settings, SettingsError, load_settings

TOML = """
redis_url = "redis://file:6379/1"
admin_api_key = "file-admin"

[tenants.team]
api_key = "file-key"

[limits]
max_body_bytes = 2048
max_bulk_items = 7
"""


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "batchshift.toml"
    path.write_text(TOML)
    monkeypatch.setenv("BATCHSHIFT_CONFIG", str(path))
    return path


def test_toml_file_is_read(config_file: Path):
    settings = load_settings()
    assert settings.redis_url == "redis://file:6379/1"
    assert settings.limits.max_body_bytes == 2048
    assert settings.tenants["team"].api_key.get_secret_value() == "file-key"


def test_environment_overrides_the_file(config_file: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("BATCHSHIFT_REDIS_URL", "redis://env:6379/2")
    monkeypatch.setenv("BATCHSHIFT_TENANTS", '{"prod": {"api_key": "env-key"}}')
    monkeypatch.setenv(
        "BATCHSHIFT_PROVIDERS",
        '{"oa": {"kind": "openai", "base_url": "https://api.openai.com/v1", "api_key": "sk"}}',
    )
    settings = load_settings()
    assert settings.redis_url == "redis://env:6379/2"
    assert set(settings.tenants) == {"prod"}  # replaced whole, the file's tenant is gone
    assert settings.providers["oa"].kind == "openai"
    assert settings.admin_api_key is not None
    assert settings.admin_api_key.get_secret_value() == "file-admin"


def test_nested_delimiter_sets_one_nested_field(config_file: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("BATCHSHIFT_LIMITS__MAX_BULK_ITEMS", "99")
    monkeypatch.setenv("BATCHSHIFT_LANE_DEFAULTS__MAX_WAIT", "5")
    settings = load_settings()
    assert settings.limits.max_bulk_items == 99
    assert settings.lane_defaults.max_wait == 5


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BATCHSHIFT_LIMITS__MAX_BODY_BYTES", "-1"),
        ("BATCHSHIFT_LIMITS__MAX_BULK_ITEMS", "many"),
        ("BATCHSHIFT_PROVIDERS", '{"x": {"kind": "cohere", "base_url": "https://x"}}'),
        ("BATCHSHIFT_LOG_FORMAT", "xml"),
        # a ':' in a tenant name could make two tenants' Redis keys meet
        ("BATCHSHIFT_TENANTS", '{"a:b": {"api_key": "k"}}'),
        # the OTel spec's http/json has no Python exporter: said at startup, not at the first export
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc/json"),
    ],
)
def test_bad_setting_is_a_settings_error_naming_it(
    config_file: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str
):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert name in str(caught.value)


def test_malformed_json_in_an_env_var_names_the_variable_and_not_its_value(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("BATCHSHIFT_PROVIDERS", '{"openai": {"api_key": "sk-secret-in-bad-json"')
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "BATCHSHIFT_PROVIDERS is not valid JSON" in message
    assert "sk-secret" not in message


def test_missing_config_file_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("BATCHSHIFT_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(SettingsError, match="BATCHSHIFT_CONFIG"):
        load_settings()


def test_cli_exits_2_with_the_message_on_a_bad_setting(
    config_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setenv("BATCHSHIFT_LIMITS__MAX_BODY_BYTES", "0")
    assert cli.main(["api", "--port", "1"]) == 2
    assert "BATCHSHIFT_LIMITS__MAX_BODY_BYTES" in capsys.readouterr().err


def test_shipped_config_loads(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("BATCHSHIFT_CONFIG", str(DEFAULT_CONFIG_PATH))
    settings = load_settings()
    assert settings.tenants
    assert {p.kind for p in settings.providers.values()} == {"openai", "anthropic"}


def test_every_key_in_the_shipped_config_has_a_comment_above_it():
    lines = DEFAULT_CONFIG_PATH.read_text().splitlines()
    tomllib.loads("\n".join(lines))  # it parses
    key = re.compile(r"^\s*[A-Za-z0-9_\"-]+\s*=")
    missing = [
        line.strip()
        for i, line in enumerate(lines)
        if key.match(line) and not (i > 0 and lines[i - 1].lstrip().startswith("#"))
    ]
    assert missing == []


def test_a_settings_error_carries_no_input_values(config_file: Path, monkeypatch: pytest.MonkeyPatch):
    """pydantic's own error holds the inputs (keys included): it is neither chained nor echoed."""
    secret = "sk-very-secret-value"
    monkeypatch.setenv(
        "BATCHSHIFT_PROVIDERS",
        f'{{"x": {{"kind": "cohere", "base_url": "https://x", "api_key": "{secret}"}}}}',
    )
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert secret not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_sibling_lanes_name_each_lanes_siblings_in_order_of_preference():
    a, b, c = (f"{p}:gpt-4.1-mini:/v1/chat/completions" for p in ("openai", "azure", "together"))
    settings = Settings(sibling_lanes=[[a, b, c]])
    assert settings.siblings_of(a) == [b, c]
    assert settings.siblings_of(c) == [a, b]
    assert settings.siblings_of("openai:gpt-4o:/v1/chat/completions") == []


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ([["openai:m:/v1/chat/completions"]], "at least two lanes"),
        ([["openai:m:/v1/chat/completions", "azure:m"]], "provider:model:endpoint"),
        ([["openai:m:/v1/chat/completions", "azure:m:/v1/embeddings"]], "one endpoint"),
        ([["a:m:/v1/x", "b:m:/v1/x"], ["a:m:/v1/x", "c:m:/v1/x"]], "two sibling groups"),
    ],
)
def test_bad_sibling_groups_are_refused(groups, message):
    with pytest.raises(ValidationError, match=message):
        Settings(sibling_lanes=groups)


def test_siblings_must_speak_one_wire_format():
    providers = {
        name: {"kind": kind, "base_url": "http://127.0.0.1:9", "api_key": "k"}
        for name, kind in (("openai", "openai"), ("azure", "azure_openai"), ("anthropic", "anthropic"))
    }
    ok = [["openai:m:/v1/chat/completions", "azure:m-batch:/v1/chat/completions"]]
    assert Settings(providers=providers, sibling_lanes=ok).siblings_of(ok[0][0]) == [ok[0][1]]
    mixed = [["openai:m:/v1/messages", "anthropic:m:/v1/messages"]]
    with pytest.raises(ValidationError, match="one wire format"):
        Settings(providers=providers, sibling_lanes=mixed)


@pytest.mark.parametrize(
    ("environ", "protocol"),
    [
        ({}, "http/protobuf"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "grpc"),
        # the signal's own variable wins over the general one, as the OTel spec says
        (
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"},
            "http/protobuf",
        ),
        (
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "BATCHSHIFT_TRACING__PROTOCOL": "http/protobuf"},
            "http/protobuf",
        ),
    ],
)
def test_the_otlp_protocol_is_read_the_standard_way(
    config_file: Path, monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], protocol: str
):
    for name in OTLP_PROTOCOL_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert load_settings().tracing.protocol == protocol
