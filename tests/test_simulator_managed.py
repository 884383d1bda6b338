"""Lambda Managed Instances mode: SHUTDOWN-only extensions, schema 2025-01-29, overlapping invocations.

The runtime is the real awslambdaric: told `AWS_LAMBDA_MAX_CONCURRENCY`, it forks one worker process per
concurrent request, each with its own init, and their output shares the runtime's stdout.
"""

import re
import unittest

from tests.fixtures.sim.support import SimTestCase, proc_state

LMI = dict(mode="managed-instances")
SHUTDOWN_ONLY = ["--events", "SHUTDOWN", "--schema", "2025-01-29", "--on-shutdown", "sleep:0.2"]
WORKER_LINE = re.compile(r"^worker (\d+) request (\S+) line (\d+)$")


def overlap(results):
    """Largest number of invocations running at one instant (from platform.start to their end)."""
    edges = sorted([(r.started_at.mono, 1) for r in results] + [(r.ended_at.mono, -1) for r in results])
    best = now = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best


class Registration(SimTestCase):
    def test_invoke_registration_is_refused_and_fails_init(self):
        sim = self.make_sim([("ext-a", ["--events", "INVOKE,SHUTDOWN", "--schema", "2025-01-29"])], **LMI)
        init = sim.start(timeout=20, check=False)
        register = self.records("ext-a", "register")[0]
        self.assertEqual(register["status"], 403)
        self.assertEqual(register["body"]["errorType"], "Extension.InvalidEventType")
        self.assertTrue(register["body"]["errorMessage"].startswith("INVOKE"))
        self.assertFalse(init.ok)  # the extension exits unregistered: init fails, as on Lambda

    def test_shutdown_only_registration_and_schema_2025_only(self):
        sim = self.make_sim([("new", SHUTDOWN_ONLY),
                             ("old", ["--events", "SHUTDOWN", "--schema", "2022-12-13", "--on-shutdown", "sleep:0.2"])],
                            **LMI)
        init = sim.start(timeout=20)
        self.assertTrue(init.ok)
        self.assertEqual(init.initialization_type, "lambda-managed-instances")
        self.assertEqual([r["status"] for r in self.records("new", "subscribe")], [200])
        old = self.records("old", "subscribe")[0]
        self.assertEqual(old["status"], 400)
        self.assertIn("ValidationError", old["body"])
        env = self.records("new", "register")[0]["env"]
        self.assertEqual(env["AWS_LAMBDA_INITIALIZATION_TYPE"], "lambda-managed-instances")
        start = sim.telemetry_events("platform.initStart")[0]["record"]
        self.assertEqual(start["initializationType"], "lambda-managed-instances")
        self.assertEqual(start["instanceMaxMemory"], 4096 * 1024 * 1024)  # the instance's memory, in bytes
        sim.shutdown()


class OverlappingInvocations(SimTestCase):
    def setUp(self):
        self.sim = self.make_sim([("ext-a", SHUTDOWN_ONLY)], handler="sim_handlers.worker", concurrency=4,
                                 timeout_s=3.0, **LMI)
        self.init = self.sim.start(timeout=30)
        pending = [self.sim.invoke_async({"sleep": 0.4, "lines": 3}) for _ in range(12)]
        self.results = [p.wait(30) for p in pending]
        self.down = self.sim.shutdown()

    def test_invocations_overlap_up_to_the_concurrency_each_in_a_worker(self):
        self.assertEqual([r.status for r in self.results], ["success"] * 12)
        self.assertEqual(overlap(self.results), 4)
        # four at once can only be four different worker processes, each of which ran its own init
        first = sorted(self.results, key=lambda r: r.started_at.mono)[:4]
        self.assertEqual(len({r.json()["pid"] for r in first}), 4)
        self.assertNotIn(self.sim.runtime_pid, {r.json()["pid"] for r in self.results})
        for r in self.results:
            self.assertEqual(r.json()["request_id"], r.request_id)
            self.assertIsNone(r.extension_overhead_ms)

    def test_no_freeze(self):
        self.assertEqual(self.sim.freezes, [])
        self.assertTrue(self.init.ok)

    def test_reports_carry_the_duration_only(self):
        reports = {e["record"]["requestId"]: e["record"] for e in self.sim.telemetry_events("platform.report")}
        self.assertEqual(set(reports), {r.request_id for r in self.results})
        for r in self.results:
            report = reports[r.request_id]
            self.assertEqual(set(report["metrics"]), {"durationMs"})
            self.assertGreaterEqual(report["metrics"]["durationMs"], 400.0)
            self.assertEqual([s["name"] for s in report["spans"]], ["responseLatency", "responseDuration"])
            self.assertEqual(report["tracing"]["value"], r.trace_header)

    def test_lifecycle_events_per_request_in_order(self):
        events = self.sim.telemetry_events()
        for r in self.results:
            kinds = [e["type"] for e in events if isinstance(e["record"], dict)
                     and e["record"].get("requestId") == r.request_id]
            self.assertEqual(kinds, ["platform.start", "platform.runtimeDone", "platform.report"])

    def test_worker_logs_arrive_interleaved_through_the_telemetry_api(self):
        lines = [e["record"] for e in self.received_events("ext-a") if e["type"] == "function"]
        parsed = [WORKER_LINE.match(line) for line in lines if isinstance(line, str)]
        parsed = [m.groups() for m in parsed if m]
        self.assertEqual(len(parsed), 12 * 3)  # every line once
        self.assertEqual({(rid, n) for _, rid, n in parsed},
                         {(r.request_id, str(n)) for r in self.results for n in range(3)})
        self.assertGreaterEqual(len({pid for pid, _, _ in parsed}), 4)
        order = [rid for _, rid, _ in parsed]
        split = [rid for rid in set(order)  # lines of another request came between this one's first and last
                 if len(set(order[order.index(rid):len(order) - order[::-1].index(rid)])) > 1]
        self.assertGreaterEqual(len(split), 4)

    def test_shutdown_at_the_end_with_a_deadline(self):
        shutdown = self.records("ext-a", "shutdown")
        self.assertEqual(len(shutdown), 1)
        self.assertEqual(shutdown[0]["reason"], "spindown")
        self.assertEqual(shutdown[0]["deadline_ms"], self.down.deadline_ms)
        self.assertTrue(self.down.extensions["ext-a"].exited_in_time)
        self.assertEqual(self.down.extensions["ext-a"].exit_code, 0)
        self.assertEqual([r["event"]["eventType"] for r in self.records("ext-a", "event")], ["SHUTDOWN"])


