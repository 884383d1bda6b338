"""Regression tests from an adversarial pass over the running extension (issues 12 and 13).

Each test is one way a hostile client, backend or platform broke a promise, kept so it never
comes back. Real servers on 127.0.0.1, real sockets.
"""

import http.client
import json
import socket
import time
import unittest

from lambda_otel.aggregator import Aggregator
from lambda_otel.config import TelemetryConfig
from lambda_otel.loss import LossCounter
from lambda_otel.receiver import OtlpReceiver
from lambda_otel.subscription import bind_socket
from lambda_otel.telemetry_api import TelemetryListener
from tests.reliability_support import ReliabilityTestCase, dropped_by, shutdown_summary
from tests.support import free_port

MiB = 1 << 20


def answer_to(port: int, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        return s.recv(200)


class ContentLengthWithThousandsOfDigitsTest(unittest.TestCase):
    """A Content-Length of 5,000 digits: int() refuses it (ValueError past 4,300 digits), which
    escaped as an unhandled error: a traceback on stderr and the connection dropped unanswered."""

    def setUp(self):
        loss = LossCounter()
        self.receiver = OtlpReceiver(Aggregator(max_bytes=64 * MiB, max_records=100_000, loss=loss), loss,
                                     port=0, poll_interval_s=0.02)
        self.receiver.start()
        self.addCleanup(self.receiver.stop)
        self.listener = TelemetryListener(bind_socket("127.0.0.1", 0), lambda batch: None, TelemetryConfig())
        self.listener.start()
        self.addCleanup(self.listener.stop)

    def test_both_listeners_answer_413(self):
        for name, port, path in (("receiver", self.receiver.port, "/v1/traces"), ("listener", self.listener.port, "/")):
            for digits in ("9" * 5000, "0" * 5000 + "1" * 19):
                with self.subTest(listener=name, digits=len(digits)):
                    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                            f"Content-Length: {digits}\r\n\r\n").encode()
                    self.assertTrue(answer_to(port, head).startswith(b"HTTP/1.1 413 "))
            with self.subTest(listener=name, digits="leading zeros of a small length"):
                head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                        f"Content-Length: {'0' * 30}0\r\n\r\n").encode()
                answer = answer_to(port, head)  # an empty body: read as length 0, not refused as too long
                self.assertTrue(answer.startswith(b"HTTP/1.1 "), answer)
                self.assertFalse(answer.startswith(b"HTTP/1.1 413 "), answer)


class HugeLogsDroppedTest(ReliabilityTestCase):
    """platform.logsDropped with droppedRecords of 2**64 and 2**200 through the real extension's
    listener: the exported metric was clamped to int64, the shutdown line printed the raw sum (a
    61-digit count), so the two disagreed. Every count taken from input now saturates at int64."""

    def test_the_shutdown_line_and_the_exported_metric_agree_at_int64_max(self):
        sink = self.make_sink()
        port = free_port()
        sim = self.make_sim_with(self.make_env(sink, LAMBDA_OTEL_TELEMETRY_PORT=str(port),
                                               LAMBDA_OTEL_FLUSH_STRATEGY="end"), timeout_s=30)
        sim.start(timeout=30)
        running = sim.invoke_async({"logs": 1, "sleep": 2})  # the sandbox is not frozen meanwhile
        events = [{"time": "2026-12-02T00:00:00.000Z", "type": "platform.logsDropped",
                   "record": {"droppedRecords": n, "droppedBytes": n, "reason": "attack"}} for n in (2**64, 2**200)]
        deadline = time.monotonic() + 10
        while True:  # the listener binds after the first /next: retry a refused connection briefly
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("POST", "/", body=json.dumps(events))
                response = conn.getresponse()
                response.read()
                conn.close()
                break
            except ConnectionRefusedError:
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.05)
        self.assertEqual(response.status, 200)
        self.assertEqual(running.wait(30).status, "success")
        sim.shutdown("spindown", timeout=30)
        self.assert_clean_exits(sim)
        output = self.extension_output(sim)
        deadline = time.monotonic() + 5  # stderr is read on a thread of the simulator's
        while "final flush:" not in output and time.monotonic() < deadline:
            time.sleep(0.05)
            output = self.extension_output(sim)
        summary = shutdown_summary(output)
        self.assertIsNotNone(summary, output)
        self.assertEqual(summary["dropped"].get("platform_logs_dropped"), 2**63 - 1, summary)
        self.assertEqual(dropped_by(sink.metrics(), "logs", "platform_logs_dropped"), 2**63 - 1)


