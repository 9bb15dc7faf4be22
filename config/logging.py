"""structlog, configured once per process, with the standard library's loggers routed through it.

Every line carries an ISO UTC timestamp, the level, the logger and whatever is bound in the context
(``request_id``, ``job_id``, ``batch_id``, ``lane``), and inside a span its ``trace_id`` and
``span_id``. JSON in production, a console renderer on a TTY. uvicorn, arq and httpx log through
the same formatter, so every line has the same keys. A redaction processor runs before rendering:
values under keys named like a secret are replaced, and ``Bearer`` tokens inside strings are masked.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, Literal, TextIO

import structlog
from structlog.processors import ExceptionRenderer
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, Processor

from config.tracing import add_trace_ids

LogFormat = Literal["auto", "json", "console"]

REDACTED = "[redacted]"

# Keys whose values are secrets. `token` only as a whole word, so `input_tokens` stays visible.
_SECRET_KEY = re.compile(
    r"(api_?key|authorization|secret|password|passwd|cookie|credential|(^|_)token$|^x-api-key$)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?i)\b(bearer)\s+[^\s,;\"']+")

# Third-party loggers whose own handlers we remove so they propagate to ours.
STDLIB_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "arq", "httpx", "httpcore")


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _BEARER.sub(r"\1 " + REDACTED, value)
    if isinstance(value, Mapping):
        return {k: REDACTED if _is_secret_key(k) else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and bool(_SECRET_KEY.search(key))


def redact(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: replace secret-named values, mask Bearer tokens in strings."""
    out: MutableMapping[str, Any] = event_dict
    for key in list(out):
        out[key] = REDACTED if _is_secret_key(key) else _scrub(out[key])
    return event_dict


def shared_processors() -> list[Processor]:
    """The processors both structlog and stdlib records go through, redaction last."""
    return [
        structlog.contextvars.merge_contextvars,
        add_trace_ids,  # a line inside a span names it (trace_id, span_id); nothing when tracing is off
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
        structlog.processors.StackInfoRenderer(),
        redact,
    ]


def _renderer(fmt: LogFormat, stream: TextIO) -> Processor:
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    if console:
        # No frame locals: they hold keys and Authorization headers, and redaction cannot see them.
        return structlog.dev.ConsoleRenderer(
            colors=stream.isatty(),
            exception_formatter=structlog.dev.RichTracebackFormatter(show_locals=False),
        )
    return structlog.processors.JSONRenderer()


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a line is written, not when logging was set up:
    a test runner or a daemoniser that swaps stderr keeps getting the lines, and a closed old
    stream never breaks a logging call."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        """StreamHandler sets the stream in __init__; the property always answers sys.stderr."""


def configure_logging(level: str = "INFO", fmt: LogFormat = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog and the root logger; entry points call this once (calling again replaces it)."""
    out = stream or sys.stderr
    shared = shared_processors()
    renderer = _renderer(fmt, out)
    extra: list[Processor] = (
        []
        if isinstance(renderer, structlog.dev.ConsoleRenderer)
        else [ExceptionRenderer(ExceptionDictTransformer(show_locals=False))]  # no locals: see _renderer
    )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: tests swap the configuration (structlog.testing.capture_logs) at run time.
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *extra, renderer],
    )
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for name in STDLIB_LOGGERS:
        std = logging.getLogger(name)
        std.handlers = []
        std.propagate = True
    # httpx logs every request at INFO; keep it at WARNING unless debugging.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("httpcore").setLevel(max(logging.WARNING, root.level))
