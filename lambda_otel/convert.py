"""Telemetry API events -> OTLP spans, logs and metric values (pure, in process, no I/O).

``TelemetryConverter.process(events)`` takes one already-JSON-decoded Telemetry API batch
(``[{"time", "type", "record"}, ...]``, schema 2022-12-13 or 2025-01-29) and returns a ``Converted`` with a
``ResourceSpans`` and a ``ResourceLogs`` (each None when empty). Metric values go straight
into ``MetricsState``. Bad input never raises: a malformed event is counted in
``lambda_otel.telemetry.ignored{reason}`` and skipped, the rest of the batch converts, and
anything an event had half-built is rolled back. Nothing here logs: our own log lines come
back as ``extension`` records, so logging per event would feed itself.

Choices (README material):

* Metrics come only from ``platform.report``, the platform's final word, with the values it
  reported (ms -> s, MB -> bytes); a field the report lacks (Managed Instances report
  ``durationMs`` only) records nothing. ``faas.invocations`` counts successful invocations. A timeout counts when its report arrives (Lambda emits one
  with ``status: timeout`` before the SHUTDOWN). If SHUTDOWN(timeout|failure) comes first,
  ``on_shutdown`` counts the invocation itself and marks it, so a report that still arrives
  later adds its durations but is not counted twice. SnapStart: ``restoreReport`` gives the restore
  duration and the cold start (once per restored copy); init events timed before the restore
  are the snapshot's and are ignored.
* Invocation span: SERVER (INTERNAL above the function's own SERVER span, see below), named after
  the function (resource ``faas.name``), from
  ``platform.start`` to ``platform.runtimeDone``; children from ``runtimeDone.spans``; an
  ``extensionOverhead`` child from the later ``platform.report`` (emitted on its own, same
  trace, parent = the invocation span). ``faas.trigger`` is not set: the platform does not say.
* One tree per invocation (``xray_mode="join"``, default): the invocation span takes the X-Ray
  header's ``Parent`` id, the very id the function's standard instrumentation (``xray-lambda``
  propagator) gives its SERVER span as parent. So the function's spans hang under ours, our span
  is the trace's root (no dangling parent), and when the function's SERVER span has reached our
  receiver (``sdk_view``) ours is INTERNAL: one SERVER span per invocation. An uninstrumented
  function keeps ours as its SERVER root. This holds whether or not ``tracing.spanId`` equals the
  Parent (it is used only when the header has none). Trade-off: the Parent is also the id of
  X-Ray's own segment for this invocation, so a backend that receives both X-Ray and OTLP data
  sees one id twice. ``"link"`` (the former default): span id = ``tracing.spanId``, the Parent
  a span *link*; ``"parent"``: the Parent as parent (for setups where the upstream is in the same
  backend).
* Sampling as the function's SDK decides (``sampling.TraceSampler`` from ``OTEL_TRACES_SAMPLER``,
  the X-Ray ``Sampled`` flag as remote parent): an unsampled trace exports no platform span;
  its logs still carry its trace and span ids (flags 0) and metrics are never sampled.
* Logs: ``function``/``extension`` records -> LogRecords in scopes ``lambda-otel.function`` /
  ``lambda-otel.extension`` (``lambda-otel.platform`` for our logsDropped warning),
  correlated to an invocation by ``requestId`` or else by time. Lambda's Python text prefix
  (``[LEVEL]\t<time>\t<request id>\t``) becomes severity, time and ``faas.invocation_id``; the
  runtime's uncaught-exception line becomes an ERROR ``faas.invocation.exception`` record with
  ``exception.*`` (and its type the span's ``error.type``); structured fields with a convention
  are mapped to it (``_parse_object``), and fields that repeat the record or its resource dropped.
* No record twice: a line the runtime's logging handler wrote is held until its invocation ends
  (the function's SDK has flushed by then) and dropped if the SDK's copy reached our receiver
  (``sdk_view.take_log``), counted in ``lambda_otel.logs.deduplicated``. ``print`` output and lines
  without an SDK copy are always exported.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import date
from functools import partial
from typing import Callable, Dict, List, Optional, Tuple

from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1 import trace_pb2

import lambda_otel
from lambda_otel import loss as loss_mod
from lambda_otel import resource as resource_mod
from lambda_otel.config import XRAY_JOIN, XRAY_LINK, XRAY_MODES, XRAY_PARENT
from lambda_otel.loss import LossCounter
from lambda_otel.metrics import MetricsState
from lambda_otel.otlp import MAX_ANY_ITEMS, merge_attributes, set_any_value, set_attributes, set_key, set_str
from lambda_otel.sampling import TraceSampler
from lambda_otel.sdk_view import FunctionSdkView
from lambda_otel.xray import XRayContext, parse_span_id, parse_xray_header

SELF_LOG_PREFIX = "[lambda-otel]"  # how the extension's own lines start (app.LOG_FORMAT)
SCOPE_SPANS = "lambda-otel"
SCOPE_FUNCTION = "lambda-otel.function"
SCOPE_EXTENSION = "lambda-otel.extension"
SCOPE_PLATFORM = "lambda-otel.platform"
_LOG_SCOPES = {"function": SCOPE_FUNCTION, "extension": SCOPE_EXTENSION}  # event type -> scope of its lines

# Reasons for lambda_otel.telemetry.ignored.
MALFORMED_EVENT = "malformed_event"  # not {time, type, record}
UNKNOWN_TYPE = "unknown_type"
MALFORMED_RECORD = "malformed_record"  # record has the wrong type or lacks a required field
BAD_TIME = "bad_time"  # unparseable or absurd timestamp (replaced by now)
BAD_DURATION = "bad_duration"  # NaN, negative, absurd or non-numeric duration (value skipped)
MALFORMED_TRACING = "malformed_tracing"  # bad X-Ray header / spanId (fresh ids used instead)
DUPLICATE = "duplicate"  # second runtimeDone/report for one request id
SNAPSHOT_INIT = "snapshot_init"  # init events of the snapshot, delivered after a SnapStart restore
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
_ACTIVE_MEMO_MAX = 1024

_TIME_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?(?:[Zz]|([+-])(\d{2}):?(\d{2}))", re.ASCII
)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_day_cache: Dict[str, int] = {}
_time_cache: Dict[str, int] = {}  # whole value -> ns: a batch's lines share their milliseconds
_second_cache: Dict[str, int] = {}  # "YYYY-MM-DDTHH:MM:SS" (UTC) -> epoch seconds, for parse_time_ns
_REQUEST_ID_RE = re.compile(r"[\x21-\x7e]{1,128}", re.ASCII)
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", re.ASCII)
_REASON_RE = re.compile(r"[a-z_]{1,32}", re.ASCII)

SEVERITY = {
    "TRACE": 1, "DEBUG": 5, "INFO": 9, "NOTICE": 10, "WARN": 13, "WARNING": 13,
    "ERROR": 17, "CRITICAL": 21, "FATAL": 21,
}
_BRACKETED_LEVELS = {f"[{name}]": (name, number) for name, number in SEVERITY.items()}  # "[INFO]" -> ("INFO", 9)


def parse_time_ns(value: object) -> Optional[int]:
    """RFC 3339 as Lambda writes it (``2024-05-01T10:00:00.100Z``, 0-9 fraction digits,
    ``Z`` or ``+hh:mm``) -> epoch ns; None when malformed or outside 2000-2100.

    Every event has a time and a batch's events share few milliseconds, so a whole value is
    looked up first; on a miss the common UTC form looks its whole second up in a second cache
    and only parses the fraction: this function was the top entry of the converter's profile."""
    if value.__class__ is not str or len(value) > 40:  # (a str subclass is not a Telemetry API time)
        return None
    cached = _time_cache.get(value)
    if cached is not None:
        return cached
    ns = _parse_time_ns(value)
    if ns is not None:
        if len(_time_cache) >= 4096:
            _time_cache.clear()
        _time_cache[value] = ns
    return ns