class DrippingBackendDuringAChattyHoldTest(ReliabilityTestCase):
    """A backend dripping its answer while a chatty function's hold keeps the gate open: every
    Telemetry API batch waited ADMISSION_WAIT_S (1 s) for room that no export was making, and the
    hold waited for runtimeDone behind them: with 1,000-event batches, one invocation's /next was
    held many seconds (the flush budget is 0.3 s). A failed request now ends the wait for room."""

    LINES = 40_000

    def test_the_hold_stays_within_the_fault_bound(self):
        from lambda_otel.local.sink import Reply
        from tests.reliability_support import expected_lines, function_lines
        from tests.test_reliability_faults import OVERHEAD_BOUND_MS

        sink = self.make_sink()
        env = self.make_env(sink, LAMBDA_OTEL_FLUSH_STRATEGY="end", LAMBDA_OTEL_FLUSH_BUDGET_MS="300",
                            LAMBDA_OTEL_RUNTIME_DONE_WAIT_MS="1000", LAMBDA_OTEL_TELEMETRY_MAX_ITEMS="1000",
                            LAMBDA_OTEL_QUEUE_MAX_RECORDS="3000")  # full: telemetry must wait for room
        sim = self.make_sim_with(env, timeout_s=60)
        sim.start(timeout=30)
        results = [sim.invoke({"logs": 5}, timeout=90)]  # healthy, start-up done
        sink.set_reply(Reply(drip=0.01))
        results.append(sim.invoke({"logs": self.LINES}, timeout=90))
        sink.set_reply(Reply())
        sim.shutdown("spindown", timeout=30)
        self.assert_clean_exits(sim)
        output = self.extension_output(sim)
        self.assertTrue(any(r.outcome == "error" for r in sink.requests), "no request was cut: no fault")
        for r in results:
            self.assertEqual(r.status, "success", output[-2000:])
            self.assertLess(r.extension_overhead_ms, OVERHEAD_BOUND_MS,
                            ([x.extension_overhead_ms for x in results], output[-3000:]))
        deadline = time.monotonic() + 5
        while "final flush:" not in output and time.monotonic() < deadline:
            time.sleep(0.05)
            output = self.extension_output(sim)
        summary = shutdown_summary(output)
        expected = expected_lines(results[:1], 5) | expected_lines(results[1:], self.LINES)
        lost = len(expected - set(function_lines(sink)))
        self.assertGreaterEqual(sum(summary["dropped"].values()), lost, summary)  # what was lost is counted


