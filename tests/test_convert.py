import copy
import json
import threading
import unittest

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1 import trace_pb2

from lambda_otel import loss as L
from lambda_otel.convert import TelemetryConverter, parse_time_ns
from lambda_otel.metrics import MetricsState

NOW = 1_714_557_610_000_000_000  # 2024-05-01T10:00:10Z: the converter's "now" in these tests
T0 = 1_714_557_600_000_000_000  # 2024-05-01T10:00:00Z
MS = 1_000_000
RID = "459921b5-681c-4a96-beb0-81e0aa586026"
ARN = "arn:aws:lambda:us-east-1:123456789012:function:my-fn"
HEADER = "Root=1-6352a70e-1e2c502e358361800241fd45;Parent=35465b3a9e2f7c6a;Sampled=1"
TRACE = bytes.fromhex("6352a70e1e2c502e358361800241fd45")
XRAY_PARENT = bytes.fromhex("35465b3a9e2f7c6a")
LAMBDA_SPAN = bytes.fromhex("24cd7d670fa455f0")
TRACING = {"spanId": "24cd7d670fa455f0", "type": "X-Amzn-Trace-Id", "value": HEADER}

# Events as Lambda's Telemetry API delivers them (schema 2022-12-13 shapes).
INIT_START = {"time": "2024-05-01T10:00:00.100Z", "type": "platform.initStart", "record": {
    "initializationType": "on-demand", "phase": "init", "runtimeVersion": "python:3.12.v40",
    "runtimeVersionArn": "arn:aws:lambda:us-east-1::runtime:0123abcd", "functionName": "my-fn",
    "functionVersion": "$LATEST", "instanceId": "2024/05/01/[$LATEST]8f3c...", "instanceMaxMemory": 128}}
INIT_RUNTIME_DONE = {"time": "2024-05-01T10:00:00.650Z", "type": "platform.initRuntimeDone", "record": {
    "initializationType": "on-demand", "phase": "init", "status": "success"}}
INIT_REPORT = {"time": "2024-05-01T10:00:00.651Z", "type": "platform.initReport", "record": {
    "initializationType": "on-demand", "phase": "init", "status": "success", "metrics": {"durationMs": 549.04}}}
EXTENSION = {"time": "2024-05-01T10:00:00.651Z", "type": "platform.extension", "record": {
    "name": "lambda-otel", "state": "Ready", "events": ["INVOKE", "SHUTDOWN"]}}
START = {"time": "2024-05-01T10:00:00.700Z", "type": "platform.start", "record": {
    "requestId": RID, "version": "$LATEST", "tracing": TRACING}}
RUNTIME_DONE = {"time": "2024-05-01T10:00:03.300Z", "type": "platform.runtimeDone", "record": {
    "requestId": RID, "status": "success", "metrics": {"durationMs": 2599.0, "producedBytes": 8},
    "spans": [{"name": "responseLatency", "start": "2024-05-01T10:00:00.700Z", "durationMs": 2598.0},
              {"name": "responseDuration", "start": "2024-05-01T10:00:03.298Z", "durationMs": 0.1},
              {"name": "runtimeOverhead", "start": "2024-05-01T10:00:03.298Z", "durationMs": 0.9}],
    "tracing": TRACING}}
REPORT = {"time": "2024-05-01T10:00:03.400Z", "type": "platform.report", "record": {
    "requestId": RID, "status": "success", "metrics": {
        "durationMs": 2699.4, "billedDurationMs": 2700, "memorySizeMB": 128, "maxMemoryUsedMB": 94,
        "initDurationMs": 549.04}, "tracing": TRACING}}
LOGS_DROPPED = {"time": "2024-05-01T10:00:03.500Z", "type": "platform.logsDropped", "record": {
    "droppedBytes": 12345, "droppedRecords": 123,
    "reason": "Some logs were dropped because the downstream consumer is slower than the logs production rate"}}


def make_resource() -> Resource:
    res = Resource()
    for key, value in (("service.name", "my-fn"), ("faas.name", "my-fn"), ("cloud.provider", "aws")):
        kv = res.attributes.add()
        kv.key = key
        kv.value.string_value = value
    return res