def _parse_time_ns(value: str) -> Optional[int]:
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


class IdGenerator:
    """Random span and trace ids from a PRNG seeded from ``os.urandom``.

    A seeded PRNG is far cheaper per id than a system call; ``reseed`` (SnapStart restore) gives
    every restored copy of a snapshot its own sequence, where the snapshot's state would make
    every copy export the same ids."""

    def __init__(self) -> None:
        self._random = random.Random()
        self.reseed()

    def reseed(self) -> None:
        self._random.seed(os.urandom(32))

    def span_id(self) -> bytes:
        return (self._random.getrandbits(64) or 1).to_bytes(8, "big")

    def trace_id(self) -> bytes:
        return (self._random.getrandbits(128) or 1).to_bytes(16, "big")


def _unqualified_arn(arn: str) -> str:
    """``arn:aws:lambda:r:acct:function:name[:qualifier]`` -> without the qualifier."""
    parts = arn.split(":", 7)
    return ":".join(parts[:7]) if len(parts) >= 7 else arn


def _string_attributes(resource: Resource) -> Dict[str, str]:
    return {kv.key: kv.value.string_value for kv in resource.attributes
            if kv.value.WhichOneof("value") == "string_value"}


def _function_arn(attrs: Dict[str, str]) -> Optional[str]:
    """The unqualified function ARN from the resource (region, account, name), or None."""
    region, account, name = attrs.get("cloud.region"), attrs.get("cloud.account.id"), attrs.get("faas.name")
    if not (region and account and name):
        return None
    partition = "aws-cn" if region.startswith("cn-") else "aws-us-gov" if region.startswith("us-gov-") else "aws"
    return f"arn:{partition}:lambda:{region}:{account}:function:{name}"


@dataclass
class Converted:
    """What one batch (or the shutdown) produced, ready for the aggregator."""

    resource_spans: Optional[trace_pb2.ResourceSpans] = None
    span_count: int = 0
    resource_logs: Optional[logs_pb2.ResourceLogs] = None
    log_count: int = 0
    runtime_done: List[str] = field(default_factory=list)  # request ids seen in platform.runtimeDone
    reports: List[str] = field(default_factory=list)  # request ids seen in platform.report
    started: List[str] = field(default_factory=list)  # request ids seen in platform.start
    instance_max_memory: Optional[int] = None  # bytes, from a 2025-01-29 platform.initStart (Managed Instances)
    deduplicated: int = 0  # function log lines not exported because the function's SDK sent them
    ignored: int = 0  # problems counted in lambda_otel.telemetry.ignored during this call


