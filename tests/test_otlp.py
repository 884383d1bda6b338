"""lambda_otel.otlp: the per-signal OTLP facts, the wire encodings and the AnyValue setters."""

import json
import os
import subprocess
import sys
import unittest

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from lambda_otel import otlp
from lambda_otel.loss import LOGS, METRICS, SIGNALS, TRACES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRACE_ID = bytes.fromhex("5b8efff798038103d269b633813fc60c")
SPAN_ID = bytes.fromhex("eee19b7ec3c1b174")
PARENT_ID = bytes.fromhex("eee19b7ec3c1b173")


def spans(n: int = 2) -> trace_pb2.ResourceSpans:
    rs = trace_pb2.ResourceSpans()
    rs.resource.attributes.add(key="service.name").value.string_value = "svc"
    ss = rs.scope_spans.add()
    ss.scope.name = "test"
    for i in range(n):
        span = ss.spans.add(name=f"s{i}", trace_id=TRACE_ID, span_id=SPAN_ID, parent_span_id=PARENT_ID,
                            kind=trace_pb2.Span.SPAN_KIND_SERVER, start_time_unix_nano=1, end_time_unix_nano=2)
        span.links.add(trace_id=TRACE_ID, span_id=PARENT_ID)
        span.status.code = trace_pb2.Status.STATUS_CODE_ERROR
    return rs


def logs(n: int = 2) -> logs_pb2.ResourceLogs:
    rl = logs_pb2.ResourceLogs()
    sl = rl.scope_logs.add()
    for i in range(n):
        lr = sl.log_records.add(trace_id=TRACE_ID, span_id=SPAN_ID, severity_number=logs_pb2.SEVERITY_NUMBER_INFO)
        lr.body.string_value = f"line {i}"
    return rl


def gauge(n: int = 2) -> metrics_pb2.ResourceMetrics:
    rm = metrics_pb2.ResourceMetrics()
    metric = rm.scope_metrics.add().metrics.add(name="g")
    for i in range(n):
        metric.gauge.data_points.add(as_int=i, time_unix_nano=2**62)
    return rm


ITEMS = {TRACES: spans, METRICS: gauge, LOGS: logs}


