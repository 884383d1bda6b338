import math
import threading
import unittest

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

import lambda_otel
from lambda_otel import loss as L
from lambda_otel.metrics import (
    INSTRUMENTS,
    INT64_MAX,
    MAX_SERIES,
    MEM_BOUNDS,
    SEMCONV_DURATION_BOUNDS,
    MetricsState,
)
from lambda_otel.otlp import count_records
from lambda_otel.loss import METRICS

T0 = 1_714_557_600_000_000_000  # 2024-05-01T10:00:00Z


def make_resource() -> Resource:
    res = Resource()
    for key, value in (("service.name", "my-fn"), ("faas.name", "my-fn"), ("cloud.provider", "aws")):
        kv = res.attributes.add()
        kv.key = key
        kv.value.string_value = value
    return res


class FakeClock:
    def __init__(self, now=T0):
        self.now = now

    def __call__(self):
        return self.now


def roundtrip(rm: metrics_pb2.ResourceMetrics) -> metrics_pb2.ResourceMetrics:
    req = ExportMetricsServiceRequest()
    req.resource_metrics.add().CopyFrom(rm)
    parsed = ExportMetricsServiceRequest.FromString(req.SerializeToString())
    return parsed.resource_metrics[0]


def metrics_by_name(rm):
    return {m.name: m for sm in rm.scope_metrics for m in sm.metrics}


def attrs(dp):
    out = {}
    for kv in dp.attributes:
        out[kv.key] = getattr(kv.value, kv.value.WhichOneof("value"))
    return out


class InstrumentTable(unittest.TestCase):
    def test_semconv_names_units_buckets(self):
        table = {i.name: i for i in INSTRUMENTS}
        self.assertEqual(len(table), len(INSTRUMENTS), "names are unique")
        for name, unit in (("faas.invoke_duration", "s"), ("faas.init_duration", "s"), ("faas.mem_usage", "By"),
                           ("faas.invocations", "{invocation}"), ("faas.errors", "{error}"),
                           ("faas.timeouts", "{timeout}"), ("faas.coldstarts", "{coldstart}")):
            self.assertEqual(table[name].unit, unit, name)
        self.assertEqual(list(table["faas.invoke_duration"].bounds),
                         [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10])
        self.assertEqual(table["faas.init_duration"].bounds, SEMCONV_DURATION_BOUNDS)
        for inst in INSTRUMENTS:
            self.assertEqual(list(inst.bounds), sorted(inst.bounds), inst.name)
            self.assertTrue(inst.description)