class _Invocation:
    """What we know about one request id, from on_invoke / platform.start to the report."""

    __slots__ = (
        "request_id", "start_ns", "invoke_ns", "end_ns", "arn", "version", "deadline_ms", "tracing_hint",
        "coldstart", "has_context", "trace_id", "span_id", "parent_span_id", "link", "flags",
        "done", "runtime_ms", "report_seen", "counted", "exception_type", "held", "held_bytes", "log_templates",
        "child_template",
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
        self.counted = False  # outcome already counted in the metrics (by on_shutdown)
        self.exception_type: Optional[str] = None  # from the runtime's uncaught-exception log line
        self.held: Optional[list] = None  # function log lines waiting for the SDK's copy (see _hold)
        self.held_bytes = 0  # their message text
        # What each of its records shares, built once its trace context is fixed (see _log_templates).
        self.log_templates: Optional[_LogTemplates] = None
        self.child_template: Optional[trace_pb2.Span] = None


class _LogTemplates:
    """The fields every log record of one invocation shares, as two ``LogRecord`` messages: one
    ``CopyFrom`` of a template costs half of setting trace id, span id, flags, observed time and
    the ``faas.invocation_id`` attribute one by one, on the path every function line takes.

    ``full`` carries the attribute (for a record that has no other); ``bare`` does not (the
    attribute goes after the record's own, in the order the record has always had)."""

    __slots__ = ("now", "bare", "full")

    def __init__(self, inv: _Invocation, now: int) -> None:
        self.now = now
        self.bare = logs_pb2.LogRecord(trace_id=inv.trace_id, span_id=inv.span_id, flags=inv.flags & 0xFF,
                                       observed_time_unix_nano=now)
        self.full = logs_pb2.LogRecord()
        self.full.CopyFrom(self.bare)
        kv = self.full.attributes.add()
        kv.key = "faas.invocation_id"
        kv.value.string_value = inv.request_id

    def observed_at(self, now: int) -> None:
        """A new batch: its observed time (one batch, one ``now``) on both templates."""
        self.now = self.bare.observed_time_unix_nano = self.full.observed_time_unix_nano = now


class _Phase:
    """An init or SnapStart restore phase: start, runtimeDone and report events."""

    __slots__ = ("kind", "start_ns", "end_ns", "report_ms", "reported", "init_type", "phase", "status",
                 "error_type", "emitted", "done_seen")

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
        self.done_seen = False  # its runtimeDone event arrived


class _Batch:
    """Output being built by one call; lets a failing event roll back what it added."""

    def __init__(self, resource: Resource, now: int) -> None:
        self.resource = resource
        self.now = now
        self.rs: Optional[trace_pb2.ResourceSpans] = None
        self.ss = None
        self.rl: Optional[logs_pb2.ResourceLogs] = None
        self.scopes: Dict[str, tuple] = {}  # scope name -> (its ScopeLogs, that ScopeLogs' log_records.add)
        self.journal: list = []  # the ScopeLogs of every record added, in order (for rollback)
        self.n_spans = 0
        self.runtime_done: List[str] = []
        self.reports: List[str] = []
        self.started: List[str] = []
        self.instance_max_memory: Optional[int] = None
        self.deduplicated = 0
        self.ignored = 0

    def span(self) -> trace_pb2.Span:
        if self.ss is None:
            self.rs = trace_pb2.ResourceSpans()
            self.rs.resource.CopyFrom(self.resource)
            self.ss = self.rs.scope_spans.add()
            self.ss.scope.name = SCOPE_SPANS
            self.ss.scope.version = lambda_otel.__version__
        self.n_spans += 1
        return self.ss.spans.add()

    def log(self, scope: str) -> logs_pb2.LogRecord:
        found = self.scopes.get(scope)
        if found is None:
            if self.rl is None:
                self.rl = logs_pb2.ResourceLogs()
                self.rl.resource.CopyFrom(self.resource)
            sl = self.rl.scope_logs.add()
            sl.scope.name = scope
            sl.scope.version = lambda_otel.__version__
            found = self.scopes[scope] = (sl, sl.log_records.add)
        self.journal.append(found[0])
        return found[1]()

    def mark(self):
        """Taken before every event (``process`` inlines it): cheap, since rollbacks are rare."""
        return (self.n_spans, len(self.journal))

    def rollback(self, mark) -> None:
        if self.ss is not None:
            del self.ss.spans[mark[0]:]
            self.n_spans = len(self.ss.spans)
        added = self.journal[mark[1]:]
        del self.journal[mark[1]:]
        counts: Dict[int, list] = {}  # id(ScopeLogs) -> [ScopeLogs, records added since the mark]
        for sl in added:
            counts.setdefault(id(sl), [sl, 0])[1] += 1
        for sl, n in counts.values():
            del sl.log_records[len(sl.log_records) - n:]

    def result(self) -> Converted:
        out = Converted(runtime_done=self.runtime_done, reports=self.reports, started=self.started,
                        instance_max_memory=self.instance_max_memory, deduplicated=self.deduplicated, ignored=self.ignored)
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
        xray_mode: str = XRAY_JOIN,
        clock_ns: Callable[[], int] = time.time_ns,
        max_open_invocations: int = 64,
        max_finished_invocations: int = 128,
        sampler: Optional[TraceSampler] = None,
        sdk_view: Optional[FunctionSdkView] = None,
    ) -> None:
        if xray_mode not in XRAY_MODES:
            raise ValueError(f"xray_mode must be one of {XRAY_MODES}, not {xray_mode!r}")
        self._resource = resource
        self._metrics = metrics
        self._loss = loss
        self._xray_mode = xray_mode
        self._sampler = sampler or TraceSampler()
        self._sdk_view = sdk_view
        self._clock_ns = clock_ns
        self._ids = IdGenerator()
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
        self._phase_events: "OrderedDict[tuple, None]" = OrderedDict()  # (type, time, phase) seen
        self._restored_at: Optional[int] = None  # restoreStart time: earlier init events are the snapshot's
        self._restore_recorded = False  # restore duration and cold start counted for this copy
        self._holding: List[_Invocation] = []  # invocations with function lines held for deduplication
        self._held_count = 0
        self._held_bytes = 0  # their message text (a line's own size is capped by the JSON/line limits)
        self._to_release: List[_Invocation] = []  # evicted while holding lines: released by the next batch
        self._active_memo: Dict[int, Optional[_Invocation]] = {}  # time -> _active_at's answer (see there)
        self._span_name = self._function_name(resource)
        attrs = _string_attributes(resource)
        self._function_arn = _function_arn(attrs)
        self._service_name = attrs.get("service.name")
        self._handlers = {
            "platform.start": self._on_start,
            "platform.runtimeDone": self._on_runtime_done,
            "platform.report": self._on_report,
            "platform.initStart": partial(self._phase_event, "initStart", self._on_init_start),
            "platform.initRuntimeDone": partial(self._phase_event, "initRuntimeDone",
                                                partial(self._on_phase_done, "init")),
            "platform.initReport": partial(self._phase_event, "initReport", partial(self._on_phase_report, "init")),
            "platform.restoreStart": partial(self._phase_event, "restoreStart", self._on_restore_start),
            "platform.restoreRuntimeDone": partial(self._phase_event, "restoreRuntimeDone",
                                                   partial(self._on_phase_done, "restore")),
            "platform.restoreReport": partial(self._phase_event, "restoreReport",
                                              partial(self._on_phase_report, "restore")),
            "platform.logsDropped": self._on_logs_dropped,
            "platform.extension": None,  # known, nothing to convert
            "platform.telemetrySubscription": None,
        }  # and the lines of _LOG_SCOPES

    @staticmethod
    def _function_name(resource: Resource) -> str:
        found = _string_attributes(resource)
        return found.get("faas.name") or found.get("service.name") or "lambda.invoke"

    # ------------------------------------------------------------------ public API

    def process(self, events: list) -> Converted:
        """Convert one Telemetry API batch. Never raises."""
        with self._lock:
            batch = _Batch(self._resource, self._clock_ns())
            if not isinstance(events, list):
                self._ignore(MALFORMED_EVENT, batch)
                return batch.result()
            while self._to_release:
                self._release(self._to_release.pop(), batch)
            journal = batch.journal
            log, dispatch = self._log, self._dispatch
            for event in events:
                mark = (batch.n_spans, len(journal))
                try:
                    # A function line (most events) straight to _log; anything else is checked by _dispatch.
                    if event.__class__ is dict and event.get("type") == "function" and "record" in event:
                        log(event.get("time"), event["record"], SCOPE_FUNCTION, batch)
                    else:
                        dispatch(event, batch)
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
                # A new INVOKE means the earlier invocations are over, even if their runtimeDone
                # never comes (a subscription without platform events): their held lines go out
                # with the next batch instead of waiting for a later SHUTDOWN.
                for other in self._holding:
                    if other is not inv and other not in self._to_release:
                        self._to_release.append(other)
            except Exception:
                self._ignore(CONVERSION_ERROR, None)
            finally:
                self._timeline_changed()

    def renew_after_restore(self) -> None:
        """SnapStart restore: this copy of the snapshot gets its own ids and no per-invocation state."""
        with self._lock:
            self._ids.reseed()
            self._open.clear()
            self._finished.clear()
            self._platform_span_ids.clear()
            self._current = None
            self._first = None
            self._seen_invocation = False
            self._restore_recorded = False
            self._holding.clear()
            self._to_release.clear()
            self._held_count = self._held_bytes = 0
            self._timeline_changed()
            if self._sdk_view is not None:
                self._sdk_view.renew_after_restore()

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
                for inv in list(self._holding):  # the last lines: decided now, whatever the reason
                    self._release(inv, batch)
                self._emit_phases(batch, force=True, shutdown=True)
            except Exception:
                self._ignore(CONVERSION_ERROR, batch)
            self._timeline_changed()
            return batch.result()

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, event: object, batch: _Batch) -> None:
        """Any event (``process`` takes the well-formed function lines to ``_log`` itself)."""
        if not isinstance(event, dict):
            self._ignore(MALFORMED_EVENT, batch)
            return
        etype = event.get("type")
        if not isinstance(etype, str) or "record" not in event:
            self._ignore(MALFORMED_EVENT, batch)
            return
        scope = _LOG_SCOPES.get(etype)
        if scope is not None:  # most lines carry their own time: _log parses the event's only if needed
            self._log(event.get("time"), event["record"], scope, batch)
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
        try:
            handler(t, event["record"], batch)
        finally:
            self._timeline_changed()

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
            _, evicted = self._open.popitem(last=False)
            if evicted.held is not None:
                self._to_release.append(evicted)
            self._ignore(EVICTED, batch)
        self._open[request_id] = inv
        return inv

    def _finish(self, inv: _Invocation, batch: Optional[_Batch] = None) -> None:
        if inv.held is not None and batch is not None:
            self._release(inv, batch)
        inv.done = True
        self._open.pop(inv.request_id, None)
        self._finished[inv.request_id] = inv
        while len(self._finished) > self._max_finished:
            self._finished.popitem(last=False)

    def _lookup(self, request_id: str) -> Optional[_Invocation]:
        return self._open.get(request_id) or self._finished.get(request_id)

    def _ensure_context(self, inv: _Invocation, header: object, span_id_text: object, batch: Optional[_Batch]) -> None:
        """Fix the invocation's trace id, span id, parent/link and sampling decision (once).

        ``join``: the span id is the X-Ray ``Parent`` id, the parent the function's own SDK gives
        its SERVER span, so that span becomes our child; ``tracing.spanId`` is used only when the
        header has no Parent. ``link``/``parent``: the span id is ``tracing.spanId`` and the
        Parent becomes a link or the parent. An id already used is never reused: a fresh one."""
        if inv.has_context:
            return
        if header is None:
            header = inv.tracing_hint
        ctx = parse_xray_header(header) if header is not None else None
        if header is not None and ctx is None:
            self._ignore(MALFORMED_TRACING, batch)
        span_id = None
        if self._xray_mode == XRAY_JOIN and ctx is not None and ctx.parent_id is not None:
            span_id = ctx.parent_id
        elif span_id_text is not None:
            span_id = parse_span_id(span_id_text)
            if span_id is None:
                self._ignore(MALFORMED_TRACING, batch)
        if span_id is not None and span_id in self._platform_span_ids:
            span_id = None  # never reuse an id, even if the platform repeats one
        if span_id is not None:
            self._platform_span_ids[span_id] = None
            while len(self._platform_span_ids) > 2 * self._max_finished:
                self._platform_span_ids.popitem(last=False)
        inv.span_id = span_id or self._ids.span_id()
        remote_parent = None
        if ctx is not None:
            inv.trace_id = ctx.trace_id
            remote_parent = ctx.remote_parent
            if ctx.parent_id is not None:
                if self._xray_mode == XRAY_PARENT:
                    inv.parent_span_id = ctx.parent_id
                elif self._xray_mode == XRAY_LINK:
                    inv.link = ctx
        else:
            inv.trace_id = self._ids.trace_id()
        inv.flags = _SPAN_FLAG_SAMPLED if self._sampler.should_sample(inv.trace_id, remote_parent) else 0
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
        batch.started.append(rid)
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
        self._finish(inv, batch)
        self._emit_phases(batch, force=True)

    def _status(self, record: dict, batch: _Batch):
        status = record.get("status")
        if not isinstance(status, str):
            self._ignore(MALFORMED_RECORD, batch)
            return None, None
        return _text(status.lower(), 32), _text(record.get("errorType"), 128)

    def _invocation_span(self, inv: _Invocation, status: Optional[str], error_type: Optional[str],
                         batch: _Batch, extra: Optional[dict] = None) -> None:
        if not inv.flags & _SPAN_FLAG_SAMPLED:
            return  # the function's SDK drops this trace too: neither half is exported
        span = batch.span()
        span.trace_id = inv.trace_id
        span.span_id = inv.span_id
        if inv.parent_span_id:
            span.parent_span_id = inv.parent_span_id
            span.flags = inv.flags | _HAS_IS_REMOTE | _IS_REMOTE
        else:
            span.flags = inv.flags | _HAS_IS_REMOTE
        span.name = self._span_name
        # One SERVER span per invocation: when the function's own SERVER span is our child, ours
        # is the INTERNAL root above it (the platform's part of the invocation).
        server_child = (self._sdk_view is not None and self._xray_mode == XRAY_JOIN
                        and self._sdk_view.has_server_child(inv.trace_id, inv.span_id))
        span.kind = trace_pb2.Span.SPAN_KIND_INTERNAL if server_child else trace_pb2.Span.SPAN_KIND_SERVER
        span.start_time_unix_nano = inv.start_ns
        span.end_time_unix_nano = inv.end_ns
        # First invocation of the sandbox, unless provisioned concurrency pre-warmed it (checked
        # here, not at creation: INVOKE may be handled before the replayed initStart).
        coldstart = inv.coldstart and self._init_type != "provisioned-concurrency"
        kv = span.attributes.add()  # unique to this span; the rest repeat from span to span
        kv.key = "faas.invocation_id"
        kv.value.string_value = inv.request_id
        attrs = {"faas.coldstart": coldstart}
        if inv.arn:
            attrs["aws.lambda.invoked_arn"] = inv.arn
        # The function ARN without qualifier, as the function's instrumentation sets it (the
        # version is faas.version); from the resource when INVOKE has not been handled yet.
        resource_id = _unqualified_arn(inv.arn) if inv.arn else self._function_arn
        if resource_id:
            attrs["cloud.resource_id"] = resource_id
        if server_child:
            attrs["aws.lambda.function_span"] = True
        if status and status != "success":
            attrs["error.type"] = inv.exception_type or error_type or status
            if inv.exception_type and error_type:
                attrs["aws.lambda.error_type"] = error_type
        if extra:
            attrs.update(extra)
        merge_attributes(span, attrs)
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

    def _child(self, inv: _Invocation, name: str, start: int, end: int, batch: _Batch) -> None:
        if not inv.flags & _SPAN_FLAG_SAMPLED:
            return
        template = inv.child_template
        if template is None:  # what the invocation's children share (its context is fixed by now)
            template = inv.child_template = trace_pb2.Span(
                trace_id=inv.trace_id, parent_span_id=inv.span_id, flags=inv.flags | _HAS_IS_REMOTE,
                kind=trace_pb2.Span.SPAN_KIND_INTERNAL)
            kv = template.attributes.add()
            kv.key = "faas.invocation_id"
            kv.value.string_value = inv.request_id
        span = batch.span()
        span.CopyFrom(template)
        span.span_id = self._ids.span_id()
        span.name = name
        span.start_time_unix_nano = start
        span.end_time_unix_nano = end

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
            # faas.invocations counts successful invocations; errors and timeouts have their own.
            if status in ("error", "failure"):
                exception_type = inv.exception_type if inv is not None else None
                add("faas.errors", 1, {"error.type": exception_type or error_type or status})
            elif status == "timeout":
                add("faas.timeouts", 1)
            elif status == "success":
                add("faas.invocations", 1)
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
        if restore is not None and not self._restore_recorded:  # else restoreReport already did
            rec("aws.lambda.restore_duration", restore / 1000.0)
            add("faas.coldstarts", 1)
            self._restore_recorded = True
        if inv is None:
            return
        inv.report_seen = True

        if not inv.done:  # runtimeDone never came: the report closes the invocation
            if inv.start_ns is None:
                inv.start_ns = t - round(duration * 1e6) if duration is not None else (inv.invoke_ns or t)
            inv.end_ns = max(inv.start_ns + round(duration * 1e6) if duration is not None else t, inv.start_ns)
            self._ensure_context(inv, None, None, batch)
            self._invocation_span(inv, status, error_type, batch)
            spans = record.get("spans")  # Managed Instances: the response spans come with the report
            if isinstance(spans, list):
                for item in spans[:_MAX_CHILD_SPANS]:
                    self._child_span(inv, item, batch)
            self._finish(inv, batch)
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
            if reason == "timeout":
                self._metrics.add("faas.timeouts", 1)
            else:
                self._metrics.add("faas.errors", 1, {"error.type": error_type})
            inv.counted = True
        self._finish(inv, batch)

    # ------------------------------------------------------------------ init / restore phases

    def _phase_event(self, name: str, handler: Callable, t: int, record: object, batch: _Batch) -> None:
        """Init and restore events name no request id: a delivery of the same event again (the
        Telemetry API retries a POST it got no answer to in time) is told by its type, time and
        phase, and ignored, where it would start or end a second phase."""
        key = (name, t, record.get("phase") if isinstance(record, dict) else None)
        if key in self._phase_events:
            self._ignore(DUPLICATE, batch)
            return
        self._phase_events[key] = None
        while len(self._phase_events) > 8 * _MAX_PHASES:
            self._phase_events.popitem(last=False)
        handler(t, record, batch)

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
        if self._restored_at is not None and t < self._restored_at:
            phase.emitted = True  # the snapshot's init, replayed after a restore: not this copy's cold start
            self._ignore(SNAPSHOT_INIT, batch)
            return
        if phase.init_type:
            self._init_type = phase.init_type
        instance = resource_mod.instance_attributes(record)  # schema 2025-01-29, Managed Instances
        if instance:
            resource_mod.update_resource(self._resource, instance)
            memory = instance.get("faas.max_memory")
            if isinstance(memory, int):
                batch.instance_max_memory = memory  # the pipeline sizes its buffers from it

    def _on_restore_start(self, t: int, record: object, batch: _Batch) -> None:
        if not isinstance(record, dict):
            self._ignore(MALFORMED_RECORD, batch)
            return
        self._new_phase("restore", t, record)
        self._restored_at = t if self._restored_at is None else max(self._restored_at, t)
        for phase in self._phases:  # init phases of the snapshot not emitted yet: not this copy's
            if phase.kind == "init" and not phase.emitted and phase.start_ns is not None and phase.start_ns < t:
                phase.emitted = True
                self._ignore(SNAPSHOT_INIT, batch)

    def _phase_for(self, kind: str, record: dict, t: int, has_event: Callable[[_Phase], bool]) -> Optional[_Phase]:
        """The attempt an init/restore event belongs to: the oldest one of this kind and ``phase``
        ("init" | "invoke") that lacks this event; a new one when its start was never seen.
        None for an event of the snapshot's init arriving after a restore."""
        if kind == "init" and self._restored_at is not None and t < self._restored_at:
            return None
        phase_name = _text(record.get("phase"), 32)
        for phase in self._phases:
            if phase.kind == kind and not has_event(phase) and (phase_name is None or phase.phase in (None, phase_name)):
                return phase
        phase = self._new_phase(kind, t, record)
        phase.start_ns = None  # start never seen
        return phase

    def _on_phase_done(self, kind: str, t: int, record: object, batch: _Batch) -> None:
        if not isinstance(record, dict):
            self._ignore(MALFORMED_RECORD, batch)
            return
        phase = self._phase_for(kind, record, t, lambda p: p.done_seen or p.reported)
        if phase is None:
            self._ignore(SNAPSHOT_INIT, batch)
            return
        phase.done_seen = True
        phase.end_ns = t
        phase.status = _text(record.get("status"), 32) or phase.status
        phase.error_type = _text(record.get("errorType"), 128) or phase.error_type
        phase.init_type = phase.init_type or _text(record.get("initializationType"), 64)
        phase.phase = phase.phase or _text(record.get("phase"), 32)
        self._emit_phases(batch, force=False)

    def _on_phase_report(self, kind: str, t: int, record: object, batch: _Batch) -> None:
        if not isinstance(record, dict):
            self._ignore(MALFORMED_RECORD, batch)
            return
        phase = self._phase_for(kind, record, t, lambda p: p.reported)
        if phase is None:
            self._ignore(SNAPSHOT_INIT, batch)
            return
        phase.reported = True
        metrics = record.get("metrics")
        if isinstance(metrics, dict) and "durationMs" in metrics:
            phase.report_ms = self._metric_value(metrics, "durationMs", batch)
        if phase.end_ns is None:
            phase.end_ns = t
        # The report is the attempt's final word: its status wins over runtimeDone's (the runtime
        # may be ready while an extension failed the init).
        status = _text(record.get("status"), 32)
        if status:
            phase.status = status
            phase.error_type = _text(record.get("errorType"), 128) or (phase.error_type if status != "success" else None)
        phase.init_type = phase.init_type or _text(record.get("initializationType"), 64)
        phase.phase = phase.phase or _text(record.get("phase"), 32)
        if kind == "restore" and phase.report_ms is not None and not self._restore_recorded:
            self._metrics.record("aws.lambda.restore_duration", phase.report_ms / 1000.0)
            self._metrics.add("faas.coldstarts", 1)  # a restored environment's first invocation is cold
            self._restore_recorded = True
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
        if inv is not None:
            self._ensure_context(inv, None, None, batch)
            if not inv.flags & _SPAN_FLAG_SAMPLED:
                return  # part of an unsampled trace
            span = batch.span()
            span.trace_id = inv.trace_id
            span.parent_span_id = inv.span_id
            span.flags = inv.flags | _HAS_IS_REMOTE
        else:
            trace_id = self._ids.trace_id()
            if not self._sampler.should_sample(trace_id, None):  # a root of its own
                return
            span = batch.span()
            span.trace_id = trace_id
            span.flags = _SPAN_FLAG_SAMPLED | _HAS_IS_REMOTE
        span.span_id = self._ids.span_id()
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

    def _log(self, event_time: object, record: object, scope: str, batch: _Batch) -> None:
        if record.__class__ is str:
            text = _strip_newline(record)
            head = text[:1]
            if scope is SCOPE_FUNCTION and head != "{" and head != "[" and text.find("\t", 0, 120) < 0:
                self._plain_line(event_time, text, batch)  # print() output: most of a function's lines
                return
            line = _parse_text(text, scope, self._service_name)
        else:
            line = _parse_line(record, scope, self._service_name)
        if line is None:
            self._ignore(MALFORMED_RECORD, batch)
            return
        if line.time_ns is None:
            t = parse_time_ns(event_time)
            if t is None:
                self._ignore(BAD_TIME, batch)
                t = batch.now
            line.time_ns = t
        inv = self._lookup(line.rid) if line.rid is not None else self._active_at(line.time_ns)
        if line.exception_type and inv is not None and line.uncaught:
            inv.exception_type = line.exception_type
        if line.dedup is not None and self._sdk_view is not None:
            if inv is not None and not inv.done and inv.request_id == line.rid:
                self._hold(inv, line, batch)  # decided when the invocation ends (the SDK flushes by then)
                return
            if self._sdk_view.take_log(*line.dedup):
                self._deduplicated(1, batch)
                return
        self._emit_log(line, inv, batch)

    def _plain_line(self, event_time: object, text: str, batch: _Batch) -> None:
        """A function line with no structure: the event's time, the invocation running then."""
        t = parse_time_ns(event_time)
        if t is None:
            self._ignore(BAD_TIME, batch)
            t = batch.now
        inv = self._active_at(t)
        lr = batch.log(SCOPE_FUNCTION)
        if inv is not None:
            lr.CopyFrom(self._log_templates(inv, batch).full)
        else:
            lr.observed_time_unix_nano = batch.now
        lr.time_unix_nano = t
        try:
            lr.body.string_value = text
        except ValueError:  # lone surrogates
            set_str(lr.body, text)

    def _log_templates(self, inv: _Invocation, batch: _Batch) -> _LogTemplates:
        """The invocation's record templates, built at its first record, stamped with this batch's time."""
        templates = inv.log_templates
        if templates is None:
            if not inv.has_context:
                self._ensure_context(inv, None, None, batch)
            templates = inv.log_templates = _LogTemplates(inv, batch.now)
        elif templates.now != batch.now:
            templates.observed_at(batch.now)
        return templates

    def _hold(self, inv: _Invocation, line: "_LogLine", batch: _Batch) -> None:
        if inv.held is None:
            inv.held = []
            inv.held_bytes = 0
            self._holding.append(inv)
        inv.held.append(line)
        size = len(line.dedup[1])
        inv.held_bytes += size
        self._held_count += 1
        self._held_bytes += size
        while (self._held_count > _MAX_HELD_LINES or self._held_bytes > _MAX_HELD_BYTES) and self._holding:
            self._release(self._holding[0], batch)  # over budget: decide the oldest invocation's now

    def _release(self, inv: _Invocation, batch: _Batch) -> None:
        """Decide an invocation's held lines: the SDK's copy arrived (drop ours) or not (export)."""
        held, inv.held = inv.held, None
        if held is None:
            return
        self._holding.remove(inv)
        self._held_count -= len(held)
        self._held_bytes -= inv.held_bytes
        taken = self._sdk_view.take_logs([line.dedup for line in held])
        if True not in taken:  # the common case: no SDK copy, every line goes out
            templates = self._log_templates(inv, batch)
            for line in held:
                self._emit_log(line, inv, batch, templates)
            return
        deduplicated = 0
        for line, dropped in zip(held, taken):
            if dropped:
                deduplicated += 1
            else:
                self._emit_log(line, inv, batch)
        self._deduplicated(deduplicated, batch)

    def _deduplicated(self, n: int, batch: _Batch) -> None:
        batch.deduplicated += n
        self._metrics.add("lambda_otel.logs.deduplicated", n)

    def _emit_log(self, line: "_LogLine", inv: Optional[_Invocation], batch: _Batch,
                  templates: Optional[_LogTemplates] = None) -> None:
        """One line as a LogRecord; ``templates``: the invocation's, when the caller has them at hand."""
        lr = batch.log(line.scope)
        rid = line.rid
        if inv is not None:
            if templates is None:
                templates = self._log_templates(inv, batch)
            if line.extra or line.attrs:  # its own attributes first, faas.invocation_id last
                lr.CopyFrom(templates.bare)
                rid = inv.request_id
            else:
                lr.CopyFrom(templates.full)
                rid = None
        else:
            lr.observed_time_unix_nano = batch.now
        lr.time_unix_nano = line.time_ns
        if line.severity_number:
            lr.severity_number = line.severity_number
        if line.severity_text:
            lr.severity_text = line.severity_text
        if line.event_name:
            lr.event_name = line.event_name
        body = line.body
        if body.__class__ is str:
            try:
                lr.body.string_value = body
            except ValueError:  # lone surrogates
                set_str(lr.body, body)
        elif body is not None:
            set_any_value(lr.body, body)
        if line.extra:
            n = 0
            for key, value in line.extra:
                if key == "xray_trace_id" and inv is not None and _xray_trace_id(value) == inv.trace_id:
                    continue  # the record's own trace id says the same
                if n >= _MAX_ATTRS:
                    lr.dropped_attributes_count += 1
                    continue
                kv = lr.attributes.add()
                set_key(kv, key)
                set_any_value(kv.value, value)
                n += 1
        if line.attrs:
            set_attributes(lr.attributes, line.attrs)
        if rid is not None:
            kv = lr.attributes.add()
            kv.key = "faas.invocation_id"
            kv.value.string_value = rid

    def _active_at(self, t: int) -> Optional[_Invocation]:
        """The invocation running at time t, else the most recent one started before t.

        When several invocations run at t (Managed Instances), a line that names no request id
        cannot be told apart: None, rather than the wrong invocation's trace.

        The common case (one invocation, running at t) is answered at once; any other is looked
        up in the invocation tables, a scan of up to ~200 entries (~12 µs), and remembered per
        time until the timeline changes (``_timeline_changed``): lines printed between
        invocations or while many run share their milliseconds."""
        if len(self._open) <= 1:
            cur = self._current
            if (cur is not None and cur.start_ns is not None and cur.start_ns <= t
                    and (cur.end_ns is None or t <= cur.end_ns or not self._open)):
                return cur
        memo = self._active_memo
        if t in memo:
            return memo[t]
        if len(memo) >= _ACTIVE_MEMO_MAX:
            memo.clear()
        found = memo[t] = self._find_active(t)
        return found

    def _find_active(self, t: int) -> Optional[_Invocation]:
        if len(self._open) > 1:
            running = [inv for inv in self._open.values()
                       if inv.start_ns is not None and inv.start_ns <= t and (inv.end_ns is None or t <= inv.end_ns)]
            if len(running) > 1:
                return None
            if running:
                return running[0]
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

    def _timeline_changed(self) -> None:
        """Invocations opened, started, ended, forgotten or renewed: ``_active_at`` forgets its answers.
        Everything but a log line may do that (a line only reads the timeline)."""
        if self._active_memo:
            self._active_memo.clear()