def iso(ns: int) -> str:
    secs, frac = divmod(ns, 10**9)
    import datetime
    d = datetime.datetime.fromtimestamp(secs, datetime.timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S") + f".{frac // MS:03d}Z"


def ev(type_, ns, record):
    return {"time": iso(ns), "type": type_, "record": record}


def invocation(rid, start_ns, run_ms=100.0, report_ms=None, status="success", error_type=None, tracing=None,
               init_ms=None):
    """start, runtimeDone and report events of one invocation."""
    start = {"requestId": rid, "version": "$LATEST"}
    if tracing is not None:
        start["tracing"] = tracing
    done = {"requestId": rid, "status": status, "metrics": {"durationMs": run_ms}}
    report = {"requestId": rid, "status": status, "metrics": {
        "durationMs": report_ms if report_ms is not None else run_ms + 5.0,
        "billedDurationMs": int(run_ms) + 6, "memorySizeMB": 128, "maxMemoryUsedMB": 60}}
    if init_ms is not None:
        report["metrics"]["initDurationMs"] = init_ms
    if error_type:
        done["errorType"] = report["errorType"] = error_type
    end = start_ns + int(run_ms * MS)
    return [ev("platform.start", start_ns, start), ev("platform.runtimeDone", end, done),
            ev("platform.report", end + 10 * MS, report)]


def parse_spans(converted):
    if converted.resource_spans is None:
        return []
    req = ExportTraceServiceRequest()
    req.resource_spans.add().CopyFrom(converted.resource_spans)
    req = ExportTraceServiceRequest.FromString(req.SerializeToString())
    spans = [s for ss in req.resource_spans[0].scope_spans for s in ss.spans]
    assert len(spans) == converted.span_count
    return spans


def parse_logs(converted):
    if converted.resource_logs is None:
        return []
    req = ExportLogsServiceRequest()
    req.resource_logs.add().CopyFrom(converted.resource_logs)
    req = ExportLogsServiceRequest.FromString(req.SerializeToString())
    out = [(sl.scope.name, r) for sl in req.resource_logs[0].scope_logs for r in sl.log_records]
    assert len(out) == converted.log_count
    return out


def attrs(item):
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in item.attributes}


def by_name(spans):
    out = {}
    for s in spans:
        out.setdefault(s.name, []).append(s)
    return out


class Base(unittest.TestCase):
    xray_mode = "link"
    temporality = "cumulative"

    def setUp(self):
        self.loss = L.LossCounter()
        self.metrics = MetricsState(make_resource(), self.temporality, self.loss, clock_ns=lambda: T0 - 1)
        self.conv = TelemetryConverter(make_resource(), self.metrics, self.loss, xray_mode=self.xray_mode,
                                       clock_ns=lambda: NOW)

    def collect(self):
        rm = self.metrics.collect(NOW)
        if rm is None:
            return {}
        return {m.name: m for sm in rm.scope_metrics for m in sm.metrics}

    def ignored(self, collected=None):
        m = (collected if collected is not None else self.collect()).get("lambda_otel.telemetry.ignored")
        if m is None:
            return {}
        return {attrs(dp)["reason"]: dp.as_int for dp in m.sum.data_points}


class ColdStartInvocation(Base):
    """The reference example batch, end to end."""

    def run_example(self):
        self.conv.on_invoke(RID, 1714557603000, ARN, HEADER)
        return self.conv.process(copy.deepcopy(
            [INIT_START, INIT_RUNTIME_DONE, EXTENSION, INIT_REPORT, START, RUNTIME_DONE, REPORT]))

    def test_invocation_span(self):
        out = self.run_example()
        self.assertEqual(out.runtime_done, [RID])
        self.assertEqual(out.ignored, 0)
        spans = by_name(parse_spans(out))
        inv = spans["my-fn"][0]
        self.assertEqual(inv.kind, trace_pb2.Span.SPAN_KIND_SERVER)
        self.assertEqual(inv.trace_id, TRACE)
        self.assertEqual(inv.span_id, LAMBDA_SPAN)  # the platform's tracing.spanId
        self.assertEqual(inv.parent_span_id, b"")  # link mode: X-Ray parent is a link
        self.assertEqual(len(inv.links), 1)
        self.assertEqual((inv.links[0].trace_id, inv.links[0].span_id), (TRACE, XRAY_PARENT))
        self.assertEqual(inv.flags & 0xFF, 1)  # Sampled=1
        self.assertEqual(inv.start_time_unix_nano, T0 + 700 * MS)
        self.assertEqual(inv.end_time_unix_nano, T0 + 3300 * MS)
        self.assertEqual(inv.status.code, trace_pb2.Status.STATUS_CODE_UNSET)
        a = attrs(inv)
        self.assertEqual(a["faas.invocation_id"], RID)
        self.assertIs(a["faas.coldstart"], True)
        self.assertEqual(a["cloud.resource_id"], ARN)  # as the function's instrumentation sets it
        self.assertEqual(a["aws.lambda.invoked_arn"], ARN)
        self.assertNotIn("faas.trigger", a)

    def test_children_and_overhead(self):
        spans = by_name(parse_spans(self.run_example()))
        inv = spans["my-fn"][0]
        for name, start_ms, dur_ms in (("responseLatency", 700, 2598.0), ("responseDuration", 3298, 0.1),
                                       ("runtimeOverhead", 3298, 0.9),
                                       ("extensionOverhead", 700 + 2599.0, 2699.4 - 2599.0)):
            with self.subTest(name=name):
                child = spans[name][0]
                self.assertEqual(child.trace_id, TRACE)
                self.assertEqual(child.parent_span_id, inv.span_id)
                self.assertAlmostEqual(child.start_time_unix_nano, T0 + start_ms * MS, delta=MS)
                self.assertAlmostEqual(child.end_time_unix_nano - child.start_time_unix_nano, dur_ms * MS, delta=MS)

    def test_init_span_in_first_invocation_trace(self):
        spans = by_name(parse_spans(self.run_example()))
        init = spans["init"]
        self.assertEqual(len(init), 1)
        self.assertEqual(init[0].trace_id, TRACE)
        self.assertEqual(init[0].parent_span_id, LAMBDA_SPAN)
        self.assertEqual(init[0].start_time_unix_nano, T0 + 100 * MS)
        self.assertAlmostEqual(init[0].end_time_unix_nano - init[0].start_time_unix_nano, 549.04 * MS, delta=MS)
        self.assertEqual(attrs(init[0]), {"aws.lambda.init.type": "on-demand", "aws.lambda.init.phase": "init"})
        # Later invocations never repeat it.
        names = []
        for i in range(5):
            out = self.conv.process(invocation(f"req-{i}", T0 + (5 + i) * 10**9, tracing=None))
            names += [s.name for s in parse_spans(out)]
            self.assertEqual(out.ignored, 0)
        self.assertNotIn("init", names)
        self.assertEqual(names.count("my-fn"), 5)

    def test_report_metrics_exactly_as_reported(self):
        self.run_example()
        m = self.collect()
        self.assertEqual(m["faas.invocations"].sum.data_points[0].as_int, 1)
        self.assertEqual(m["faas.coldstarts"].sum.data_points[0].as_int, 1)
        self.assertNotIn("faas.errors", m)
        self.assertNotIn("faas.timeouts", m)
        for name, value in (("faas.invoke_duration", 2699.4 / 1000), ("aws.lambda.billed_duration", 2.7),
                            ("faas.init_duration", 549.04 / 1000), ("faas.mem_usage", 94 * 1024 * 1024),
                            ("aws.lambda.extension_overhead", (2699.4 - 2599.0) / 1000)):
            with self.subTest(name=name):
                dp = m[name].histogram.data_points[0]
                self.assertEqual(dp.count, 1)
                self.assertEqual(dp.sum, value)
                self.assertEqual((dp.min, dp.max), (value, value))
                self.assertEqual(dp.start_time_unix_nano, T0 - 1)
                self.assertEqual(m[name].histogram.aggregation_temporality,
                                 metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE)
        self.assertEqual(m["faas.invocations"].sum.aggregation_temporality,
                         metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE)
        self.assertTrue(m["faas.invocations"].sum.is_monotonic)
        self.assertNotIn("aws.lambda.restore_duration", m)
        # No request ids in metric attributes.
        for metric in m.values():
            kind = metric.WhichOneof("data")
            for dp in getattr(metric, kind).data_points:
                self.assertNotIn("faas.invocation_id", attrs(dp))

    def test_second_invocation_is_warm(self):
        self.run_example()
        out = self.conv.process(invocation("req-2", T0 + 20 * 10**9, tracing={"value": HEADER.replace("fd45", "fd46")}))
        inv = by_name(parse_spans(out))["my-fn"][0]
        self.assertIs(attrs(inv)["faas.coldstart"], False)
        self.assertNotEqual(inv.span_id, LAMBDA_SPAN)


class ParentMode(Base):
    xray_mode = "parent"

    def test_xray_parent_is_parent_span(self):
        out = self.conv.process(copy.deepcopy([START, RUNTIME_DONE]))
        inv = by_name(parse_spans(out))["my-fn"][0]
        self.assertEqual(inv.trace_id, TRACE)
        self.assertEqual(inv.parent_span_id, XRAY_PARENT)
        self.assertEqual(len(inv.links), 0)
        self.assertEqual(inv.flags & 0x300, 0x300)  # parent is remote

    def test_bad_mode_rejected(self):
        with self.assertRaises(ValueError):
            TelemetryConverter(make_resource(), self.metrics, self.loss, xray_mode="sideways")


class TraceContext(Base):
    def test_no_tracing_gives_consistent_fresh_ids(self):
        events = invocation(RID, T0, run_ms=50)
        events.insert(1, ev("function", T0 + 10 * MS, "hello\n"))
        events[2]["record"]["spans"] = [{"name": "responseLatency", "start": iso(T0), "durationMs": 40.0}]
        out = self.conv.process(events)
        spans = parse_spans(out)
        self.assertEqual(len(spans), 3)  # invocation, responseLatency, extensionOverhead
        trace_ids = {s.trace_id for s in spans}
        self.assertEqual(len(trace_ids), 1)
        self.assertEqual(len(trace_ids.pop()), 16)
        inv = by_name(spans)["my-fn"][0]
        self.assertEqual(len(inv.span_id), 8)
        self.assertEqual(inv.parent_span_id, b"")
        (_, log), = parse_logs(out)
        self.assertEqual((log.trace_id, log.span_id), (inv.trace_id, inv.span_id))

    def test_malformed_tracing_never_breaks_the_span(self):
        for tracing in ({"value": "Root=garbage;Parent=zz", "spanId": "nothex"}, "not-an-object",
                        {"value": 42}, {"value": "x" * 100_000, "spanId": "0000000000000000"}):
            with self.subTest(tracing=str(tracing)[:40]):
                self.setUp()
                out = self.conv.process(invocation(RID, T0, tracing=tracing))
                inv = by_name(parse_spans(out))["my-fn"][0]
                self.assertEqual(len(inv.trace_id), 16)
                self.assertEqual(attrs(inv)["faas.invocation_id"], RID)
                self.assertGreaterEqual(self.ignored().get("malformed_tracing", 0), 1)

    def test_tracing_from_invoke_when_start_has_none(self):
        self.conv.on_invoke(RID, None, None, HEADER)
        out = self.conv.process(invocation(RID, T0))
        inv = by_name(parse_spans(out))["my-fn"][0]
        self.assertEqual(inv.trace_id, TRACE)
        self.assertNotIn("cloud.resource_id", attrs(inv))

    def test_unsampled_trace_has_no_spans_but_logs_carry_its_trace(self):
        unsampled = {"value": HEADER.replace("Sampled=1", "Sampled=0"), "spanId": TRACING["spanId"]}
        events = invocation(RID, T0, tracing=unsampled)
        events.insert(1, ev("function", T0 + 10 * MS, "hello\n"))
        out = self.conv.process(events)
        self.assertEqual(parse_spans(out), [])  # parentbased_always_on with an unsampled parent
        (_, log), = parse_logs(out)
        self.assertEqual((log.trace_id, log.span_id, log.flags), (TRACE, LAMBDA_SPAN, 0))
        self.assertEqual(self.collect()["faas.invocations"].sum.data_points[0].as_int, 1)  # metrics are not sampled

    def test_no_duplicate_span_ids_over_100_invocations(self):
        seen = []
        for i in range(100):
            tracing = {"value": HEADER, "spanId": "24cd7d670fa455f0"}  # the platform repeating itself
            events = invocation(f"req-{i}", T0 + i * 10**9, tracing=tracing)
            events[1]["record"]["spans"] = [{"name": "responseLatency", "start": iso(T0 + i * 10**9), "durationMs": 1}]
            seen += [s.span_id for s in parse_spans(self.conv.process(events))]
        self.assertEqual(len(seen), 300)
        self.assertEqual(len(set(seen)), 300)
        self.assertNotIn(bytes(8), seen)


class Statuses(Base):
    def test_status_mapping_and_counters(self):
        cases = [("success", None, trace_pb2.Status.STATUS_CODE_UNSET, ""),
                 ("error", "Runtime.ExitError", trace_pb2.Status.STATUS_CODE_ERROR, "Runtime.ExitError"),
                 ("failure", "Sandbox.Failure", trace_pb2.Status.STATUS_CODE_ERROR, "Sandbox.Failure"),
                 ("timeout", None, trace_pb2.Status.STATUS_CODE_ERROR, "timeout"),
                 ("error", None, trace_pb2.Status.STATUS_CODE_ERROR, "error")]
        for i, (status, error_type, code, message) in enumerate(cases):
            with self.subTest(status=status, error_type=error_type):
                out = self.conv.process(invocation(f"r{i}", T0 + i * 10**9, status=status, error_type=error_type))
                inv = by_name(parse_spans(out))["my-fn"][0]
                self.assertEqual(inv.status.code, code)
                self.assertEqual(inv.status.message, message)
                if status != "success":
                    self.assertEqual(attrs(inv)["error.type"], message)
        m = self.collect()
        self.assertEqual(m["faas.invocations"].sum.data_points[0].as_int, 1)  # the successful one
        self.assertEqual(m["faas.timeouts"].sum.data_points[0].as_int, 1)
        errors = {attrs(dp)["error.type"]: dp.as_int for dp in m["faas.errors"].sum.data_points}
        self.assertEqual(errors, {"Runtime.ExitError": 1, "Sandbox.Failure": 1, "error": 1})


class LateReport(Base):
    def test_report_in_next_batch_emits_overhead_span_alone(self):
        events = invocation(RID, T0, run_ms=200.0, report_ms=230.5, tracing=TRACING)
        first = self.conv.process(events[:2])
        inv = by_name(parse_spans(first))["my-fn"][0]
        self.assertEqual(first.runtime_done, [RID])
        second = self.conv.process(events[2:])
        (overhead,) = parse_spans(second)
        self.assertEqual(overhead.name, "extensionOverhead")
        self.assertEqual(overhead.trace_id, inv.trace_id)
        self.assertEqual(overhead.parent_span_id, inv.span_id)
        self.assertAlmostEqual(overhead.start_time_unix_nano, T0 + 200 * MS, delta=MS)
        self.assertAlmostEqual(overhead.end_time_unix_nano - overhead.start_time_unix_nano, 30.5 * MS, delta=MS)
        self.assertEqual(second.runtime_done, [])
        self.assertEqual((first.reports, second.reports), ([], [RID]))

    def test_malformed_report_still_tells_the_shutdown_grace(self):
        events = invocation(RID, T0)
        events[2]["record"]["metrics"] = "not an object"
        out = self.conv.process(events)
        self.assertEqual(out.reports, [RID])
        self.assertEqual(self.ignored()["malformed_record"], 1)

    def test_report_spans_extension_overhead_preferred(self):
        events = invocation(RID, T0, run_ms=200.0, report_ms=230.0)
        events[2]["record"]["spans"] = [{"name": "extensionOverhead", "start": iso(T0 + 201 * MS), "durationMs": 7.0}]
        spans = by_name(parse_spans(self.conv.process(events)))
        o = spans["extensionOverhead"][0]
        self.assertEqual(o.start_time_unix_nano, T0 + 201 * MS)
        self.assertEqual(o.end_time_unix_nano, T0 + 208 * MS)
        self.assertEqual(self.collect()["aws.lambda.extension_overhead"].histogram.data_points[0].sum, 0.007)

    def test_no_overhead_span_when_report_not_longer(self):
        events = invocation(RID, T0, run_ms=200.0, report_ms=200.0)
        self.assertNotIn("extensionOverhead", by_name(parse_spans(self.conv.process(events))))

    def test_report_without_runtime_done_closes_invocation(self):
        events = invocation(RID, T0, run_ms=200.0, report_ms=250.0, status="timeout", error_type="Sandbox.Timedout")
        out = self.conv.process([events[0], events[2]])
        inv = by_name(parse_spans(out))["my-fn"][0]
        self.assertEqual(inv.end_time_unix_nano - inv.start_time_unix_nano, 250 * MS)
        self.assertEqual(inv.status.message, "Sandbox.Timedout")

    def test_duplicates_are_not_double_counted(self):
        events = invocation(RID, T0)
        self.conv.process(events)
        again = self.conv.process(copy.deepcopy(events))
        self.assertEqual(again.span_count, 0)
        self.assertEqual(again.runtime_done, [RID])  # still tells the coordinator
        m = self.collect()
        self.assertEqual(m["faas.invocations"].sum.data_points[0].as_int, 1)
        self.assertEqual(self.ignored(m)["duplicate"], 3)


class InitAndRestore(Base):
    def test_init_held_until_first_invocation_context(self):
        first = self.conv.process(copy.deepcopy([INIT_START, INIT_RUNTIME_DONE, EXTENSION, INIT_REPORT]))
        self.assertEqual(first.span_count, 0)
        self.conv.on_invoke(RID, None, ARN, HEADER)  # INVOKE before platform.start arrives
        self.assertEqual(self.conv.process([]).span_count, 0)
        out = self.conv.process(copy.deepcopy([START]))
        (init,) = parse_spans(out)
        self.assertEqual((init.name, init.trace_id, init.parent_span_id), ("init", TRACE, LAMBDA_SPAN))
        done = self.conv.process(copy.deepcopy([RUNTIME_DONE, REPORT]))
        self.assertNotIn("init", by_name(parse_spans(done)))

    def test_init_without_any_invocation_emitted_at_shutdown(self):
        self.conv.process(copy.deepcopy([INIT_START, INIT_RUNTIME_DONE, INIT_REPORT]))
        out = self.conv.on_shutdown("spindown")
        (init,) = parse_spans(out)
        self.assertEqual(init.name, "init")
        self.assertEqual(len(init.trace_id), 16)
        self.assertEqual(init.parent_span_id, b"")
        self.assertEqual(self.conv.on_shutdown("spindown").span_count, 0)  # exactly once

    def test_failed_init_status(self):
        events = copy.deepcopy([INIT_START, INIT_RUNTIME_DONE, INIT_REPORT])
        for e in events[1:]:
            e["record"].update(status="error", errorType="Runtime.Unknown")
        self.conv.process(events)
        out = self.conv.process(copy.deepcopy([START]))
        (init,) = parse_spans(out)
        self.assertEqual(init.status.code, trace_pb2.Status.STATUS_CODE_ERROR)
        self.assertEqual(init.status.message, "Runtime.Unknown")

    def test_provisioned_concurrency_is_not_a_cold_start(self):
        self.conv.on_invoke(RID, None, None, None)  # INVOKE handled before the replayed initStart
        init = copy.deepcopy([INIT_START, INIT_RUNTIME_DONE, INIT_REPORT])
        for e in init:
            e["record"]["initializationType"] = "provisioned-concurrency"
        out = self.conv.process(init + invocation(RID, T0 + 10**9))
        spans = by_name(parse_spans(out))
        self.assertIs(attrs(spans["my-fn"][0])["faas.coldstart"], False)
        self.assertEqual(attrs(spans["init"][0])["aws.lambda.init.type"], "provisioned-concurrency")

    def test_snapstart_restore_span_and_metric(self):
        events = [ev("platform.restoreStart", T0, {}),
                  ev("platform.restoreRuntimeDone", T0 + 20 * MS, {"status": "success", "spans": []}),
                  ev("platform.restoreReport", T0 + 21 * MS, {"status": "success", "metrics": {"durationMs": 15.19}})]
        events += invocation(RID, T0 + 50 * MS, tracing=TRACING)
        events[-1]["record"]["metrics"]["restoreDurationMs"] = 15.19
        out = self.conv.process(events)
        self.assertEqual(out.ignored, 0)
        restore = by_name(parse_spans(out))["restore"][0]
        self.assertEqual(restore.trace_id, TRACE)
        self.assertEqual(restore.parent_span_id, LAMBDA_SPAN)
        self.assertAlmostEqual(restore.end_time_unix_nano - restore.start_time_unix_nano, 15.19 * MS, delta=MS)
        self.assertEqual(self.collect()["aws.lambda.restore_duration"].histogram.data_points[0].sum, 15.19 / 1000)


class Logs(Base):
    def test_text_lines_and_self_lines(self):
        self.conv.process(invocation("warm-up", T0 - 10**9))  # a finished earlier invocation
        events = [copy.deepcopy(START),
                  ev("function", T0 + 800 * MS, "plain line\n"),
                  ev("function", T0 + 810 * MS, "[ERROR]\t2024-05-01T10:00:00.810Z\t" + RID + "\tboom\r\n"),
                  ev("extension", T0 + 820 * MS, "[lambda-otel] WARNING lambda_otel.exporter: export failed\n"),
                  ev("extension", T0 + 830 * MS, "other-ext  launching\n")]
        out = self.conv.process(events)
        logs = parse_logs(out)
        self.assertEqual(len(logs), 4)
        (s0, plain), (_, err), (s2, own), (_, other) = logs
        self.assertEqual(s0, "lambda-otel.function")
        self.assertEqual(s2, "lambda-otel.extension")
        self.assertEqual(plain.body.string_value, "plain line")
        self.assertEqual(plain.time_unix_nano, T0 + 800 * MS)
        self.assertEqual(plain.observed_time_unix_nano, NOW)
        self.assertEqual(plain.trace_id, TRACE)  # by time: inside the running invocation
        self.assertEqual(plain.span_id, LAMBDA_SPAN)
        self.assertEqual(attrs(plain)["faas.invocation_id"], RID)
        self.assertEqual(err.body.string_value, "boom")  # the runtime's prefix became fields
        self.assertEqual(err.time_unix_nano, T0 + 810 * MS)
        self.assertEqual((err.severity_number, err.severity_text), (17, "ERROR"))
        self.assertEqual(attrs(own)["lambda_otel.self"], True)
        self.assertEqual(own.severity_number, 13)
        self.assertNotIn("lambda_otel.self", attrs(other))

    def test_json_records_structured(self):
        self.conv.process([copy.deepcopy(START)])
        obj = {"timestamp": "2024-05-01T10:00:01.250Z", "level": "ERROR", "message": "it broke",
               "requestId": RID, "logger": "root", "errorType": "ValueError", "stackTrace": ["a", "b"],
               "extra": {"n": 1, "ok": True, "x": None, "f": 1.5}}
        events = [ev("function", T0 + 2 * 10**9, obj),
                  ev("function", T0 + 2 * 10**9, json.dumps({"level": "debug", "message": {"k": "v"}}) + "\n"),
                  ev("function", T0 + 2 * 10**9, {"level": "INFO", "requestId": RID, "detail": 3}),
                  ev("function", T0 + 2 * 10**9, '{"not json at all}'),
                  ev("function", T0 + 2 * 10**9, {"level": "TRACE", "message": "t", "requestId": "other-id"})]
        logs = [r for _, r in parse_logs(self.conv.process(events))]
        structured, dbg, nomsg, broken, other = logs
        self.assertEqual(structured.body.string_value, "it broke")
        self.assertEqual((structured.severity_number, structured.severity_text), (17, "ERROR"))
        self.assertEqual(structured.time_unix_nano, T0 + 1250 * MS)
        a = attrs(structured)
        self.assertEqual(a["faas.invocation_id"], RID)
        self.assertEqual(a["logger"], "root")
        self.assertEqual(a["exception.stacktrace"], "ab")  # semconv names for the runtime's fields
        self.assertEqual(a["exception.type"], "ValueError")
        self.assertNotIn("stackTrace", a)
        self.assertNotIn("errorType", a)
        self.assertEqual({kv.key for kv in a["extra"].values}, {"n", "ok", "x", "f"})
        self.assertNotIn("timestamp", a)
        self.assertNotIn("requestId", a)
        self.assertEqual((structured.trace_id, structured.span_id), (TRACE, LAMBDA_SPAN))
        self.assertEqual(dbg.severity_number, 5)
        self.assertEqual(dbg.body.kvlist_value.values[0].key, "k")
        self.assertEqual({kv.key for kv in nomsg.body.kvlist_value.values}, {"level", "requestId", "detail"})
        self.assertEqual(nomsg.severity_number, 9)
        self.assertEqual(broken.body.string_value, '{"not json at all}')
        self.assertEqual(other.severity_number, 1)
        self.assertEqual(attrs(other)["faas.invocation_id"], "other-id")  # unknown id: attribute, no trace
        self.assertEqual(other.trace_id, b"")

    def test_correlation_by_time_across_invocations(self):
        a = invocation("req-a", T0, run_ms=100.0)
        b = invocation("req-b", T0 + 10**9, run_ms=100.0)
        events = [ev("function", T0 - 500 * MS, "during init")] + a + [
            ev("function", T0 + 500 * MS, "between a and b")] + b[:1] + [
            ev("function", T0 + 10**9 + 50 * MS, "inside b")] + b[1:]
        out = self.conv.process(events)
        spans = by_name(parse_spans(out))["my-fn"]
        ids = {attrs(s)["faas.invocation_id"]: s.span_id for s in spans}
        logs = {r.body.string_value: r for _, r in parse_logs(out)}
        self.assertEqual(logs["during init"].span_id, b"")  # before any invocation: uncorrelated
        self.assertNotIn("faas.invocation_id", attrs(logs["during init"]))
        self.assertEqual(logs["between a and b"].span_id, ids["req-a"])  # most recent started
        self.assertEqual(logs["inside b"].span_id, ids["req-b"])
        self.assertEqual(attrs(logs["inside b"])["faas.invocation_id"], "req-b")

    def test_late_log_by_request_id_after_invocation_finished(self):
        events = invocation(RID, T0, tracing=TRACING)
        self.conv.process(events)
        out = self.conv.process([ev("function", T0 + 50 * MS, {"message": "late", "requestId": RID})])
        (_, log), = parse_logs(out)
        self.assertEqual((log.trace_id, log.span_id), (TRACE, LAMBDA_SPAN))

    def test_logs_dropped(self):
        out = self.conv.process(copy.deepcopy([LOGS_DROPPED]))
        (scope, warn), = parse_logs(out)
        self.assertEqual(scope, "lambda-otel.platform")
        self.assertEqual((warn.severity_number, warn.severity_text), (13, "WARN"))
        self.assertIn("123", warn.body.string_value)
        self.assertEqual(attrs(warn)["aws.lambda.logs_dropped.records"], 123)
        self.assertEqual(self.loss.snapshot(), {("logs", "platform_logs_dropped"): 123})
        m = self.collect()
        self.assertEqual(m["aws.lambda.logs_dropped"].sum.data_points[0].as_int, 123)
        dropped = m["lambda_otel.dropped"].sum.data_points[0]
        self.assertEqual((attrs(dropped), dropped.as_int), ({"signal": "logs", "reason": "platform_logs_dropped"}, 123))

    def test_converter_never_logs(self):
        # Our own lines come back as extension records: converting them must not log again.
        with self.assertNoLogs(level="DEBUG"):
            self.conv.process([ev("extension", T0, "[lambda-otel] ERROR lambda_otel: x\n"), {"bad": 1},
                               ev("platform.nope", T0, {}), ev("function", T0, 5)])


class HostileInput(Base):
    def test_bad_records_do_not_stop_the_batch(self):
        deep = {}
        cur = deep
        for _ in range(200):
            cur["d"] = {}
            cur = cur["d"]
        bad = [
            None, 5, "string", [], {}, {"type": "platform.start"}, {"type": 7, "record": {}},
            {"time": "2024-05-01T10:00:00Z", "type": "platform.fault", "record": {}},
            ev("platform.start", T0, {"requestId": 12}),
            ev("platform.start", T0, {"requestId": "x" * 10_000}),
            ev("platform.start", T0, "not an object"),
            ev("platform.runtimeDone", T0, {"status": "success"}),
            ev("platform.report", T0, {"requestId": "r-nan", "status": "success",
                                       "metrics": {"durationMs": float("nan"), "billedDurationMs": -5,
                                                   "maxMemoryUsedMB": "94"}}),
            ev("platform.report", T0, {"requestId": "r-none", "metrics": None}),
            ev("platform.logsDropped", T0, {"droppedRecords": -1}),
            ev("platform.logsDropped", T0, {"droppedRecords": True}),
            ev("function", T0, {"message": "\ud800 lone surrogate", "\ud800key": "\udfff"}),
            ev("function", T0, deep),
            ev("function", T0, 12.5),
            {"time": "not a time", "type": "function", "record": "bad time\n"},
            {"time": "1970-01-01T00:00:00Z", "type": "function", "record": "absurd time\n"},
            {"time": "2024-13-45T99:00:00Z", "type": "function", "record": "impossible date\n"},
        ]
        good = invocation(RID, T0 + 10**9, tracing=TRACING)
        events = bad[:12] + good[:2] + bad[12:] + good[2:]
        out = self.conv.process(events)
        spans = by_name(parse_spans(out))
        self.assertEqual(spans["my-fn"][0].trace_id, TRACE)
        self.assertEqual(out.runtime_done, [RID])
        bodies = [r.body for _, r in parse_logs(out)]
        self.assertEqual(len(bodies), 5)  # two structured + the bad/absurd/impossible-time lines; 12.5 skipped
        self.assertIn("lone surrogate", bodies[0].string_value)
        times = {r.body.string_value: r.time_unix_nano for _, r in parse_logs(out) if r.body.string_value}
        self.assertEqual(times["bad time"], NOW)  # replaced by now
        self.assertEqual(times["absurd time"], NOW)
        m = self.collect()
        ignored = self.ignored(m)
        self.assertGreaterEqual(ignored["malformed_event"], 6)
        self.assertEqual(ignored["unknown_type"], 1)
        self.assertGreaterEqual(ignored["malformed_record"], 6)
        self.assertGreaterEqual(ignored["bad_duration"], 3)
        self.assertEqual(ignored["bad_time"], 3)
        self.assertEqual(out.ignored, sum(ignored.values()))
        # r-nan and the good report were counted; their bad values were skipped.
        self.assertEqual(m["faas.invocations"].sum.data_points[0].as_int, 2)
        self.assertEqual(m["faas.invoke_duration"].histogram.data_points[0].count, 1)

    def test_not_a_list(self):
        for events in (None, {"type": "function"}, "[]", 42):
            out = self.conv.process(events)
            self.assertEqual((out.span_count, out.log_count, out.runtime_done), (0, 0, []))
            self.assertEqual(out.ignored, 1)

    def test_time_parsing(self):
        self.assertEqual(parse_time_ns("2024-05-01T10:00:00.100Z"), T0 + 100 * MS)
        self.assertEqual(parse_time_ns("2024-05-01T10:00:00Z"), T0)
        self.assertEqual(parse_time_ns("2024-05-01T10:00:00.123456789Z"), T0 + 123456789)
        self.assertEqual(parse_time_ns("2024-05-01T10:00:00.1+00:00"), T0 + 100 * MS)
        self.assertEqual(parse_time_ns("2024-05-01T12:00:00+02:00"), T0)
        self.assertEqual(parse_time_ns("2024-05-01T05:30:00-04:30"), T0)
        for bad in ("", None, 5, "2024-05-01", "2024-05-01T10:00:00", "2024-05-01T10:00:00.1234567890Z",
                    "2024-02-30T10:00:00Z", "2024-05-01T24:00:00Z", "1969-12-31T23:59:59Z", "9999-01-01T00:00:00Z",
                    "２024-05-01T10:00:00Z", "2024-05-01T10:00:00Z" + " " * 50, "2024-05-01T10:00:00+25:00"):
            with self.subTest(bad=bad):
                self.assertIsNone(parse_time_ns(bad))


class BoundsAndShutdown(Base):
    def test_bounded_maps_when_runtime_done_never_comes(self):
        conv = TelemetryConverter(make_resource(), self.metrics, self.loss, clock_ns=lambda: NOW,
                                  max_open_invocations=8, max_finished_invocations=4)
        for i in range(1000):
            conv.process([ev("platform.start", T0 + i * MS, {"requestId": f"open-{i}"})])
            conv.on_invoke(f"hint-{i}", None, None, None)
        for i in range(50):
            conv.process(invocation(f"done-{i}", T0 + 2 * 10**9 + i * MS))
        self.assertLessEqual(len(conv._open), 8)
        self.assertLessEqual(len(conv._finished), 4)
        self.assertLessEqual(len(conv._platform_span_ids), 8)
        self.assertGreaterEqual(self.ignored()["evicted_invocation"], 1990)

    def test_shutdown_timeout_synthesises_error_span_in_real_trace(self):
        self.conv.on_invoke(RID, 1714557603000, ARN, HEADER)
        self.conv.process([copy.deepcopy(START), ev("function", T0 + 800 * MS, "working...\n")])
        out = self.conv.on_shutdown(' "TIMEOUT" ', now_ns=T0 + 3000 * MS)
        (span,) = parse_spans(out)
        self.assertEqual(span.name, "my-fn")
        self.assertEqual((span.trace_id, span.span_id), (TRACE, LAMBDA_SPAN))
        self.assertEqual(span.start_time_unix_nano, T0 + 700 * MS)
        self.assertEqual(span.end_time_unix_nano, T0 + 3000 * MS)
        self.assertEqual(span.status.code, trace_pb2.Status.STATUS_CODE_ERROR)
        self.assertEqual(span.status.message, "Sandbox.Timedout")
        self.assertEqual(attrs(span)["aws.lambda.shutdown.reason"], "timeout")
        # The platform's own report for it, arriving late, adds durations but does not count twice.
        late = [ev("platform.runtimeDone", T0 + 3000 * MS, {"requestId": RID, "status": "timeout"}),
                ev("platform.report", T0 + 3001 * MS, {"requestId": RID, "status": "timeout",
                                                      "errorType": "Sandbox.Timedout",
                                                      "metrics": {"durationMs": 2300.0, "billedDurationMs": 2300,
                                                                  "memorySizeMB": 128, "maxMemoryUsedMB": 70}})]
        again = self.conv.process(late)
        self.assertEqual(again.span_count, 0)
        m = self.collect()
        self.assertNotIn("faas.invocations", m)  # successful invocations only
        self.assertEqual(m["faas.timeouts"].sum.data_points[0].as_int, 1)
        self.assertEqual(m["faas.invoke_duration"].histogram.data_points[0].sum, 2.3)
        shut = m["aws.lambda.shutdowns"].sum.data_points[0]
        self.assertEqual((attrs(shut), shut.as_int), ({"aws.lambda.shutdown.reason": "timeout"}, 1))

    def test_shutdown_failure_for_invoke_only_invocation(self):
        self.conv.on_invoke(RID, None, ARN, HEADER)
        out = self.conv.on_shutdown("failure", now_ns=NOW)
        (span,) = parse_spans(out)
        self.assertEqual(span.trace_id, TRACE)
        self.assertEqual(span.status.message, "Sandbox.Failure")
        self.assertEqual(span.start_time_unix_nano, NOW)  # on_invoke time from the test clock
        errors = self.collect()["faas.errors"].sum.data_points[0]
        self.assertEqual(attrs(errors), {"error.type": "Sandbox.Failure"})

    def test_spindown_does_not_synthesise(self):
        self.conv.process([copy.deepcopy(START)])
        out = self.conv.on_shutdown("spindown")
        self.assertEqual(out.span_count, 0)
        self.assertEqual(attrs(self.collect()["aws.lambda.shutdowns"].sum.data_points[0]),
                         {"aws.lambda.shutdown.reason": "spindown"})

    def test_shutdown_bad_reason(self):
        self.conv.on_shutdown(None)
        self.conv.on_shutdown("weird reason!!")
        dp = self.collect()["aws.lambda.shutdowns"].sum.data_points[0]
        self.assertEqual((attrs(dp)["aws.lambda.shutdown.reason"], dp.as_int), ("unknown", 2))


class DeltaTemporality(Base):
    temporality = "delta"

    def test_two_collects(self):
        self.conv.process(invocation("a", T0))
        m1 = self.collect()
        self.assertEqual(m1["faas.invocations"].sum.aggregation_temporality, metrics_pb2.AGGREGATION_TEMPORALITY_DELTA)
        self.conv.process(invocation("b", T0 + 10**9))
        self.conv.process(invocation("c", T0 + 2 * 10**9))
        rm = self.metrics.collect(NOW + 1)
        m2 = {m.name: m for sm in rm.scope_metrics for m in sm.metrics}
        self.assertEqual(m2["faas.invocations"].sum.data_points[0].as_int, 2)
        self.assertEqual(m2["faas.invocations"].sum.data_points[0].start_time_unix_nano, NOW)


class Concurrency(Base):
    def test_parallel_batches(self):
        errors = []

        def worker(w):
            try:
                for i in range(50):
                    out = self.conv.process(invocation(f"w{w}-{i}", T0 + (w * 100 + i) * 10**9))
                    assert out.span_count == 2, out.span_count  # invocation + extensionOverhead
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        self.assertEqual(errors, [])
        self.assertEqual(self.collect()["faas.invocations"].sum.data_points[0].as_int, 200)


if __name__ == "__main__":
    unittest.main()


# --------------------------------------------------------------------------- issue 14 / 15 additions

from opentelemetry.proto.logs.v1 import logs_pb2  # noqa: E402

from lambda_otel.convert import IdGenerator  # noqa: E402
from lambda_otel.sampling import TraceSampler  # noqa: E402
from lambda_otel.sdk_view import FunctionSdkView  # noqa: E402

FN_SPAN = bytes.fromhex("0102030405060708")


def sdk_server_span(trace_id=TRACE, parent=XRAY_PARENT):
    """What the function's opentelemetry-instrumentation-aws-lambda sends: its SERVER span."""
    rs = trace_pb2.ResourceSpans()
    span = rs.scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.parent_span_id = trace_id, FN_SPAN, parent
    span.kind = trace_pb2.Span.SPAN_KIND_SERVER
    span.name = "my-fn"
    return rs


def sdk_log(message, time_ns, severity=9):
    """What the SDK's LoggingHandler sends for one logging call."""
    rl = logs_pb2.ResourceLogs()
    lr = rl.scope_logs.add().log_records.add()
    lr.time_unix_nano, lr.severity_number = time_ns, severity
    lr.body.string_value = message
    return rl


def text_line(level, ns, rid, message):
    """Lambda's Python text format, as awslambdaric writes a logging record."""
    return f"[{level}]\t{iso(ns)}\t{rid}\t{message}\n"


class JoinBase(Base):
    xray_mode = "join"
    sampler = None

    def setUp(self):
        self.loss = L.LossCounter()
        self.metrics = MetricsState(make_resource(), self.temporality, self.loss, clock_ns=lambda: T0 - 1)
        self.view = FunctionSdkView()
        self.conv = TelemetryConverter(make_resource(), self.metrics, self.loss, xray_mode=self.xray_mode,
                                       clock_ns=lambda: NOW, sampler=self.sampler, sdk_view=self.view)

    def counter(self, name):
        m = self.collect().get(name)
        return sum(dp.as_int for dp in m.sum.data_points) if m is not None else 0


class JoinMode(JoinBase):
    def test_invocation_span_takes_the_xray_parent_id_and_is_a_server_root(self):
        out = self.conv.process(copy.deepcopy([START, RUNTIME_DONE]))
        spans = by_name(parse_spans(out))
        inv = spans["my-fn"][0]
        self.assertEqual((inv.trace_id, inv.span_id, inv.parent_span_id), (TRACE, XRAY_PARENT, b""))
        self.assertEqual(len(inv.links), 0)
        self.assertEqual(inv.kind, trace_pb2.Span.SPAN_KIND_SERVER)  # no function span seen: ours is the SERVER
        self.assertEqual(spans["responseLatency"][0].parent_span_id, XRAY_PARENT)

    def test_function_server_span_becomes_the_child_and_ours_internal(self):
        """tracing.spanId (24cd…) differs from the Parent the function sees (3546…): join on the Parent."""
        self.view.observe("traces", [sdk_server_span()])
        inv = by_name(parse_spans(self.conv.process(copy.deepcopy([START, RUNTIME_DONE]))))["my-fn"][0]
        self.assertEqual(inv.span_id, XRAY_PARENT)
        self.assertEqual(inv.kind, trace_pb2.Span.SPAN_KIND_INTERNAL)
        self.assertIs(attrs(inv)["aws.lambda.function_span"], True)

    def test_span_id_equal_to_parent_works_the_same(self):
        tracing = {"spanId": XRAY_PARENT.hex(), "type": "X-Amzn-Trace-Id", "value": HEADER}
        self.view.observe("traces", [sdk_server_span()])
        inv = by_name(parse_spans(self.conv.process(invocation(RID, T0, tracing=tracing))))["my-fn"][0]
        self.assertEqual((inv.span_id, inv.kind), (XRAY_PARENT, trace_pb2.Span.SPAN_KIND_INTERNAL))

    def test_another_invocations_server_span_does_not_count(self):
        self.view.observe("traces", [sdk_server_span(parent=bytes.fromhex("1111111111111111"))])
        inv = by_name(parse_spans(self.conv.process(copy.deepcopy([START, RUNTIME_DONE]))))["my-fn"][0]
        self.assertEqual(inv.kind, trace_pb2.Span.SPAN_KIND_SERVER)

    def test_header_without_parent_uses_the_platform_span_id(self):
        tracing = {"spanId": TRACING["spanId"], "value": "Root=1-6352a70e-1e2c502e358361800241fd45;Sampled=1"}
        inv = by_name(parse_spans(self.conv.process(invocation(RID, T0, tracing=tracing))))["my-fn"][0]
        self.assertEqual(inv.span_id, LAMBDA_SPAN)

    def test_a_repeated_parent_never_gives_a_duplicate_span_id(self):
        ids = [by_name(parse_spans(self.conv.process(invocation(f"r{i}", T0 + i * 10**9, tracing=TRACING))))["my-fn"][0].span_id
               for i in range(3)]
        self.assertEqual(ids[0], XRAY_PARENT)
        self.assertEqual(len(set(ids)), 3)

    def test_link_mode_keeps_its_server_span(self):
        conv = TelemetryConverter(make_resource(), self.metrics, self.loss, xray_mode="link", clock_ns=lambda: NOW,
                                  sdk_view=self.view)
        self.view.observe("traces", [sdk_server_span()])
        inv = by_name(parse_spans(conv.process(copy.deepcopy([START, RUNTIME_DONE]))))["my-fn"][0]
        self.assertEqual((inv.span_id, inv.kind), (LAMBDA_SPAN, trace_pb2.Span.SPAN_KIND_SERVER))

    def test_cloud_resource_id_from_the_resource_before_invoke_is_handled(self):
        resource = make_resource()
        for key, value in (("cloud.region", "eu-west-1"), ("cloud.account.id", "123456789012")):
            kv = resource.attributes.add()
            kv.key, kv.value.string_value = key, value
        conv = TelemetryConverter(resource, self.metrics, self.loss, clock_ns=lambda: NOW)
        inv = by_name(parse_spans(conv.process(copy.deepcopy([START, RUNTIME_DONE]))))["my-fn"][0]
        self.assertEqual(attrs(inv)["cloud.resource_id"], "arn:aws:lambda:eu-west-1:123456789012:function:my-fn")


class SamplingInTheConverter(JoinBase):
    def test_unsampled_first_invocation_exports_no_init_span(self):
        unsampled = dict(TRACING, value=HEADER.replace("Sampled=1", "Sampled=0"))
        events = copy.deepcopy([INIT_START, INIT_RUNTIME_DONE, INIT_REPORT]) + invocation(RID, T0 + 700 * MS, tracing=unsampled)
        out = self.conv.process(events)
        self.assertEqual(out.span_count, 0)
        self.assertEqual(self.conv.on_shutdown("spindown", NOW).span_count, 0)  # not emitted later either

    def test_always_off_and_ratio(self):
        for sampler, expected in ((TraceSampler("always_off"), 0), (TraceSampler("always_on"), 1),
                                  (TraceSampler("traceidratio", 0.0), 0), (TraceSampler("traceidratio", 1.0), 1)):
            with self.subTest(sampler=sampler):
                conv = TelemetryConverter(make_resource(), self.metrics, self.loss, clock_ns=lambda: NOW, sampler=sampler)
                unsampled = dict(TRACING, value=HEADER.replace("Sampled=1", "Sampled=0"))
                spans = parse_spans(conv.process(invocation(RID, T0, tracing=unsampled)))
                self.assertEqual(len([s for s in spans if s.name == "my-fn"]), expected)


class LogDeduplication(JoinBase):
    def start(self):
        self.conv.process([copy.deepcopy(START)])

    def done(self):
        return self.conv.process([copy.deepcopy(RUNTIME_DONE)])

    def function_logs(self, out):
        return [r for scope, r in parse_logs(out) if scope == "lambda-otel.function"]

    def test_sdk_copy_first_then_the_telemetry_line_is_dropped_and_counted(self):
        self.start()
        t = T0 + 800 * MS + 123_456  # the SDK has ns; Lambda's text line has ms
        self.view.observe("logs", [sdk_log("user saved", t)])
        held = self.conv.process([ev("function", t, text_line("INFO", t, RID, "user saved"))])
        self.assertEqual(held.log_count, 0)  # held until the invocation ends
        out = self.done()
        self.assertEqual(self.function_logs(out), [])
        self.assertEqual(out.deduplicated, 1)
        self.assertEqual(self.counter("lambda_otel.logs.deduplicated"), 1)

    def test_telemetry_line_first_then_the_sdk_copy_before_the_end(self):
        self.start()
        t = T0 + 900 * MS
        self.conv.process([ev("function", t, text_line("ERROR", t, RID, "boom\rTraceback (most recent call last):"))])
        self.view.observe("logs", [sdk_log("boom\nTraceback (most recent call last):", t + 400_000, severity=17)])
        out = self.done()
        self.assertEqual(self.function_logs(out), [])
        self.assertEqual(out.deduplicated, 1)

    def test_lines_without_an_sdk_copy_are_exported_once_in_their_invocation(self):
        self.start()
        self.view.observe("logs", [sdk_log("something else", T0 + 800 * MS)])
        t = T0 + 800 * MS
        self.conv.process([ev("function", t, text_line("INFO", t, RID, "only on stdout")),
                           ev("function", t, "print() output\n")])
        out = self.done()
        bodies = sorted(r.body.string_value for r in self.function_logs(out))
        self.assertEqual(bodies, ["only on stdout"])  # the print line went out at once
        (rec,) = self.function_logs(out)
        self.assertEqual((rec.trace_id, rec.span_id, rec.time_unix_nano), (TRACE, XRAY_PARENT, t))
        self.assertEqual(self.counter("lambda_otel.logs.deduplicated"), 0)

    def test_sdk_copy_after_the_invocation_ended_is_dropped_from_the_sdk_request(self):
        """An SDK that exports its logs later (no flush before the handler returns): the line went
        out from the Telemetry API; the SDK's copy is removed from its request instead."""
        seen = []
        view = FunctionSdkView(on_deduplicated=seen.append)
        conv = TelemetryConverter(make_resource(), self.metrics, self.loss, clock_ns=lambda: NOW, sdk_view=view)
        t = T0 + 800 * MS + 400_000
        conv.process([copy.deepcopy(START), ev("function", t, text_line("INFO", t, RID, "late one"))])
        out = conv.process([copy.deepcopy(RUNTIME_DONE)])
        self.assertEqual([r.body.string_value for r in self.function_logs(out)], ["late one"])
        late = sdk_log("late one", t + 300_000)
        late.scope_logs[0].log_records.add().body.string_value = "another record"  # not a duplicate
        late.scope_logs[0].log_records[1].time_unix_nano = t
        view.observe("logs", [late])
        self.assertEqual([r.body.string_value for r in late.scope_logs[0].log_records], ["another record"])
        self.assertEqual(seen, [1])
        view.observe("logs", [sdk_log("late one", t)])  # a second SDK record of the same text: not dropped
        self.assertEqual(seen, [1])

    def test_two_identical_records_need_two_sdk_copies(self):
        self.start()
        t = T0 + 800 * MS
        self.view.observe("logs", [sdk_log("same", t)])
        self.conv.process([ev("function", t, text_line("INFO", t, RID, "same"))] * 2)
        out = self.done()
        self.assertEqual([r.body.string_value for r in self.function_logs(out)], ["same"])
        self.assertEqual(out.deduplicated, 1)

    def test_json_format_with_whole_seconds(self):
        self.start()
        t = T0 + 1_250 * MS
        self.view.observe("logs", [sdk_log("json one", t, severity=13)])
        record = {"timestamp": "2024-05-01T10:00:01Z", "level": "WARNING", "message": "json one", "logger": "root",
                  "requestId": RID}
        self.conv.process([ev("function", t, record)])
        out = self.done()
        self.assertEqual(self.function_logs(out), [])
        self.assertEqual(out.deduplicated, 1)

    def test_severity_or_time_mismatch_is_not_a_duplicate(self):
        self.start()
        t = T0 + 800 * MS
        self.view.observe("logs", [sdk_log("x", t, severity=17), sdk_log("y", t + 50 * MS)])
        self.conv.process([ev("function", t, text_line("INFO", t, RID, "x")),
                           ev("function", t, text_line("INFO", t, RID, "y"))])
        self.assertEqual(len(self.function_logs(self.done())), 2)

    def test_held_lines_are_released_at_shutdown_and_when_over_budget(self):
        self.start()
        t = T0 + 800 * MS
        first = self.conv.process([ev("function", t, text_line("INFO", t, RID, f"line {i}")) for i in range(5000)])
        self.assertEqual(first.log_count, 4097)  # over the budget: the oldest invocation's were decided
        out = self.conv.on_shutdown("timeout", NOW)
        self.assertEqual(len(self.function_logs(out)), 5000 - 4097)

    def test_held_bytes_are_bounded_too(self):
        self.start()
        t = T0 + 800 * MS
        big = "y" * 200_000
        first = self.conv.process([ev("function", t, text_line("INFO", t, RID, f"{i} {big}")) for i in range(30)])
        self.assertEqual(first.log_count, 21)  # 21 lines of 200 kB passed 4 MiB: decided at once
        self.assertEqual(self.conv.on_shutdown("timeout", NOW).log_count, 9)

    def test_next_invoke_releases_lines_whose_runtime_done_never_came(self):
        """Subscribed to function logs only: no runtimeDone ever ends the hold; the next INVOKE does."""
        self.conv.on_invoke(RID, None, ARN, HEADER)
        t = T0 + 800 * MS
        self.assertEqual(self.conv.process([ev("function", t, text_line("INFO", t, RID, "waiting"))]).log_count, 0)
        self.conv.on_invoke("req-next", None, ARN, HEADER.replace("fd45", "fd46"))
        out = self.conv.process([ev("function", t + 10**9, "next one starts\n")])
        self.assertEqual(sorted(r.body.string_value for r in self.function_logs(out)), ["next one starts", "waiting"])

    def test_without_a_view_nothing_is_held(self):
        conv = TelemetryConverter(make_resource(), self.metrics, self.loss, clock_ns=lambda: NOW)
        conv.process([copy.deepcopy(START)])
        t = T0 + 800 * MS
        self.assertEqual(conv.process([ev("function", t, text_line("INFO", t, RID, "now"))]).log_count, 1)


TRACEBACK = ('[ERROR] ValueError: bad input 42\rTraceback (most recent call last):\r'
             '\u00a0\u00a0File "/var/task/app.py", line 9, in handler\r\u00a0\u00a0\u00a0\u00a0raise ValueError("bad input 42")\n')


class ExceptionsAndStructuredRecords(JoinBase):
    def test_uncaught_exception_text_line(self):
        first = self.conv.process([copy.deepcopy(START), ev("function", T0 + 900 * MS, TRACEBACK)])
        done = dict(copy.deepcopy(RUNTIME_DONE), record=dict(RUNTIME_DONE["record"], status="error",
                                                               errorType="Runtime.Unknown"))
        out = self.conv.process([done])
        (rec,) = [r for _, r in parse_logs(first)]  # the runtime's own line: nothing to wait for
        self.assertEqual((rec.severity_number, rec.severity_text), (17, "ERROR"))
        self.assertEqual(rec.event_name, "faas.invocation.exception")
        self.assertEqual(rec.body.string_value, "ValueError: bad input 42")
        a = attrs(rec)
        self.assertEqual(a["exception.type"], "ValueError")
        self.assertEqual(a["exception.message"], "bad input 42")
        self.assertEqual(a["exception.stacktrace"], 'Traceback (most recent call last):\n  File "/var/task/app.py", '
                                                    'line 9, in handler\n    raise ValueError("bad input 42")')
        self.assertEqual(rec.trace_id, TRACE)
        inv = by_name(parse_spans(out))["my-fn"][0]
        self.assertEqual(attrs(inv)["error.type"], "ValueError")  # the exception, not Runtime.Unknown
        self.assertEqual(attrs(inv)["aws.lambda.error_type"], "Runtime.Unknown")
        self.conv.process([ev("platform.report", T0 + 4 * 10**9, {"requestId": RID, "status": "error",
                                                                 "errorType": "Runtime.Unknown",
                                                                 "metrics": {"durationMs": 10.0}})])
        errors = {attrs(dp)["error.type"]: dp.as_int for dp in self.collect()["faas.errors"].sum.data_points}
        self.assertEqual(errors, {"ValueError": 1})

    def test_uncaught_exception_json_record(self):
        record = {"timestamp": "2024-05-01T10:00:01Z", "level": "ERROR", "errorMessage": "bad input 42",
                  "errorType": "ValueError", "requestId": RID,
                  "stackTrace": ['  File "/var/task/app.py", line 9, in handler\n', '    raise ValueError("x")\n']}
        out = self.conv.process([copy.deepcopy(START), ev("function", T0 + 900 * MS, record)])
        (rec,) = [r for _, r in parse_logs(out)]
        self.assertEqual(rec.event_name, "faas.invocation.exception")
        self.assertEqual(rec.body.string_value, "bad input 42")
        self.assertEqual(rec.time_unix_nano, T0 + 10**9)
        a = attrs(rec)
        self.assertEqual((a["exception.type"], a["exception.message"]), ("ValueError", "bad input 42"))
        self.assertEqual(a["exception.stacktrace"], ''.join(record["stackTrace"]))
        self.assertNotIn("requestId", a)

    def test_powertools_record(self):
        """A Powertools Logger.exception() record, as it prints it."""
        self.conv.process([copy.deepcopy(START)])
        record = {
            "level": "ERROR", "location": "handler:17", "message": "could not save",
            "timestamp": "2024-05-01 10:00:01,250+0000", "service": "payments", "cold_start": True,
            "function_name": "my-fn", "function_memory_size": "128", "function_arn": ARN,
            "function_request_id": RID, "xray_trace_id": "1-6352a70e-1e2c502e358361800241fd45",
            "exception": 'Traceback (most recent call last):\n  File "/var/task/app.py", line 17, in handler\n'
                         '    save()\nKeyError: \'user\'',
            "exception_name": "KeyError", "order_id": 7,
        }
        self.conv.process([ev("function", T0 + 3 * 10**9, json.dumps(record) + "\n")])
        (rec,) = [r for _, r in parse_logs(self.conv.process([copy.deepcopy(RUNTIME_DONE)]))]
        self.assertEqual(rec.time_unix_nano, T0 + 1250 * MS)
        self.assertEqual((rec.severity_number, rec.body.string_value), (17, "could not save"))
        self.assertEqual((rec.trace_id, rec.span_id), (TRACE, XRAY_PARENT))
        self.assertEqual(attrs(rec), {
            "exception.type": "KeyError", "exception.message": "'user'", "exception.stacktrace": record["exception"],
            "code.function.name": "handler", "code.line.number": 17, "faas.coldstart": True,
            "powertools.service": "payments", "order_id": 7, "faas.invocation_id": RID,
        })
        self.assertEqual(rec.event_name, "")  # a logged exception, not the runtime's uncaught one

    def test_powertools_service_same_as_resource_is_dropped_and_other_trace_kept(self):
        self.conv.process([copy.deepcopy(START)])
        record = {"level": "INFO", "message": "m", "timestamp": "2024-05-01T10:00:01.250+02:00", "service": "my-fn",
                  "xray_trace_id": "1-00000000-000000000000000000000001", "location": "/var/task/app.py:handler:3"}
        first = self.conv.process([ev("function", T0 + 3 * 10**9, record)])
        (rec,) = [r for out in (first, self.conv.process([copy.deepcopy(RUNTIME_DONE)])) for _, r in parse_logs(out)]
        self.assertEqual(rec.time_unix_nano, T0 + 1250 * MS - 2 * 3600 * 10**9)
        a = attrs(rec)
        self.assertNotIn("powertools.service", a)
        self.assertEqual(a["xray_trace_id"], "1-00000000-000000000000000000000001")  # not this record's trace
        self.assertEqual((a["code.file.path"], a["code.function.name"], a["code.line.number"]),
                         ("/var/task/app.py", "handler", 3))


class InitAttempts(JoinBase):
    def test_each_failed_attempt_is_an_error_span(self):
        """Suppressed init after a failed one: runtimeDone may say success while the report says error."""
        def attempt(phase, t):
            return [ev("platform.initStart", t, {"initializationType": "on-demand", "phase": phase}),
                    ev("platform.initRuntimeDone", t + 100 * MS, {"initializationType": "on-demand", "phase": phase,
                                                                  "status": "success"}),
                    ev("platform.initReport", t + 101 * MS, {"initializationType": "on-demand", "phase": phase,
                                                             "status": "error", "errorType": "Runtime.ImportModuleError",
                                                             "metrics": {"durationMs": 101.0}})]
        self.conv.process(attempt("init", T0) + attempt("invoke", T0 + 500 * MS))
        spans = parse_spans(self.conv.on_shutdown("failure", NOW))
        inits = [s for s in spans if s.name == "init"]
        self.assertEqual(len(inits), 2)
        for span in inits:
            self.assertEqual(span.status.code, trace_pb2.Status.STATUS_CODE_ERROR)
            self.assertEqual(attrs(span)["error.type"], "Runtime.ImportModuleError")
        self.assertEqual(sorted(attrs(s)["aws.lambda.init.phase"] for s in inits), ["init", "invoke"])

    def test_a_redelivered_batch_does_not_make_a_second_init(self):
        batch = copy.deepcopy([INIT_START, INIT_RUNTIME_DONE, INIT_REPORT])
        self.conv.process(batch)
        self.conv.process(copy.deepcopy(batch))  # the same POST again (a retry after a slow answer)
        spans = parse_spans(self.conv.process(invocation(RID, T0 + 700 * MS, tracing=TRACING)))
        self.assertEqual([s.name for s in spans].count("init"), 1)
        self.assertEqual(self.ignored().get("duplicate"), 3)

    def test_events_of_two_attempts_matched_by_phase_not_arrival(self):
        events = [ev("platform.initStart", T0, {"phase": "init"}),
                  ev("platform.initStart", T0 + 10 * MS, {"phase": "invoke"}),
                  ev("platform.initReport", T0 + 20 * MS, {"phase": "invoke", "status": "success",
                                                           "metrics": {"durationMs": 10.0}}),
                  ev("platform.initReport", T0 + 30 * MS, {"phase": "init", "status": "error", "errorType": "X.Y",
                                                           "metrics": {"durationMs": 30.0}})]
        self.conv.process(events)
        inits = {attrs(s)["aws.lambda.init.phase"]: s for s in parse_spans(self.conv.on_shutdown("spindown", NOW))}
        self.assertEqual(inits["init"].status.code, trace_pb2.Status.STATUS_CODE_ERROR)
        self.assertEqual(inits["invoke"].status.code, trace_pb2.Status.STATUS_CODE_UNSET)
        self.assertEqual(inits["init"].end_time_unix_nano - inits["init"].start_time_unix_nano, 30 * MS)


class SnapStartRestore(JoinBase):
    SNAP_INIT = [ev("platform.initStart", T0 - 3600 * 10**9, {"initializationType": "snap-start", "phase": "init"}),
                 ev("platform.initRuntimeDone", T0 - 3599 * 10**9, {"initializationType": "snap-start", "phase": "init",
                                                                    "status": "success"}),
                 ev("platform.initReport", T0 - 3599 * 10**9, {"initializationType": "snap-start", "phase": "init",
                                                               "status": "success", "metrics": {"durationMs": 900.0}})]
    RESTORE = [ev("platform.restoreStart", T0, {"runtimeVersion": "python:3.13"}),
               ev("platform.restoreRuntimeDone", T0 + 300 * MS, {"status": "success"}),
               ev("platform.restoreReport", T0 + 301 * MS, {"status": "success", "metrics": {"durationMs": 301.5}})]

    def check(self, events):
        report = invocation(RID, T0 + 700 * MS, tracing=TRACING)
        report[2]["record"]["metrics"]["restoreDurationMs"] = 301.5  # also in platform.report: counted once
        out = self.conv.process(copy.deepcopy(events) + report)
        names = [s.name for s in parse_spans(out)]
        self.assertEqual(names.count("restore"), 1)
        self.assertNotIn("init", names)  # the snapshot's init is not this environment's cold start
        m = self.collect()
        self.snapshot_ignored = self.ignored(m).get("snapshot_init")
        self.assertEqual(m["aws.lambda.restore_duration"].histogram.data_points[0].count, 1)
        self.assertEqual(m["aws.lambda.restore_duration"].histogram.data_points[0].sum, 0.3015)
        self.assertEqual(m["faas.coldstarts"].sum.data_points[0].as_int, 1)
        self.assertNotIn("faas.init_duration", m)
        (restore,) = [s for s in parse_spans(out) if s.name == "restore"]
        self.assertEqual((restore.trace_id, restore.parent_span_id), (TRACE, XRAY_PARENT))

    def test_snapshot_init_before_restore_events(self):
        self.check(self.SNAP_INIT + self.RESTORE)

    def test_snapshot_init_delivered_after_restore(self):
        self.check(self.RESTORE + self.SNAP_INIT)
        self.assertEqual(self.snapshot_ignored, 3)

    def test_renew_after_restore_gives_each_copy_its_own_ids(self):
        twin = TelemetryConverter(make_resource(), MetricsState(make_resource(), "cumulative", self.loss),
                                  self.loss, clock_ns=lambda: NOW)
        twin._ids._random.setstate(self.conv._ids._random.getstate())  # two copies of one snapshot
        same = [IdGenerator.span_id(c._ids) for c in (self.conv, twin)]
        self.assertEqual(same[0], same[1])
        self.conv.process(invocation("before-restore", T0))
        for c in (self.conv, twin):
            c.renew_after_restore()
        a = {s.span_id for s in parse_spans(self.conv.process(invocation(RID, T0)))}
        b = {s.span_id for s in parse_spans(twin.process(invocation(RID, T0)))}
        self.assertTrue(a and b and not a & b)
        # per-invocation state cleared: the same request id is a new invocation, and a cold one
        inv = by_name(parse_spans(self.conv.process(invocation("after", T0 + 10**9))))["my-fn"][0]
        self.assertIs(attrs(inv)["faas.coldstart"], False)


class ManagedInstances(JoinBase):
    def test_report_with_duration_only_gives_only_metrics_with_data(self):
        start = ev("platform.start", T0, {"requestId": RID, "tracing": TRACING})
        report = ev("platform.report", T0 + 120 * MS, {"requestId": RID, "status": "success",
                                                       "metrics": {"durationMs": 120.0},
                                                       "spans": [{"name": "responseLatency", "start": iso(T0),
                                                                  "durationMs": 110.0}]})
        out = self.conv.process([start, report])
        self.assertEqual(out.started, [RID])
        self.assertEqual(out.reports, [RID])
        spans = by_name(parse_spans(out))
        self.assertEqual(spans["my-fn"][0].end_time_unix_nano, T0 + 120 * MS)
        self.assertEqual(spans["responseLatency"][0].parent_span_id, spans["my-fn"][0].span_id)
        m = self.collect()
        self.assertEqual(m["faas.invocations"].sum.data_points[0].as_int, 1)
        self.assertEqual(m["faas.invoke_duration"].histogram.data_points[0].sum, 0.12)
        for absent in ("aws.lambda.billed_duration", "faas.mem_usage", "faas.init_duration", "faas.coldstarts"):
            self.assertNotIn(absent, m)
        self.assertEqual(self.ignored(), {})

    def test_forty_overlapping_invocations_with_interleaved_logs(self):
        rids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(40)]
        headers = {rid: f"Root=1-6352a70e-{i:024x};Parent={i + 1:016x};Sampled=1" for i, rid in enumerate(rids)}
        events = [ev("platform.start", T0 + i * MS, {"requestId": rid, "tracing": {"value": headers[rid]}})
                  for i, rid in enumerate(rids)]
        for round_ in range(3):  # every invocation logs while all are in flight, JSON and text
            for i, rid in enumerate(rids):
                t = T0 + (100 + round_ * 50 + i) * MS
                record = ({"timestamp": iso(t), "level": "INFO", "message": f"{rid} says {round_}", "requestId": rid}
                          if round_ % 2 else text_line("INFO", t, rid, f"{rid} says {round_}"))
                events.append(ev("function", t, record))
        for i, rid in enumerate(reversed(rids)):
            events.append(ev("platform.report", T0 + (400 + i) * MS, {"requestId": rid, "status": "success",
                                                                      "metrics": {"durationMs": 300.0}}))
        random_order = events[:40] + events[40:160] + events[160:]
        out = self.conv.process(random_order)
        spans = [s for s in parse_spans(out) if s.name == "my-fn"]
        self.assertEqual(sorted(attrs(s)["faas.invocation_id"] for s in spans), sorted(rids))
        by_rid = {attrs(s)["faas.invocation_id"]: s for s in spans}
        logs = [r for _, r in parse_logs(out)]
        self.assertEqual(len(logs), 120)
        for rec in logs:
            rid = attrs(rec)["faas.invocation_id"]
            self.assertTrue(rec.body.string_value.startswith(rid))
            self.assertEqual((rec.trace_id, rec.span_id), (by_rid[rid].trace_id, by_rid[rid].span_id))
        self.assertEqual(self.counter("faas.invocations"), 40)

    def test_a_line_without_request_id_is_not_guessed_into_one_of_several_running(self):
        a, b = "00000000-0000-4000-8000-00000000000a", "00000000-0000-4000-8000-00000000000b"
        starts = [ev("platform.start", T0, {"requestId": a, "tracing": TRACING}),
                  ev("platform.start", T0 + MS, {"requestId": b})]
        out = self.conv.process(starts + [ev("function", T0 + 5 * MS, "print from some worker\n"),
                                          ev("function", T0 + 6 * MS, text_line("INFO", T0 + 6 * MS, b, "named"))])
        self.conv.process([ev("platform.report", T0 + 9 * MS, {"requestId": x, "status": "success",
                                                               "metrics": {"durationMs": 9.0}}) for x in (a, b)])
        (anonymous,) = [r for _, r in parse_logs(out)]
        self.assertEqual((anonymous.trace_id, attrs(anonymous).get("faas.invocation_id")), (b"", None))

    def test_instance_fields_of_schema_2025_01_29_reach_the_resource(self):
        self.conv.process([ev("platform.initStart", T0, {"initializationType": "lambda-managed-instances",
                                                          "phase": "init", "instanceId": "i-0abc",
                                                          "instanceMaxMemory": 2147483648})])
        first = self.conv.process([ev("platform.initStart", T0 + MS, {"initializationType": "lambda-managed-instances",
                                                                       "phase": "init", "instanceMaxMemory": 4294967296})])
        self.assertEqual(first.instance_max_memory, 4294967296)
        out = self.conv.process(invocation(RID, T0 + MS, tracing=TRACING))
        self.assertIsNone(out.instance_max_memory)
        resource = attrs(out.resource_spans.resource)
        self.assertEqual((resource["faas.instance"], resource["faas.max_memory"]), ("i-0abc", 4294967296))


