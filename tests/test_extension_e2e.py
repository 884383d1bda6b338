"""lambda-otel end to end (issue 3): the real extension process under the simulator, exporting to a
real OTLP sink; what the backend holds must equal what the platform reported."""

import unittest

from tests.support import ExtensionTestCase, counter_total, histogram_totals


def reports_of(sim):
    return [e["record"] for e in sim.telemetry_events("platform.report")]


class LifecycleEndToEndTest(ExtensionTestCase):
    def test_twenty_invocations_with_cold_start_error_and_timeout(self):
        sink = self.make_sink()
        sim = self.make_sim(self.make_env(sink), timeout_s=1.0)
        sim.start(timeout=30)

        results = []
        for i in range(20):
            event = {"logs": 1}
            if i == 5:
                event["error"] = True
            if i == 10:
                event["sleep"] = 3  # past the 1 s function timeout
            results.append(sim.invoke(event, timeout=30))
        statuses = [r.status for r in results]
        self.assertEqual(statuses.count("error"), 1, statuses)
        self.assertEqual(statuses.count("timeout"), 1, statuses)
        self.assertEqual(statuses.count("success"), 18, statuses)

        down = sim.shutdown("spindown", timeout=30)

        # Every shutdown (the timeout reset and the final one): the extension exited 0, in time.
        self.assertEqual(len(sim.shutdowns), 2)
        for shutdown in sim.shutdowns:
            ext = shutdown.extensions["lambda-otel"]
            self.assertTrue(ext.exited_in_time, f"{shutdown.reason}: {ext}\n{self.extension_output(sim)}")
            self.assertEqual(ext.exit_code, 0, self.extension_output(sim))
            self.assertLess(ext.exited_at.wall * 1000, shutdown.deadline_ms)
        self.assertEqual(down.reason, "spindown")

        reports = reports_of(sim)
        self.assertEqual(len(reports), 20)
        points = sink.metrics()

        self.assertEqual(counter_total(points, "faas.invocations"), 18)  # successful: 20 - error - timeout
        self.assertEqual(counter_total(points, "faas.errors"), 1)
        self.assertEqual(counter_total(points, "faas.timeouts"), 1)
        # Two execution environments: the first, and the fresh init after the timeout reset.
        self.assertEqual(counter_total(points, "faas.coldstarts"), 2)

        count, total = histogram_totals(points, "faas.invoke_duration")
        self.assertEqual(count, 20)
        self.assertAlmostEqual(total, sum(r["metrics"]["durationMs"] for r in reports) / 1000.0, places=6)

        count, total = histogram_totals(points, "aws.lambda.billed_duration")
        self.assertEqual(count, 20)
        self.assertAlmostEqual(total, sum(r["metrics"]["billedDurationMs"] for r in reports) / 1000.0, places=6)

        count, total = histogram_totals(points, "faas.mem_usage")
        self.assertEqual(count, 20)
        self.assertEqual(total, sum(r["metrics"]["maxMemoryUsedMB"] for r in reports) * 1024 * 1024)

        inits = [r["metrics"]["initDurationMs"] for r in reports if "initDurationMs" in r["metrics"]]
        self.assertEqual(len(inits), 2)
        count, total = histogram_totals(points, "faas.init_duration")
        self.assertEqual(count, 2)
        self.assertAlmostEqual(total, sum(inits) / 1000.0, places=6)

        # A shutdown data point per shutdown, with the reason.
        self.assertEqual(counter_total(points, "aws.lambda.shutdowns", **{"aws.lambda.shutdown.reason": "timeout"}), 1)
        self.assertEqual(counter_total(points, "aws.lambda.shutdowns", **{"aws.lambda.shutdown.reason": "spindown"}), 1)

        # Units and temporality as the semantic conventions say.
        by_name = {p.name: p.metric for p in points}
        self.assertEqual(by_name["faas.invoke_duration"].unit, "s")
        self.assertEqual(by_name["faas.mem_usage"].unit, "By")
        self.assertEqual(by_name["faas.invocations"].sum.aggregation_temporality, 2)  # CUMULATIVE
        self.assertTrue(by_name["faas.invocations"].sum.is_monotonic)

        # The resource describes the function.
        resource = next(p.resource for p in points if p.name == "faas.invocations")
        self.assertEqual(resource["cloud.provider"], "aws")
        self.assertEqual(resource["cloud.platform"], "aws_lambda")
        self.assertEqual(resource["faas.name"], "test-function")
        self.assertEqual(resource["service.name"], "test-function")
        self.assertEqual(resource["cloud.account.id"], "123456789012")
        self.assertEqual(resource["cloud.region"], "us-east-1")
        self.assertEqual(resource["faas.max_memory"], 128 * 1024 * 1024)

        # Nothing was dropped on the way.
        dropped = [p for p in points if p.name == "lambda_otel.dropped" and p.point.as_int]
        self.assertEqual(dropped, [])

    def test_delta_temporality_sums_to_the_same_totals(self):
        sink = self.make_sink()
        env = self.make_env(sink, OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE="delta", LAMBDA_OTEL_FLUSH_STRATEGY="end")
        sim = self.make_sim(env)
        sim.start(timeout=30)
        for i in range(6):
            sim.invoke({"error": i == 2}, timeout=30)
        sim.shutdown("spindown", timeout=30)
        points = [p for p in sink.metrics() if p.name == "faas.invocations"]
        self.assertTrue(points)
        for p in points:
            self.assertEqual(p.metric.sum.aggregation_temporality, 1)  # DELTA
        self.assertEqual(sum(p.point.as_int for p in points), 5)  # successful ones
        # Delta windows never overlap.
        windows = sorted((p.point.start_time_unix_nano, p.point.time_unix_nano) for p in points)
        for (s1, e1), (s2, e2) in zip(windows, windows[1:]):
            self.assertLessEqual(e1, s2)
        errors = [p for p in sink.metrics() if p.name == "faas.errors"]
        self.assertEqual(sum(p.point.as_int for p in errors), 1)