# ---------------------------------------------------------------------- function and extension lines

_MAX_HELD_LINES = 4096
_MAX_HELD_BYTES = 4 * 1024 * 1024  # function lines waiting for their invocation's end (log deduplication)
_SECOND = 1_000_000_000
EXCEPTION_EVENT = "faas.invocation.exception"  # semconv: the log event of an uncaught exception
_EXCEPTION_NAME_RE = re.compile(r"[A-Za-z_][\w.]{0,127}", re.ASCII)
# Keys of structured records that repeat what the record or its resource already carries.
_DROPPED_KEYS = frozenset((
    "timestamp", "level", "message", "requestId", "function_request_id",  # time, severity, body, faas.invocation_id
    "function_name", "function_arn", "function_memory_size",  # resource: faas.name, cloud.resource_id, faas.max_memory
))
_RENAMED_KEYS = {
    "errorType": "exception.type", "exception_name": "exception.type",  # awslambdaric / Powertools
    "errorMessage": "exception.message",
    "cold_start": "faas.coldstart",
}
_POWERTOOLS_NO_SERVICE = "service_undefined"


class _LogLine:
    """One function/extension line, parsed; emitted now or after its invocation's end.

    The class attributes are the defaults (all immutable): a line sets only what it has, which is
    most of the cost of a plain line saved (this runs for every line)."""

    time_ns: Optional[int] = None  # the line's own timestamp, else the event's
    severity_number = 0
    severity_text = ""
    body: object = None
    rid: Optional[str] = None
    attrs: Optional[dict] = None
    extra: Optional[list] = None  # (key, JSON value) pairs of a structured record
    # (severity number, message, lo, hi) of a line the function's SDK may have sent too (its copy's
    # time falls in [lo, hi) ns): what sdk_view.take_logs looks for; None for a line it cannot have.
    dedup: Optional[Tuple[int, str, int, int]] = None
    event_name = ""
    exception_type: Optional[str] = None
    uncaught = False  # the runtime's own report of the handler's exception

    def __init__(self, scope: str) -> None:
        self.scope = scope


