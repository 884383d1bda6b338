"""SnapStart mode: init once at snapshot time, then restores of that snapshot (two by fork).

The extension fixture is a fork server (the restore-by-fork protocol: copy 1 at once, one more copy per
SIGUSR1, each left a zombie until the next request, SIGTERM = reap and exit 0 iff all exited 0); the
runtime is the real awslambdaric, which calls GET /2018-06-01/runtime/restore/next under snap-start and
runs the function's before-snapshot and after-restore hooks.
"""

import unittest

from lambda_otel.local.simulator import SimulatorError
from lambda_otel.local.telemetry_delivery import shape_event
from tests.fixtures.sim.support import SimTestCase, proc_state

SNAP = dict(mode="snapstart", handler="sim_snapstart.handler")
FORKING = ["--fork-restores", "--on-shutdown", "sleep:0.2"]
RESTORE_TYPES = ("platform.restoreStart", "platform.restoreRuntimeDone", "platform.restoreReport")
INIT_TYPES = ("platform.initStart", "platform.initRuntimeDone", "platform.extension", "platform.initReport")


def batches_by_copy(rows):
    out = {}
    for row in rows:
        out.setdefault(row["pid"], []).extend(e for e in row["events"])
    return out


class TwoRestoresByFork(SimTestCase):
    def setUp(self):
        self.sim = self.make_sim([("ext-a", FORKING)], **SNAP)
        self.init = self.sim.start(timeout=30)
        self.snapshot_frozen = self.sim.is_frozen
        self.first = [self.sim.invoke({"n": 1}), self.sim.invoke({"n": 2})]
        self.down1 = self.sim.shutdown()
        self.second = [self.sim.invoke({"n": 3})]
        self.down2 = self.sim.shutdown()
        self.sim.stop()

    def test_init_happens_once_at_snapshot_time(self):
        self.assertTrue(self.init.ok)
        self.assertEqual(self.init.initialization_type, "snap-start")
        self.assertTrue(self.snapshot_frozen)
        self.assertEqual(len(self.sim.telemetry_events("platform.initStart")), 1)
        self.assertEqual(self.sim.telemetry_events("platform.initStart")[0]["record"]["initializationType"],
                         "snap-start")
        self.assertEqual([r.number for r in self.sim.restores], [1, 2])
        self.assertTrue(all(r.ok for r in self.sim.restores))
        self.assertEqual(self.first[0].restore, self.sim.restores[0])
        self.assertIsNone(self.first[1].restore)
        self.assertEqual(self.second[0].restore, self.sim.restores[1])
        for res in self.first + self.second:
            self.assertEqual(res.status, "success")
            self.assertEqual(res.json()["init_type"], "snap-start")
        env = self.records("ext-a", "register")[0]["env"]
        self.assertEqual(env["AWS_LAMBDA_INITIALIZATION_TYPE"], "snap-start")

    def test_two_copies_of_one_memory_image(self):
        copies = self.records("ext-a", "copy")
        server = self.records("ext-a", "register")[0]["pid"]
        self.assertEqual(len(copies), 2)
        self.assertEqual({c["ppid"] for c in copies}, {server})
        self.assertNotEqual(copies[0]["pid"], copies[1]["pid"])
        self.assertEqual(copies[0]["random"], copies[1]["random"])  # the state both started from
        self.assertEqual([r.extension_pids["ext-a"] for r in self.sim.restores], [c["pid"] for c in copies])
        # each copy served its restore: one SHUTDOWN each, exit status read from its zombie
        for copy, down in zip(copies, (self.down1, self.down2)):
            self.assertEqual([r["pid"] for r in self.records("ext-a", "shutdown") if r["pid"] == copy["pid"]],
                             [copy["pid"]])
            self.assertEqual(down.extensions["ext-a"].pid, copy["pid"])
            self.assertEqual(down.extensions["ext-a"].exit_code, 0)
            self.assertTrue(down.extensions["ext-a"].exited_in_time)
        self.assertEqual(self.sim.fork_server_exits, {"ext-a": 0})
        self.assertIsNone(proc_state(server))

    def test_restore_events_then_the_snapshot_init_events(self):
        delivered = batches_by_copy(self.records("ext-a", "batch"))
        copies = [c["pid"] for c in self.records("ext-a", "copy")]
        self.assertEqual(set(delivered), set(copies))  # nothing reached the extension at snapshot time
        for pid, restore in zip(copies, self.sim.restores):
            kinds = [e["type"] for e in delivered[pid] if e["type"].startswith("platform.")]
            self.assertEqual(kinds[0], "platform.restoreStart")
            late_init = [k for k in kinds if k in INIT_TYPES]
            self.assertEqual(late_init[0], "platform.initStart")
            self.assertEqual(late_init[-1], "platform.initReport")
            # the snapshot's init events arrive after the restore started, with their own timestamps
            self.assertLess(kinds.index("platform.restoreStart"), kinds.index("platform.initStart"))
            self.assertLess(kinds.index("platform.initReport"), kinds.index("platform.restoreRuntimeDone"))
            self.assertLess(kinds.index("platform.restoreRuntimeDone"), kinds.index("platform.restoreReport"))
            self.assertLess(kinds.index("platform.restoreReport"), kinds.index("platform.start"))
            init_start = next(e for e in delivered[pid] if e["type"] == "platform.initStart")
            self.assertEqual(init_start, shape_event(self.sim.telemetry_events("platform.initStart")[0], "2022-12-13"))
            report = next(e for e in delivered[pid] if e["type"] == "platform.restoreReport")["record"]
            self.assertEqual(report, {"status": "success", "metrics": {"durationMs": restore.duration_ms}})
        starts = [e["record"] for e in self.sim.telemetry_events("platform.restoreStart")]
        self.assertEqual(len(starts), 2)
        self.assertNotEqual(starts[0]["instanceId"], starts[1]["instanceId"])  # two environments

    def test_first_report_after_a_restore_carries_the_restore_duration(self):
        for res, restore in ((self.first[0], self.sim.restores[0]), (self.second[0], self.sim.restores[1])):
            metrics = res.report["metrics"]
            self.assertEqual(metrics["restoreDurationMs"], restore.duration_ms)
            self.assertGreaterEqual(metrics["billedRestoreDurationMs"], metrics["restoreDurationMs"])
            self.assertNotIn("initDurationMs", metrics)
        self.assertNotIn("restoreDurationMs", self.first[1].report["metrics"])

    def test_runtime_hooks_ran_before_the_snapshot_and_after_each_restore(self):
        lines = [e["record"] for e in self.sim.telemetry_events("function") if isinstance(e["record"], str)]
        self.assertEqual(len([line for line in lines if line.startswith("before snapshot")]), 2)  # + restore 2's runtime
        self.assertEqual(len([line for line in lines if line.startswith("after restore")]), 2)
        self.assertNotEqual(self.first[0].json()["pid"], self.second[0].json()["pid"])  # restore 2: a fresh runtime