class EnvironmentKindTest(ExtensionTestCase):
    def test_managed_instances_register_shutdown_only_and_still_export_everything(self):
        # Registering INVOKE on Managed Instances is refused and fails the environment's init.
        sink = self.make_sink()
        sim = self.make_sim(self.make_env(sink, AWS_LAMBDA_INITIALIZATION_TYPE="lambda-managed-instances"))
        sim.start(timeout=30)
        ext = next(e for e in sim.extensions if e.name == "lambda-otel")
        self.assertEqual(ext.events, ["SHUTDOWN"])
        for _ in range(3):
            self.assertEqual(sim.invoke({"logs": 1}, timeout=30).status, "success")
        down = sim.shutdown("spindown", timeout=30)
        self.assertTrue(down.extensions["lambda-otel"].exited_in_time, self.extension_output(sim))
        self.assertEqual(down.extensions["lambda-otel"].exit_code, 0, self.extension_output(sim))
        self.assertEqual(counter_total(sink.metrics(), "faas.invocations"), 3)


class StartupFailureTest(ExtensionTestCase):
    def test_bad_configuration_is_reported_to_init_error_with_the_variable(self):
        sink = self.make_sink()
        sim = self.make_sim(self.make_env(sink, LAMBDA_OTEL_FLUSH_STRATEGY="sometimes"))
        init = sim.start(timeout=30, check=False)
        self.assertNotEqual(init.status, "success")
        ext = next(e for e in init.extensions if e.name == "lambda-otel")
        self.assertEqual(ext.error_type, "Extension.ConfigInvalid")
        self.assertIn("LAMBDA_OTEL_FLUSH_STRATEGY", self.extension_output(sim))
        self.assertIn("default, end, periodic, continuous", self.extension_output(sim))

    def test_receiver_port_taken_is_reported(self):
        import socket

        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        self.addCleanup(taken.close)
        sink = self.make_sink()
        sim = self.make_sim(self.make_env(sink, LAMBDA_OTEL_RECEIVER_PORT=str(taken.getsockname()[1])))
        init = sim.start(timeout=30, check=False)
        ext = next(e for e in init.extensions if e.name == "lambda-otel")
        self.assertEqual(ext.error_type, "Extension.ReceiverBindFailed")
        self.assertIn("LAMBDA_OTEL_RECEIVER_PORT", self.extension_output(sim))

    def test_no_endpoint_warns_once_and_exits_cleanly(self):
        sim = self.make_sim(self.make_env(None))
        sim.start(timeout=30)
        for _ in range(3):
            self.assertEqual(sim.invoke({}, timeout=30).status, "success")
        down = sim.shutdown("spindown", timeout=30)
        self.assertTrue(down.extensions["lambda-otel"].exited_in_time)
        self.assertEqual(down.extensions["lambda-otel"].exit_code, 0)
        output = self.extension_output(sim)
        self.assertEqual(output.count("no OTLP endpoint configured"), 1, output)


if __name__ == "__main__":
    unittest.main()
