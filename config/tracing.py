"""OpenTelemetry tracing: the one module that touches the OTel API and SDK.

A job's life spans several processes and hours, so its trace is carried as data: intake stores the
W3C ``traceparent`` (and ``tracestate``) of its span with the job, and every later span of that job
(a sync call, a webhook attempt) is started as a child of that stored context, in whatever process
runs it. A batch serves many traces, so its spans *link* to each job's trace instead of having a
parent. Spans export over OTLP, gRPC or HTTP (protobuf), through a batch processor, so a send
never waits for the collector.

A piece of work inside a span (intake's validate, admit and store; a submission's spool, upload
and create) is a :func:`phase`: a child of the span open in this task, if one is. Code that runs
inside a span (a provider adapter) marks its phases without being handed the tracer.

Off by default (``settings.tracing.enabled``): :data:`OFF` then answers every call with a shared
no-op span, and the hot paths test :attr:`Tracing.enabled` before doing anything, so tracing off
costs one attribute read; a :func:`phase` outside any span costs one context variable read. The
SDK is imported only when tracing is turned on. The sampler is the SDK's, read the standard way
(``OTEL_TRACES_SAMPLER``, ``OTEL_TRACES_SAMPLER_ARG``; default: parent-based, always on); the
protocol, endpoint and service name default to the standard ``OTEL_EXPORTER_OTLP_*`` and
``OTEL_SERVICE_NAME`` variables when their settings are unset.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Literal

import structlog
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from structlog.typing import EventDict

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

    from config.settings import TracingSettings

log = structlog.get_logger(__name__)

Kind = Literal["internal", "server", "client", "producer", "consumer"]
_KINDS: Mapping[str, trace.SpanKind] = {
    "internal": trace.SpanKind.INTERNAL,
    "server": trace.SpanKind.SERVER,
    "client": trace.SpanKind.CLIENT,
    "producer": trace.SpanKind.PRODUCER,
    "consumer": trace.SpanKind.CONSUMER,
}
_PROPAGATOR = TraceContextTextMapPropagator()
DEFAULT_SERVICE = "batchshift"
TRACES_PATH = "/v1/traces"  # OTLP/HTTP's path under a base endpoint, as the spec appends it
# The variables that name a collector: set, ``make demo`` turns tracing on.
ENDPOINT_VARS = (
    "BATCHSHIFT_TRACING__ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


def context_of(traceparent: str | None, tracestate: str | None = None) -> Context | None:
    """The remote context a stored (or received) ``traceparent`` names; None when absent or malformed."""
    if not traceparent:
        return None
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    context = _PROPAGATOR.extract(carrier)
    return context if trace.get_current_span(context).get_span_context().is_valid else None


class Span:
    """One live span: set attributes on it, and read the ``traceparent`` that continues it."""

    __slots__ = ("_span",)

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def set(self, **attributes: Any) -> None:
        """Set attributes (dotted names are passed as ``**{"gen_ai.request.model": ...}``); None skipped."""
        for name, value in attributes.items():
            if value is not None:
                self._span.set_attribute(name, value)

    def error(self, message: str) -> None:
        """Mark the span failed, with why."""
        self._span.set_status(trace.Status(trace.StatusCode.ERROR, message))

    def headers(self) -> dict[str, str]:
        """``traceparent`` (and ``tracestate``) continuing this span, for a stored job or a request."""
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(self._span))
        return carrier


NOOP_SPAN = Span(trace.INVALID_SPAN)
# The shared no-op span as a context manager: what a span costs when tracing is off (it holds no state).
NO_SPAN: AbstractContextManager[Span] = nullcontext(NOOP_SPAN)
# The tracer of the span open in this task (None: none is), which :func:`phase` opens children on.
_OPEN: ContextVar[Tracing | None] = ContextVar("batchshift_tracing_open", default=None)


def phase(name: str, **attributes: Any) -> AbstractContextManager[Span]:
    """A span ``name`` for one piece of the work of the span open in this task, as its child; the
    shared no-op when no span is open (tracing off, or work outside any traced operation)."""
    tracing = _OPEN.get()
    if tracing is None:
        return NO_SPAN
    return tracing.span(name, attributes=attributes)


def endpoint_configured(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` names a collector to export to."""
    return any(environ.get(name) for name in ENDPOINT_VARS)


