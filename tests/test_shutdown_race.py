"""SHUTDOWN while a telemetry batch is mid-processing loses nothing (the RWLock's job).

The race is made deterministic: the real converter is wrapped by a gate that holds the
listener thread inside batch processing (under the read lock) until the test lets go,
and SHUTDOWN is started while it is held. Everything else is real: the listener takes
the batch over HTTP, the converter and aggregator run, the exporter sends to a real sink.
"""

import http.client
import json
import threading
import time
import unittest

from lambda_otel.app import Extension
from lambda_otel.config import load_config
from lambda_otel.extensions_api import ExtensionsApiClient, Registration, ShutdownEvent
from lambda_otel.local.sink import OtlpSink
from lambda_otel.subscription import bind_socket


class HeldConverter:
    """Holds ``process`` until released, then does the real conversion."""

    def __init__(self, real):
        self.real = real
        self.entered = threading.Event()
        self.release = threading.Event()

    def process(self, events):
        self.entered.set()
        self.release.wait(10)
        return self.real.process(events)

    def __getattr__(self, name):
        return getattr(self.real, name)


def platform_batch(request_id: str) -> list:
    t = "2024-05-01T10:00:00.%03dZ"
    return [
        {"time": t % 100, "type": "platform.start", "record": {"requestId": request_id, "version": "$LATEST"}},
        {
            "time": t % 300,
            "type": "platform.runtimeDone",
            "record": {"requestId": request_id, "status": "success", "metrics": {"durationMs": 200.0}},
        },
        {
            "time": t % 400,
            "type": "platform.report",
            "record": {
                "requestId": request_id,
                "status": "success",
                "metrics": {"durationMs": 250.5, "billedDurationMs": 251, "memorySizeMB": 128, "maxMemoryUsedMB": 60},
            },
        },
    ]


class ShutdownRaceTest(unittest.TestCase):
    def test_batch_in_processing_when_shutdown_arrives_is_exported(self):
        sink = OtlpSink().start()
        self.addCleanup(sink.stop)
        env = {
            "LAMBDA_OTEL_EXPORTER_ENDPOINT": sink.endpoint,
            "LAMBDA_OTEL_RECEIVER_ENABLED": "false",
            "LAMBDA_OTEL_REPORT_GRACE_MS": "0",  # no grace: only the lock can save the batch
            "AWS_LAMBDA_FUNCTION_NAME": "race-fn",
        }
        config = load_config(env)
        registration = Registration("id", "race-fn", "$LATEST", None, "123456789012")
        # The Extensions API is never called on this path; an unreachable address proves it.
        ext = Extension(config, registration, ExtensionsApiClient("127.0.0.1:9"), env)
        held = HeldConverter(ext.pipeline.converter)
        ext.pipeline.converter = held
        ext.start_servers(bind_socket("127.0.0.1", 0), None)
        self.addCleanup(ext.pipeline.stop)
        ext.pipeline.coordinator.on_invoke("req-1", int(time.time() * 1000) + 60_000)
        ext.last_request_id = "req-1"

        post_status = {}

        def post():
            conn = http.client.HTTPConnection("127.0.0.1", ext.pipeline.listener.port, timeout=10)
            conn.request("POST", "/", body=json.dumps(platform_batch("req-1")))
            post_status["status"] = conn.getresponse().status
            conn.close()

        poster = threading.Thread(target=post)
        poster.start()
        self.assertTrue(held.entered.wait(5), "the batch never reached the converter")

        deadline_ms = int(time.time() * 1000) + 2000
        exit_code = {}
        shutdown = threading.Thread(target=lambda: exit_code.setdefault("code", ext.shutdown(ShutdownEvent("spindown", deadline_ms))))
        shutdown.start()
        # SHUTDOWN must now be waiting for the batch: nothing may have been flushed yet.
        shutdown.join(0.2)
        self.assertTrue(shutdown.is_alive(), "shutdown did not wait for the batch being processed")
        self.assertEqual(sink.requests_to("/v1/metrics"), [])

        held.release.set()
        poster.join(10)
        shutdown.join(10)
        self.assertFalse(shutdown.is_alive())
        self.assertEqual(exit_code.get("code"), 0)
        self.assertEqual(post_status.get("status"), 200)
        self.assertLess(time.time() * 1000, deadline_ms)

        invocations = [p for p in sink.metrics() if p.name == "faas.invocations"]
        self.assertEqual(sum(p.point.as_int for p in invocations), 1)
        durations = [p for p in sink.metrics() if p.name == "faas.invoke_duration"]
        self.assertEqual(sum(p.point.count for p in durations), 1)
        self.assertAlmostEqual(sum(p.point.sum for p in durations), 0.2505)
        self.assertTrue([s for s in sink.spans() if s.attributes], "the invocation span was not exported")


if __name__ == "__main__":
    unittest.main()