class RestoreFailures(SimTestCase):
    def test_an_extension_that_does_not_fork_serves_restore_1_only(self):
        sim = self.make_sim([("ext-a", ["--on-shutdown", "sleep:0.2"])], **SNAP)
        sim.start(timeout=30)
        self.assertEqual(sim.invoke({}).status, "success")
        sim.shutdown()
        with self.assertRaises(SimulatorError) as caught:
            sim.restore()
        self.assertIn("ext-a", str(caught.exception))

    def test_after_restore_hook_failure_fails_the_restore(self):
        sim = self.make_sim([("ext-a", FORKING)], env={"SIM_FAIL_AFTER_RESTORE": "1"}, **SNAP)
        sim.start(timeout=30)
        restore = sim.restore()
        self.assertFalse(restore.ok)
        self.assertEqual(restore.error_type, "Runtime.AfterRestoreError")
        self.assertEqual(sim.telemetry_events("platform.restoreReport")[-1]["record"],
                         {"status": "error", "errorType": "Runtime.AfterRestoreError"})
        self.assertEqual(sim.shutdown_result.reason, "failure")

    def test_restore_needs_snapstart(self):
        sim = self.make_sim([], handler=None)
        with self.assertRaises(SimulatorError):
            sim.restore()


if __name__ == "__main__":
    unittest.main()
