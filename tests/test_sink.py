"""OtlpSink: decoding, recording, and every controllable fault, driven by real HTTP clients."""

import gzip
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import unittest

from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from lambda_otel.local.sink import NON_OTLP_BODY, OtlpSink, Reply

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def trace_request(*names: str) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "sink-test"
    ss = rs.scope_spans.add()
    ss.scope.name = "tests"
    for i, name in enumerate(names):
        span = ss.spans.add()
        span.name = name
        span.trace_id = bytes([1]) * 16
        span.span_id = bytes([i + 1]) * 8
    return req


def metrics_request() -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.add(key="faas.name").value.string_value = "fn"
    m = rm.scope_metrics.add().metrics.add()
    m.name = "faas.invocations"
    m.sum.is_monotonic = True
    for v in (3, 4):
        m.sum.data_points.add().as_int = v
    h = rm.scope_metrics[0].metrics.add()
    h.name = "faas.duration"
    p = h.histogram.data_points.add()
    p.count, p.sum = 1, 12.5
    return req


def logs_request(*bodies: str) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    sl = req.resource_logs.add().scope_logs.add()
    for b in bodies:
        sl.log_records.add().body.string_value = b
    return req


class SinkTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.sink = OtlpSink().start()
        self.addCleanup(self.sink.stop)

    def conn(self) -> http.client.HTTPConnection:
        c = http.client.HTTPConnection("127.0.0.1", self.sink.port, timeout=10)
        self.addCleanup(c.close)
        return c

    def post(self, path, body: bytes, headers=None, conn=None):
        c = conn or self.conn()
        h = {"Content-Type": "application/x-protobuf"}
        h.update(headers or {})
        c.request("POST", path, body=body, headers=h)
        resp = c.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()


class DecodingTest(SinkTestCase):
    def test_protobuf_traces_are_decoded_and_answered_with_otlp_response(self):
        status, headers, body = self.post("/v1/traces", trace_request("a", "b").SerializeToString())
        self.assertEqual(status, 200)
        self.assertEqual(headers["Content-Type"], "application/x-protobuf")
        ExportTraceServiceResponse.FromString(body)  # a valid (empty) response message
        self.assertEqual([s.name for s in self.sink.spans()], ["a", "b"])
        self.assertTrue(self.sink.wait_for_requests(1, timeout=5))  # end is recorded after the write
        item = self.sink.span_items()[0]
        self.assertEqual(item.resource, {"service.name": "sink-test"})
        self.assertEqual(item.scope, "tests")
        rec = self.sink.requests[0]
        self.assertEqual((rec.path, rec.status, rec.outcome, rec.signal), ("/v1/traces", 200, "answered", "traces"))
        self.assertLessEqual(rec.start, rec.end)
        self.assertEqual(rec.body_size, trace_request("a", "b").ByteSize())

    def test_gzip_metrics_are_flattened(self):
        raw = metrics_request().SerializeToString()
        status, _, _ = self.post("/v1/metrics", gzip.compress(raw), {"Content-Encoding": "gzip"})
        self.assertEqual(status, 200)
        points = self.sink.metrics()
        self.assertEqual([(p.name, p.point.as_int) for p in points[:2]], [("faas.invocations", 3), ("faas.invocations", 4)])
        self.assertEqual(points[2].name, "faas.duration")
        self.assertEqual(points[2].point.sum, 12.5)
        self.assertEqual(points[0].resource, {"faas.name": "fn"})
        self.assertEqual(self.sink.requests[0].headers["content-encoding"], "gzip")
        self.assertEqual(self.sink.requests[0].body_size, len(gzip.compress(raw)))

    def test_json_logs_get_a_json_response(self):
        body = json_format.MessageToJson(logs_request("hello", "world")).encode()
        status, headers, resp = self.post("/v1/logs", body, {"Content-Type": "application/json"})
        self.assertEqual(status, 200)
        self.assertEqual(headers["Content-Type"], "application/json")
        json.loads(resp)
        self.assertEqual([r.body.string_value for r in self.sink.log_records()], ["hello", "world"])

    def test_otlp_json_hex_ids(self):
        body = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{
            "name": "hexed", "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
            "parentSpanId": "eee19b7ec3c1b173", "kind": 2}]}]}]}).encode()
        self.assertEqual(self.post("/v1/traces", body, {"Content-Type": "application/json"})[0], 200)
        span = self.sink.spans()[0]
        self.assertEqual(span.trace_id.hex(), "5b8efff798038103d269b633813fc60c")
        self.assertEqual(span.span_id.hex(), "eee19b7ec3c1b174")
        self.assertEqual(span.parent_span_id.hex(), "eee19b7ec3c1b173")
        self.assertEqual(span.kind, 2)

    def test_bad_body_unknown_path_and_wrong_method(self):
        status, _, body = self.post("/v1/traces", b"\xff\xff\xff garbage")
        self.assertEqual(status, 400)
        self.assertIn(b"cannot decode", body)
        self.assertIsNotNone(self.sink.requests[0].decode_error)
        self.assertEqual(self.post("/v1/traces", b"not gzip", {"Content-Encoding": "gzip"})[0], 400)
        self.assertEqual(self.post("/v2/nope", b"")[0], 404)
        c = self.conn()
        c.request("GET", "/v1/traces")
        self.assertEqual(c.getresponse().status, 405)
        self.assertEqual(self.sink.spans(), [])  # rejected requests contribute no telemetry

    def test_real_sdk_exporter_reaches_the_sink(self):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": "sdk-client"}))
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=self.sink.url("traces"))))
        self.addCleanup(provider.shutdown)
        tracer = provider.get_tracer("t")
        with tracer.start_as_current_span("parent"):
            with tracer.start_as_current_span("child"):
                pass
        self.assertTrue(self.sink.wait_for(lambda: len(self.sink.spans()) == 2, timeout=10))
        names = {i.span.name: i for i in self.sink.span_items()}
        self.assertEqual(names["child"].span.parent_span_id, names["parent"].span.span_id)
        self.assertEqual(names["parent"].resource["service.name"], "sdk-client")


