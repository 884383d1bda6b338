"""Telemetry API events -> OTLP spans, logs and metric values (pure, in process, no I/O).

``TelemetryConverter.process(events)`` takes one already-JSON-decoded Telemetry API batch
(``[{"time", "type", "record"}, ...]``, schema 2022-12-13) and returns a ``Converted`` with a
``ResourceSpans`` and a ``ResourceLogs`` (each None when empty). Metric values go straight
into ``MetricsState``. Bad input never raises: a malformed event is counted in
``lambda_otel.telemetry.ignored{reason}`` and skipped, the rest of the batch converts, and
anything an event had half-built is rolled back. Nothing here logs: our own log lines come
back as ``extension`` records, so logging per event would feed itself.

Choices (README material):

* Metrics come only from ``platform.report``, the platform's final word, with the values it
  reported (ms -> s, MB -> bytes). A timeout counts when its report arrives (Lambda emits one
  with ``status: timeout`` before the SHUTDOWN). If SHUTDOWN(timeout|failure) comes first,
  ``on_shutdown`` counts the invocation itself and marks it, so a report that still arrives
  later adds its durations but is not counted twice.
* Invocation span: SERVER, named after the function (resource ``faas.name``), from
  ``platform.start`` to ``platform.runtimeDone``; children from ``runtimeDone.spans``; an
  ``extensionOverhead`` child from the later ``platform.report`` (emitted on its own, same
  trace, parent = the invocation span). ``faas.trigger`` is not set: the platform does not say.
* Span id: ``tracing.spanId`` from ``platform.start`` when present and valid. It is the id
  Lambda gives this invocation's own X-Ray segment (AWS's "Telemetry API to OTel spans"
  mapping uses it the same way), so X-Ray and OTLP views of one invocation agree; otherwise
  (absent, malformed, or already used) a random id.
* ``xray_mode="link"`` (default): trace id = the X-Ray Root, and the header's ``Parent``
  becomes a span *link*, not the parent. That Parent is the upstream caller's X-Ray segment
  (API Gateway, the Lambda frontend, another service's X-Ray SDK); it is exported to X-Ray,
  not to the OTLP backend, so as a parent it would leave every invocation span an orphan with
  a dangling parent id ("missing root span"). As a link the trace stays well-formed and the
  causal pointer is kept (this is also what the OTel Lambda semconv prescribes for the X-Ray
  environment context). ``"parent"`` is for setups where the upstream is in the same backend.
* ``Sampled`` only sets the sampled bit in the span flags; unsampled invocations are not
  dropped (Lambda sends ``Sampled=0`` for every function without active tracing).
* Logs: ``function``/``extension`` records -> LogRecords in scopes ``lambda-otel.function`` /
  ``lambda-otel.extension`` (``lambda-otel.platform`` for our logsDropped warning),
  correlated to an invocation by ``requestId`` or else by time.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import date
from functools import partial
from typing import Callable, Dict, List, Optional

from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1 import trace_pb2

import lambda_otel
from lambda_otel import loss as loss_mod
from lambda_otel import resource as resource_mod
from lambda_otel.config import XRAY_LINK, XRAY_MODES, XRAY_PARENT
from lambda_otel.loss import LossCounter
from lambda_otel.metrics import MetricsState
from lambda_otel.otlp import set_any_value, set_attributes, set_key, set_str
from lambda_otel.xray import XRayContext, parse_span_id, parse_xray_header


SELF_LOG_PREFIX = "[lambda-otel]"  # how the extension's own lines start (app.LOG_FORMAT)
SCOPE_SPANS = "lambda-otel"
SCOPE_FUNCTION = "lambda-otel.function"
SCOPE_EXTENSION = "lambda-otel.extension"
SCOPE_PLATFORM = "lambda-otel.platform"

# Reasons for lambda_otel.telemetry.ignored.
MALFORMED_EVENT = "malformed_event"  # not {time, type, record}
UNKNOWN_TYPE = "unknown_type"
MALFORMED_RECORD = "malformed_record"  # record has the wrong type or lacks a required field
BAD_TIME = "bad_time"  # unparseable or absurd timestamp (replaced by now)
BAD_DURATION = "bad_duration"  # NaN, negative, absurd or non-numeric duration (value skipped)
MALFORMED_TRACING = "malformed_tracing"  # bad X-Ray header / spanId (fresh ids used instead)
DUPLICATE = "duplicate"  # second runtimeDone/report for one request id
EVICTED = "evicted_invocation"  # an unfinished invocation pushed out of the bounded map
CONVERSION_ERROR = "conversion_error"  # anything unexpected: the event is rolled back

_SPAN_FLAG_SAMPLED = 0x01
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200

_MIN_NS = 946_684_800 * 10**9  # 2000-01-01: anything earlier is not a real Lambda timestamp
_MAX_NS = 4_102_444_800 * 10**9  # 2100-01-01
_MAX_DURATION_MS = 86_400_000.0  # a day; Lambda phases are bounded far below that
_MAX_CHILD_SPANS = 16
_MAX_PHASES = 8
_MAX_JSON_LINE = 256 * 1024
_MAX_ATTRS = 64

_TIME_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:[Zz]|([+-])(\d{2}):?(\d{2}))", re.ASCII
)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_day_cache: Dict[str, int] = {}
_second_cache: Dict[str, int] = {}  # "YYYY-MM-DDTHH:MM:SS" (UTC) -> epoch seconds, for parse_time_ns
_REQUEST_ID_RE = re.compile(r"[\x21-\x7e]{1,128}", re.ASCII)
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", re.ASCII)
_REASON_RE = re.compile(r"[a-z_]{1,32}", re.ASCII)

SEVERITY = {
    "TRACE": 1, "DEBUG": 5, "INFO": 9, "NOTICE": 10, "WARN": 13, "WARNING": 13,
    "ERROR": 17, "CRITICAL": 21, "FATAL": 21,
}
_STRUCTURED_KEYS = ("timestamp", "level", "message", "requestId")


def parse_time_ns(value: object) -> Optional[int]:
    """RFC 3339 as Lambda writes it (``2024-05-01T10:00:00.100Z``, 0-9 fraction digits,
    ``Z`` or ``+hh:mm``) -> epoch ns; None when malformed or outside 2000-2100.

    Every event has a time and a batch's events share few seconds, so the common UTC form
    looks its whole second up in a small cache (filled by the full parse below) and only
    parses the fraction: this function was the top entry of the converter's profile."""
    if not isinstance(value, str) or len(value) > 40:
        return None
    if value[19:20] == "." and value[-1:] in "Zz" and len(value) <= 30:
        secs = _second_cache.get(value[:19])
        frac = value[20:-1]
        if secs is not None and frac.isdigit() and frac.isascii():
            ns = secs * 1_000_000_000 + int(frac.ljust(9, "0"))
            return ns if ns <= _MAX_NS else None
    m = _TIME_RE.fullmatch(value)
    if m is None:
        return None
    y, mo, d, hh, mi, ss, frac, sign, oh, om = m.groups()
    days = _day_cache.get(value[:10])
    if days is None:
        try:
            days = date(int(y), int(mo), int(d)).toordinal() - _EPOCH_ORDINAL
        except ValueError:
            return None
        if len(_day_cache) > 64:
            _day_cache.clear()
        _day_cache[value[:10]] = days
    h, mn, s = int(hh), int(mi), int(ss)
    if h > 23 or mn > 59 or s > 60:
        return None
    secs = days * 86400 + h * 3600 + mn * 60 + s
    if not sign and _MIN_NS <= secs * 1_000_000_000 <= _MAX_NS:
        if len(_second_cache) > 256:
            _second_cache.clear()
        _second_cache[value[:19]] = secs
    if sign:
        off_h, off_m = int(oh), int(om)
        if off_h > 23 or off_m > 59:
            return None
        offset = off_h * 3600 + off_m * 60
        secs = secs - offset if sign == "+" else secs + offset
    ns = secs * 1_000_000_000
    if frac:
        ns += int(frac.ljust(9, "0"))
    if not _MIN_NS <= ns <= _MAX_NS:
        return None
    return ns


