"""Real OTLP receivers for tests, over HTTP (protobuf) and gRPC, and readers of the spans they got.

The HTTP one is the webhook receiver of tests/workers/receiver.py answering 200; the gRPC one is a
grpcio server implementing opentelemetry-proto's ``TraceService``. Both keep every export request
as it arrived; :func:`spans_of` decodes them with ``opentelemetry-proto``.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto

from tests.workers.receiver import Receiver, running_receiver


def http_exports(receiver: Receiver) -> list[ExportTraceServiceRequest]:
    """The export requests an HTTP receiver got, decoded (gzip too, as the SDK may send)."""
    exports = []
    for request in receiver.requests:
        assert request.path == "/v1/traces"
        body = request.body
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        exports.append(ExportTraceServiceRequest.FromString(body))
    return exports


def spans_of(exports: list[ExportTraceServiceRequest] | Receiver | GrpcCollector) -> list[SpanProto]:
    """Every span of the export requests (or of a receiver's), in arrival order."""
    if isinstance(exports, Receiver):
        exports = http_exports(exports)
    elif isinstance(exports, GrpcCollector):
        exports = exports.exports()
    return [
        span for export in exports for r in export.resource_spans for s in r.scope_spans for span in s.spans
    ]


def service_names(exports: list[ExportTraceServiceRequest]) -> set[str]:
    """The ``service.name`` of every resource the exports carry spans of."""
    return {
        kv.value.string_value
        for export in exports
        for r in export.resource_spans
        for kv in r.resource.attributes
        if kv.key == "service.name"
    }


def attrs(span: SpanProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind) if kind else None
    return out


def children(spans: list[SpanProto], parent: SpanProto) -> list[SpanProto]:
    """The spans whose parent is ``parent``, in start order."""
    found = [s for s in spans if s.trace_id == parent.trace_id and s.parent_span_id == parent.span_id]
    return sorted(found, key=lambda s: s.start_time_unix_nano)


@contextmanager
def running_http_collector() -> Iterator[Receiver]:
    """An OTLP/HTTP receiver; its base URL (what ``OTEL_EXPORTER_OTLP_ENDPOINT`` takes) is
    :func:`base_url`."""
    with running_receiver(lambda n: (200, {"content-type": "application/x-protobuf"}, 0.0)) as receiver:
        yield receiver


def base_url(receiver: Receiver) -> str:
    return receiver.url.removesuffix("/hook")


@dataclass
class GrpcCollector(trace_service_pb2_grpc.TraceServiceServicer):
    """A gRPC OTLP receiver: keeps each export request and answers success."""

    endpoint: str = ""  # http://127.0.0.1:<port>: plaintext, as a local collector
    received: list[ExportTraceServiceRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def Export(  # noqa: N802 - the gRPC service's method name
        self, request: ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> ExportTraceServiceResponse:
        with self.lock:
            self.received.append(request)
        return ExportTraceServiceResponse()

    def exports(self) -> list[ExportTraceServiceRequest]:
        with self.lock:
            return list(self.received)


@contextmanager
def running_grpc_collector() -> Iterator[GrpcCollector]:
    """A grpcio server on a free local port serving OTLP's ``TraceService``."""
    collector = GrpcCollector()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    collector.endpoint = f"http://127.0.0.1:{port}"
    try:
        yield collector
    finally:
        server.stop(grace=None)