def _parse_line(record: object, scope: str, service_name: Optional[str]) -> Optional[_LogLine]:
    if isinstance(record, dict):
        line = _LogLine(scope)
        _parse_object(line, record, service_name)
        return line
    if not isinstance(record, str):
        return None
    return _parse_text(_strip_newline(record), scope, service_name)


def _strip_newline(record: str) -> str:
    text = record[:-1] if record[-1:] == "\n" else record
    return text[:-1] if text[-1:] == "\r" else text


def _parse_text(text: str, scope: str, service_name: Optional[str]) -> _LogLine:
    """A text line (its final newline removed): a JSON object, our own line, the runtime's
    report of an uncaught exception, a tab-separated runtime format, or plain text."""
    line = _LogLine(scope)
    if len(text) >= 2 and text[0] == "{" and text[-1] == "}" and len(text) <= _MAX_JSON_LINE:
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            _parse_object(line, obj, service_name)
            return line
    line.body = text
    if scope == SCOPE_EXTENSION and text.startswith(SELF_LOG_PREFIX):
        line.attrs = {"lambda_otel.self": True}
        level = text[len(SELF_LOG_PREFIX):].lstrip().split(" ", 1)[0]
        if level in SEVERITY:
            line.severity_text, line.severity_number = level, SEVERITY[level]
    elif text.startswith("[ERROR] ") and scope == SCOPE_FUNCTION:
        _parse_uncaught_text(line, text)
    elif text.find("\t", 0, 120) >= 0:
        _parse_tabbed(line, text)
    return line