class ExemplarIdsTest(unittest.TestCase):
    """A metric exemplar with a 17-byte trace id (or a 3-byte span id) went through intake and on to
    the backend: a strict one (the collector's pdata types every trace_id/span_id field, exemplars
    included) refuses the whole metrics batch, the platform's metrics and lambda_otel.dropped with
    it. Such data points are now dropped at intake, counted and reported like spans and logs."""

    def setUp(self):
        self.loss = LossCounter()
        self.agg = Aggregator(max_bytes=64 * MiB, max_records=100_000, loss=self.loss)
        self.receiver = OtlpReceiver(self.agg, self.loss, port=0, poll_interval_s=0.02)
        self.receiver.start()
        self.addCleanup(self.receiver.stop)

    def test_points_with_bad_exemplar_ids_are_dropped_counted_and_reported(self):
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
            ExportMetricsServiceRequest, ExportMetricsServiceResponse)

        from lambda_otel.loss import INVALID_RECORD, METRICS

        request = ExportMetricsServiceRequest()
        metrics = request.resource_metrics.add().scope_metrics.add().metrics
        counter = metrics.add(name="requests")
        counter.sum.is_monotonic = True
        counter.sum.aggregation_temporality = 2
        counter.sum.data_points.add(as_int=1).exemplars.add(as_int=1, trace_id=b"\x01" * 16, span_id=b"\x02" * 8)
        counter.sum.data_points.add(as_int=2).exemplars.add(as_int=2)  # no trace context: fine
        counter.sum.data_points.add(as_int=3).exemplars.add(as_int=3, trace_id=b"\x01" * 17, span_id=b"\x02" * 8)
        latency = metrics.add(name="latency")
        latency.histogram.aggregation_temporality = 2
        latency.histogram.data_points.add(count=1).exemplars.add(as_double=1.0, trace_id=b"\x01" * 16,
                                                                span_id=b"\x02" * 3)
        level = metrics.add(name="level")
        level.gauge.data_points.add(as_int=7)

        conn = http.client.HTTPConnection("127.0.0.1", self.receiver.port, timeout=10)
        self.addCleanup(conn.close)
        conn.request("POST", "/v1/metrics", body=request.SerializeToString(),
                     headers={"Content-Type": "application/x-protobuf"})
        response = conn.getresponse()
        body = response.read()
        self.assertEqual(response.status, 200)
        answer = ExportMetricsServiceResponse.FromString(body)
        self.assertEqual(answer.partial_success.rejected_data_points, 2)
        self.assertIn("16 bytes", answer.partial_success.error_message)
        self.assertEqual(self.loss.snapshot(), {(METRICS, INVALID_RECORD): 2})
        batch = self.agg.take_batch(METRICS, 1 << 40, 1 << 40)
        kept = [e for rm in batch.items for sm in rm.scope_metrics for m in sm.metrics
                for p in getattr(m, m.WhichOneof("data")).data_points for e in p.exemplars]
        self.assertEqual(sorted(e.as_int for e in kept), [1, 2])
        self.assertEqual(batch.records, 3)  # the two good sum points and the gauge point


class RetryAfterPastTheShutdownDeadlineTest(ReliabilityTestCase):
    """A backend that answered 503 with Retry-After: 120 and still throttles at SHUTDOWN: the final
    flush rightly sends nothing, but counted what was left as shutdown_deadline, as if our deadline
    had been too short; the real cause is the backend's answer (export_failed)."""

    def test_what_is_left_is_export_failed(self):
        from lambda_otel.local.sink import Reply
        from tests.test_reliability_faults import FAULT_ENV

        sink = self.make_sink()
        sim = self.make_sim_with(self.make_env(sink, **FAULT_ENV))
        sim.start(timeout=30)
        self.assertEqual(sim.invoke({"logs": 5}, timeout=30).status, "success")
        sink.set_reply(Reply(status=503, retry_after="120"))
        self.assertEqual(sim.invoke({"logs": 5}, timeout=30).status, "success")
        sim.shutdown("spindown", timeout=30)
        self.assert_clean_exits(sim)
        self.assertTrue(any(r.status == 503 for r in sink.requests), "the fault never happened")
        output = self.extension_output(sim)
        deadline = time.monotonic() + 5
        while "final flush:" not in output and time.monotonic() < deadline:
            time.sleep(0.05)
            output = self.extension_output(sim)
        summary = shutdown_summary(output)
        self.assertIsNotNone(summary, output)
        self.assertGreater(summary["dropped"].get("export_failed", 0), 0, summary)
        self.assertNotIn("shutdown_deadline", summary["dropped"], summary)


if __name__ == "__main__":
    unittest.main()