class Cumulative(unittest.TestCase):
    def setUp(self):
        self.clock = FakeClock()
        self.loss = L.LossCounter()
        self.state = MetricsState(make_resource(), "cumulative", self.loss, clock_ns=self.clock)

    def test_nothing_recorded_gives_none(self):
        self.assertIsNone(self.state.collect())

    def test_counter_and_histogram_roundtrip(self):
        self.state.add("faas.invocations", 1)
        self.state.add("faas.invocations", 2)
        self.state.add("faas.errors", 1, {"error.type": "Runtime.ExitError"})
        for v in (0.004, 0.005, 0.0051, 2.6994, 11.0):
            self.state.record("faas.invoke_duration", v)
        self.clock.now = T0 + 5_000_000_000
        rm = roundtrip(self.state.collect())
        self.assertEqual(rm.resource, make_resource())
        self.assertEqual(rm.scope_metrics[0].scope.name, "lambda-otel")
        self.assertEqual(rm.scope_metrics[0].scope.version, lambda_otel.__version__)
        m = metrics_by_name(rm)
        inv = m["faas.invocations"]
        self.assertEqual(inv.unit, "{invocation}")
        self.assertTrue(inv.sum.is_monotonic)
        self.assertEqual(inv.sum.aggregation_temporality, metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE)
        self.assertEqual(inv.sum.data_points[0].as_int, 3)
        self.assertEqual(inv.sum.data_points[0].start_time_unix_nano, T0)
        self.assertEqual(inv.sum.data_points[0].time_unix_nano, T0 + 5_000_000_000)
        self.assertEqual(attrs(m["faas.errors"].sum.data_points[0]), {"error.type": "Runtime.ExitError"})
        h = m["faas.invoke_duration"]
        self.assertEqual(h.unit, "s")
        self.assertEqual(h.histogram.aggregation_temporality, metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE)
        dp = h.histogram.data_points[0]
        self.assertEqual(dp.count, 5)
        self.assertAlmostEqual(dp.sum, 0.004 + 0.005 + 0.0051 + 2.6994 + 11.0)
        self.assertEqual(dp.min, 0.004)
        self.assertEqual(dp.max, 11.0)
        self.assertEqual(list(dp.explicit_bounds), list(SEMCONV_DURATION_BOUNDS))
        self.assertEqual(len(dp.bucket_counts), len(SEMCONV_DURATION_BOUNDS) + 1)
        # 0.004 and 0.005 (upper-inclusive) in bucket 0; 0.0051 in bucket 1; 2.6994 in (2.5, 5]; 11 overflow.
        expected = [0] * 15
        expected[0], expected[1], expected[11], expected[14] = 2, 1, 1, 1
        self.assertEqual(list(dp.bucket_counts), expected)
        self.assertEqual(count_records(METRICS, rm), 3)

    def test_cumulative_keeps_values_and_none_when_unchanged(self):
        self.state.add("faas.invocations", 1)
        self.assertIsNotNone(self.state.collect())
        self.assertIsNone(self.state.collect())
        self.state.add("faas.timeouts", 1)
        self.clock.now += 10
        m = metrics_by_name(roundtrip(self.state.collect()))
        self.assertEqual(m["faas.invocations"].sum.data_points[0].as_int, 1)
        self.assertEqual(m["faas.timeouts"].sum.data_points[0].as_int, 1)
        self.assertEqual(m["faas.timeouts"].sum.data_points[0].start_time_unix_nano, T0)

    def test_mem_usage_buckets(self):
        self.state.record("faas.mem_usage", 94 * 1024 * 1024)
        dp = metrics_by_name(self.state.collect())["faas.mem_usage"].histogram.data_points[0]
        self.assertEqual(list(dp.explicit_bounds), list(MEM_BOUNDS))
        self.assertEqual(dp.bucket_counts[3], 1)  # (64 MiB, 128 MiB]

    def test_bad_values_rejected(self):
        for v in (float("nan"), float("inf"), -1.0, "1", None, True):
            self.assertFalse(self.state.record("faas.invoke_duration", v))
        for v in (-1, 1.5, "1", True, None):
            self.assertFalse(self.state.add("faas.invocations", v))
        self.assertIsNone(self.state.collect())
        with self.assertRaises(KeyError):
            self.state.add("no.such.metric", 1)
        with self.assertRaises(ValueError):
            self.state.add("faas.invoke_duration", 1)
        with self.assertRaises(ValueError):
            self.state.record("faas.invocations", 1)
        with self.assertRaises(ValueError):
            MetricsState(make_resource(), "sideways", self.loss)

    def test_dropped_from_loss_counter(self):
        self.loss.add(L.LOGS, L.PLATFORM_LOGS_DROPPED, 123)
        self.loss.add(L.TRACES, L.QUEUE_FULL, 2)
        m = metrics_by_name(roundtrip(self.state.collect()))
        points = {(attrs(dp)["signal"], attrs(dp)["reason"]): dp.as_int for dp in m["lambda_otel.dropped"].sum.data_points}
        self.assertEqual(points, {("logs", "platform_logs_dropped"): 123, ("traces", "queue_full"): 2})
        self.assertIsNone(self.state.collect())
        self.loss.add(L.TRACES, L.QUEUE_FULL, 3)
        m = metrics_by_name(self.state.collect())
        points = {attrs(dp)["reason"]: dp.as_int for dp in m["lambda_otel.dropped"].sum.data_points}
        self.assertEqual(points, {"platform_logs_dropped": 123, "queue_full": 5})

    def test_cardinality_cap(self):
        for i in range(MAX_SERIES + 50):
            self.state.add("faas.errors", 1, {"error.type": f"Function.E{i}"})
        m = metrics_by_name(self.state.collect())
        dps = m["faas.errors"].sum.data_points
        self.assertEqual(len(dps), MAX_SERIES + 1)
        overflow = [dp for dp in dps if attrs(dp) == {"otel.metric.overflow": True}]
        self.assertEqual(overflow[0].as_int, 50)
        self.assertEqual(sum(dp.as_int for dp in dps), MAX_SERIES + 50)

    def test_thread_safety(self):
        def work():
            for _ in range(2000):
                self.state.add("faas.invocations", 1)
                self.state.record("faas.invoke_duration", 0.1)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for _ in range(50):  # concurrent collects must not lose or double anything (cumulative)
            self.state.collect()
        for t in threads:
            t.join(timeout=30)
            self.assertFalse(t.is_alive())
        self.state.add("faas.timeouts", 1)  # something new, so cumulative collects again
        m = metrics_by_name(self.state.collect())
        self.assertEqual(m["faas.invocations"].sum.data_points[0].as_int, 8000)
        self.assertEqual(m["faas.invoke_duration"].histogram.data_points[0].count, 8000)


