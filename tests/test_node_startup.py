"""``batchshift run`` as its own process, started where it cannot serve: it stops at once, so what
it logs on the way in and its exit code are all there is to read."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from config.settings import TracingSettings
from config.tracing import export_endpoint


def run_on_a_port_in_use(redis_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``batchshift run`` on a port this test holds; its JSON log lines and exit code."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        environ = {**os.environ, "BATCHSHIFT_REDIS_URL": redis_url, "BATCHSHIFT_LOG_FORMAT": "json"}
        for name in (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_SERVICE_NAME",
        ):
            environ.pop(name, None)
        command = ["run", "--host", "127.0.0.1", "--port", str(port), "--grace", "1"]
        return subprocess.run(
            [sys.executable, "-m", "batchshift.cli", *command],
            env={**environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


def events(done: subprocess.CompletedProcess[str]) -> dict[str, dict[str, object]]:
    lines = [json.loads(line) for line in (done.stdout + done.stderr).splitlines() if line.startswith("{")]
    return {line["event"]: line for line in lines}


def test_run_on_a_port_in_use_exits_3_with_only_the_bind_error(redis_url: str) -> None:
    done = run_on_a_port_in_use(redis_url, BATCHSHIFT_TRACING__ENABLED="false")
    output = done.stdout + done.stderr
    assert done.returncode == 3, output
    assert "address already in use" in output
    assert "never retrieved" not in output
    assert "Traceback" not in output
    assert "tracing.enabled" not in events(done)  # tracing off: no line about it


def test_a_process_with_tracing_on_logs_how_and_where_spans_go_and_no_header(redis_url: str) -> None:
    done = run_on_a_port_in_use(
        redis_url,
        BATCHSHIFT_TRACING__ENABLED="true",
        BATCHSHIFT_TRACING__PROTOCOL="http/protobuf",
        BATCHSHIFT_TRACING__ENDPOINT="http://127.0.0.1:9",
        BATCHSHIFT_TRACING__SERVICE_NAME="billing-batch",
        OTEL_EXPORTER_OTLP_HEADERS="authorization=Bearer%20collector-token-1234",
    )
    line = events(done)["tracing.enabled"]
    assert line["protocol"] == "http/protobuf"
    assert line["endpoint"] == "http://127.0.0.1:9/v1/traces"
    assert line["service"] == "billing-batch"
    assert "collector-token-1234" not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("protocol", "endpoint", "environ", "expected"),
    [
        ("grpc", "https://user:pw@collector:4317", {}, "https://collector:4317"),
        ("http/protobuf", None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}, "http://c:4318/v1/traces"),
        ("http/protobuf", None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c/t?key=s"}, "http://c/t"),
        ("grpc", None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "user:pw@c:4317"}, "c:4317"),
        ("grpc", None, {}, "http://localhost:4317"),
        ("http/protobuf", None, {}, "http://localhost:4318/v1/traces"),
    ],
)
def test_the_logged_endpoint_is_the_exporters_without_credentials(protocol, endpoint, environ, expected):
    settings = TracingSettings(enabled=True, protocol=protocol, endpoint=endpoint)
    assert export_endpoint(settings, environ) == expected