def _parse_tabbed(line: _LogLine, text: str) -> None:
    """Lambda's text formats: Python's ``[LEVEL]\\t<time>\\t<request id>\\t<message>`` (the
    body becomes the message, the time the record's), or the first fields of others (Node's
    ``<time>\\t<id>\\tINFO\\t...``: level and request id only)."""
    parts = text.split("\t", 3)
    level = _BRACKETED_LEVELS.get(parts[0]) if len(parts) == 4 else None
    if level is not None:
        t = parse_time_ns(parts[1])
        rid = parts[2]
        if t is not None and (not rid or _REQUEST_ID_RE.fullmatch(rid)):
            line.severity_text, line.severity_number = level
            line.time_ns = t
            line.rid = rid or None
            line.body = parts[3]
            if line.scope == SCOPE_FUNCTION:  # the runtime's logging handler: the SDK's may have it too
                # ms precision, float rounding either way
                line.dedup = (line.severity_number, parts[3], t - 1_000_000, t + 2_000_000)
            return
    for part in parts[:3]:
        if line.rid is None and _UUID_RE.fullmatch(part):
            line.rid = part
            continue
        level = part[1:-1] if part.startswith("[") and part.endswith("]") else part
        if not line.severity_number and level in SEVERITY:
            line.severity_text, line.severity_number = level, SEVERITY[level]