class RecordTemplates(JoinBase):
    """What an invocation's records share is built once per invocation and copied into each
    record (``_LogTemplates``, the children's span template): every record must still carry
    its own batch's observed time and its own invocation's context."""

    B = "00000000-0000-4000-8000-00000000000b"
    HEADER_B = "Root=1-6352a70e-00000000000000000000000b;Parent=000000000000000b;Sampled=1"

    def setUp(self):
        super().setUp()
        self.now = NOW
        self.conv = TelemetryConverter(make_resource(), self.metrics, self.loss, xray_mode="join",
                                       clock_ns=lambda: self.now, sdk_view=self.view)

    def batch(self, now, events):
        self.now = now
        return self.conv.process(events)

    def test_each_batch_stamps_its_own_observed_time(self):
        first = self.batch(NOW, [START, ev("function", T0 + 800 * MS, "print one\n"),
                                 ev("function", T0 + 801 * MS, text_line("INFO", T0 + 801 * MS, RID, "held"))])
        second = self.batch(NOW + 5 * MS, [ev("function", T0 + 900 * MS, "print two\n")])
        third = self.batch(NOW + 9 * MS, [RUNTIME_DONE])  # releases the held line
        (one,) = [r for _, r in parse_logs(first)]
        (two,) = [r for _, r in parse_logs(second)]
        (held,) = [r for _, r in parse_logs(third)]
        self.assertEqual([r.observed_time_unix_nano for r in (one, two, held)], [NOW, NOW + 5 * MS, NOW + 9 * MS])
        self.assertEqual(first.resource_logs.scope_logs[0].log_records[0].observed_time_unix_nano, NOW)  # a copy
        for rec in (one, two, held):
            self.assertEqual((rec.trace_id, rec.span_id, rec.flags), (TRACE, XRAY_PARENT, 1))
            self.assertEqual([kv.key for kv in rec.attributes], ["faas.invocation_id"])
            self.assertEqual(attrs(rec)["faas.invocation_id"], RID)
        self.assertEqual((held.severity_text, held.body.string_value), ("INFO", "held"))

    def test_the_next_invocation_has_its_own_context(self):
        a = invocation(RID, T0, tracing=TRACING)
        b = invocation(self.B, T0 + 200 * MS, tracing={"value": self.HEADER_B})
        lines = [ev("function", T0 + 50 * MS, "from a\n"), ev("function", T0 + 250 * MS, "from b\n")]
        out = self.batch(NOW, a[:1] + lines[:1] + a[1:] + b[:1] + lines[1:] + b[1:])
        logs = {r.body.string_value: r for _, r in parse_logs(out)}
        self.assertEqual((logs["from a"].span_id, attrs(logs["from a"])["faas.invocation_id"]), (XRAY_PARENT, RID))
        self.assertEqual((logs["from b"].trace_id, logs["from b"].span_id, attrs(logs["from b"])["faas.invocation_id"]),
                         (bytes.fromhex("6352a70e00000000000000000000000b"), bytes.fromhex("000000000000000b"), self.B))
        spans = parse_spans(out)
        parents = {s.span_id: s for s in spans if s.name == "my-fn"}
        for child in (s for s in spans if s.name != "my-fn"):
            parent = parents[child.parent_span_id]
            self.assertEqual(child.trace_id, parent.trace_id)
            self.assertEqual(attrs(child)["faas.invocation_id"], attrs(parent)["faas.invocation_id"])

    def test_after_a_restore_lines_take_the_new_copys_invocation(self):
        self.batch(NOW, [START, ev("function", T0 + 800 * MS, "before\n")])
        self.conv.renew_after_restore()
        start_b = ev("platform.start", T0 + 2000 * MS, {"requestId": self.B, "tracing": {"value": self.HEADER_B}})
        out = self.batch(NOW + MS, [start_b, ev("function", T0 + 2100 * MS, "after\n")])
        (after,) = [r for _, r in parse_logs(out)]
        self.assertEqual((after.span_id, attrs(after)["faas.invocation_id"]), (bytes.fromhex("000000000000000b"), self.B))

    def test_overlapping_invocations_share_no_template(self):
        """Managed Instances: a line at a time two invocations run has no context; once one has
        ended, a line of the other's time is the other's; a line that names its request id is its own."""
        start_b = ev("platform.start", T0 + 701 * MS, {"requestId": self.B, "tracing": {"value": self.HEADER_B}})
        out = self.batch(NOW, [START, start_b, ev("function", T0 + 705 * MS, "ambiguous\n"),
                               ev("function", T0 + 706 * MS, text_line("INFO", T0 + 706 * MS, RID, "named a")),
                               ev("platform.runtimeDone", T0 + 710 * MS, {"requestId": RID, "status": "success"}),
                               ev("function", T0 + 720 * MS, "only b runs\n")])
        logs = {r.body.string_value: r for _, r in parse_logs(out)}
        self.assertEqual((logs["ambiguous"].trace_id, list(logs["ambiguous"].attributes)), (b"", []))
        self.assertEqual(attrs(logs["named a"])["faas.invocation_id"], RID)
        self.assertEqual((logs["only b runs"].span_id, attrs(logs["only b runs"])["faas.invocation_id"]),
                         (bytes.fromhex("000000000000000b"), self.B))

    def test_a_structured_records_own_attributes_come_before_the_invocation_id(self):
        record = {"timestamp": iso(T0 + 800 * MS), "level": "ERROR", "message": "failed", "requestId": RID,
                  "errorType": "ValueError", "order_id": 7}
        out = self.batch(NOW, [START, ev("function", T0 + 800 * MS, record), RUNTIME_DONE])
        (rec,) = [r for _, r in parse_logs(out)]
        self.assertEqual([kv.key for kv in rec.attributes], ["order_id", "exception.type", "faas.invocation_id"])
        self.assertEqual((rec.trace_id, rec.span_id), (TRACE, XRAY_PARENT))


