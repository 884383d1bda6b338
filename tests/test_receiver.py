"""OTLP receiver: the real OpenTelemetry SDK and raw HTTP clients against 127.0.0.1."""

import base64
import gzip
import http.client
import json
import select
import socket
import threading
import unittest
import zlib

from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, LogRecordExportResult, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind

from lambda_otel.aggregator import MiB, Aggregator
from lambda_otel.loss import INVALID_RECORD, LOGS, METRICS, QUEUE_FULL, SHUTDOWN_DEADLINE, TRACES, LossCounter
from lambda_otel.http_server import ServerLimits
from lambda_otel.receiver import OtlpReceiver, build_status_class, inflate_bounded
from tests.support import empty_log_records_request

RESOURCE = Resource.create({"service.name": "my-function", "faas.name": "fn"})
WAIT = 10  # generous bound for anything that should be quick


def make_spans(prefix: str, n: int):
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("my.lib", "1.2.3")
    with tracer.start_as_current_span(f"{prefix}-root", kind=SpanKind.SERVER) as root:
        root.set_attribute("http.route", "/x")
        link = Link(root.get_span_context(), {"link.attr": 1})
        for i in range(n - 1):
            with tracer.start_as_current_span(f"{prefix}-{i}", links=[link]) as child:
                child.add_event("evt", {"i": i})
    provider.shutdown()
    return exporter.get_finished_spans()