class SpecTest(unittest.TestCase):
    def test_every_signal_has_its_classes_paths_and_fields(self):
        expected = {
            TRACES: (ExportTraceServiceRequest, "/v1/traces", "resource_spans", "rejected_spans"),
            METRICS: (ExportMetricsServiceRequest, "/v1/metrics", "resource_metrics", "rejected_data_points"),
            LOGS: (ExportLogsServiceRequest, "/v1/logs", "resource_logs", "rejected_log_records"),
        }
        for signal in SIGNALS:
            s = otlp.spec(signal)
            request_cls, path, items, rejected = expected[signal]
            self.assertIs(s.request_class, request_cls)
            self.assertEqual((s.path, s.items_field, s.rejected_field), (path, items, rejected))
            self.assertIn(rejected, s.response_class.DESCRIPTOR.fields_by_name["partial_success"]
                          .message_type.fields_by_name)
            self.assertEqual(otlp.PATHS[path], signal)
        with self.assertRaises(ValueError):
            otlp.spec("profiles")

    def test_import_does_not_load_protobuf(self):
        code = ("import sys, lambda_otel.otlp; "
                "print(sorted(m for m in ('google.protobuf', 'json') if m in sys.modules))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                             cwd=ROOT)
        self.assertEqual(out.stdout.strip(), "[]", out.stderr)


class SignalUrlTest(unittest.TestCase):
    def test_path_is_appended(self):
        self.assertEqual(otlp.signal_url("https://h:4318", TRACES), "https://h:4318/v1/traces")
        self.assertEqual(otlp.signal_url("https://h/otlp/", LOGS), "https://h/otlp/v1/logs")

    def test_query_string_stays_after_the_path(self):
        self.assertEqual(otlp.signal_url("https://h/base?token=X&a=b", METRICS), "https://h/base/v1/metrics?token=X&a=b")
        self.assertEqual(otlp.signal_url("https://u:p@h:443?token=X", TRACES), "https://u:p@h:443/v1/traces?token=X")

    def test_config_builds_per_signal_urls_with_the_query_after_the_path(self):
        from lambda_otel.config import load_config

        config = load_config({"LAMBDA_OTEL_EXPORTER_ENDPOINT": "https://backend.example/otlp?token=X"})
        self.assertEqual(config.exporter.endpoint(TRACES), "https://backend.example/otlp/v1/traces?token=X")
        self.assertEqual(config.exporter.endpoint(LOGS), "https://backend.example/otlp/v1/logs?token=X")

    def test_fragment_is_dropped(self):
        self.assertEqual(otlp.signal_url("http://h/#frag", TRACES), "http://h/v1/traces")


class CountRecordsTest(unittest.TestCase):
    def test_counts(self):
        self.assertEqual(otlp.count_records(TRACES, spans(3)), 3)
        self.assertEqual(otlp.count_records(LOGS, logs(4)), 4)
        rm = metrics_pb2.ResourceMetrics()
        sm = rm.scope_metrics.add()
        sm.metrics.add(name="g").gauge.data_points.add()
        s = sm.metrics.add(name="s").sum
        s.data_points.add()
        s.data_points.add()
        sm.metrics.add(name="h").histogram.data_points.add()
        sm.metrics.add(name="e").exponential_histogram.data_points.add()
        sm.metrics.add(name="q").summary.data_points.add()
        sm.metrics.add(name="empty")
        self.assertEqual(otlp.count_records(METRICS, rm), 6)
        with self.assertRaises(ValueError):
            otlp.count_records("profiles", rm)


class EncodingTest(unittest.TestCase):
    def test_protobuf_round_trip_per_signal(self):
        for signal in SIGNALS:
            items = [ITEMS[signal](), ITEMS[signal](1)]
            body = otlp.encode_request(signal, items)
            request = otlp.spec(signal).request_class.FromString(body)
            self.assertEqual(list(getattr(request, otlp.spec(signal).items_field)), items)
            self.assertEqual(otlp.decode_request(signal, body), request)

    def test_json_uses_hex_ids_and_integer_enums(self):
        body = otlp.encode_request(TRACES, [spans(1)], otlp.JSON)
        obj = json.loads(body)
        span = obj["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
        self.assertEqual(span["traceId"], TRACE_ID.hex())
        self.assertEqual(span["spanId"], SPAN_ID.hex())
        self.assertEqual(span["parentSpanId"], PARENT_ID.hex())
        self.assertEqual(span["links"][0], {"traceId": TRACE_ID.hex(), "spanId": PARENT_ID.hex()})
        self.assertEqual(span["kind"], trace_pb2.Span.SPAN_KIND_SERVER)
        self.assertEqual(span["status"]["code"], trace_pb2.Status.STATUS_CODE_ERROR)
        log = json.loads(otlp.encode_request(LOGS, [logs(1)], otlp.JSON))
        record = log["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
        self.assertEqual((record["traceId"], record["spanId"]), (TRACE_ID.hex(), SPAN_ID.hex()))
        self.assertEqual(record["severityNumber"], logs_pb2.SEVERITY_NUMBER_INFO)

    def test_json_64_bit_integers_are_numbers_when_a_double_holds_them(self):
        rm = metrics_pb2.ResourceMetrics()
        metric = rm.scope_metrics.add().metrics.add(name="h")
        metric.sum.data_points.add(as_int=42, time_unix_nano=1_700_000_000_123_456_789)
        metric.histogram.data_points.add(count=3, bucket_counts=[1, 2], time_unix_nano=5)
        obj = json.loads(otlp.encode_request(METRICS, [rm], otlp.JSON))
        point = obj["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["histogram"]["dataPoints"][0]
        self.assertEqual((point["count"], point["bucketCounts"], point["timeUnixNano"]), (3, [1, 2], 5))
        rm2 = metrics_pb2.ResourceMetrics()
        rm2.scope_metrics.add().metrics.add(name="s").sum.data_points.add(as_int=2**60, time_unix_nano=1_700_000_000_123_456_789)
        obj = json.loads(otlp.encode_request(METRICS, [rm2], otlp.JSON))
        point = obj["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["sum"]["dataPoints"][0]
        self.assertEqual((point["asInt"], point["timeUnixNano"]), (str(2**60), "1700000000123456789"))
        value = common_pb2.AnyValue(string_value="42")  # a string stays a string
        self.assertEqual(json.loads(otlp.encode_message(value, otlp.JSON)), {"stringValue": "42"})

    def test_json_round_trip_per_signal(self):
        for signal in SIGNALS:
            items = [ITEMS[signal]()]
            body = otlp.encode_request(signal, items, otlp.JSON)
            request = otlp.decode_request(signal, body, otlp.JSON)
            self.assertEqual(list(getattr(request, otlp.spec(signal).items_field)), items)

    def test_bad_bodies_raise_value_error(self):
        for body, content_type in ((b"\xff\xff", otlp.PROTOBUF), (b"{", otlp.JSON), (b"[]", otlp.JSON),
                                   (b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz"}]}]}]}', otlp.JSON)):
            with self.subTest(body=body), self.assertRaises(ValueError):
                otlp.decode_request(TRACES, body, content_type)

    def test_partial_success(self):
        response = otlp.build_response(TRACES, 5, "too old")
        self.assertIsInstance(response, ExportTraceServiceResponse)
        self.assertEqual(otlp.partial_success(TRACES, response.SerializeToString()), (5, "too old"))
        self.assertEqual(otlp.partial_success(TRACES, otlp.encode_message(response, otlp.JSON), otlp.JSON),
                         (5, "too old"))
        negative = otlp.build_response(LOGS, -3).SerializeToString()
        self.assertEqual(otlp.partial_success(LOGS, negative), (0, ""))
        self.assertEqual(otlp.partial_success(METRICS, b"<html>502</html>"), (0, ""))
        self.assertEqual(otlp.partial_success(METRICS, b""), (0, ""))


class AnyValueTest(unittest.TestCase):
    def value(self, v) -> common_pb2.AnyValue:
        target = common_pb2.AnyValue()
        otlp.set_any_value(target, v)
        return target

    def test_scalars(self):
        self.assertEqual(self.value(True).WhichOneof("value"), "bool_value")
        self.assertEqual(self.value(7).int_value, 7)
        self.assertEqual(self.value(1.5).double_value, 1.5)
        self.assertEqual(self.value("x").string_value, "x")
        self.assertEqual(self.value(2**63).string_value, str(2**63))  # beyond int64: as text
        self.assertIsNone(self.value(None).WhichOneof("value"))
        self.assertEqual(self.value("a\ud800b").string_value, "a?b")  # a lone surrogate survives

    def test_nested_values_are_bounded(self):
        v = self.value({"a": [1, {"b": "c"}]})
        self.assertEqual(v.kvlist_value.values[0].key, "a")
        self.assertEqual(v.kvlist_value.values[0].value.array_value.values[1].kvlist_value.values[0].value.string_value, "c")
        deep: object = "leaf"
        for _ in range(20):
            deep = [deep]
        node = self.value(deep)
        for _ in range(otlp.MAX_ANY_DEPTH):
            node = node.array_value.values[0]
        self.assertEqual(node.string_value, "[truncated: nested too deep]")
        self.assertEqual(len(self.value(list(range(1000))).array_value.values), otlp.MAX_ANY_ITEMS)

    def test_set_attributes(self):
        kvs = common_pb2.KeyValueList()
        otlp.set_attributes(kvs.values, {"s": "x", "b": False, "i": 3, "f": 0.5, "big": 2**64})
        got = {kv.key: kv.value for kv in kvs.values}
        self.assertEqual(got["s"].string_value, "x")
        self.assertEqual(got["b"].WhichOneof("value"), "bool_value")
        self.assertEqual(got["i"].int_value, 3)
        self.assertEqual(got["f"].double_value, 0.5)
        self.assertEqual(got["big"].string_value, str(2**64))
        pairs = common_pb2.KeyValueList()
        otlp.set_attributes(pairs.values, (("k", "v"),))
        self.assertEqual(pairs.values[0].key, "k")


class MergeAttributesTest(unittest.TestCase):
    """``merge_attributes`` appends protobuf's own serialisation of each attribute, cached: the
    message it gives must be the one ``set_attributes`` builds, read back by protobuf."""

    ATTRS = {"faas.coldstart": False, "s": "x", "unicode": "h\u00e9llo \u2603", "surrogate": "a\ud800b", "i": 3,
             "big": 2**64, "f": 0.5, "t": True, "one": 1, "one.0": 1.0}

    def test_same_message_as_set_attributes_for_spans_and_log_records(self):
        for cls in (trace_pb2.Span, logs_pb2.LogRecord):
            built, merged = cls(), cls()
            kv = built.attributes.add()  # one set first: a merge appends after what is there
            kv.key, kv.value.string_value = "faas.invocation_id", "r-1"
            merged.CopyFrom(built)
            otlp.set_attributes(built.attributes, self.ATTRS)
            otlp.merge_attributes(merged, self.ATTRS)
            otlp.merge_attributes(merged, {})  # nothing to add: unchanged
            self.assertEqual(cls.FromString(merged.SerializeToString()), built)
            self.assertEqual([kv.key for kv in merged.attributes], ["faas.invocation_id", *self.ATTRS])

    def test_equal_values_of_different_types_are_cached_apart(self):
        span = trace_pb2.Span()
        otlp.merge_attributes(span, {"v": True})
        otlp.merge_attributes(span, {"v": 1})
        otlp.merge_attributes(span, {"v": 1.0})
        self.assertEqual([kv.value.WhichOneof("value") for kv in span.attributes],
                         ["bool_value", "int_value", "double_value"])

    def test_the_cache_is_bounded(self):
        for i in range(otlp._ENCODED_MAX * 3):
            otlp.merge_attributes(trace_pb2.Span(), {"error.type": f"E{i}"})
        self.assertLessEqual(len(otlp._encoded), otlp._ENCODED_MAX)
        span = trace_pb2.Span()
        otlp.merge_attributes(span, {"error.type": "E1"})  # after a clear: built again, the same
        self.assertEqual(span.attributes[0].value.string_value, "E1")


if __name__ == "__main__":
    unittest.main()