class Delta(unittest.TestCase):
    def setUp(self):
        self.clock = FakeClock()
        self.loss = L.LossCounter()
        self.state = MetricsState(make_resource(), "delta", self.loss, clock_ns=self.clock)

    def test_delta_resets_and_start_is_previous_collect(self):
        self.state.add("faas.invocations", 2)
        self.state.record("faas.invoke_duration", 1.0)
        self.clock.now = T0 + 100
        first = metrics_by_name(roundtrip(self.state.collect()))
        dp = first["faas.invocations"].sum.data_points[0]
        self.assertEqual(first["faas.invocations"].sum.aggregation_temporality,
                         metrics_pb2.AGGREGATION_TEMPORALITY_DELTA)
        self.assertEqual(first["faas.invoke_duration"].histogram.aggregation_temporality,
                         metrics_pb2.AGGREGATION_TEMPORALITY_DELTA)
        self.assertEqual((dp.start_time_unix_nano, dp.time_unix_nano, dp.as_int), (T0, T0 + 100, 2))
        self.assertIsNone(self.state.collect())
        self.state.add("faas.invocations", 1)
        self.clock.now = T0 + 300
        second = metrics_by_name(self.state.collect())
        dp = second["faas.invocations"].sum.data_points[0]
        self.assertEqual((dp.start_time_unix_nano, dp.time_unix_nano, dp.as_int), (T0 + 100, T0 + 300, 1))
        self.assertNotIn("faas.invoke_duration", second)

    def test_delta_dropped_reports_only_new_losses(self):
        self.loss.add(L.METRICS, L.QUEUE_FULL, 4)
        m = metrics_by_name(self.state.collect())
        self.assertEqual(m["lambda_otel.dropped"].sum.data_points[0].as_int, 4)
        self.assertIsNone(self.state.collect())
        self.loss.add(L.METRICS, L.QUEUE_FULL, 1)
        m = metrics_by_name(self.state.collect())
        self.assertEqual(m["lambda_otel.dropped"].sum.data_points[0].as_int, 1)