class BenchFloor(unittest.TestCase):
    """bench_convert's floor (the leanest converter of its batches) is only a fair floor if it
    builds what the converter builds: the same spans (child span ids aside: random) and log records."""

    def test_the_floor_builds_the_converters_output(self):
        import random

        from bench.bench_convert import _floor_converter
        from bench.bench_throughput import make_batch
        from lambda_otel.resource import to_proto

        resource = to_proto({"service.name": "bench-function", "faas.name": "bench-function"})
        loss = L.LossCounter()
        conv = TelemetryConverter(resource, MetricsState(resource, "cumulative", loss), loss,
                                  clock_ns=lambda: NOW, sdk_view=FunctionSdkView())
        floor = _floor_converter(resource, MetricsState(resource, "cumulative", loss))
        rng = random.Random(8)
        conv.process(json.loads(make_batch(rng, T0)))  # the cold start: the floor knows none
        events = json.loads(make_batch(rng, T0 + 10**9))
        out = conv.process(copy.deepcopy(events))
        floor_spans, floor_logs = floor(events, NOW)

        def spans(rs):
            found = [s for ss in rs.scope_spans for s in ss.spans]
            for s in found:
                if s.parent_span_id:
                    s.span_id = b""
            return sorted(found, key=lambda s: (s.trace_id, s.name))

        def logs(rl):
            return sorted((r for sl in rl.scope_logs for r in sl.log_records), key=lambda r: r.time_unix_nano)

        self.assertEqual(len(spans(out.resource_spans)), 307)
        self.assertEqual(spans(out.resource_spans), spans(floor_spans))
        self.assertEqual(logs(out.resource_logs), logs(floor_logs))