class WorkerInit(SimTestCase):
    def test_a_worker_init_error_fails_the_init_once(self):
        """Every worker reports the import error; the first one fails init, the others are refused (403)."""
        sim = self.make_sim([("ext-a", SHUTDOWN_ONLY)], handler="sim_init_error.handler", concurrency=3, **LMI)
        init = sim.start(timeout=30, check=False)
        self.assertEqual((init.status, init.error_type), ("error", "Runtime.Unknown"))
        self.assertIn("broken at import on purpose", init.message)
        reports = sim.telemetry_events("platform.initReport")
        self.assertEqual([r["record"]["status"] for r in reports], ["error"])
        self.assertEqual(sim.shutdown_result.reason, "failure")


class Redelivery(SimTestCase):
    def test_every_post_has_a_sequence_id_kept_on_retries(self):
        sim = self.make_sim([("ext-a", SHUTDOWN_ONLY + ["--listener-fail-first", "2"])], handler="sim_handlers.worker",
                            concurrency=2, **LMI)
        sim.start(timeout=30)
        sim.invoke({"sleep": 0.05})
        sim.shutdown()
        batches = self.records("ext-a", "batch")
        self.assertEqual([b["status"] for b in batches[:3]], [500, 500, 200])
        for b in batches:
            self.assertEqual(b["sequence_id"], b["body_sha256"])
        self.assertEqual(len({b["sequence_id"] for b in batches[:3]}), 1)  # a retry: the same id
        self.assertEqual(len({b["sequence_id"] for b in batches}), len(batches) - 2)

    def test_on_demand_posts_have_none(self):
        sim = self.make_sim([("ext-a", ["--on-shutdown", "sleep:0.2"])])
        sim.start(timeout=20)
        sim.invoke({})
        sim.shutdown()
        self.assertEqual({b["sequence_id"] for b in self.records("ext-a", "batch")}, {None})


class Timeouts(SimTestCase):
    def test_each_invocation_has_its_own_timeout_and_the_environment_stays(self):
        sim = self.make_sim([("ext-a", SHUTDOWN_ONLY)], handler="sim_handlers.worker", concurrency=2, timeout_s=1.0,
                            **LMI)
        sim.start(timeout=30)
        slow = sim.invoke_async({"sleep": 3.0})
        quick = [sim.invoke({"sleep": 0.1}) for _ in range(3)]  # run beside the slow one
        slow.wait(10)
        self.assertEqual(slow.status, "timeout")
        self.assertEqual(slow.error_type, "Sandbox.Timedout")
        self.assertEqual(slow.report["status"], "timeout")
        self.assertEqual([q.status for q in quick], ["success"] * 3)
        for q in quick:
            self.assertLess(q.ended_at.mono, slow.ended_at.mono)
        self.assertEqual(len(sim.init_results), 1)  # no reset: the other worker keeps serving
        self.assertEqual(sim.shutdowns, [])
        self.assertEqual(sim.invoke({"sleep": 0.1}).status, "success")
        sim.shutdown()

    def test_runtime_done_can_be_left_out(self):
        sim = self.make_sim([("ext-a", SHUTDOWN_ONLY)], handler="sim_handlers.worker", concurrency=2,
                            lmi_runtime_done=False, **LMI)
        sim.start(timeout=30)
        results = [sim.invoke({"sleep": 0.05}) for _ in range(2)]
        sim.shutdown()
        self.assertEqual(sim.telemetry_events("platform.runtimeDone"), [])
        self.assertEqual(len(sim.telemetry_events("platform.report")), 2)
        self.assertEqual([r.status for r in results], ["success"] * 2)

    def test_worker_processes_are_not_frozen_between_invocations(self):
        sim = self.make_sim([("ext-a", SHUTDOWN_ONLY)], handler="sim_handlers.worker", concurrency=2, **LMI)
        sim.start(timeout=30)
        sim.invoke({"sleep": 0.05})
        self.assertNotEqual(proc_state(sim.runtime_pid), "T")
        self.assertNotEqual(proc_state(sim.extension_pids["ext-a"]), "T")
        self.assertFalse(sim.is_frozen)
        sim.shutdown()


if __name__ == "__main__":
    unittest.main()