def _parse_uncaught_text(line: _LogLine, text: str) -> None:
    """``[ERROR] Type: message\\rTraceback (most recent call last):\\r  File ...``: the Python
    runtime's report of an exception that escaped the handler (lines joined with \\r)."""
    head, _, trace = text.partition("\r")
    summary = head[len("[ERROR] "):]
    name, sep, message = summary.partition(":")
    line.severity_text, line.severity_number = "ERROR", SEVERITY["ERROR"]
    line.body = summary
    if not (sep or not message) or not _EXCEPTION_NAME_RE.fullmatch(name):
        return
    line.event_name = EXCEPTION_EVENT
    line.uncaught = True
    line.exception_type = name
    line.attrs = {"exception.type": name, "exception.message": message.strip()}
    if trace:
        line.attrs["exception.stacktrace"] = trace.replace("\r", "\n").replace("\u00a0", " ")


def _parse_object(line: _LogLine, obj: dict, service_name: Optional[str]) -> None:
    """A structured record (Lambda's JSON format, Powertools Logger, any JSON line): fields that
    have a convention become it, fields that repeat the record or its resource are dropped."""
    window = None  # (lo, hi) ns: where the SDK's copy's time may fall
    ts = obj.get("timestamp")
    if isinstance(ts, str):
        t = parse_time_ns(ts)
        if t is not None:
            line.time_ns = t
            # Lambda's JSON format has whole seconds; Powertools and others have milliseconds.
            window = (t - 1_000_000, t + 2_000_000) if _has_fraction(ts) else (t, t + _SECOND)
    level = obj.get("level")
    if isinstance(level, str):
        line.severity_text = _text(level, 32) or ""
        line.severity_number = SEVERITY.get(level.upper(), 0)
    rid = obj.get("requestId")
    if rid is None:
        rid = obj.get("function_request_id")
    if isinstance(rid, str) and _REQUEST_ID_RE.fullmatch(rid):
        line.rid = rid
    message = obj.get("message")
    attrs = line.attrs = {}
    extra = line.extra = []
    if "message" in obj:
        line.body = message
    elif "errorType" in obj or "errorMessage" in obj:
        line.body = obj.get("errorMessage")  # the runtime's uncaught exception (no "message")
        line.uncaught = isinstance(obj.get("errorType"), str)
        if line.uncaught:
            line.event_name = EXCEPTION_EVENT
    else:
        line.body = obj
    if window is not None and isinstance(message, str) and line.scope == SCOPE_FUNCTION and line.severity_number:
        line.dedup = (line.severity_number, message, *window)
    for key, value in obj.items():
        if key in _DROPPED_KEYS:
            continue
        renamed = _RENAMED_KEYS.get(key)
        if renamed is not None:
            if isinstance(value, (str, bool)):
                attrs[renamed] = _text(value, 4096) if isinstance(value, str) else value
            continue
        if key == "stackTrace" and isinstance(value, list):  # awslambdaric: traceback lines
            attrs["exception.stacktrace"] = "".join(v for v in value[:MAX_ANY_ITEMS] if isinstance(v, str))[:32768]
        elif key == "exception" and isinstance(value, str):  # Powertools: the formatted traceback
            attrs["exception.stacktrace"] = value[:32768]
        elif key == "location" and isinstance(value, str):
            _set_location(attrs, value)
        elif key == "service" and isinstance(value, str):
            if value != service_name and value != _POWERTOOLS_NO_SERVICE:
                attrs["powertools.service"] = _text(value, 256)  # never a second service.name
        elif value is not None:
            extra.append((key, value))
    exc_type = attrs.get("exception.type")
    if isinstance(exc_type, str):
        line.exception_type = exc_type
        stack = attrs.get("exception.stacktrace")
        if "exception.message" not in attrs and isinstance(stack, str):
            last = stack.rstrip().rpartition("\n")[2]  # "ValueError: boom", the traceback's last line
            if last.startswith(exc_type + ":"):
                attrs["exception.message"] = last[len(exc_type) + 1:].strip()


def _has_fraction(ts: str) -> bool:
    return len(ts) > 20 and ts[19] in ".,"


def _set_location(attrs: dict, value: str) -> None:
    """``path:function:line`` (Lambda's JSON format) or ``function:line`` (Powertools)."""
    parts = value.rsplit(":", 2)
    if len(parts) >= 2 and parts[-1].isdigit():
        attrs["code.line.number"] = int(parts[-1])
        attrs["code.function.name"] = _text(parts[-2], 256) or ""
        if len(parts) == 3 and parts[0]:
            attrs["code.file.path"] = _text(parts[0], 1024)
    else:
        attrs["code.location"] = _text(value, 1024)


def _xray_trace_id(value: object) -> Optional[bytes]:
    """``1-5759e988-bd862e3fe1be46a994272793`` (Powertools' xray_trace_id) -> 16 bytes."""
    if isinstance(value, str) and len(value) == 35 and value.startswith("1-") and value[10] == "-":
        try:
            return bytes.fromhex(value[2:10] + value[11:])
        except ValueError:
            return None
    return None