class RecordingTest(SinkTestCase):
    def test_keep_alive_requests_share_a_connection(self):
        c = self.conn()
        for _ in range(3):
            self.assertEqual(self.post("/v1/traces", trace_request("x").SerializeToString(), conn=c)[0], 200)
        self.assertTrue(self.sink.wait_for_requests(3, timeout=5))
        recs = self.sink.requests
        self.assertEqual(len({r.connection_id for r in recs}), 1)
        self.assertEqual([r.nth_on_connection for r in recs], [0, 1, 2])
        # Each request starts when its own bytes arrive, after the previous one ended.
        self.assertLessEqual(recs[0].end, recs[1].start)
        self.assertLessEqual(recs[1].end, recs[2].start)

    def test_wait_for_times_out_with_false(self):
        self.assertFalse(self.sink.wait_for(lambda: len(self.sink.requests) > 0, timeout=0.05))
        self.assertFalse(self.sink.wait_for_requests(1, timeout=0.05))

    def test_clear_forgets_requests(self):
        self.post("/v1/traces", trace_request("x").SerializeToString())
        self.sink.clear()
        self.assertEqual(self.sink.requests, [])


class BehaviourTest(SinkTestCase):
    def test_script_then_standing_reply(self):
        self.sink.script([Reply(status=503, retry_after="2"), Reply(status=503)], path="/v1/traces")
        body = trace_request("x").SerializeToString()
        c = self.conn()
        first = self.post("/v1/traces", body, conn=c)
        self.assertEqual(first[0], 503)
        self.assertEqual(first[1]["Retry-After"], "2")
        second = self.post("/v1/traces", body, conn=c)
        self.assertEqual(second[0], 503)
        self.assertNotIn("Retry-After", second[1])
        self.assertEqual(self.post("/v1/traces", body, conn=c)[0], 200)
        self.assertTrue(self.sink.wait_for_requests(3, timeout=5))
        self.assertEqual([r.status for r in self.sink.requests], [503, 503, 200])
        self.assertEqual(len(self.sink.spans()), 1)  # only the accepted request counts

    def test_per_path_reply_overrides_global(self):
        self.sink.set_reply(Reply(status=500))
        self.sink.set_reply(Reply(status=200), path="/v1/logs")
        self.assertEqual(self.post("/v1/traces", trace_request("x").SerializeToString())[0], 500)
        self.assertEqual(self.post("/v1/logs", logs_request("l").SerializeToString())[0], 200)
        self.sink.reset_behaviour()
        self.assertEqual(self.post("/v1/traces", trace_request("x").SerializeToString())[0], 200)

    def test_partial_success(self):
        self.sink.set_reply(Reply(partial_rejected=2, partial_message="too old"))
        status, _, body = self.post("/v1/metrics", metrics_request().SerializeToString())
        self.assertEqual(status, 200)
        resp = ExportMetricsServiceResponse.FromString(body)
        self.assertEqual(resp.partial_success.rejected_data_points, 2)
        self.assertEqual(resp.partial_success.error_message, "too old")

    def test_non_otlp_body_and_custom_body(self):
        self.sink.script([Reply(status=502, non_otlp=True), Reply(body=b"hi", content_type="text/plain")])
        status, headers, body = self.post("/v1/traces", trace_request("x").SerializeToString())
        self.assertEqual((status, body, headers["Content-Type"]), (502, NON_OTLP_BODY, "text/html"))
        status, headers, body = self.post("/v1/traces", trace_request("x").SerializeToString())
        self.assertEqual((status, body, headers["Content-Type"]), (200, b"hi", "text/plain"))

    def test_delay_holds_the_response(self):
        self.sink.set_reply(Reply(delay=0.2))
        self.assertEqual(self.post("/v1/traces", trace_request("x").SerializeToString())[0], 200)
        self.assertTrue(self.sink.wait_for_requests(1, timeout=5))
        rec = self.sink.requests[0]
        self.assertGreaterEqual(rec.end - rec.start, 0.2)  # a lower bound: the delay is the behaviour

    def test_hang_is_visible_as_open_and_stop_never_hangs(self):
        self.sink.set_reply(Reply(hang=True))
        c = self.conn()
        errors = []

        def client():
            try:
                self.post("/v1/traces", trace_request("x").SerializeToString(), conn=c)
            except OSError as exc:
                errors.append(exc)

        t = threading.Thread(target=client)
        t.start()
        self.assertTrue(self.sink.wait_for(lambda: len(self.sink.open_requests()) == 1, timeout=5))
        now = time.monotonic()
        self.assertEqual(len(self.sink.open_at(now)), 1)
        self.assertEqual(self.sink.open_at(self.sink.requests[0].start - 1), [])
        before = time.monotonic()
        self.sink.stop()
        self.assertLess(time.monotonic() - before, 5)  # generous: the behaviour is "does not hang"
        t.join(timeout=5)
        self.assertFalse(t.is_alive())
        rec = self.sink.requests[0]
        self.assertEqual((rec.outcome, rec.status), ("hung", None))
        self.assertEqual(self.sink.open_requests(), [])
        self.assertEqual(len(errors), 1)  # the client saw the connection go away
        self.assertFalse(rec.open_at(time.monotonic()))

    def test_reset_mid_body(self):
        self.sink.set_reply(Reply(reset=True))
        with self.assertRaises(OSError):
            self.post("/v1/traces", trace_request("x" * 100_000).SerializeToString())
        self.assertTrue(self.sink.wait_for(lambda: self.sink.requests and self.sink.requests[0].end, 5))
        self.assertEqual(self.sink.requests[0].outcome, "reset")

    def test_close_without_answer(self):
        self.sink.set_reply(Reply(close=True))
        with self.assertRaises(http.client.RemoteDisconnected):
            self.post("/v1/traces", trace_request("x").SerializeToString())
        self.assertTrue(self.sink.wait_for_requests(1, timeout=5))
        self.assertEqual(self.sink.requests[0].outcome, "closed")

    def test_stale_keepalive_resets_reused_connections_only(self):
        self.sink.set_reply(Reply(stale_keepalive=True))
        body = trace_request("x").SerializeToString()
        c = self.conn()
        self.assertEqual(self.post("/v1/traces", body, conn=c)[0], 200)
        with self.assertRaises(OSError):  # ConnectionResetError / RemoteDisconnected / BrokenPipe
            self.post("/v1/traces", body, conn=c)
        self.assertEqual(self.post("/v1/traces", body)[0], 200)  # a fresh connection works
        self.assertTrue(self.sink.wait_for_requests(3, timeout=5))
        self.assertEqual([r.outcome for r in self.sink.requests], ["answered", "reset", "answered"])

    def test_close_after_answer(self):
        self.sink.set_reply(Reply(close_after=True))
        c = self.conn()
        self.assertEqual(self.post("/v1/traces", trace_request("x").SerializeToString(), conn=c)[0], 200)
        self.assertTrue(self.sink.wait_for(lambda: not self.sink._conns, timeout=5))


class ForegroundModeTest(unittest.TestCase):
    def test_prints_one_line_per_request(self):
        proc = subprocess.Popen(
            [sys.executable, "-m", "lambda_otel.local.sink", "--port", "0"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

        def cleanup():
            proc.kill()
            proc.communicate(timeout=10)

        self.addCleanup(cleanup)
        banner = proc.stdout.readline()
        self.assertIn("listening on http://127.0.0.1:", banner)
        port = int(banner.split("127.0.0.1:")[1].split()[0])
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.addCleanup(c.close)
        c.request("POST", "/v1/traces", body=trace_request("a", "b").SerializeToString(),
                  headers={"Content-Type": "application/x-protobuf"})
        self.assertEqual(c.getresponse().status, 200)
        line = proc.stdout.readline()
        self.assertIn("POST /v1/traces -> 200 2 spans", line)


if __name__ == "__main__":
    unittest.main()
