"""The Telemetry API listener: real HTTP on 127.0.0.1, bad input answered with 4xx, nothing crashes."""

import http.client
import json
import threading
import unittest

from lambda_otel.config import TelemetryConfig
from lambda_otel.subscription import SANDBOX_HOST, bind_socket, listener_host, subscription_body
from lambda_otel.telemetry_api import TelemetryListener


class ListenerTest(unittest.TestCase):
    def setUp(self):
        self.batches = []
        self.fail_next = threading.Event()

        def on_batch(events):
            if self.fail_next.is_set():
                self.fail_next.clear()
                raise RuntimeError("converter bug")
            self.batches.append(events)

        self.listener = TelemetryListener(bind_socket("127.0.0.1", 0), on_batch, TelemetryConfig())
        self.listener.start()
        self.addCleanup(self.listener.stop)
        self.conn = http.client.HTTPConnection("127.0.0.1", self.listener.port, timeout=10)
        self.addCleanup(self.conn.close)

    def post(self, body: bytes, headers=None, conn=None):
        conn = conn or self.conn
        conn.request("POST", "/", body=body, headers=headers or {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()

    def test_valid_batch_is_processed_and_acknowledged(self):
        events = [{"time": "2024-05-01T10:00:00.700Z", "type": "function", "record": "hello\n"}]
        status, _ = self.post(json.dumps(events).encode())
        self.assertEqual(status, 200)
        self.assertEqual(self.batches, [events])
        self.assertEqual(self.listener.stats.batches, 1)
        self.assertEqual(self.listener.stats.events, 1)

    def test_keep_alive_connection_serves_many_batches(self):
        for i in range(20):
            status, _ = self.post(json.dumps([{"type": "function", "record": str(i)}]).encode())
            self.assertEqual(status, 200)
        self.assertEqual(len(self.batches), 20)

    def test_bad_bodies_get_400_and_the_listener_keeps_working(self):
        bad = {
            "not json": b"{nope",
            "object, not array": b'{"type": "function"}',
            "invalid utf-8": b'["\xff\xfe"]',
            "deeply nested": b"[" * 100_000 + b"]" * 100_000,
            "a number": b"42",
        }
        for name, body in bad.items():
            with self.subTest(name):
                conn = http.client.HTTPConnection("127.0.0.1", self.listener.port, timeout=10)
                self.addCleanup(conn.close)
                status, _ = self.post(body, conn=conn)
                self.assertEqual(status, 400)
        self.assertEqual(self.listener.stats.rejected_batches, len(bad))
        self.assertEqual(self.batches, [])
        status, _ = self.post(b"[]")
        self.assertEqual(status, 200)

    def test_oversized_batch_is_refused_without_reading_it(self):
        limit = 2 * TelemetryConfig().max_bytes + 64 * 1024
        self.conn.putrequest("POST", "/")
        self.conn.putheader("Content-Length", str(limit + 1))
        self.conn.endheaders()
        response = self.conn.getresponse()
        self.assertEqual(response.status, 413)
        response.read()
        self.assertEqual(self.batches, [])

    def test_missing_content_length_gets_411(self):
        self.conn.putrequest("POST", "/")
        self.conn.endheaders()
        response = self.conn.getresponse()
        self.assertEqual(response.status, 411)

    def test_processing_error_gets_500_and_the_next_batch_still_works(self):
        self.fail_next.set()
        status, _ = self.post(b"[]")
        self.assertEqual(status, 500)
        status, _ = self.post(b'[{"type":"function","record":"x"}]')
        self.assertEqual(status, 200)
        self.assertEqual(len(self.batches), 1)

    def test_get_is_not_allowed(self):
        self.conn.request("GET", "/")
        response = self.conn.getresponse()
        response.read()
        self.assertEqual(response.status, 405)


class SubscriptionShapeTest(unittest.TestCase):
    def test_body_uses_sandbox_host_and_low_latency_buffering(self):
        body = subscription_body(TelemetryConfig(), 4322)
        self.assertEqual(body["schemaVersion"], "2025-01-29")
        self.assertEqual(body["types"], ["platform", "function", "extension"])
        self.assertEqual(body["buffering"], {"maxItems": 10000, "maxBytes": 1048576, "timeoutMs": 25})
        self.assertEqual(body["destination"], {"protocol": "HTTP", "URI": f"http://{SANDBOX_HOST}:4322/"})


class ListenerHostTest(unittest.TestCase):
    def test_hosts_file_entry_is_used(self):
        import tempfile

        with tempfile.NamedTemporaryFile("w", suffix="hosts", delete=False) as fh:
            fh.write("127.0.0.1 localhost\n# comment sandbox.localdomain\n169.254.100.1  sandbox.localdomain sandbox\n")
        self.addCleanup(lambda: __import__("os").unlink(fh.name))
        self.assertEqual(listener_host(fh.name), "169.254.100.1")

    def test_falls_back_to_loopback(self):
        self.assertEqual(listener_host("/nonexistent/hosts"), "127.0.0.1")


class PipelineTest(unittest.TestCase):
    """The one construction site: a real Telemetry API POST through the production wiring."""

    def test_batch_is_converted_queued_and_reaches_the_coordinator(self):
        from lambda_otel.config import load_config
        from lambda_otel.pipeline import Pipeline

        pipeline = Pipeline(load_config({}), {"service.name": "pipeline-test"})
        done = []
        pipeline.coordinator.on_runtime_done = done.append  # observe what the pipeline passes on
        pipeline.start(bind_socket("127.0.0.1", 0), None, worker=False)
        self.addCleanup(pipeline.stop)
        rid = "0b5e1c4e-0000-4000-8000-000000000001"
        events = [
            {"time": "2024-05-01T10:00:00.000Z", "type": "platform.start", "record": {"requestId": rid}},
            {"time": "2024-05-01T10:00:00.100Z", "type": "function", "record": "hello\n"},
            {"time": "2024-05-01T10:00:00.200Z", "type": "platform.runtimeDone",
             "record": {"requestId": rid, "status": "success", "metrics": {"durationMs": 200.0}}},
            {"time": "2024-05-01T10:00:00.300Z", "type": "platform.report",
             "record": {"requestId": rid, "status": "success",
                        "metrics": {"durationMs": 250.0, "billedDurationMs": 251, "memorySizeMB": 128,
                                    "maxMemoryUsedMB": 60}}},
        ]
        conn = http.client.HTTPConnection("127.0.0.1", pipeline.listener.port, timeout=10)
        self.addCleanup(conn.close)
        conn.request("POST", "/", body=json.dumps(events).encode())
        self.assertEqual(conn.getresponse().status, 200)
        self.assertEqual(done, [rid])
        self.assertTrue(pipeline.wait_for_report(rid, 0))
        self.assertFalse(pipeline.wait_for_report("another", 0))
        self.assertGreaterEqual(pipeline.aggregator.pending_records("traces"), 1)
        self.assertEqual(pipeline.aggregator.pending_records("logs"), 1)
        self.assertIsNone(pipeline.receiver)


if __name__ == "__main__":
    unittest.main()
