"""OTEL_EXPORTER_OTLP_PROTOCOL=http/json end to end: the real extension under the simulator exports
OTLP/JSON to Rotel (a collector we did not write), which forwards what it understood to the sink.

Everything the extension sent must come out of Rotel: every function log line once, the platform
spans with their trace ids, the platform metrics.
"""

import subprocess
import time
import unittest

from tests.reliability_support import expected_lines, function_lines
from tests.support import ExtensionTestCase, free_port
from tests.test_exporter import _rotel_agent

LINES = 5


class JsonThroughRotelTest(ExtensionTestCase):
    def start_rotel(self, sink) -> int:
        port = free_port()
        agent = subprocess.Popen(
            [_rotel_agent(), "start", "--otlp-http-endpoint", f"127.0.0.1:{port}",
             "--otlp-grpc-endpoint", f"127.0.0.1:{free_port()}", "--exporter", "otlp",
             "--otlp-exporter-endpoint", sink.endpoint, "--otlp-exporter-protocol", "http", "--disable-batching"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def stop() -> None:
            agent.terminate()
            try:
                agent.wait(timeout=10)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(timeout=10)

        self.addCleanup(stop)
        import socket

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # bounded: until its HTTP receiver listens
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return port
            time.sleep(0.05)
        self.fail("rotel-agent did not start listening")

    def test_the_shared_protocol_variable_selects_json_for_every_signal(self):
        from lambda_otel.config import OtlpProtocol, load_config

        config = load_config({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
                              "LAMBDA_OTEL_EXPORTER_ENDPOINT": "http://127.0.0.1:9"})
        self.assertEqual({config.exporter.protocol(s) for s in ("traces", "metrics", "logs")},
                         {OtlpProtocol.HTTP_JSON})

    def test_platform_telemetry_and_function_logs_arrive_through_rotel(self):
        sink = self.make_sink()
        port = self.start_rotel(sink)
        env = self.make_env(None, LAMBDA_OTEL_EXPORTER_ENDPOINT=f"http://127.0.0.1:{port}",
                            OTEL_EXPORTER_OTLP_PROTOCOL="http/json", LAMBDA_OTEL_FLUSH_STRATEGY="end")
        sim = self.make_sim(env)
        sim.start(timeout=30)
        results = [sim.invoke({"logs": LINES}, timeout=30) for _ in range(2)]
        sim.shutdown("spindown", timeout=30)
        output = self.extension_output(sim)
        self.assertTrue(all(r.status == "success" for r in results), output)
        expected = expected_lines(results, LINES)
        self.assertTrue(sink.wait_for(lambda: set(function_lines(sink)) >= expected, timeout=20), output)
        self.assertEqual(set(function_lines(sink).values()), {1}, "a line arrived twice")
        self.assertNotIn("http/json", output)  # supported: no warning about the protocol
        # What the sink got came through Rotel (its own client), not from the extension directly.
        self.assertFalse([r for r in sink.requests if r.headers.get("user-agent", "").startswith("lambda-otel")])
        server_spans = [s for s in sink.spans() if s.kind == s.SPAN_KIND_SERVER]
        self.assertEqual({attr.value.string_value for s in server_spans for attr in s.attributes
                          if attr.key == "faas.invocation_id"}, {r.request_id for r in results})
        self.assertTrue(all(len(s.trace_id) == 16 and any(s.trace_id) and len(s.span_id) == 8
                            for s in sink.spans()))
        self.assertTrue(sink.wait_for(lambda: any(p.name == "faas.invoke_duration" for p in sink.metrics()), 20))


if __name__ == "__main__":
    unittest.main()