class ActiveInvocationMemo(JoinBase):
    """``_active_at`` remembers the answers it had to look up (lines between invocations, several
    running) until the timeline changes: each case asks the same time again after a change."""

    B = "00000000-0000-4000-8000-00000000000b"
    HEADER_B = "Root=1-6352a70e-00000000000000000000000b;Parent=000000000000000b;Sampled=1"
    SPAN_B = bytes.fromhex("000000000000000b")

    def line_at(self, ns, text="between\n"):
        (rec,) = [r for _, r in parse_logs(self.conv.process([ev("function", ns, text)]))]
        return rec.span_id, attrs(rec).get("faas.invocation_id")

    def test_a_new_invocation_changes_the_answer_for_the_same_time(self):
        self.conv.process(invocation(RID, T0, tracing=TRACING))  # ends at T0 + 100 ms
        self.conv.on_invoke(self.B)  # opened, not started: the scan, and its memo
        later = T0 + 500 * MS
        self.assertEqual(self.line_at(later), (XRAY_PARENT, RID))  # the most recent one started before
        self.assertEqual(self.line_at(later), (XRAY_PARENT, RID))  # remembered
        self.conv.process([ev("platform.start", T0 + 400 * MS, {"requestId": self.B, "tracing": {"value": self.HEADER_B}})])
        self.assertEqual(self.line_at(later), (self.SPAN_B, self.B))

    def test_in_one_batch_a_start_between_two_lines_counts(self):
        self.conv.process(invocation(RID, T0, tracing=TRACING))
        self.conv.on_invoke(self.B)
        later = T0 + 500 * MS
        out = self.conv.process([ev("function", later, "first\n"),
                                 ev("platform.start", T0 + 400 * MS, {"requestId": self.B,
                                                                      "tracing": {"value": self.HEADER_B}}),
                                 ev("function", later, "second\n")])
        logs = {r.body.string_value: attrs(r).get("faas.invocation_id") for _, r in parse_logs(out)}
        self.assertEqual(logs, {"first": RID, "second": self.B})

    def test_a_restore_forgets_the_answers(self):
        self.conv.process(invocation(RID, T0, tracing=TRACING))
        self.conv.on_invoke(self.B)
        later = T0 + 500 * MS
        self.assertEqual(self.line_at(later)[1], RID)
        self.conv.renew_after_restore()
        self.assertEqual(self.line_at(later), (b"", None))  # this copy has seen no invocation

    def test_overlapping_invocations_ambiguous_then_one(self):
        start_b = ev("platform.start", T0 + 701 * MS, {"requestId": self.B, "tracing": {"value": self.HEADER_B}})
        self.conv.process([START, start_b])
        t = T0 + 750 * MS
        self.assertEqual(self.line_at(t), (b"", None))  # both run: nobody's
        self.assertEqual(self.line_at(t), (b"", None))  # remembered
        self.conv.process([ev("platform.runtimeDone", T0 + 720 * MS, {"requestId": RID, "status": "success"})])
        self.assertEqual(self.line_at(t), (self.SPAN_B, self.B))  # only B runs at t now

    def test_shutdown_forgets_the_answers(self):
        start_b = ev("platform.start", T0 + 701 * MS, {"requestId": self.B, "tracing": {"value": self.HEADER_B}})
        self.conv.process([START, start_b])
        t = T0 + 750 * MS
        self.assertEqual(self.line_at(t), (b"", None))
        self.conv.on_shutdown("timeout", now_ns=T0 + 800 * MS)  # both end at T0 + 800 ms
        self.assertEqual(self.line_at(T0 + 900 * MS)[1], self.B)  # after both: the most recent started
        self.assertLessEqual(len(self.conv._active_memo), 1)

    def test_three_overlapping_one_ends_the_answer_follows(self):
        """Still two open after one ended: the answer is looked up again, not remembered from before."""
        c = "00000000-0000-4000-8000-00000000000c"
        start_b = ev("platform.start", T0 + 701 * MS, {"requestId": self.B, "tracing": {"value": self.HEADER_B}})
        start_c = ev("platform.start", T0 + 790 * MS, {"requestId": c})
        self.conv.process([START, start_b, start_c])
        t = T0 + 750 * MS  # A and B run; C starts later
        self.assertEqual(self.line_at(t), (b"", None))
        self.conv.process([ev("platform.runtimeDone", T0 + 720 * MS, {"requestId": RID, "status": "success"})])
        self.assertEqual(self.line_at(t), (self.SPAN_B, self.B))


class ConvertDiffTool(unittest.TestCase):
    """bench.convert_diff (the converter's output against another checkout's) runs, and finds a
    checkout equal to itself."""

    def test_this_checkout_against_itself(self):
        import contextlib
        import io
        from pathlib import Path

        from bench import convert_diff

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = convert_diff.main(["--against", str(Path(convert_diff.__file__).resolve().parent.parent)])
        self.assertEqual(code, 0, out.getvalue())
        self.assertIn("same output: 16 scenarios", out.getvalue())
