"""The demo Lambda function that ``lambda-otel-local`` runs when no ``--handler`` is given.

It produces a bit of every kind of telemetry so that the printed output has something in it:
- a plain text log line and a JSON log line (function logs, via stdout);
- a short sleep, so the invocation has a visible duration;
- its own OpenTelemetry spans, sent to the extension's OTLP receiver, when the OpenTelemetry SDK
  is installed and ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set: a SERVER span whose parent is the X-Ray
  trace header's ``Parent`` id, as the standard Lambda instrumentation makes it, and a child. lambda-otel
  gives its invocation span that same id (and makes it INTERNAL once it sees the function's SERVER
  span), so the function's spans hang under the invocation span: one tree, one SERVER span;
- an exception when the event asks for one (``{"error": true}``), to show a failed invocation.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict

_tracer = None
_provider = None


def _setup_tracing() -> None:
    """The OTel SDK, if available: optional, because the demo must run with the runtime deps only."""
    global _tracer, _provider
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("LAMBDA_OTEL_DEMO_SDK") == "0":
        return
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    except ImportError:
        return
    _provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get(
        "AWS_LAMBDA_FUNCTION_NAME", "demo-function")}))
    # Simple (synchronous) processor: every span is sent before the handler returns, so nothing
    # is left in the function's memory when Lambda freezes it.
    _provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(timeout=2)))
    _tracer = _provider.get_tracer("lambda_otel.local.demo_function")


def _xray_parent():
    """An OTel context whose parent is the X-Ray trace header's Root/Parent, or None."""
    header = os.environ.get("_X_AMZN_TRACE_ID", "")
    fields = dict(p.split("=", 1) for p in header.split(";") if "=" in p)
    root, parent = fields.get("Root", ""), fields.get("Parent", "")
    parts = root.split("-")
    if len(parts) != 3 or len(parent) != 16:
        return None
    try:
        trace_id, span_id = int(parts[1] + parts[2], 16), int(parent, 16)
    except ValueError:
        return None
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    flags = TraceFlags(TraceFlags.SAMPLED if fields.get("Sampled") == "1" else TraceFlags.DEFAULT)
    ctx = SpanContext(trace_id=trace_id, span_id=span_id, is_remote=True, trace_flags=flags)
    return trace.set_span_in_context(NonRecordingSpan(ctx))


_setup_tracing()


def _work(event: Dict[str, Any], request_id: str) -> Dict[str, Any]:
    print(f"demo: handling request {request_id}", flush=True)
    print(json.dumps({"level": "INFO", "message": "demo work", "requestId": request_id,
                      "keys": sorted(event)}), flush=True)
    time.sleep(float(event.get("sleep_ms", 30)) / 1000.0)
    if event.get("error"):
        raise RuntimeError(f"demo failure requested by the event (request {request_id})")
    return {"ok": True, "requestId": request_id, "echo": event.get("n")}


def handler(event: Any, context: Any) -> Dict[str, Any]:
    event = event if isinstance(event, dict) else {}
    request_id = getattr(context, "aws_request_id", "unknown")
    if _tracer is None:
        return _work(event, request_id)
    # The SDK records the exception and sets ERROR status on the span when _work raises.
    from opentelemetry.trace import SpanKind

    with _tracer.start_as_current_span("demo.handler", context=_xray_parent(), kind=SpanKind.SERVER) as span:
        span.set_attribute("faas.invocation_id", request_id)
        with _tracer.start_as_current_span("demo.work"):
            return _work(event, request_id)