def hexify(obj):
    """OTLP/JSON as a client sends it: trace/span ids as hex (the test's own encoder)."""
    if isinstance(obj, dict):
        return {
            k: (base64.b64decode(v).hex().upper() if k in ("traceId", "spanId", "parentSpanId") else hexify(v))
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [hexify(v) for v in obj]
    return obj


def peak_rss_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def vm(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(field)


class ReceiverTestBase(unittest.TestCase):
    max_records = 100_000
    receiver_kwargs: dict = {}

    def setUp(self):
        self.loss = LossCounter()
        self.agg = Aggregator(max_bytes=64 * MiB, max_records=self.max_records, loss=self.loss)
        self.receiver = OtlpReceiver(self.agg, self.loss, port=0, poll_interval_s=0.02, **self.receiver_kwargs)
        self.receiver.start()
        self.addCleanup(self.receiver.stop)

    def conn(self) -> http.client.HTTPConnection:
        c = http.client.HTTPConnection("127.0.0.1", self.receiver.port, timeout=WAIT)
        self.addCleanup(c.close)
        return c

    def post(self, path, body, content_type="application/x-protobuf", headers=None, conn=None):
        c = conn or self.conn()
        h = {"Content-Type": content_type}
        h.update(headers or {})
        c.request("POST", path, body=body, headers=h)
        resp = c.getresponse()
        return resp, resp.read()

    def raw_socket(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.receiver.port), timeout=WAIT)
        self.addCleanup(s.close)
        return s

    def take_all(self, signal):
        batch = self.agg.take_batch(signal, 1 << 40, 1 << 40)
        return list(batch.items) if batch else []

    def trace_request_bytes(self, prefix="s", n=3) -> bytes:
        return encode_spans(make_spans(prefix, n)).SerializeToString()


class SdkClientTest(ReceiverTestBase):
    def test_sdk_traces_protobuf_plain_and_gzip(self):
        for compression in (Compression.NoCompression, Compression.Gzip):
            with self.subTest(compression=compression):
                spans = make_spans(f"c{compression.value}", 5)
                exporter = OTLPSpanExporter(endpoint=f"{self.receiver.address}/v1/traces",
                                            compression=compression, timeout=WAIT)
                self.addCleanup(exporter.shutdown)
                self.assertEqual(exporter.export(spans), SpanExportResult.SUCCESS)
                sent = encode_spans(spans)
                self.assertEqual(self.take_all(TRACES), list(sent.resource_spans))
        self.assertEqual(self.loss.snapshot(), {})

    def test_sdk_metrics(self):
        reader = InMemoryMetricReader()
        provider = MeterProvider(resource=RESOURCE, metric_readers=[reader])
        self.addCleanup(provider.shutdown)
        meter = provider.get_meter("my.meter")
        meter.create_counter("orders").add(3, {"kind": "a"})
        meter.create_counter("orders2").add(1)
        meter.create_histogram("latency", unit="ms").record(12.5, {"route": "/x"})
        meter.create_up_down_counter("inflight").add(-2)
        data = reader.get_metrics_data()
        exporter = OTLPMetricExporter(endpoint=f"{self.receiver.address}/v1/metrics",
                                      compression=Compression.Gzip, timeout=WAIT)
        self.addCleanup(exporter.shutdown)
        self.assertEqual(exporter.export(data), MetricExportResult.SUCCESS)
        sent = encode_metrics(data)
        self.assertEqual(self.take_all(METRICS), list(sent.resource_metrics))
        self.assertEqual(self.agg.pending_records(), 0)
        self.assertEqual(self.receiver.stats()["records_received"][METRICS], 4)

    def test_sdk_logs(self):
        memory = InMemoryLogRecordExporter()
        provider = LoggerProvider(resource=RESOURCE)
        provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
        self.addCleanup(provider.shutdown)
        logger = provider.get_logger("my.logger")
        for i in range(4):
            logger.emit(body=f"hello {i}", attributes={"i": i}, severity_text="INFO")
        records = memory.get_finished_logs()
        exporter = OTLPLogExporter(endpoint=f"{self.receiver.address}/v1/logs", timeout=WAIT)
        self.addCleanup(exporter.shutdown)
        self.assertEqual(exporter.export(records), LogRecordExportResult.SUCCESS)
        self.assertEqual(self.take_all(LOGS), list(encode_logs(records).resource_logs))

    def test_eight_concurrent_sdk_clients(self):
        clients, batches, per_batch = 8, 5, 4
        results, errors = [], []

        def client(k):
            try:
                exporter = OTLPSpanExporter(endpoint=f"{self.receiver.address}/v1/traces", timeout=WAIT,
                                            compression=Compression.Gzip if k % 2 else Compression.NoCompression)
                for b in range(batches):
                    results.append(exporter.export(make_spans(f"t{k}.{b}", per_batch)))
                exporter.shutdown()
            except Exception as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual(errors, [])
        self.assertEqual(results, [SpanExportResult.SUCCESS] * clients * batches)
        names = sorted(s.name for rs in self.take_all(TRACES) for ss in rs.scope_spans for s in ss.spans)
        expected = sorted(
            [f"t{k}.{b}-root" for k in range(clients) for b in range(batches)]
            + [f"t{k}.{b}-{i}" for k in range(clients) for b in range(batches) for i in range(per_batch - 1)]
        )
        self.assertEqual(names, expected)


class JsonTest(ReceiverTestBase):
    def test_json_with_hex_ids_plain_and_gzip(self):
        spans = make_spans("j", 3)
        sent = encode_spans(spans)
        body = json.dumps(hexify(json_format.MessageToDict(sent))).encode()
        self.assertIn(format(spans[0].context.trace_id, "032x").upper(), body.decode())
        for encoding in ("identity", "gzip"):
            with self.subTest(encoding=encoding):
                payload = gzip.compress(body) if encoding == "gzip" else body
                resp, data = self.post("/v1/traces", payload, "application/json; charset=utf-8",
                                       {"Content-Encoding": encoding})
                self.assertEqual(resp.status, 200, data)
                self.assertEqual(resp.getheader("Content-Type"), "application/json")
                response = json_format.Parse(data, ExportTraceServiceResponse())
                self.assertFalse(response.HasField("partial_success"))
                received = self.take_all(TRACES)
                self.assertEqual(received, list(sent.resource_spans))
                span = received[0].scope_spans[0].spans[0]
                self.assertEqual(len(span.trace_id), 16)
                self.assertEqual(span.trace_id, sent.resource_spans[0].scope_spans[0].spans[0].trace_id)

    def test_json_links_and_logs_ids(self):
        trace_id, span_id = "5B8EFFF798038103D269B633813FC60C", "EEE19B7EC3C1B174"
        traces = {"resourceSpans": [{"scopeSpans": [{"spans": [{
            "traceId": trace_id, "spanId": span_id, "parentSpanId": "", "name": "x", "kind": 2,
            "startTimeUnixNano": "1700000000000000000", "futureField": {"a": 1},
            "links": [{"traceId": trace_id.lower(), "spanId": span_id}]}]}]}]}
        resp, data = self.post("/v1/traces", json.dumps(traces).encode(), "application/json")
        self.assertEqual(resp.status, 200, data)
        span = self.take_all(TRACES)[0].scope_spans[0].spans[0]
        self.assertEqual(span.trace_id, bytes.fromhex(trace_id))
        self.assertEqual(span.links[0].span_id, bytes.fromhex(span_id))
        self.assertEqual(span.kind, trace_pb2.Span.SPAN_KIND_SERVER)
        self.assertEqual(span.start_time_unix_nano, 1700000000000000000)
        logs = {"resourceLogs": [{"scopeLogs": [{"logRecords": [{
            "traceId": trace_id, "spanId": span_id, "body": {"stringValue": "hi"}}]}]}]}
        resp, data = self.post("/v1/logs", json.dumps(logs).encode(), "application/json")
        self.assertEqual(resp.status, 200, data)
        json_format.Parse(data, ExportLogsServiceResponse())
        record = self.take_all(LOGS)[0].scope_logs[0].log_records[0]
        self.assertEqual((record.trace_id, record.span_id), (bytes.fromhex(trace_id), bytes.fromhex(span_id)))


class BadInputTest(ReceiverTestBase):
    def assert_status_body(self, data: bytes, content_type="application/x-protobuf") -> str:
        if content_type == "application/json":
            status = json_format.Parse(data, status_pb2.Status())
        else:
            status = status_pb2.Status.FromString(data)
        self.assertTrue(status.message)
        return status.message

    def test_truncated_protobuf_is_400_and_keeps_the_connection(self):
        conn = self.conn()
        body = self.trace_request_bytes()
        resp, data = self.post("/v1/traces", body[: len(body) // 2], conn=conn)
        self.assertEqual(resp.status, 400)
        self.assertIn("protobuf", self.assert_status_body(data))
        resp, data = self.post("/v1/traces", body, conn=conn)  # same connection still usable
        self.assertEqual(resp.status, 200)
        self.assertEqual(len(self.take_all(TRACES)), 1)
        self.assertEqual(self.receiver.stats()["responses"], {"400": 1, "200": 1})

    def test_unsupported_content_type_and_encoding_415(self):
        body = self.trace_request_bytes()
        for ctype, headers in (("text/plain", {}), ("application/grpc", {}),
                               ("application/x-protobuf", {"Content-Encoding": "br"})):
            with self.subTest(ctype=ctype, headers=headers):
                resp, data = self.post("/v1/traces", body, ctype, headers)
                self.assertEqual(resp.status, 415)
                self.assert_status_body(data)
        self.assertEqual(self.agg.pending_records(), 0)

    def test_json_that_is_not_otlp_is_400(self):
        for body in (b"[1, 2, 3]", b'"spans"', b"{not json", b'{"resourceSpans": 5}',
                     b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz"}]}]}]}',
                     b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "soon"}]}]}]}',
                     b"\xff\xfe", b"[" * 100_000):
            with self.subTest(body=body[:40]):
                resp, data = self.post("/v1/traces", body, "application/json")
                self.assertEqual(resp.status, 400)
                self.assertEqual(resp.getheader("Content-Type"), "application/json")
                self.assert_status_body(data, "application/json")
        self.assertEqual(self.agg.pending_records(), 0)

    def test_invalid_gzip_is_400(self):
        resp, data = self.post("/v1/traces", b"not gzip at all", headers={"Content-Encoding": "gzip"})
        self.assertEqual(resp.status, 400)
        truncated = gzip.compress(self.trace_request_bytes())[:-12]
        resp, data = self.post("/v1/traces", truncated, headers={"Content-Encoding": "gzip"})
        self.assertEqual(resp.status, 400)

    def test_gzip_bomb_is_413_with_bounded_memory(self):
        # 128 MiB of zeros in ~128 KiB of gzip, built in chunks so the test itself stays small.
        compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        zeros = bytes(MiB)
        bomb = b"".join([compressor.compress(zeros) for _ in range(128)] + [compressor.flush()])
        self.assertLess(len(bomb), self.receiver.max_body_bytes)
        del zeros
        exact_peak = peak_rss_reset()
        before = vm("VmHWM") if exact_peak else vm("VmRSS")
        resp, data = self.post("/v1/traces", bomb, headers={"Content-Encoding": "gzip"})
        self.assertEqual(resp.status, 413)
        self.assertIn("decompressed", self.assert_status_body(data))
        after = vm("VmHWM") if exact_peak else vm("VmRSS")
        # The limit is 16 MiB; inflating the whole bomb would cost 128 MiB.
        self.assertLess(after - before, 64 * MiB)

    def test_inflate_bounded_steps(self):
        data = bytes(range(256)) * 1000
        self.assertEqual(inflate_bounded(gzip.compress(data), len(data)), data)
        self.assertIsNone(inflate_bounded(gzip.compress(data), len(data) - 1))
        self.assertEqual(inflate_bounded(gzip.compress(b"ab") + gzip.compress(b"cd"), 10), b"abcd")

    def test_body_over_limit_is_413_without_reading_it(self):
        sock = self.raw_socket()
        sock.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                     b"Content-Length: %d\r\n\r\nabc" % (1024 * MiB))
        sock.settimeout(WAIT)
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = sock.recv(65536)
            if not chunk:
                break
            response += chunk
        self.assertTrue(response.startswith(b"HTTP/1.1 413 "), response[:100])
        self.assertIn(b"Connection: close", response)
        # and the server closes the connection instead of waiting for the gigabyte
        for _ in range(100):
            chunk = sock.recv(65536)
            if not chunk:
                break
        self.assertEqual(chunk, b"")

    def test_chunked_body_is_411(self):
        sock = self.raw_socket()
        sock.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        self.assertTrue(sock.recv(65536).startswith(b"HTTP/1.1 411 "))

    def test_routes_404_405_and_health(self):
        conn = self.conn()
        conn.request("GET", "/v1/traces")
        resp = conn.getresponse()
        resp.read()
        self.assertEqual((resp.status, resp.getheader("Allow")), (405, "POST"))
        resp, _ = self.post("/health", b"x")
        self.assertEqual((resp.status, resp.getheader("Allow")), (405, "GET"))
        resp, _ = self.post("/v1/profiles", b"x")
        self.assertEqual(resp.status, 404)
        conn = self.conn()
        conn.request("DELETE", "/v1/logs")
        resp = conn.getresponse()
        resp.read()
        self.assertEqual((resp.status, resp.getheader("Allow")), (405, "POST"))
        conn = self.conn()
        conn.request("GET", "/nope")
        resp = conn.getresponse()
        resp.read()
        self.assertEqual(resp.status, 404)
        self.post("/v1/traces", self.trace_request_bytes())
        conn = self.conn()
        conn.request("GET", "/health")
        resp = conn.getresponse()
        health = json.loads(resp.read())
        self.assertEqual(resp.status, 200)
        self.assertEqual(health["status"], "ready")
        self.assertEqual(health["signals_received"], 1)
        self.assertEqual(health["records_received"][TRACES], 3)
        self.assertEqual(health["queued_records"], 3)
        self.assertEqual(health["responses"]["405"], 3)
        self.assertEqual(health["responses"]["404"], 2)

    def test_empty_request_is_success(self):
        resp, data = self.post("/v1/metrics", b"")
        self.assertEqual(resp.status, 200)
        resp, data = self.post("/v1/logs", b"{}", "application/json")
        self.assertEqual((resp.status, data), (200, b"{}"))
        self.assertEqual(self.agg.pending_items(), 0)


