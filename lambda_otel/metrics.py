"""The extension's own metric instruments, aggregated in memory and collected as OTLP.

Why not the OpenTelemetry SDK: it is a heavy import for a cold path, and what we need is
small: a fixed table of counters and histograms, two temporalities, and a snapshot as an
``opentelemetry.proto`` ``ResourceMetrics`` that the aggregator can queue like anything else.

Instruments are declared once, in ``INSTRUMENTS``. Values come from the platform
(``platform.report`` etc., see ``convert.py``) and from the ``LossCounter`` (read at collect
time as ``lambda_otel.dropped``). Data-point attributes are low-cardinality by design, and
each instrument keeps at most ``MAX_SERIES`` attribute sets; further sets are folded into one
series marked ``otel.metric.overflow=true`` (the SDK's cardinality-limit convention), so a
stream of distinct error types can never grow memory.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from bisect import bisect_left
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Mapping, Optional, Tuple

from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

import lambda_otel
from lambda_otel.loss import LossCounter
from lambda_otel.otlp import AttrValue, set_attributes

Attributes = Optional[Mapping[str, AttrValue]]

COUNTER = "counter"  # monotonic Sum of integers
HISTOGRAM = "histogram"  # explicit-bucket histogram of floats

CUMULATIVE = "cumulative"
DELTA = "delta"

MAX_SERIES = 64  # attribute sets per instrument before folding into the overflow series
# Counters are int64 on the wire (as_int); values come from input (platform.logsDropped's
# droppedRecords, a backend's rejected counts), so every sum saturates here instead of failing
# the whole collect with an overflow. Histogram sums stay finite for the same reason.
INT64_MAX = 2**63 - 1
FLOAT_MAX = sys.float_info.max
OVERFLOW_KEY = (("otel.metric.overflow", True),)

# OTel FaaS semconv boundaries for faas.invoke_duration / faas.init_duration (seconds).
SEMCONV_DURATION_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
# Extension overhead is usually a few ms: finer low end than the semconv duration buckets.
OVERHEAD_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_MIB = 1024 * 1024
# faas.mem_usage: powers of two from 16 MiB to 8 GiB plus the 10 GiB Lambda maximum. Lambda
# memory sizes are 128 MiB-10 GiB, so every configured size falls near a boundary and the
# histogram answers "how close to my limit did I get?".
MEM_BOUNDS = tuple(float(m * _MIB) for m in (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 10240))


@dataclass(frozen=True)
class Instrument:
    name: str
    kind: str  # COUNTER | HISTOGRAM
    unit: str
    description: str
    bounds: Tuple[float, ...] = ()


INSTRUMENTS: Tuple[Instrument, ...] = (
    # OpenTelemetry FaaS semantic conventions (names, units, buckets as specified).
    Instrument("faas.invocations", COUNTER, "{invocation}",
               "Successful invocations (platform.report status success); errors and timeouts have their own"),
    Instrument("faas.errors", COUNTER, "{error}",
               "Invocations that ended with status error or failure; attribute error.type"),
    Instrument("faas.timeouts", COUNTER, "{timeout}", "Invocations that ended with status timeout"),
    Instrument("faas.coldstarts", COUNTER, "{coldstart}",
               "Invocations that paid an on-demand initialization (report carries initDurationMs)"),
    Instrument("faas.invoke_duration", HISTOGRAM, "s",
               "Invocation duration as reported by Lambda (platform.report durationMs)", SEMCONV_DURATION_BOUNDS),
    Instrument("faas.init_duration", HISTOGRAM, "s",
               "Initialization duration of a cold start (platform.report initDurationMs)", SEMCONV_DURATION_BOUNDS),
    Instrument("faas.mem_usage", HISTOGRAM, "By",
               "Maximum memory used per invocation (platform.report maxMemoryUsedMB)", MEM_BOUNDS),
    # Lambda specifics.
    Instrument("aws.lambda.billed_duration", HISTOGRAM, "s",
               "Billed duration per invocation (platform.report billedDurationMs)", SEMCONV_DURATION_BOUNDS),
    Instrument("aws.lambda.restore_duration", HISTOGRAM, "s",
               "SnapStart restore duration (platform.report restoreDurationMs)", SEMCONV_DURATION_BOUNDS),
    Instrument("aws.lambda.extension_overhead", HISTOGRAM, "s",
               "Time extensions kept the invocation open after the runtime was done", OVERHEAD_BOUNDS),
    Instrument("aws.lambda.logs_dropped", COUNTER, "{log_record}",
               "Log records Lambda dropped before delivery (platform.logsDropped droppedRecords)"),
    Instrument("aws.lambda.shutdowns", COUNTER, "{shutdown}",
               "SHUTDOWN events received; attribute aws.lambda.shutdown.reason"),
    # The extension's own health.
    Instrument("lambda_otel.dropped", COUNTER, "{record}",
               "Telemetry records the extension gave up on; attributes signal, reason"),
    Instrument("lambda_otel.logs.deduplicated", COUNTER, "{log_record}",
               "Function log lines not exported from the Telemetry API because the function's SDK sent them"),
    Instrument("lambda_otel.telemetry.ignored", COUNTER, "{event}",
               "Telemetry API events (or parts of them) skipped as unknown or malformed; attribute reason"),
)

INSTRUMENTS_BY_NAME: Dict[str, Instrument] = {i.name: i for i in INSTRUMENTS}
DROPPED = "lambda_otel.dropped"

_TEMPORALITY = {
    CUMULATIVE: metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE,
    DELTA: metrics_pb2.AGGREGATION_TEMPORALITY_DELTA,
}

_Key = Tuple[Tuple[str, AttrValue], ...]


class _Hist:
    __slots__ = ("count", "sum", "min", "max", "buckets")

    def __init__(self, nbuckets: int) -> None:
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.buckets = [0] * nbuckets


def _key(attributes: Attributes) -> _Key:
    if not attributes:
        return ()
    return tuple(sorted(attributes.items()))


class MetricsState:
    """Thread-safe instrument values plus their collection as OTLP.

    cumulative: every collect reports all series since the state was created or renewed
    (start time = that instant). delta: every collect reports what changed since the previous
    collect (start time = previous collect) and then resets; a failed export requeues the
    collected item, and an item dropped for good is given back with ``restore()``, so the
    values it carried are reported by the next collect instead of being lost (a lost cumulative
    item loses nothing: the next one carries the totals).

    ``lambda_otel.dropped`` is read from the LossCounter at collect time, relative to its counts
    when the state was created or renewed (``renew_after_restore``).
    """

    def __init__(
        self,
        resource: Resource,
        temporality: str,
        loss: LossCounter,
        scope_name: str = "lambda-otel",
        scope_version: str = lambda_otel.__version__,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        if temporality not in _TEMPORALITY:
            raise ValueError(f"temporality must be 'cumulative' or 'delta', not {temporality!r}")
        self._resource = resource
        self._temporality = temporality
        self._loss = loss
        self._scope_name = scope_name
        self._scope_version = scope_version
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        self._start_ns = clock_ns()
        self._last_collect_ns = self._start_ns
        self._counters: Dict[str, Dict[_Key, int]] = {}
        self._hists: Dict[str, Dict[_Key, _Hist]] = {}
        self._dirty = False
        self._loss_version = 0  # LossCounter.version at the last collect
        self._loss_baseline: Dict[Tuple[str, str], int] = {}  # counts that belong to before a restore
        self._loss_reported: Dict[Tuple[str, str], int] = {}  # for delta: counts already reported

    @property
    def temporality(self) -> str:
        return self._temporality

    def _series(self, table: dict, name: str, attributes: Attributes) -> Tuple[dict, _Key]:
        series = table.setdefault(name, {})
        key = _key(attributes)
        if key not in series and len(series) >= MAX_SERIES:
            key = OVERFLOW_KEY
        return series, key

    def add(self, name: str, value: int, attributes: Attributes = None) -> bool:
        """Add to a counter. Returns False (and changes nothing) for a negative or non-int value."""
        inst = INSTRUMENTS_BY_NAME[name]
        if inst.kind != COUNTER:
            raise ValueError(f"{name} is a {inst.kind}, use record()")
        if name == DROPPED:
            raise ValueError(f"{name} is read from the LossCounter")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return False
        if value == 0:
            return True
        with self._lock:
            series, key = self._series(self._counters, name, attributes)
            series[key] = min(INT64_MAX, series.get(key, 0) + value)
            self._dirty = True
        return True

    def record(self, name: str, value: float, attributes: Attributes = None) -> bool:
        """Record one histogram value. Returns False (and changes nothing) for NaN, inf or a negative value."""
        inst = INSTRUMENTS_BY_NAME[name]
        if inst.kind != HISTOGRAM:
            raise ValueError(f"{name} is a {inst.kind}, use add()")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        value = float(value)
        if not math.isfinite(value) or value < 0:
            return False
        with self._lock:
            series, key = self._series(self._hists, name, attributes)
            hist = series.get(key)
            if hist is None:
                hist = series[key] = _Hist(len(inst.bounds) + 1)
            hist.count += 1
            hist.sum = min(FLOAT_MAX, hist.sum + value)
            if value < hist.min:
                hist.min = value
            if value > hist.max:
                hist.max = value
            # OTLP buckets are upper-inclusive: bucket i holds bounds[i-1] < v <= bounds[i].
            hist.buckets[bisect_left(inst.bounds, value)] += 1
            self._dirty = True
        return True

    def collect(self, now_ns: Optional[int] = None) -> Optional[metrics_pb2.ResourceMetrics]:
        """Snapshot as one ResourceMetrics, or None when nothing changed since the last collect."""
        loss_version = self._loss.version
        with self._lock:
            if not self._dirty and loss_version == self._loss_version:
                return None
            now = self._clock_ns() if now_ns is None else now_ns
            delta = self._temporality == DELTA
            start = self._last_collect_ns if delta else self._start_ns
            temporality = _TEMPORALITY[self._temporality]
            dropped = self._dropped_points(delta) if loss_version != self._loss_version or not delta else {}
            self._loss_version = loss_version

            rm = metrics_pb2.ResourceMetrics()
            rm.resource.CopyFrom(self._resource)
            sm = rm.scope_metrics.add()
            sm.scope.name = self._scope_name
            sm.scope.version = self._scope_version
            for inst in INSTRUMENTS:
                if inst.kind == COUNTER:
                    series = dropped if inst.name == DROPPED else self._counters.get(inst.name)
                    if not series:
                        continue
                    metric = sm.metrics.add()
                    metric.name, metric.unit, metric.description = inst.name, inst.unit, inst.description
                    metric.sum.is_monotonic = True
                    metric.sum.aggregation_temporality = temporality
                    for key, value in series.items():
                        dp = metric.sum.data_points.add()
                        set_attributes(dp.attributes, key)
                        dp.start_time_unix_nano = start
                        dp.time_unix_nano = now
                        dp.as_int = value
                else:
                    series = self._hists.get(inst.name)
                    if not series:
                        continue
                    metric = sm.metrics.add()
                    metric.name, metric.unit, metric.description = inst.name, inst.unit, inst.description
                    metric.histogram.aggregation_temporality = temporality
                    for key, hist in series.items():
                        dp = metric.histogram.data_points.add()
                        set_attributes(dp.attributes, key)
                        dp.start_time_unix_nano = start
                        dp.time_unix_nano = now
                        dp.count = hist.count
                        dp.sum = hist.sum
                        dp.bucket_counts.extend(hist.buckets)
                        dp.explicit_bounds.extend(inst.bounds)
                        dp.min = hist.min
                        dp.max = hist.max
            if delta:
                self._counters.clear()
                self._hists.clear()
            self._dirty = False
            self._last_collect_ns = now
            if not sm.metrics:
                return None
            return rm

    def _dropped_points(self, delta: bool) -> Dict[_Key, int]:
        """lambda_otel.dropped from the LossCounter's cumulative counts (caller holds the lock)."""
        snapshot = self._loss.snapshot()
        points: Dict[_Key, int] = {}
        for (signal, reason), count in sorted(snapshot.items()):
            count -= self._loss_baseline.get((signal, reason), 0)
            value = count - self._loss_reported.get((signal, reason), 0) if delta else count
            if value > 0:
                points[(("reason", reason), ("signal", signal))] = min(INT64_MAX, value)
        if delta:
            self._loss_reported = {k: n - self._loss_baseline.get(k, 0) for k, n in snapshot.items()}
        return points

    def restore(self, items: Iterable[metrics_pb2.ResourceMetrics]) -> None:
        """Collected items that were dropped for good (the backend rejected them, retries ran out):
        with delta temporality, the ``lambda_otel.dropped`` counts they carried are reported again by
        the next collect, so that what reaches the backend sums to the LossCounter's totals (what
        the shutdown line prints). A lost delta item would otherwise take those counts with it; a
        cumulative one loses nothing (the next carries the totals), so there this does nothing.

        Only the loss counts come back: the LossCounter stays their one truth, so nothing is
        counted twice. The other instruments' values are not put back: their data points were
        dropped and are counted as dropped metric records, like any other record. Items of other
        scopes (not ours) are ignored.
        """
        if self._temporality != DELTA:
            return
        with self._lock:
            for rm in items:
                for sm in rm.scope_metrics:
                    if sm.scope.name != self._scope_name:
                        continue
                    for metric in sm.metrics:
                        if metric.name != DROPPED:
                            continue
                        for dp in metric.sum.data_points:
                            attrs = {kv.key: kv.value.string_value for kv in dp.attributes}
                            key = (attrs.get("signal", ""), attrs.get("reason", ""))
                            self._loss_reported[key] = max(0, self._loss_reported.get(key, 0) - dp.as_int)
                        self._loss_version = -1  # the next collect reads the LossCounter again

    def renew_after_restore(self) -> None:
        """A SnapStart restore: this copy of the environment starts its own series.

        Every copy restored from one snapshot holds the same values and the same start time; a
        new start time (and, with the resource's new ``faas.instance``, a new series identity)
        tells the backend that these series restart, and values from before the snapshot are
        not reported again by every copy.
        """
        with self._lock:
            now = self._clock_ns()
            self._start_ns = self._last_collect_ns = now
            self._counters.clear()
            self._hists.clear()
            self._loss_baseline = self._loss.snapshot()
            self._loss_reported = {}
            self._loss_version = -1
            self._dirty = False



__all__ = [
    "COUNTER", "HISTOGRAM", "CUMULATIVE", "DELTA", "INSTRUMENTS", "INSTRUMENTS_BY_NAME", "Instrument",
    "MetricsState", "MAX_SERIES",
]