def _duration_ms(value: object) -> Optional[float]:
    """A finite, non-negative, sane duration in ms, else None (NaN fails every comparison)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    if not 0.0 <= value <= _MAX_DURATION_MS:
        return None
    return value


def _text(value: object, cap: int = 256) -> Optional[str]:
    """A short, UTF-8-encodable string, or None."""
    if not isinstance(value, str) or not value:
        return None
    value = value[:cap]
    if not value.isascii():
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def _request_id(record: dict) -> Optional[str]:
    rid = record.get("requestId")
    if isinstance(rid, str) and _REQUEST_ID_RE.fullmatch(rid):
        return rid
    return None


def _random_id(n: int) -> bytes:
    value = os.urandom(n)
    return value if any(value) else b"\x00" * (n - 1) + b"\x01"


def _unqualified_arn(arn: str) -> str:
    """``arn:aws:lambda:r:acct:function:name[:qualifier]`` -> without the qualifier."""
    parts = arn.split(":", 7)
    return ":".join(parts[:7]) if len(parts) >= 7 else arn


@dataclass
class Converted:
    """What one batch (or the shutdown) produced, ready for the aggregator."""

    resource_spans: Optional[trace_pb2.ResourceSpans] = None
    span_count: int = 0
    resource_logs: Optional[logs_pb2.ResourceLogs] = None
    log_count: int = 0
    runtime_done: List[str] = field(default_factory=list)  # request ids seen in platform.runtimeDone
    reports: List[str] = field(default_factory=list)  # request ids seen in platform.report
    ignored: int = 0  # problems counted in lambda_otel.telemetry.ignored during this call


class _Invocation:
    """What we know about one request id, from on_invoke / platform.start to the report."""

    __slots__ = (
        "request_id", "start_ns", "invoke_ns", "end_ns", "arn", "version", "deadline_ms", "tracing_hint",
        "coldstart", "has_context", "trace_id", "span_id", "parent_span_id", "link", "flags",
        "done", "runtime_ms", "report_seen", "counted",
    )

    def __init__(self, request_id: str, coldstart: bool) -> None:
        self.request_id = request_id
        self.start_ns: Optional[int] = None  # platform.start time
        self.invoke_ns: Optional[int] = None  # when on_invoke was called (fallback start)
        self.end_ns: Optional[int] = None
        self.arn: Optional[str] = None
        self.version: Optional[str] = None
        self.deadline_ms: Optional[int] = None
        self.tracing_hint: Optional[str] = None  # X-Ray header from the INVOKE event
        self.coldstart = coldstart  # first invocation of this sandbox
        self.has_context = False
        self.trace_id = b""
        self.span_id = b""
        self.parent_span_id = b""
        self.link: Optional[XRayContext] = None
        self.flags = _SPAN_FLAG_SAMPLED
        self.done = False  # invocation span emitted
        self.runtime_ms: Optional[float] = None  # runtimeDone metrics.durationMs
        self.report_seen = False
        self.counted = False  # faas.invocations already counted (by on_shutdown)


class _Phase:
    """An init or SnapStart restore phase: start, runtimeDone and report events."""

    __slots__ = ("kind", "start_ns", "end_ns", "report_ms", "reported", "init_type", "phase", "status",
                 "error_type", "emitted")

    def __init__(self, kind: str) -> None:
        self.kind = kind  # "init" | "restore"
        self.start_ns: Optional[int] = None
        self.end_ns: Optional[int] = None
        self.report_ms: Optional[float] = None
        self.reported = False
        self.init_type: Optional[str] = None
        self.phase: Optional[str] = None
        self.status: Optional[str] = None
        self.error_type: Optional[str] = None
        self.emitted = False


class _Batch:
    """Output being built by one call; lets a failing event roll back what it added."""

    def __init__(self, resource: Resource, now: int) -> None:
        self.resource = resource
        self.now = now
        self.rs: Optional[trace_pb2.ResourceSpans] = None
        self.ss = None
        self.rl: Optional[logs_pb2.ResourceLogs] = None
        self.scopes: Dict[str, logs_pb2.ScopeLogs] = {}
        self.runtime_done: List[str] = []
        self.reports: List[str] = []
        self.ignored = 0

    def span(self) -> trace_pb2.Span:
        if self.ss is None:
            self.rs = trace_pb2.ResourceSpans()
            self.rs.resource.CopyFrom(self.resource)
            self.ss = self.rs.scope_spans.add()
            self.ss.scope.name = SCOPE_SPANS
            self.ss.scope.version = lambda_otel.__version__
        return self.ss.spans.add()

    def log(self, scope: str) -> logs_pb2.LogRecord:
        sl = self.scopes.get(scope)
        if sl is None:
            if self.rl is None:
                self.rl = logs_pb2.ResourceLogs()
                self.rl.resource.CopyFrom(self.resource)
            sl = self.scopes[scope] = self.rl.scope_logs.add()
            sl.scope.name = scope
            sl.scope.version = lambda_otel.__version__
        return sl.log_records.add()

    def mark(self):
        return (len(self.ss.spans) if self.ss is not None else 0,
                {name: len(sl.log_records) for name, sl in self.scopes.items()})

    def rollback(self, mark) -> None:
        if self.ss is not None:
            del self.ss.spans[mark[0]:]
        for name, sl in self.scopes.items():
            del sl.log_records[mark[1].get(name, 0):]

    def result(self) -> Converted:
        out = Converted(runtime_done=self.runtime_done, reports=self.reports, ignored=self.ignored)
        if self.ss is not None and len(self.ss.spans):
            out.resource_spans, out.span_count = self.rs, len(self.ss.spans)
        if self.rl is not None:
            for i in range(len(self.rl.scope_logs) - 1, -1, -1):
                if not len(self.rl.scope_logs[i].log_records):
                    del self.rl.scope_logs[i]
            count = sum(len(sl.log_records) for sl in self.rl.scope_logs)
            if count:
                out.resource_logs, out.log_count = self.rl, count
        return out


class TelemetryConverter:
    """Stateful converter of Telemetry API batches (thread-safe: one internal lock).

    Memory is bounded: at most ``max_open_invocations`` started-but-unfinished invocations
    (the oldest is evicted and counted) and ``max_finished_invocations`` finished ones (kept
    for late reports and late log lines).
    """

    def __init__(
        self,
        resource: Resource,
        metrics: MetricsState,
        loss: LossCounter,
        xray_mode: str = XRAY_LINK,
        clock_ns: Callable[[], int] = time.time_ns,
        max_open_invocations: int = 64,
        max_finished_invocations: int = 128,
    ) -> None:
        if xray_mode not in XRAY_MODES:
            raise ValueError(f"xray_mode must be one of {XRAY_MODES}, not {xray_mode!r}")
        self._resource = resource
        self._metrics = metrics
        self._loss = loss
        self._xray_mode = xray_mode
        self._clock_ns = clock_ns
        self._max_open = max(1, max_open_invocations)
        self._max_finished = max(1, max_finished_invocations)
        self._lock = threading.Lock()
        self._open: "OrderedDict[str, _Invocation]" = OrderedDict()
        self._finished: "OrderedDict[str, _Invocation]" = OrderedDict()
        self._platform_span_ids: "OrderedDict[bytes, None]" = OrderedDict()
        self._current: Optional[_Invocation] = None  # most recently started
        self._first: Optional[_Invocation] = None  # the first invocation (init spans go in its trace)
        self._seen_invocation = False
        self._init_type: Optional[str] = None
        self._phases: List[_Phase] = []
        self._span_name = self._function_name(resource)
        self._handlers = {
            "platform.start": self._on_start,
            "platform.runtimeDone": self._on_runtime_done,
            "platform.report": self._on_report,
            "platform.initStart": self._on_init_start,
            "platform.initRuntimeDone": partial(self._on_phase_done, "init"),
            "platform.initReport": partial(self._on_phase_report, "init"),
            "platform.restoreStart": self._on_restore_start,
            "platform.restoreRuntimeDone": partial(self._on_phase_done, "restore"),
            "platform.restoreReport": partial(self._on_phase_report, "restore"),
            "platform.logsDropped": self._on_logs_dropped,
            "platform.extension": None,  # known, nothing to convert
            "platform.telemetrySubscription": None,
            "function": self._on_function_log,
            "extension": self._on_extension_log,
        }

    @staticmethod
    def _function_name(resource: Resource) -> str:
        found = {}
        for kv in resource.attributes:
            if kv.key in ("faas.name", "service.name") and kv.value.WhichOneof("value") == "string_value":
                found[kv.key] = kv.value.string_value
        return found.get("faas.name") or found.get("service.name") or "lambda.invoke"

    # ------------------------------------------------------------------ public API

    def process(self, events: list) -> Converted:
        """Convert one Telemetry API batch. Never raises."""
        with self._lock:
            batch = _Batch(self._resource, self._clock_ns())
            if not isinstance(events, list):
                self._ignore(MALFORMED_EVENT, batch)
                return batch.result()
            for event in events:
                mark = batch.mark()
                try:
                    self._dispatch(event, batch)
                except Exception:  # never let one event break the batch; undo its output
                    batch.rollback(mark)
                    self._ignore(CONVERSION_ERROR, batch)
            return batch.result()

    def on_invoke(self, request_id: str, deadline_ms: Optional[int] = None,
                  function_arn: Optional[str] = None, tracing_value: Optional[str] = None) -> None:
        """Hint from the events thread (INVOKE). Often arrives before platform.start."""
        if not isinstance(request_id, str) or not _REQUEST_ID_RE.fullmatch(request_id):
            return
        with self._lock:
            try:
                if request_id in self._finished:
                    return
                inv = self._open.get(request_id) or self._open_invocation(request_id, None)
                if inv.invoke_ns is None:
                    inv.invoke_ns = self._clock_ns()
                if isinstance(deadline_ms, int) and not isinstance(deadline_ms, bool):
                    inv.deadline_ms = deadline_ms
                arn = _text(function_arn)
                if arn and arn.startswith("arn:"):
                    inv.arn = arn
                if isinstance(tracing_value, str) and inv.tracing_hint is None:
                    inv.tracing_hint = tracing_value
            except Exception:
                self._ignore(CONVERSION_ERROR, None)

    def on_shutdown(self, reason: str, now_ns: Optional[int] = None) -> Converted:
        """SHUTDOWN: count it; on timeout/failure close unfinished invocations with an ERROR span
        in their real trace; emit an init span that never found an invocation. Never raises."""
        with self._lock:
            batch = _Batch(self._resource, self._clock_ns() if now_ns is None else now_ns)
            try:
                reason_text = reason.strip().strip("\"'").lower() if isinstance(reason, str) else ""
                if not _REASON_RE.fullmatch(reason_text):
                    reason_text = "unknown"
                self._metrics.add("aws.lambda.shutdowns", 1, {"aws.lambda.shutdown.reason": reason_text})
                if reason_text in ("timeout", "failure"):
                    error_type = "Sandbox.Timedout" if reason_text == "timeout" else "Sandbox.Failure"
                    for inv in list(self._open.values()):
                        mark = batch.mark()
                        try:
                            self._synthesise(inv, reason_text, error_type, batch)
                        except Exception:
                            batch.rollback(mark)
                            self._ignore(CONVERSION_ERROR, batch)
                self._emit_phases(batch, force=True, shutdown=True)
            except Exception:
                self._ignore(CONVERSION_ERROR, batch)
            return batch.result()

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, event: object, batch: _Batch) -> None:
        if not isinstance(event, dict):
            self._ignore(MALFORMED_EVENT, batch)
            return
        etype = event.get("type")
        if not isinstance(etype, str) or "record" not in event:
            self._ignore(MALFORMED_EVENT, batch)
            return
        try:
            handler = self._handlers[etype]
        except KeyError:
            self._ignore(UNKNOWN_TYPE, batch)
            return
        if handler is None:
            return
        t = parse_time_ns(event.get("time"))
        if t is None:
            self._ignore(BAD_TIME, batch)
            t = batch.now
        handler(t, event["record"], batch)

    def _ignore(self, reason: str, batch: Optional[_Batch]) -> None:
        self._metrics.add("lambda_otel.telemetry.ignored", 1, {"reason": reason})
        if batch is not None:
            batch.ignored += 1

    # ------------------------------------------------------------------ invocations

    def _open_invocation(self, request_id: str, batch: Optional[_Batch]) -> _Invocation:
        inv = _Invocation(request_id, not self._seen_invocation)
        self._seen_invocation = True
        if self._first is None:
            self._first = inv
        while len(self._open) >= self._max_open:
            self._open.popitem(last=False)
            self._ignore(EVICTED, batch)
        self._open[request_id] = inv
        return inv

    def _finish(self, inv: _Invocation) -> None:
        inv.done = True
        self._open.pop(inv.request_id, None)
        self._finished[inv.request_id] = inv
        while len(self._finished) > self._max_finished:
            self._finished.popitem(last=False)

    def _lookup(self, request_id: str) -> Optional[_Invocation]:
        return self._open.get(request_id) or self._finished.get(request_id)

    def _ensure_context(self, inv: _Invocation, header: object, span_id_text: object, batch: Optional[_Batch]) -> None:
        """Fix the invocation's trace id, span id, parent/link and flags (once)."""
        if inv.has_context:
            return
        if header is None:
            header = inv.tracing_hint
        ctx = parse_xray_header(header) if header is not None else None
        if header is not None and ctx is None:
            self._ignore(MALFORMED_TRACING, batch)
        span_id = None
        if span_id_text is not None:
            span_id = parse_span_id(span_id_text)
            if span_id is None:
                self._ignore(MALFORMED_TRACING, batch)
            elif span_id in self._platform_span_ids:
                span_id = None  # never reuse an id, even if the platform repeats one
        if span_id is not None:
            self._platform_span_ids[span_id] = None
            while len(self._platform_span_ids) > 2 * self._max_finished:
                self._platform_span_ids.popitem(last=False)
        inv.span_id = span_id or _random_id(8)
        if ctx is not None:
            inv.trace_id = ctx.trace_id
            inv.flags = 0 if ctx.sampled is False else _SPAN_FLAG_SAMPLED
            if ctx.parent_id is not None:
                if self._xray_mode == XRAY_PARENT:
                    inv.parent_span_id = ctx.parent_id
                else:
                    inv.link = ctx
        else:
            inv.trace_id = _random_id(16)
        inv.has_context = True

    def _on_start(self, t: int, record: object, batch: _Batch) -> None:
        rid = _request_id(record) if isinstance(record, dict) else None
        if rid is None:
            self._ignore(MALFORMED_RECORD, batch)
            return
        inv = self._open.get(rid)
        if inv is None:
            if rid in self._finished:
                self._ignore(DUPLICATE, batch)
                return
            inv = self._open_invocation(rid, batch)
        if inv.start_ns is None:
            inv.start_ns = t
        inv.version = _text(record.get("version"), 64) or inv.version
        tracing = record.get("tracing")
        header = span_id_text = None
        if isinstance(tracing, dict):
            header, span_id_text = tracing.get("value"), tracing.get("spanId")
        elif tracing is not None:
            self._ignore(MALFORMED_TRACING, batch)
        self._ensure_context(inv, header, span_id_text, batch)
        self._current = inv
        self._emit_phases(batch, force=False)

    def _on_runtime_done(self, t: int, record: object, batch: _Batch) -> None:
        rid = _request_id(record) if isinstance(record, dict) else None
        if rid is None:
            self._ignore(MALFORMED_RECORD, batch)
            return
        batch.runtime_done.append(rid)  # the flush coordinator waits for this, whatever else is wrong
        inv = self._open.get(rid)
        if inv is None:
            if rid in self._finished:
                self._ignore(DUPLICATE, batch)
                return
            inv = self._open_invocation(rid, batch)  # runtimeDone without start: still worth a span
        status, error_type = self._status(record, batch)
        metrics = record.get("metrics")
        if isinstance(metrics, dict) and "durationMs" in metrics:
            inv.runtime_ms = self._metric_value(metrics, "durationMs", batch)
        if inv.start_ns is None:
            inv.start_ns = (t - round(inv.runtime_ms * 1e6)) if inv.runtime_ms is not None else (inv.invoke_ns or t)
        inv.end_ns = max(t, inv.start_ns)
        tracing = record.get("tracing")
        if isinstance(tracing, dict):
            self._ensure_context(inv, tracing.get("value"), tracing.get("spanId"), batch)
        else:
            self._ensure_context(inv, None, None, batch)
        self._invocation_span(inv, status, error_type, batch)
        spans = record.get("spans")
        if isinstance(spans, list):
            for item in spans[:_MAX_CHILD_SPANS]:
                self._child_span(inv, item, batch)
        elif spans is not None:
            self._ignore(MALFORMED_RECORD, batch)
        self._finish(inv)
        self._emit_phases(batch, force=True)

    def _status(self, record: dict, batch: _Batch):
        status = record.get("status")
        if not isinstance(status, str):
            self._ignore(MALFORMED_RECORD, batch)
            return None, None
        return _text(status.lower(), 32), _text(record.get("errorType"), 128)

    def _invocation_span(self, inv: _Invocation, status: Optional[str], error_type: Optional[str],
                         batch: _Batch, extra: Optional[dict] = None) -> None:
        span = batch.span()
        span.trace_id = inv.trace_id
        span.span_id = inv.span_id
        if inv.parent_span_id:
            span.parent_span_id = inv.parent_span_id
            span.flags = inv.flags | _HAS_IS_REMOTE | _IS_REMOTE
        else:
            span.flags = inv.flags | _HAS_IS_REMOTE
        span.name = self._span_name
        span.kind = trace_pb2.Span.SPAN_KIND_SERVER
        span.start_time_unix_nano = inv.start_ns
        span.end_time_unix_nano = inv.end_ns
        # First invocation of the sandbox, unless provisioned concurrency pre-warmed it (checked
        # here, not at creation: INVOKE may be handled before the replayed initStart).
        coldstart = inv.coldstart and self._init_type != "provisioned-concurrency"
        attrs = {"faas.invocation_id": inv.request_id, "faas.coldstart": coldstart}
        if inv.arn:
            attrs["aws.lambda.invoked_arn"] = inv.arn
            base = _unqualified_arn(inv.arn)
            # semconv: cloud.resource_id is the function ARN with the resolved version, not an alias.
            attrs["cloud.resource_id"] = f"{base}:{inv.version}" if inv.version else base
        if status and status != "success":
            attrs["error.type"] = error_type or status
        if extra:
            attrs.update(extra)
        set_attributes(span.attributes, attrs)
        if inv.link is not None:
            link = span.links.add()
            link.trace_id = inv.link.trace_id
            link.span_id = inv.link.parent_id
            link.flags = (0 if inv.link.sampled is False else _SPAN_FLAG_SAMPLED) | _HAS_IS_REMOTE | _IS_REMOTE
            set_attributes(link.attributes, {"aws.xray.link": "parent"})
        self._set_status(span, status, error_type)

    @staticmethod
    def _set_status(span: trace_pb2.Span, status: Optional[str], error_type: Optional[str]) -> None:
        if status and status != "success":
            span.status.code = trace_pb2.Status.STATUS_CODE_ERROR
            span.status.message = error_type or status

    def _child(self, inv: _Invocation, name: str, start: int, end: int, batch: _Batch) -> trace_pb2.Span:
        span = batch.span()
        span.trace_id = inv.trace_id
        span.span_id = _random_id(8)
        span.parent_span_id = inv.span_id
        span.flags = inv.flags | _HAS_IS_REMOTE
        span.name = name
        span.kind = trace_pb2.Span.SPAN_KIND_INTERNAL
        span.start_time_unix_nano = start
        span.end_time_unix_nano = end
        set_attributes(span.attributes, {"faas.invocation_id": inv.request_id})
        return span

    def _child_span(self, inv: _Invocation, item: object, batch: _Batch) -> None:
        """One of runtimeDone.spans: {"name", "start", "durationMs"}."""
        if not isinstance(item, dict):
            self._ignore(MALFORMED_RECORD, batch)
            return
        name = _text(item.get("name"), 64)
        start = parse_time_ns(item.get("start"))
        duration = _duration_ms(item.get("durationMs"))
        if name is None or start is None or duration is None:
            self._ignore(MALFORMED_RECORD, batch)
            return
        self._child(inv, name, start, start + round(duration * 1e6), batch)

    def _on_report(self, t: int, record: object, batch: _Batch) -> None:
        rid = _request_id(record) if isinstance(record, dict) else None
        if rid is not None:
            batch.reports.append(rid)  # the shutdown grace waits for this, whatever else is wrong
        if not isinstance(record, dict) or not isinstance(record.get("metrics"), dict):
            self._ignore(MALFORMED_RECORD, batch)
            return
        inv = self._lookup(rid) if rid else None
        if inv is not None and inv.report_seen:
            self._ignore(DUPLICATE, batch)
            return
        status, error_type = self._status(record, batch)
        m = record["metrics"]
        add, rec = self._metrics.add, self._metrics.record

        if inv is None or not inv.counted:
            add("faas.invocations", 1)
            if status in ("error", "failure"):
                add("faas.errors", 1, {"error.type": error_type or status})
            elif status == "timeout":
                add("faas.timeouts", 1)
        duration = self._metric_value(m, "durationMs", batch)
        if duration is not None:
            rec("faas.invoke_duration", duration / 1000.0)
        billed = self._metric_value(m, "billedDurationMs", batch)
        if billed is not None:
            rec("aws.lambda.billed_duration", billed / 1000.0)
        mem = self._metric_value(m, "maxMemoryUsedMB", batch)
        if mem is not None:
            rec("faas.mem_usage", mem * 1024 * 1024)
        init = self._metric_value(m, "initDurationMs", batch)
        if init is not None:
            rec("faas.init_duration", init / 1000.0)
            add("faas.coldstarts", 1)
        restore = self._metric_value(m, "restoreDurationMs", batch)
        if restore is not None:
            rec("aws.lambda.restore_duration", restore / 1000.0)
        if inv is None:
            return
        inv.report_seen = True

        if not inv.done:  # runtimeDone never came: the report closes the invocation
            if inv.start_ns is None:
                inv.start_ns = t - round(duration * 1e6) if duration is not None else (inv.invoke_ns or t)
            inv.end_ns = max(inv.start_ns + round(duration * 1e6) if duration is not None else t, inv.start_ns)
            self._ensure_context(inv, None, None, batch)
            self._invocation_span(inv, status, error_type, batch)
            self._finish(inv)
            return
        # Extension overhead: the report's own span if Lambda sent one, else report - runtimeDone.
        overhead = None
        spans = record.get("spans")
        if isinstance(spans, list):
            for item in spans[:_MAX_CHILD_SPANS]:
                if isinstance(item, dict) and item.get("name") == "extensionOverhead":
                    start, dur = parse_time_ns(item.get("start")), _duration_ms(item.get("durationMs"))
                    if start is not None and dur is not None:
                        overhead = (start, dur)
                    break
        if overhead is None and duration is not None and inv.runtime_ms is not None and duration > inv.runtime_ms:
            overhead = (inv.start_ns + round(inv.runtime_ms * 1e6), duration - inv.runtime_ms)
        if overhead is not None:
            start, dur = overhead
            rec("aws.lambda.extension_overhead", dur / 1000.0)
            self._child(inv, "extensionOverhead", start, start + round(dur * 1e6), batch)

    def _metric_value(self, metrics: dict, key: str, batch: _Batch) -> Optional[float]:
        """metrics[key] as a sane duration (or MB); None if absent, None and counted if bad."""
        if key not in metrics:
            return None
        value = _duration_ms(metrics[key])  # same rule for MB: finite, >= 0, bounded
        if value is None:
            self._ignore(BAD_DURATION, batch)
        return value

    def _synthesise(self, inv: _Invocation, reason: str, error_type: str, batch: _Batch) -> None:
        """An invocation SHUTDOWN(timeout|failure) cut short: ERROR span ending now."""
        self._ensure_context(inv, None, None, batch)
        if inv.start_ns is None:
            inv.start_ns = inv.invoke_ns or batch.now
        inv.end_ns = max(batch.now, inv.start_ns)
        self._invocation_span(inv, reason, error_type, batch, {"aws.lambda.shutdown.reason": reason})
        if not inv.counted:
            self._metrics.add("faas.invocations", 1)
            if reason == "timeout":
                self._metrics.add("faas.timeouts", 1)
            else:
                self._metrics.add("faas.errors", 1, {"error.type": error_type})
            inv.counted = True
        self._finish(inv)

    # ------------------------------------------------------------------ init / restore phases

    def _new_phase(self, kind: str, t: int, record: dict) -> _Phase:
        phase = _Phase(kind)
        phase.start_ns = t
        phase.init_type = _text(record.get("initializationType"), 64)
        phase.phase = _text(record.get("phase"), 32)
        self._phases.append(phase)
        if len(self._phases) > _MAX_PHASES:
            del self._phases[0]
        return phase

    def _on_init_start(self, t: int, record: object, batch: _Batch) -> None:
        if not isinstance(record, dict):
            self._ignore(MALFORMED_RECORD, batch)
            return
        phase = self._new_phase("init", t, record)
        if phase.init_type:
            self._init_type = phase.init_type
        instance = resource_mod.instance_attributes(record)  # schema 2025-01-29, Managed Instances
        if instance:
            resource_mod.update_resource(self._resource, instance)

    def _on_restore_start(self, t: int, record: object, batch: _Batch) -> None:
        if not isinstance(record, dict):
            self._ignore(MALFORMED_RECORD, batch)
            return
        self._new_phase("restore", t, record)

    def _phase_for(self, etype_kind: str, record: dict, t: int) -> _Phase:
        for phase in reversed(self._phases):
            if phase.kind == etype_kind and not phase.emitted:
                return phase
        phase = self._new_phase(etype_kind, t, record)
        phase.start_ns = None  # start never seen
        return phase

    def _on_phase_done(self, kind: str, t: int, record: object, batch: _Batch) -> None:
        if not isinstance(record, dict):
            self._ignore(MALFORMED_RECORD, batch)
            return
        phase = self._phase_for(kind, record, t)
        phase.end_ns = t
        phase.status, phase.error_type = _text(record.get("status"), 32), _text(record.get("errorType"), 128)
        phase.init_type = phase.init_type or _text(record.get("initializationType"), 64)
        phase.phase = phase.phase or _text(record.get("phase"), 32)
        self._emit_phases(batch, force=False)

    def _on_phase_report(self, kind: str, t: int, record: object, batch: _Batch) -> None:
        if not isinstance(record, dict):
            self._ignore(MALFORMED_RECORD, batch)
            return
        phase = self._phase_for(kind, record, t)
        phase.reported = True
        metrics = record.get("metrics")
        if isinstance(metrics, dict) and "durationMs" in metrics:
            phase.report_ms = self._metric_value(metrics, "durationMs", batch)
        if phase.end_ns is None:
            phase.end_ns = t
        phase.status = phase.status or _text(record.get("status"), 32)
        phase.error_type = phase.error_type or _text(record.get("errorType"), 128)
        phase.init_type = phase.init_type or _text(record.get("initializationType"), 64)
        phase.phase = phase.phase or _text(record.get("phase"), 32)
        self._emit_phases(batch, force=False)

    def _emit_phases(self, batch: _Batch, force: bool, shutdown: bool = False) -> None:
        """Emit init/restore phases, each exactly once, in the first invocation's trace (an
        ``invoke``-phase re-init goes in the current one), as a child of its span.

        A phase is emitted once its report has arrived and the invocation's context exists
        (platform.start seen); ``force`` (runtimeDone) also emits phases whose report never
        came; at ``shutdown`` a phase that never found an invocation gets its own trace."""
        for phase in self._phases:
            if phase.emitted or not (phase.reported or force):
                continue
            inv = self._current if phase.phase == "invoke" and self._current is not None else self._first
            if not shutdown and (inv is None or (inv.start_ns is None and not inv.done)):
                continue  # hold it until platform.start fixes the invocation's trace context
            self._phase_span(phase, inv, batch)
            phase.emitted = True

    def _phase_span(self, phase: _Phase, inv: Optional[_Invocation], batch: _Batch) -> None:
        end = phase.end_ns
        start = phase.start_ns
        if start is not None and phase.report_ms is not None:
            end = start + round(phase.report_ms * 1e6)  # initReport covers the whole phase
        if start is None:
            if end is None:
                end = batch.now
            start = end - round((phase.report_ms or 0.0) * 1e6)
        if end is None:
            end = inv.start_ns if inv is not None and inv.start_ns is not None else batch.now
        end = max(end, start)
        span = batch.span()
        if inv is not None:
            self._ensure_context(inv, None, None, batch)
            span.trace_id = inv.trace_id
            span.parent_span_id = inv.span_id
            span.flags = inv.flags | _HAS_IS_REMOTE
        else:
            span.trace_id = _random_id(16)
            span.flags = _SPAN_FLAG_SAMPLED | _HAS_IS_REMOTE
        span.span_id = _random_id(8)
        span.name = phase.kind
        span.kind = trace_pb2.Span.SPAN_KIND_INTERNAL
        span.start_time_unix_nano = start
        span.end_time_unix_nano = end
        attrs = {}
        if phase.init_type:
            attrs["aws.lambda.init.type"] = phase.init_type
        if phase.phase:
            attrs["aws.lambda.init.phase"] = phase.phase
        if phase.status and phase.status != "success":
            attrs["error.type"] = phase.error_type or phase.status
        set_attributes(span.attributes, attrs)
        self._set_status(span, phase.status, phase.error_type)

    # ------------------------------------------------------------------ logs

    def _on_logs_dropped(self, t: int, record: object, batch: _Batch) -> None:
        if not isinstance(record, dict):
            self._ignore(MALFORMED_RECORD, batch)
            return
        records = record.get("droppedRecords")
        if isinstance(records, bool) or not isinstance(records, int) or records < 0:
            self._ignore(MALFORMED_RECORD, batch)
            return
        nbytes = record.get("droppedBytes")
        nbytes = nbytes if isinstance(nbytes, int) and not isinstance(nbytes, bool) and nbytes >= 0 else None
        reason = _text(record.get("reason"), 512)
        self._metrics.add("aws.lambda.logs_dropped", records)
        self._loss.add(loss_mod.LOGS, loss_mod.PLATFORM_LOGS_DROPPED, records)
        lr = batch.log(SCOPE_PLATFORM)
        lr.time_unix_nano = t
        lr.observed_time_unix_nano = batch.now
        lr.severity_number = 13
        lr.severity_text = "WARN"
        size = f" ({nbytes} bytes)" if nbytes is not None else ""
        lr.body.string_value = f"Lambda dropped {records} log records{size} before delivery: {reason or 'no reason given'}"
        attrs = {"aws.lambda.logs_dropped.records": records}
        if nbytes is not None:
            attrs["aws.lambda.logs_dropped.bytes"] = nbytes
        if reason:
            attrs["aws.lambda.logs_dropped.reason"] = reason
        set_attributes(lr.attributes, attrs)

    def _on_function_log(self, t: int, record: object, batch: _Batch) -> None:
        self._log(t, record, SCOPE_FUNCTION, batch)

    def _on_extension_log(self, t: int, record: object, batch: _Batch) -> None:
        self._log(t, record, SCOPE_EXTENSION, batch)

    def _log(self, t: int, record: object, scope: str, batch: _Batch) -> None:
        obj = None
        text = None
        if isinstance(record, str):
            text = record[:-1] if record.endswith("\n") else record
            if text.endswith("\r"):
                text = text[:-1]
            if len(text) >= 2 and text[0] == "{" and text[-1] == "}" and len(text) <= _MAX_JSON_LINE:
                try:
                    obj = json.loads(text)
                except ValueError:
                    obj = None
                if not isinstance(obj, dict):
                    obj = None
        elif isinstance(record, dict):
            obj = record
        else:
            self._ignore(MALFORMED_RECORD, batch)
            return
        lr = batch.log(scope)
        lr.observed_time_unix_nano = batch.now
        attrs = {}
        rid = None
        time_ns = t
        if obj is not None:
            ts = obj.get("timestamp")
            if ts is not None:
                parsed = parse_time_ns(ts)
                if parsed is not None:
                    time_ns = parsed
            level = obj.get("level")
            if isinstance(level, str):
                lr.severity_text = _text(level, 32) or ""
                lr.severity_number = SEVERITY.get(level.upper(), 0)
            rid_value = obj.get("requestId")
            if isinstance(rid_value, str) and _REQUEST_ID_RE.fullmatch(rid_value):
                rid = rid_value
            if "message" in obj:
                set_any_value(lr.body, obj["message"])
            else:
                set_any_value(lr.body, obj)
            n = 0
            for key, value in obj.items():
                if key in _STRUCTURED_KEYS:
                    continue
                if n >= _MAX_ATTRS:
                    lr.dropped_attributes_count += 1
                    continue
                kv = lr.attributes.add()
                set_key(kv, key)
                set_any_value(kv.value, value)
                n += 1
        else:
            set_str(lr.body, text)
            if scope == SCOPE_EXTENSION and text.startswith(SELF_LOG_PREFIX):
                attrs["lambda_otel.self"] = True
                level = text[len(SELF_LOG_PREFIX):].lstrip().split(" ", 1)[0]
                if level in SEVERITY:
                    lr.severity_text, lr.severity_number = level, SEVERITY[level]
            elif "\t" in text[:120]:
                rid = self._text_line_fields(text, lr)
        lr.time_unix_nano = time_ns
        inv = self._lookup(rid) if rid is not None else self._active_at(time_ns)
        if inv is not None:
            if not inv.has_context:
                self._ensure_context(inv, None, None, batch)
            lr.trace_id = inv.trace_id
            lr.span_id = inv.span_id
            lr.flags = inv.flags & 0xFF
            rid = inv.request_id
        if rid is not None:
            attrs["faas.invocation_id"] = rid
        if attrs:
            set_attributes(lr.attributes, attrs)

    @staticmethod
    def _text_line_fields(text: str, lr: logs_pb2.LogRecord) -> Optional[str]:
        """Lambda's text formats put a level and the request id in the first tab-separated
        fields (Python ``[INFO]\\t<time>\\t<id>\\t...``, Node ``<time>\\t<id>\\tINFO\\t...``)."""
        rid = None
        for part in text.split("\t", 3)[:3]:
            if rid is None and _UUID_RE.fullmatch(part):
                rid = part
                continue
            level = part[1:-1] if part.startswith("[") and part.endswith("]") else part
            if not lr.severity_number and level in SEVERITY:
                lr.severity_text, lr.severity_number = level, SEVERITY[level]
        return rid

    def _active_at(self, t: int) -> Optional[_Invocation]:
        """The invocation running at time t, else the most recent one started before t."""
        cur = self._current
        if cur is not None and cur.start_ns is not None and cur.start_ns <= t:
            if cur.end_ns is None or t <= cur.end_ns or not self._open:
                return cur
        best = None
        for table in (self._open, self._finished):
            for inv in reversed(table.values()):
                if inv.start_ns is None or inv.start_ns > t:
                    continue
                if inv.end_ns is None or t <= inv.end_ns:
                    return inv
                if best is None or inv.start_ns > best.start_ns:
                    best = inv
        return best
