"""API logs: one configured format, a request id on every request's lines, and no secrets."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest
import structlog
from redis.asyncio import Redis

from config.logging import REDACTED, configure_logging, redact
from config.settings import Settings
from tests.api.harness import ACME, asgi_client

SECRETS = (
    "acme-key",
    "globex-key",
    "admin-key",
    "sk-test",
    "sk-ant",
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
)


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """Configure logging as an entry point does (JSON) into a buffer; restore the previous setup after."""
    saved_config = structlog.get_config()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    out = io.StringIO()
    configure_logging("DEBUG", "json", stream=out)
    try:
        yield out
    finally:
        structlog.configure(**saved_config)
        root.handlers, root.level = saved_handlers, saved_level


async def test_request_lines_carry_the_request_id_and_no_secret(
    log_output: io.StringIO, settings: Settings, redis: Redis
):
    settings = settings.model_copy(update={"log_access": True})
    async with asgi_client(settings, redis) as api:
        response = await api.post("/v1/jobs", json={"provider": "openai", "body": {"model": "m"}})
        structlog.get_logger("test").info("probe.logged", settings=settings.model_dump(), headers=dict(ACME))
        await api.get("/v1/jobs", headers={"authorization": "Bearer globex-key"})
    text = log_output.getvalue()
    lines = [orjson.loads(line) for line in text.splitlines()]
    request_id = response.headers["x-request-id"]
    mine = [line for line in lines if line.get("request_id") == request_id]
    assert {line["event"] for line in mine} >= {"job.enqueued", "request.completed"}
    assert all({"timestamp", "level", "event"} <= line.keys() for line in lines)
    assert all(line["timestamp"].endswith("Z") for line in lines)
    for secret in SECRETS:
        assert secret not in text


def test_redaction_strips_secret_keys_and_bearer_tokens():
    event = redact(
        None,
        "info",
        {
            "event": "x.happened",
            "api_key": "sk-1",
            "Authorization": "Bearer abc",
            "nested": {"webhook_secret": "s", "password": "p", "input_tokens": 12},
            "access_token": "t",
            "note": "sent Bearer abc.def to them",
        },
    )
    assert event["api_key"] == event["Authorization"] == event["access_token"] == REDACTED
    assert event["nested"] == {"webhook_secret": REDACTED, "password": REDACTED, "input_tokens": 12}
    assert "abc" not in event["note"]


def test_stdlib_loggers_go_through_the_same_formatter(log_output: io.StringIO):
    logging.getLogger("uvicorn.error").warning("server said %s", "hello")
    line = orjson.loads(log_output.getvalue().splitlines()[-1])
    assert line["event"] == "server said hello"
    assert line["level"] == "warning"
    assert line["logger"] == "uvicorn.error"


def _fail_holding_a_key(api_key: str) -> None:
    headers = {"authorization": f"Bearer {api_key}"}
    raise RuntimeError(f"provider refused ({len(headers)} headers)")


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_logged_tracebacks_show_no_local_variables(fmt: str):
    """A traceback's frame locals hold keys and headers; the redaction pass cannot see inside them."""
    saved_config = structlog.get_config()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    out = io.StringIO()
    configure_logging("INFO", fmt, stream=out)  # type: ignore[arg-type]
    key = "-".join(("sk", "live", "0123456789"))  # built, so the traceback's source lines do not show it
    try:
        try:
            _fail_holding_a_key(key)
        except RuntimeError:
            structlog.get_logger("test").exception("request.failed")
    finally:
        structlog.configure(**saved_config)
        root.handlers, root.level = saved_handlers, saved_level
    text = out.getvalue()
    assert "provider refused" in text  # the traceback itself is logged
    assert key not in text


async def test_access_line_off_leaves_no_info_line_per_request(
    log_output: io.StringIO, settings: Settings, redis: Redis
):
    """With ``log_access`` off (the default) an enqueue logs nothing at info: the hot path's lines are
    at debug."""
    assert Settings.model_fields["log_access"].default is False
    async with asgi_client(settings, redis) as api:
        response = await api.post("/v1/jobs", json={"provider": "openai", "body": {"model": "m"}})
    lines = [orjson.loads(line) for line in log_output.getvalue().splitlines()]
    mine = [line for line in lines if line.get("request_id") == response.headers["x-request-id"]]
    assert "job.enqueued" in {line["event"] for line in mine}  # still there, at debug
    assert not [line for line in mine if line["level"] != "debug"]
