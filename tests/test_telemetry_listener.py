"""The Telemetry API listener: real HTTP on 127.0.0.1, bad input answered with 4xx, nothing crashes."""

import http.client
import json
import socket
import threading
import time
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


    def test_what_is_remembered_of_past_invocations_stays_small(self):
        # A long-lived environment runs millions of invocations: the ids kept for the report wait and
        # the silence check must not grow with them (they used to, up to 10,000 ids, ~2 MiB).
        from lambda_otel.config import load_config
        from lambda_otel.pipeline import _RECENT_IDS, Pipeline, RecentIds

        recent = RecentIds(3)
        recent.update(["a", "b"], ["c", "a"], ["d"])
        self.assertEqual([r in recent for r in "abcd"], [True, False, True, True], "the oldest is forgotten")
        pipeline = Pipeline(load_config({}), {"service.name": "pipeline-test"})
        ids = [f"0b5e1c4e-0000-4000-8000-{i:012d}" for i in range(3 * _RECENT_IDS)]
        for rid in ids:
            pipeline.on_invoke(rid)
            pipeline.process_batch([
                {"time": "2024-05-01T10:00:00.000Z", "type": "platform.start", "record": {"requestId": rid}},
                {"time": "2024-05-01T10:00:00.300Z", "type": "platform.report",
                 "record": {"requestId": rid, "status": "success", "metrics": {"durationMs": 1.0}}}])
        self.assertLessEqual(len(pipeline._reports_seen) + len(pipeline._platform_seen), 2 * _RECENT_IDS)
        self.assertEqual(pipeline._open, set())
        self.assertTrue(pipeline.wait_for_report(ids[-1], 0))


class ListenerLimitsTest(unittest.TestCase):
    """What a misbehaving client can make the Telemetry API listener spend: the receiver's limits."""

    LIMITS = None  # set in setUp (small, so the test is quick)

    def setUp(self):
        from lambda_otel.http_server import ServerLimits

        self.batches = []
        self.listener = TelemetryListener(bind_socket("127.0.0.1", 0), self.batches.append, TelemetryConfig(),
                                          limits=ServerLimits(max_connections=8, idle_timeout_s=30.0,
                                                              header_timeout_s=0.5, body_timeout_s=0.5))
        self.listener.start()
        self.addCleanup(self.listener.stop)

    def raw(self):
        s = socket.create_connection(("127.0.0.1", self.listener.port), timeout=10)
        self.addCleanup(s.close)
        return s

    def post_ok(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.listener.port, timeout=10)
        self.addCleanup(conn.close)
        conn.request("POST", "/", body=b'[{"type": "function", "record": "ok"}]')
        response = conn.getresponse()
        response.read()
        return response.status

    def test_idle_connections_past_the_cap_cost_no_thread_and_lock_nobody_out(self):
        threads_before = threading.active_count()
        idle = [self.raw() for _ in range(40)]  # 5,000 of these once meant 5,000 threads
        self.assertEqual(self.post_ok(), 200)
        for _ in range(100):
            if self.listener.connection_count() <= 8:
                break
            time.sleep(0.02)
        self.assertLessEqual(self.listener.connection_count(), 8)
        self.assertLessEqual(threading.active_count() - threads_before, 8 + 2)  # the cap, and threads ending
        self.assertGreater(self.listener.http_stats.snapshot()["idle_closed_at_connection_cap"], 30)
        del idle

    def test_slow_head_and_long_declared_body_are_cut_at_their_deadlines(self):
        head = self.raw()
        head.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")  # never finishes its head
        body = self.raw()
        body.sendall(b"POST / HTTP/1.1\r\nContent-Length: 100000\r\n\r\n[")  # never sends the rest
        for sock in (head, body):
            sock.settimeout(10)
            started = time.monotonic()
            self.assertEqual(sock.recv(1024), b"")  # closed by the listener
            self.assertLess(time.monotonic() - started, 9)
        stats = self.listener.http_stats.snapshot()
        self.assertEqual((stats["slow_request_head"], stats["slow_body"]), (1, 1))
        self.assertEqual(self.post_ok(), 200)

    def test_aborted_connections_print_nothing(self):
        """200 aborted connections once printed 5,619 traceback lines, which came back as telemetry."""
        import contextlib
        import io
        import struct

        err = io.StringIO()
        with contextlib.redirect_stderr(err), self.assertNoLogs("lambda_otel", level="DEBUG"):
            for i in range(60):
                s = socket.create_connection(("127.0.0.1", self.listener.port), timeout=10)
                s.sendall(b"POST / HTTP/1.1\r\nContent-Length: 50\r\n\r\n" + (b"[" if i % 2 else b""))
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()  # RST
            self.assertEqual(self.post_ok(), 200)
            time.sleep(0.6)  # past the body deadline of any connection still open
        self.assertEqual(err.getvalue(), "")
        self.assertEqual(self.batches, [[{"type": "function", "record": "ok"}]])