class SlowClientTest(ReceiverTestBase):
    receiver_kwargs = {"limits": ServerLimits(idle_timeout_s=0.5, header_timeout_s=0.5, body_timeout_s=1.0)}

    def test_slow_client_does_not_block_others(self):
        body = self.trace_request_bytes("slow", 2)
        slow = self.raw_socket()
        slow.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])
        # A fast client completes while the slow one is mid-body.
        exporter = OTLPSpanExporter(endpoint=f"{self.receiver.address}/v1/traces", timeout=WAIT)
        self.addCleanup(exporter.shutdown)
        self.assertEqual(exporter.export(make_spans("fast", 2)), SpanExportResult.SUCCESS)
        readable, _, _ = select.select([slow], [], [], 0)
        self.assertEqual(readable, [], "the slow client was answered before it finished its body")
        slow.sendall(body[10:])
        self.assertTrue(slow.recv(65536).startswith(b"HTTP/1.1 200 "))
        names = {s.name for rs in self.take_all(TRACES) for ss in rs.scope_spans for s in ss.spans}
        self.assertEqual(names, {"fast-root", "fast-0", "slow-root", "slow-0"})

    def test_stalled_client_is_disconnected(self):
        stalled = self.raw_socket()
        stalled.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                        b"Content-Length: 1000\r\n\r\nabc")
        idle = self.raw_socket()  # sends nothing at all
        for sock in (stalled, idle):
            sock.settimeout(WAIT)
            self.assertEqual(sock.recv(65536), b"")  # closed by the server long before WAIT
        self.assertEqual(self.agg.pending_items(), 0)

    def test_dribbling_client_hits_the_body_deadline(self):
        sock = self.raw_socket()
        sock.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                     b"Content-Length: 1000\r\n\r\n")
        closed = False
        for _ in range(100):  # one byte per 0.1 s: each recv is within the socket timeout
            try:
                sock.sendall(b"a")
            except OSError:
                closed = True
                break
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable and sock.recv(65536) == b"":
                closed = True
                break
        self.assertTrue(closed, "a client dribbling its body kept the connection for 10 s")


