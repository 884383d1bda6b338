"""Telemetry API schema versions: which ones an environment accepts, and what each subscriber receives.

All three versions are subscribed on the one path `PUT /2022-07-01/telemetry`; Managed Instances take
only 2025-01-29, and some on-demand runtimes refuse it (`telemetry_schemas=` emulates those).
"""

import unittest

from lambda_otel.local.simulator import Simulator
from lambda_otel.local.telemetry_delivery import shape_event
from tests.fixtures.sim.support import Collector, SimTestCase, api, subscription
from tests.support import EXTENSION_NAME, ExtensionTestCase

REGISTER = "/2020-01-01/extension/register"
TELEMETRY = "/2022-07-01/telemetry"


class SchemaAcceptance(unittest.TestCase):
    """The test plays the extension: registers by hand and subscribes with each version."""

    def start(self, **kwargs):
        sim = Simulator(handler=None, timeout_s=3.0, **kwargs)
        self.addCleanup(sim.stop)
        sim.start(wait=False)
        sim.wait_for(lambda: sim.telemetry_events("platform.initStart"), 5, "initStart")
        collector = Collector()
        self.addCleanup(collector.close)
        return sim, collector

    def subscribe(self, sim, collector, name, schema, events=("INVOKE", "SHUTDOWN")):
        # Registered as internal extensions (no process): those may not take SHUTDOWN.
        code, headers, body = api(sim.runtime_api, "POST", REGISTER, {"events": [e for e in events if e != "SHUTDOWN"]},
                                  {"Lambda-Extension-Name": name})
        self.assertEqual(code, 200, body)
        return api(sim.runtime_api, "PUT", TELEMETRY, {**subscription(collector.port), "schemaVersion": schema},
                   {"Lambda-Extension-Identifier": headers["lambda-extension-identifier"]})

    def test_every_version_on_the_unchanged_path(self):
        sim, collector = self.start()
        for i, schema in enumerate(("2025-01-29", "2022-12-13", "2022-07-01")):
            with self.subTest(schema=schema):
                self.assertEqual(self.subscribe(sim, collector, f"ext-{i}", schema)[:3:2], (200, "OK"))
        # a path carrying the new date does not exist
        code, _, body = api(sim.runtime_api, "PUT", "/2025-01-29/telemetry", subscription(collector.port), {})
        self.assertEqual((code, body["errorType"]), (404, "NotFound"))

    def test_runtime_that_refuses_2025_01_29(self):
        """What an extension's fallback meets: 400 ValidationError for 2025-01-29, 200 for 2022-12-13."""
        sim, collector = self.start(telemetry_schemas=("2022-07-01", "2022-12-13"))
        code, _, body = self.subscribe(sim, collector, "newest-first", "2025-01-29")
        self.assertEqual((code, body["errorType"]), (400, "ValidationError"))
        self.assertIn("2025-01-29", body["errorMessage"])
        self.assertFalse(sim.telemetry_events("platform.telemetrySubscription"))
        code, _, body = self.subscribe(sim, collector, "fallback", "2022-12-13")
        self.assertEqual((code, body), (200, "OK"))

    def test_bad_schema_lists_are_refused(self):
        with self.assertRaises(ValueError):
            Simulator(telemetry_schemas=("2024-01-01",))
        with self.assertRaises(ValueError):
            Simulator(telemetry_schemas=())


class SchemaShapes(SimTestCase):
    def test_each_subscriber_gets_its_schema_shape(self):
        """initStart: bytes under 2025-01-29, MB under 2022-12-13, type and phase only under 2022-07-01."""
        sim = self.make_sim([(f"ext-{n}", ["--schema", schema, "--subscribe", "platform", "--on-shutdown", "sleep:0.2"])
                             for n, schema in (("new", "2025-01-29"), ("mid", "2022-12-13"), ("old", "2022-07-01"))],
                            memory_mb=256)
        sim.start(timeout=20)
        res = sim.invoke({})
        sim.shutdown()
        self.assertEqual(res.status, "success")
        starts = {name: [e["record"] for e in self.received_events(f"ext-{name}") if e["type"] == "platform.initStart"]
                  for name in ("new", "mid", "old")}
        generated = sim.telemetry_events("platform.initStart")[0]["record"]
        self.assertEqual(starts["new"], [generated])
        self.assertEqual(generated["instanceMaxMemory"], 256 * 1024 * 1024)
        self.assertEqual(starts["mid"], [{**generated, "instanceMaxMemory": 256}])
        self.assertEqual(starts["old"], [{"initializationType": "on-demand", "phase": "init"}])
        # every other event is the same for all three
        for name in ("mid", "old"):
            other = [e for e in self.received_events(f"ext-{name}") if e["type"] == "platform.report"]
            self.assertEqual(other, [e for e in self.received_events("ext-new") if e["type"] == "platform.report"])

    def test_shape_event_leaves_the_input_alone(self):
        event = {"time": "t", "type": "platform.initStart", "record": {"initializationType": "on-demand", "phase": "init",
                                                                       "instanceMaxMemory": 128 * 1024 * 1024}}
        self.assertEqual(shape_event(event, "2022-12-13")["record"]["instanceMaxMemory"], 128)
        self.assertEqual(event["record"]["instanceMaxMemory"], 128 * 1024 * 1024)
        self.assertIs(shape_event(event, "2025-01-29"), event)


class RealExtensionFallback(ExtensionTestCase):
    """lambda-otel against runtimes that refuse, or require, schema 2025-01-29 (its subscription falls back)."""

    def run_extension(self, **sim_kwargs):
        sink = self.make_sink()
        sim = self.make_sim(self.make_env(sink), **sim_kwargs)
        sim.start(timeout=30)
        results = [sim.invoke({}) for _ in range(2)]
        down = sim.shutdown()
        return sim, sink, results, down

    def test_falls_back_to_2022_12_13_where_2025_01_29_is_refused(self):
        sim, sink, results, down = self.run_extension(telemetry_schemas=("2022-07-01", "2022-12-13"))
        self.assertEqual([r.status for r in results], ["success"] * 2)
        self.assertEqual(down.extensions[EXTENSION_NAME].exit_code, 0)
        self.assertEqual([sub["record"]["name"] for sub in sim.telemetry_events("platform.telemetrySubscription")],
                         [EXTENSION_NAME])  # the refused attempt subscribed nothing
        self.assertEqual({b.subscriber for b in sim.batches}, {EXTENSION_NAME})
        self.assertIn("subscribed with schema 2022-12-13", self.extension_output(sim))
        invocation_spans = {s.name for s in sink.spans()}
        self.assertIn("test-function", invocation_spans)  # platform events flowed: the subscription works

    def test_uses_2025_01_29_where_it_is_accepted(self):
        sim, sink, results, down = self.run_extension()
        self.assertEqual([r.status for r in results], ["success"] * 2)
        self.assertIn("subscribed with schema 2025-01-29", self.extension_output(sim))
        self.assertIn("test-function", {s.name for s in sink.spans()})


if __name__ == "__main__":
    unittest.main()