class InputCountersAreClamped(unittest.TestCase):
    """Counters taken from input saturate at int64 instead of stopping every later metric export."""

    def setUp(self):
        self.clock = FakeClock()
        self.loss = L.LossCounter()
        self.state = MetricsState(make_resource(), "cumulative", self.loss, clock_ns=self.clock)

    def test_logs_dropped_beyond_int64_from_the_telemetry_api(self):
        from lambda_otel.convert import TelemetryConverter

        conv = TelemetryConverter(make_resource(), self.state, self.loss, clock_ns=self.clock)
        for _ in range(2):
            conv.process([{"time": "2024-05-01T10:00:03.500Z", "type": "platform.logsDropped",
                           "record": {"droppedRecords": 2**63, "droppedBytes": 2**70, "reason": "slow"}}])
        rm = roundtrip(self.state.collect())  # would raise ValueError (int64 overflow) unclamped
        m = metrics_by_name(rm)
        self.assertEqual(m["aws.lambda.logs_dropped"].sum.data_points[0].as_int, INT64_MAX)
        self.assertEqual(m["lambda_otel.dropped"].sum.data_points[0].as_int, INT64_MAX)
        # Export goes on: the next collect still works and carries new values.
        self.state.add("faas.invocations", 1)
        self.clock.now += 1
        m = metrics_by_name(roundtrip(self.state.collect()))
        self.assertEqual(m["faas.invocations"].sum.data_points[0].as_int, 1)

    def test_counter_sums_saturate(self):
        self.assertTrue(self.state.add("faas.invocations", INT64_MAX))
        self.assertTrue(self.state.add("faas.invocations", 10**30))
        m = metrics_by_name(roundtrip(self.state.collect()))
        self.assertEqual(m["faas.invocations"].sum.data_points[0].as_int, INT64_MAX)

    def test_histogram_sum_stays_finite(self):
        for _ in range(3):
            self.assertTrue(self.state.record("faas.invoke_duration", 1e308))
        dp = metrics_by_name(roundtrip(self.state.collect()))["faas.invoke_duration"].histogram.data_points[0]
        self.assertEqual(dp.count, 3)
        self.assertTrue(math.isfinite(dp.sum))


def delta_sum(items, name, **match):
    total = 0
    for rm in items:
        metric = metrics_by_name(rm).get(name)
        if metric is None:
            continue
        for dp in metric.sum.data_points:
            if all(attrs(dp).get(k) == v for k, v in match.items()):
                total += dp.as_int
    return total


class DeltaItemsDroppedForGood(unittest.TestCase):
    """With delta temporality, the values of a dropped item come back in the next one: what is
    exported sums to the LossCounter's totals (what the shutdown line prints)."""

    def setUp(self):
        self.clock = FakeClock()
        self.loss = L.LossCounter()
        self.state = MetricsState(make_resource(), "delta", self.loss, clock_ns=self.clock)

    def collect(self):
        self.clock.now += 1_000_000_000
        return self.state.collect()

    def test_the_loss_counts_of_dropped_items_are_reported_again(self):
        self.loss.add("logs", L.EXPORT_REJECTED, 20)
        self.state.add("faas.invocations", 3)
        lost = self.collect()  # say the backend rejected this one too
        self.loss.add("metrics", L.EXPORT_REJECTED, 2)  # ...and its 2 data points are counted as dropped
        self.state.restore([lost])
        self.loss.add("logs", L.QUEUE_FULL, 17)
        self.state.add("faas.invocations", 2)
        delivered = [roundtrip(rm) for rm in (self.collect(), self.collect()) if rm is not None]
        total_dropped = delta_sum(delivered, "lambda_otel.dropped")
        self.assertEqual(total_dropped, self.loss.total())
        self.assertEqual(total_dropped, 39)
        self.assertEqual(delta_sum(delivered, "lambda_otel.dropped", reason="export_rejected", signal="logs"), 20)
        # The lost item's own values stay lost (counted above as 2 dropped metric records), never twice.
        self.assertEqual(delta_sum(delivered, "faas.invocations"), 2)
        # Windows still never overlap: the counts join the next window.
        windows = sorted({(dp.start_time_unix_nano, dp.time_unix_nano)
                          for rm in delivered for m in metrics_by_name(rm).values() for dp in m.sum.data_points})
        for (s1, e1), (s2, e2) in zip(windows, windows[1:]):
            self.assertLessEqual(e1, s2)

    def test_restoring_twice_or_nothing_reports_nothing_new(self):
        self.loss.add("logs", L.QUEUE_FULL, 4)
        first = self.collect()
        self.assertIsNone(self.collect())
        self.state.restore([])
        self.assertIsNone(self.collect())
        self.state.restore([first])
        self.state.restore([first])  # the same item twice gives the counts back once: never below zero
        again = roundtrip(self.collect())
        self.assertEqual(delta_sum([again], "lambda_otel.dropped"), 4)

    def test_restore_ignores_other_scopes_and_cumulative(self):
        other = metrics_pb2.ResourceMetrics()
        sm = other.scope_metrics.add()
        sm.scope.name = "the-function"
        metric = sm.metrics.add(name="lambda_otel.dropped")
        metric.sum.data_points.add(as_int=100)
        self.state.restore([other])
        self.assertIsNone(self.collect())
        cumulative = MetricsState(make_resource(), "cumulative", self.loss, clock_ns=self.clock)
        cumulative.add("faas.invocations", 1)
        rm = cumulative.collect()
        cumulative.restore([rm])
        m = metrics_by_name(cumulative.collect(T0 + 5) or rm)
        self.assertEqual(m["faas.invocations"].sum.data_points[0].as_int, 1)