class BackpressureTest(ReceiverTestBase):
    max_records = 5

    def test_full_queue_is_never_a_503_the_oldest_records_make_room_counted(self):
        """An SDK retries a 503 with backoff inside the invocation: a full queue must not answer one."""
        first = self.trace_request_bytes("first", 5)
        resp, _ = self.post("/v1/traces", first)
        self.assertEqual(resp.status, 200)
        second = self.trace_request_bytes("second", 2)
        resp, data = self.post("/v1/traces", second)
        self.assertEqual(resp.status, 200)
        self.assertIsNone(resp.getheader("Retry-After"))
        self.assertFalse(ExportTraceServiceResponse.FromString(data).HasField("partial_success"))
        # The queue's policy: the oldest item (all 5 of "first") went, counted; "second" is queued.
        self.assertEqual(self.loss.snapshot(), {(TRACES, QUEUE_FULL): 5})
        self.assertEqual(self.take_all(TRACES), list(ExportTraceServiceRequest.FromString(second).resource_spans))

    def test_item_larger_than_the_whole_budget_is_partial_success(self):
        request = ExportTraceServiceRequest()
        request.resource_spans.extend(encode_spans(make_spans("small", 2)).resource_spans)
        request.resource_spans.extend(encode_spans(make_spans("huge", 6)).resource_spans)
        resp, data = self.post("/v1/traces", request.SerializeToString())
        self.assertEqual(resp.status, 200)
        response = ExportTraceServiceResponse.FromString(data)
        self.assertEqual(response.partial_success.rejected_spans, 6)
        self.assertTrue(response.partial_success.error_message)
        self.assertEqual(self.loss.snapshot(), {(TRACES, QUEUE_FULL): 6})
        self.assertEqual(self.agg.pending_records(), 2)