class Tracing:
    """A process's tracer, or the no-op when off; built once in each entry point from settings."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self.provider = provider
        self.enabled = provider is not None
        self._tracer = provider.get_tracer("batchshift") if provider is not None else None

    @classmethod
    def from_settings(cls, settings: TracingSettings) -> Tracing:
        """The exporting tracer the settings ask for, or :data:`OFF`."""
        if not settings.enabled:
            return OFF
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        service = settings.service_name or os.environ.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(BatchSpanProcessor(_exporter(settings)))
        return cls(provider)

    @contextmanager
    def span(
        self,
        name: str,
        *,
        parent: str | None = None,
        tracestate: str | None = None,
        links: Sequence[str] = (),
        kind: Kind = "internal",
        attributes: Mapping[str, Any] | None = None,
    ) -> Iterator[Span]:
        """A span named ``name``, child of the ``parent`` traceparent (else of the current span, else
        a new trace), linked to the traces of ``links`` (traceparents), current while it runs."""
        if self._tracer is None:
            yield NOOP_SPAN
            return
        link_list = []
        for traceparent in links:
            context = context_of(traceparent)
            if context is not None:
                link_list.append(trace.Link(trace.get_current_span(context).get_span_context()))
        opened = _OPEN.set(self)  # phase() opens this span's children on this tracer
        try:
            with self._tracer.start_as_current_span(
                name,
                context=context_of(parent, tracestate),
                kind=_KINDS[kind],
                links=link_list,
                attributes={k: v for k, v in (attributes or {}).items() if v is not None},
            ) as span:
                yield Span(span)
        finally:
            _OPEN.reset(opened)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Export every ended span now (tests, shutdown); True when all went out in time."""
        return self.provider.force_flush(int(timeout_s * 1000)) if self.provider is not None else True

    def shutdown(self) -> None:
        """Flush and stop the exporter; the process's tracer then records nothing more."""
        if self.provider is not None:
            self.provider.shutdown()


OFF = Tracing()

# Where the SDK's exporters send spans when no endpoint is named.
DEFAULT_ENDPOINTS = {"grpc": "http://localhost:4317", "http/protobuf": "http://localhost:4318" + TRACES_PATH}


def export_endpoint(settings: TracingSettings, environ: Mapping[str, str] = os.environ) -> str:
    """Where spans go, resolved as the exporter resolves it, without any credentials a URL carries
    (its user and password, its query): the startup line names the collector, never a secret."""
    if settings.endpoint:
        endpoint = settings.endpoint.rstrip("/") + ("" if settings.protocol == "grpc" else TRACES_PATH)
    elif environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        endpoint = environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    elif environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        base = environ["OTEL_EXPORTER_OTLP_ENDPOINT"]
        endpoint = base if settings.protocol == "grpc" else base.rstrip("/") + TRACES_PATH
    else:
        endpoint = DEFAULT_ENDPOINTS[settings.protocol]
    if "://" not in endpoint:  # gRPC's host:port form
        return endpoint.rpartition("@")[2]
    url = urllib.parse.urlsplit(endpoint)
    return urllib.parse.urlunsplit((url.scheme, url.netloc.rpartition("@")[2], url.path, "", ""))


def log_startup(settings: TracingSettings) -> None:
    """One line when tracing is on saying how and where spans go (never the exporter's headers)."""
    if settings.enabled:
        log.info(
            "tracing.enabled",
            protocol=settings.protocol,
            endpoint=export_endpoint(settings),
            service=settings.service_name or os.environ.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE,
        )


def _exporter(settings: TracingSettings) -> SpanExporter:
    """The OTLP exporter of the settings' protocol; an unset endpoint is left to the SDK, which reads
    the standard variables (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``OTEL_EXPORTER_OTLP_ENDPOINT``)."""
    if settings.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        # An http:// endpoint means a plaintext channel (a local collector), https:// TLS.
        return GrpcExporter(endpoint=settings.endpoint, timeout=settings.export_timeout_s)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    endpoint = settings.endpoint.rstrip("/") + TRACES_PATH if settings.endpoint else None
    return HttpExporter(endpoint=endpoint, timeout=settings.export_timeout_s)


def add_trace_ids(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: a line logged inside a recording span carries its ``trace_id`` and ``span_id``."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(context.span_id, "016x"))
    return event_dict