class RenewAfterRestore(unittest.TestCase):
    """SnapStart: every restored copy starts its own series (new start time, nothing from the snapshot)."""

    def test_cumulative_series_restart(self):
        clock, loss = FakeClock(), L.LossCounter()
        state = MetricsState(make_resource(), "cumulative", loss, clock_ns=clock)
        state.add("faas.coldstarts", 1)
        state.record("faas.init_duration", 0.5)
        loss.add("logs", L.QUEUE_FULL, 7)
        self.assertIsNotNone(state.collect())
        clock.now = T0 + 60 * 10**9  # the restore, a minute later
        state.renew_after_restore()
        self.assertIsNone(state.collect(), "nothing from before the snapshot is reported again")
        state.add("faas.invocations", 1)
        loss.add("logs", L.QUEUE_FULL, 2)
        clock.now += 10**9
        m = metrics_by_name(roundtrip(state.collect()))
        self.assertEqual(set(m), {"faas.invocations", "lambda_otel.dropped"})
        for metric in m.values():
            self.assertEqual(metric.sum.data_points[0].start_time_unix_nano, T0 + 60 * 10**9)
        self.assertEqual(m["lambda_otel.dropped"].sum.data_points[0].as_int, 2)

    def test_delta_after_restore(self):
        clock, loss = FakeClock(), L.LossCounter()
        state = MetricsState(make_resource(), "delta", loss, clock_ns=clock)
        loss.add("logs", L.QUEUE_FULL, 7)
        state.add("faas.invocations", 1)  # collected before the snapshot or not: not this copy's
        clock.now = T0 + 10**9
        state.renew_after_restore()
        loss.add("logs", L.QUEUE_FULL, 1)
        clock.now += 10**9
        m = metrics_by_name(roundtrip(state.collect()))
        self.assertEqual(set(m), {"lambda_otel.dropped"})
        self.assertEqual(m["lambda_otel.dropped"].sum.data_points[0].as_int, 1)
        self.assertEqual(m["lambda_otel.dropped"].sum.data_points[0].start_time_unix_nano, T0 + 10**9)


class OnlyMetricsWithData(unittest.TestCase):
    def test_a_managed_instances_report_exports_duration_only(self):
        from lambda_otel.convert import TelemetryConverter

        clock, loss = FakeClock(), L.LossCounter()
        state = MetricsState(make_resource(), "cumulative", loss, clock_ns=clock)
        conv = TelemetryConverter(make_resource(), state, loss, clock_ns=clock)
        conv.process([{"time": "2024-05-01T10:00:03.400Z", "type": "platform.report",
                       "record": {"requestId": "r-1", "status": "success", "metrics": {"durationMs": 12.5}}}])
        m = metrics_by_name(roundtrip(state.collect()))
        self.assertNotIn("aws.lambda.billed_duration", m)
        self.assertNotIn("faas.mem_usage", m)
        self.assertNotIn("faas.init_duration", m)
        self.assertNotIn("faas.coldstarts", m)
        dp = m["faas.invoke_duration"].histogram.data_points[0]
        self.assertEqual((dp.count, dp.sum), (1, 0.0125))


if __name__ == "__main__":
    unittest.main()