class CloseIntakeTest(ReceiverTestBase):
    def test_after_close_intake_partial_success_counted_and_everything_before_it_kept(self):
        before = self.trace_request_bytes("before", 2)
        resp, _ = self.post("/v1/traces", before)
        self.assertEqual(resp.status, 200)
        self.receiver.close_intake()
        conn = self.conn()
        for path, body in (("/v1/traces", self.trace_request_bytes("after", 3)), ("/v1/traces", before)):
            resp, data = self.post(path, body, conn=conn)
            self.assertEqual(resp.status, 200)  # a partial_success, which clients must not retry
            self.assertIsNone(resp.getheader("Retry-After"))
            response = ExportTraceServiceResponse.FromString(data)
            self.assertEqual(response.partial_success.rejected_spans, 3 if b"after" in body else 2)
            self.assertIn("shutting down", response.partial_success.error_message)
        # Only what came before close_intake() is queued; what came after is counted, not lost silently.
        self.assertEqual(self.take_all(TRACES), list(ExportTraceServiceRequest.FromString(before).resource_spans))
        self.assertEqual(self.agg.pending_records(), 0)
        self.assertEqual(self.loss.snapshot(), {(TRACES, SHUTDOWN_DEADLINE): 5})

    def test_every_200_is_in_the_queue_when_close_intake_returns(self):
        """Clients racing close_intake(): what was answered 200 was queued before it returned."""
        stop, enough = threading.Event(), threading.Event()
        acked = []
        lock = threading.Lock()

        def client(n):
            c = http.client.HTTPConnection("127.0.0.1", self.receiver.port, timeout=WAIT)
            try:
                for i in range(200):
                    if stop.is_set():
                        return
                    c.request("POST", "/v1/logs", body=self.log_request(f"{n}-{i}"),
                              headers={"Content-Type": "application/x-protobuf"})
                    resp = c.getresponse()
                    data = resp.read()
                    self.assertEqual(resp.status, 200)
                    if ExportLogsServiceResponse.FromString(data).partial_success.rejected_log_records:
                        return  # refused (counted): intake is closed
                    with lock:
                        acked.append(f"{n}-{i}")
                        if len(acked) >= 20:
                            enough.set()
            finally:
                c.close()

        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        self.assertTrue(enough.wait(WAIT))
        self.receiver.close_intake()
        queued_at_close = self.take_all(LOGS)  # what a final flush would see
        stop.set()
        for t in threads:
            t.join(WAIT)
        bodies = {rl.scope_logs[0].log_records[0].body.string_value for rl in queued_at_close}
        self.assertEqual(set(acked) - bodies, set())
        self.assertEqual(self.agg.pending_records(), 0)  # nothing slipped in after close_intake()

    @staticmethod
    def log_request(text: str) -> bytes:
        request = ExportLogsServiceRequest()
        record = request.resource_logs.add().scope_logs.add().log_records.add()
        record.body.string_value = text
        return request.SerializeToString()