class SilentSubscriptionTest(unittest.TestCase):
    """A subscription that delivers no platform event is said once, not per invocation."""

    def pipeline(self):
        from lambda_otel.config import load_config
        from lambda_otel.pipeline import Pipeline

        return Pipeline(load_config({}), {"service.name": "silent"})

    def test_invocations_without_platform_events_are_said_once(self):
        pipeline = self.pipeline()
        from lambda_otel.pipeline import SILENCE_WINDOW

        with self.assertNoLogs("lambda_otel.pipeline", level="WARNING"):  # its events may still come
            for i in range(SILENCE_WINDOW):
                pipeline.on_invoke(f"req-{i}")
        with self.assertLogs("lambda_otel.pipeline", level="WARNING") as logs:
            for i in range(SILENCE_WINDOW, 3 * SILENCE_WINDOW):
                pipeline.on_invoke(f"req-{i}")
        self.assertEqual(len(logs.records), 1, logs.output)
        self.assertIn("req-0", logs.output[0])
        self.assertIn("LAMBDA_OTEL_TELEMETRY_TYPES", logs.output[0])

    def test_an_invocation_with_a_platform_event_is_not_reported(self):
        pipeline = self.pipeline()
        with self.assertNoLogs("lambda_otel.pipeline", level="WARNING"):
            for i in range(40):
                pipeline.on_invoke(f"req-{i}")
                # only its platform.start arrives (the report would come after the next /next)
                pipeline.process_batch([{"time": "2024-05-01T10:00:00.000Z", "type": "platform.start",
                                         "record": {"requestId": f"req-{i}"}}])


class SlowConverter:
    """The real converter behind a lock it holds ``delay`` seconds per batch, as a heavy batch does."""

    def __init__(self, real, delay: float) -> None:
        self.real, self.delay, self.lock = real, delay, threading.Lock()

    def process(self, events):
        with self.lock:
            time.sleep(self.delay)
            return self.real.process(events)

    def on_shutdown(self, reason, now_ns=None):
        with self.lock:
            return self.real.on_shutdown(reason, now_ns)

    def __getattr__(self, name):
        return getattr(self.real, name)


class ShutdownUnderLoadTest(unittest.TestCase):
    """Heavy Telemetry API batches arriving concurrently while SHUTDOWN runs: SHUTDOWN keeps its
    deadline, and every record of every batch we acknowledged is delivered or counted."""

    POSTERS = 6
    EVENTS = 1000  # per batch
    CONVERT_S = 0.15  # what a heavy batch costs to convert on a starved CPU (the converter holds its lock)

    def test_every_acknowledged_record_is_delivered_or_counted_and_the_deadline_holds(self):
        from lambda_otel.app import Extension
        from lambda_otel.config import load_config
        from lambda_otel.extensions_api import ExtensionsApiClient, Registration, ShutdownEvent
        from lambda_otel.local.sink import OtlpSink

        sink = OtlpSink().start()
        self.addCleanup(sink.stop)
        env = {"LAMBDA_OTEL_EXPORTER_ENDPOINT": sink.endpoint, "LAMBDA_OTEL_RECEIVER_ENABLED": "false",
               "LAMBDA_OTEL_REPORT_GRACE_MS": "0", "AWS_LAMBDA_FUNCTION_NAME": "load-fn"}
        ext = Extension(load_config(env), Registration("id", "load-fn", "$LATEST", None, "123456789012"),
                        ExtensionsApiClient("127.0.0.1:9"), env)  # the Extensions API is not called here
        ext.pipeline.converter = SlowConverter(ext.pipeline.converter, self.CONVERT_S)
        ext.start_servers(bind_socket("127.0.0.1", 0), None)
        self.addCleanup(ext.pipeline.stop)
        ext.pipeline.coordinator.on_invoke("req-1", int(time.time() * 1000) + 60_000)

        stop = threading.Event()
        acked, lock, enough = set(), threading.Lock(), threading.Event()

        def poster(n):
            conn = http.client.HTTPConnection("127.0.0.1", ext.pipeline.listener.port, timeout=5)
            try:
                for b in range(60):  # bounded
                    if stop.is_set():
                        return
                    lines = [f"load line {n}-{b}-{i} " + "x" * 80 for i in range(self.EVENTS)]
                    body = json.dumps([{"time": "2024-05-01T10:00:00.000Z", "type": "function", "record": line}
                                       for line in lines]).encode()
                    assert len(body) < ext.pipeline.listener.max_body_bytes
                    try:
                        conn.request("POST", "/", body=body, headers={"Content-Type": "application/json"})
                        response = conn.getresponse()
                        response.read()
                    except (OSError, http.client.HTTPException):
                        conn.close()
                        continue
                    if response.status == 200:
                        with lock:
                            acked.update(lines)
                            if len(acked) >= 2 * self.POSTERS * self.EVENTS:
                                enough.set()
            finally:
                conn.close()

        threads = [threading.Thread(target=poster, args=(n,), daemon=True) for n in range(self.POSTERS)]
        for t in threads:
            t.start()
        self.assertTrue(enough.wait(60), "the posters got nothing acknowledged")
        deadline_ms = int(time.time() * 1000) + 600  # a Managed Instances-like short SHUTDOWN
        code = ext.shutdown(ShutdownEvent("spindown", deadline_ms))
        finished_ms = time.time() * 1000
        stop.set()
        for t in threads:
            t.join(20)
        self.assertEqual(code, 0)
        self.assertLess(finished_ms, deadline_ms, "SHUTDOWN overran its deadline")

        delivered = {i.record.body.string_value for i in sink.log_items()
                     if i.record.body.string_value.startswith("load line ")}
        counted = sum(n for (signal, _), n in ext.pipeline.loss.snapshot().items() if signal == "logs")
        self.assertLessEqual(delivered, acked, "a line was delivered that was never acknowledged")
        self.assertEqual(len(acked), len(delivered) + counted,
                         f"acknowledged {len(acked)}, delivered {len(delivered)}, counted {counted}: "
                         f"{ext.pipeline.loss.snapshot()}")


if __name__ == "__main__":
    unittest.main()