class ConnectionLimitTest(ReceiverTestBase):
    receiver_kwargs = {"limits": ServerLimits(max_connections=2)}

    def wait_connections(self, n):
        for _ in range(200):
            if self.receiver._server.connection_count() == n:
                return
            threading.Event().wait(0.01)
        self.fail(f"{self.receiver._server.connection_count()} connections, expected {n}")

    def test_idle_keep_alive_connections_make_room_for_a_newcomer(self):
        """Many worker processes each keep a connection open: at the cap the longest-idle one is
        closed (its client reconnects), so a newcomer is served, never refused."""
        import requests  # what the SDK's exporters use: a pooled connection is checked before reuse

        url = f"{self.receiver.address}/v1/traces"
        sessions = [requests.Session() for _ in range(3)]
        for session in sessions:
            self.addCleanup(session.close)
        for session in sessions:  # the third finds two idle connections at the cap
            resp = session.post(url, data=self.trace_request_bytes(), timeout=WAIT,
                                headers={"Content-Type": "application/x-protobuf"})
            self.assertEqual(resp.status_code, 200)
        self.wait_connections(2)
        # The first one's connection was closed; its client reconnects without an error.
        resp = sessions[0].post(url, data=self.trace_request_bytes(), timeout=WAIT,
                                headers={"Content-Type": "application/x-protobuf"})
        self.assertEqual(resp.status_code, 200)
        self.assertGreaterEqual(self.receiver.connection_stats().get("idle_closed_at_connection_cap", 0), 1)
        self.assertNotIn("refused_at_connection_cap", self.receiver.connection_stats())

    def test_connections_dripping_their_head_make_room(self):
        """Slowloris on headers cannot lock the function out of its receiver."""
        holders = [self.raw_socket() for _ in range(2)]
        for s in holders:
            s.sendall(b"POST /v1/traces HTTP/1.1\r\n")  # incomplete head
        self.wait_connections(2)
        threading.Event().wait(0.05)  # let both handlers read what was sent
        resp, _ = self.post("/v1/traces", self.trace_request_bytes())
        self.assertEqual(resp.status, 200)
        holders[0].settimeout(WAIT)
        self.assertEqual(holders[0].recv(65536), b"")  # the oldest dripping one was closed

    def test_only_when_every_connection_is_busy_a_newcomer_gets_503(self):
        busy = [self.raw_socket() for _ in range(2)]
        for s in busy:  # a complete head and part of the body: busy with a request
            s.sendall(b"POST /v1/traces HTTP/1.1\r\nContent-Type: application/x-protobuf\r\n"
                      b"Content-Length: 100000\r\n\r\nabc")
        self.wait_connections(2)
        threading.Event().wait(0.05)
        extra = self.raw_socket()
        extra.settimeout(WAIT)
        response = extra.recv(65536)
        self.assertTrue(response.startswith(b"HTTP/1.1 503 "), response)
        self.assertEqual(self.receiver.connection_stats()["refused_at_connection_cap"], 1)
        for s in busy:
            s.close()
        # slots come back once the busy connections are gone
        self.wait_connections(0)
        resp, _ = self.post("/v1/traces", self.trace_request_bytes())
        self.assertEqual(resp.status, 200)


class IntakeBoundsTest(ReceiverTestBase):
    def test_wrong_length_ids_are_dropped_at_intake_counted_and_reported(self):
        """A strict backend refuses a whole batch for one bad id: such records never enter the queue."""
        request = ExportTraceServiceRequest.FromString(self.trace_request_bytes("ok", 3))  # 3 good spans
        spans = request.resource_spans[0].scope_spans[0].spans
        bad_trace = spans.add(name="bad-trace", trace_id=b"\x01" * 17, span_id=b"\x02" * 8)
        spans.add(name="bad-span", trace_id=b"\x01" * 16, span_id=b"\x02" * 3)
        spans.add(name="bad-parent", trace_id=b"\x01" * 16, span_id=b"\x02" * 8, parent_span_id=b"\x03" * 5)
        bad_link = spans.add(name="bad-link", trace_id=b"\x01" * 16, span_id=b"\x02" * 8)
        bad_link.links.add(trace_id=b"\x04" * 3, span_id=b"\x05" * 8)
        self.assertEqual(len(bad_trace.trace_id), 17)
        resp, data = self.post("/v1/traces", request.SerializeToString())
        self.assertEqual(resp.status, 200)
        response = ExportTraceServiceResponse.FromString(data)
        self.assertEqual(response.partial_success.rejected_spans, 4)
        self.assertIn("16 bytes", response.partial_success.error_message)
        self.assertEqual(self.loss.snapshot(), {(TRACES, INVALID_RECORD): 4})
        names = {sp.name for rs in self.take_all(TRACES) for ss in rs.scope_spans for sp in ss.spans}
        self.assertEqual(names, {"ok-root", "ok-0", "ok-1"})

        logs = ExportLogsServiceRequest()
        records = logs.resource_logs.add().scope_logs.add().log_records
        records.add(body={"string_value": "no context"})  # ids absent: fine
        records.add(body={"string_value": "good"}, trace_id=b"\x01" * 16, span_id=b"\x02" * 8)
        records.add(body={"string_value": "bad"}, trace_id=b"\x01" * 16, span_id=b"\x02" * 3)
        resp, data = self.post("/v1/logs", logs.SerializeToString())
        self.assertEqual(ExportLogsServiceResponse.FromString(data).partial_success.rejected_log_records, 1)
        self.assertEqual(self.loss.snapshot()[(LOGS, INVALID_RECORD)], 1)
        self.assertEqual(self.agg.pending_records(LOGS), 2)

    def test_gzip_bomb_of_empty_records_is_refused_before_it_is_built(self):
        """15 KiB of gzip inflating to millions of empty log records: 413, nothing built, nothing queued."""
        bomb = gzip.compress(empty_log_records_request(7 * MiB // 2), 9)
        self.assertLess(len(bomb), 20 * 1024)
        resp, data = self.post("/v1/logs", bomb, headers={"Content-Encoding": "gzip"})
        self.assertEqual(resp.status, 413)
        self.assertIn("records", status_pb2.Status.FromString(data).message)
        self.assertEqual(self.agg.pending_items(), 0)
        # A request of the same shape within the queue's reach is accepted (the walk counts right).
        resp, data = self.post("/v1/logs", empty_log_records_request(10))
        self.assertEqual(resp.status, 200)
        self.assertEqual(self.agg.pending_records(LOGS), 10)

    def test_message_walk_counts_like_the_protobuf_runtime(self):
        from lambda_otel.receiver import count_messages

        request = ExportTraceServiceRequest.FromString(self.trace_request_bytes("w", 5))
        n_spans = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        n_envelopes = len(request.resource_spans) + sum(len(rs.scope_spans) for rs in request.resource_spans)
        self.assertEqual(count_messages(TRACES, request.SerializeToString(), 10_000), n_spans + n_envelopes)
        self.assertGreater(count_messages(TRACES, request.SerializeToString(), 3), 3)  # stops past the limit
        with self.assertRaises(Exception):
            count_messages(TRACES, request.SerializeToString()[:-3], 10_000)


class DecodeSlotsTest(ReceiverTestBase):
    receiver_kwargs = {"decode_slots": 1}

    def big_request(self, prefix: str) -> bytes:
        request = ExportLogsServiceRequest()
        records = request.resource_logs.add().scope_logs.add().log_records
        for i in range(3000):
            records.add(body={"string_value": f"{prefix} {i} " + "x" * 100})
        return request.SerializeToString()

    def test_large_requests_are_read_and_decoded_one_slot_at_a_time(self):
        """Memory held by bodies being read, inflated and parsed is bounded by the decode slots."""
        first, second = self.big_request("first"), self.big_request("second")
        self.assertGreater(len(first), 256 * 1024)  # past the size read before waiting for a slot
        head = (b"POST /v1/logs HTTP/1.1\r\nContent-Type: application/x-protobuf\r\nContent-Length: %d\r\n\r\n")
        a = self.raw_socket()
        a.sendall(head % len(first) + first[:1000])  # holds the only slot while its body trickles in
        threading.Event().wait(0.2)
        b = self.raw_socket()
        b.sendall(head % len(second) + second)  # complete, but must wait for the slot
        readable, _, _ = select.select([b], [], [], 0.5)
        self.assertEqual(readable, [], "a second large request was decoded while the only slot was taken")
        a.sendall(first[1000:])
        for sock in (a, b):
            sock.settimeout(WAIT)
            self.assertTrue(sock.recv(65536).startswith(b"HTTP/1.1 200 "))
        self.assertEqual(self.agg.pending_records(LOGS), 6000)


class ConstructionTest(unittest.TestCase):
    def test_loopback_only_and_ports(self):
        loss = LossCounter()
        agg = Aggregator(MiB, 100, loss)
        for host in ("0.0.0.0", "10.1.2.3", "example.com", ""):
            with self.assertRaises(ValueError):
                OtlpReceiver(agg, loss, host=host, port=0)
        receiver = OtlpReceiver(agg, loss, host="localhost", port=0, poll_interval_s=0.02)
        self.assertEqual(receiver.port, 0)
        receiver.start()
        self.addCleanup(receiver.stop)
        self.assertNotEqual(receiver.port, 0)
        self.assertEqual(receiver.address, f"http://127.0.0.1:{receiver.port}")
        port = receiver.port
        receiver.stop()
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()

    def test_serves_a_socket_bound_beforehand(self):
        loss = LossCounter()
        agg = Aggregator(MiB, 100, loss)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        receiver = OtlpReceiver(agg, loss, sock=sock, poll_interval_s=0.02)
        receiver.start()
        self.addCleanup(receiver.stop)
        self.assertEqual(receiver.port, sock.getsockname()[1])
        exporter = OTLPSpanExporter(endpoint=f"{receiver.address}/v1/traces", timeout=WAIT)
        self.addCleanup(exporter.shutdown)
        self.assertEqual(exporter.export(make_spans("early", 2)), SpanExportResult.SUCCESS)
        self.assertEqual(agg.pending_records(TRACES), 2)
        public = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(public.close)
        public.bind(("0.0.0.0", 0))
        with self.assertRaises(ValueError):
            OtlpReceiver(agg, loss, sock=public)

    def test_status_fallback_matches_google_rpc_status(self):
        Fallback = build_status_class()
        ours = Fallback(code=3, message="bad body").SerializeToString()
        theirs = status_pb2.Status(code=3, message="bad body")
        self.assertEqual(ours, theirs.SerializeToString())
        self.assertEqual(json_format.MessageToDict(Fallback(code=3, message="m")), {"code": 3, "message": "m"})


if __name__ == "__main__":
    unittest.main()
