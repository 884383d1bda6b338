"""Conformance of the simulator's init and invoke lifecycle: event order, runtimeDone and report timing, provisioned concurrency."""

import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
import unittest
from unittest import mock

from lambda_otel.local import processes
from tests.aws_support import wait_until
from tests.fixtures.sim.support import SimTestCase

TRACE_RE = re.compile(r"^Root=1-[0-9a-f]{8}-[0-9a-f]{24};Parent=[0-9a-f]{16};Sampled=1$")


def types(events):
    return [e["type"] for e in events]


class InitAndInvokeOrdering(SimTestCase):
    def setUp(self):
        self.sim = self.make_sim([("ext-a", ["--wait-runtime-done", "--on-shutdown", "sleep:0.3"]), ("ext-b", ["--hold-ms", "30"])])
        self.init = self.sim.start(timeout=20)
        self.results = [self.sim.invoke({"n": i}) for i in range(3)]
        self.down = self.sim.shutdown()

    def test_init_events_are_replayed_and_ordered(self):
        """Check 5: initStart replayed to each subscriber; initRuntimeDone -> platform.extension -> initReport."""
        for name in ("ext-a", "ext-b"):
            got = types(self.received_events(name))
            self.assertEqual(got[0], "platform.initStart", name)  # generated before it subscribed
            i_rt = got.index("platform.initRuntimeDone")
            i_rep = got.index("platform.initReport")
            ext_idx = [i for i, t in enumerate(got) if t == "platform.extension"]
            self.assertEqual(len(ext_idx), 2)
            self.assertTrue(i_rt < min(ext_idx) and max(ext_idx) < i_rep, got)
        init_report = self.sim.telemetry_events("platform.initReport")[0]["record"]
        self.assertEqual(init_report["status"], "success")
        self.assertEqual(init_report["phase"], "init")
        extension_records = {e["record"]["name"]: e["record"] for e in self.sim.telemetry_events("platform.extension")}
        self.assertEqual(extension_records["ext-a"]["events"], ["INVOKE", "SHUTDOWN"])
        self.assertEqual(extension_records["ext-a"]["state"], "Ready")

    def test_init_ends_after_every_first_next(self):
        """Check 5: init ends only after the runtime's and every extension's first /next."""
        self.assertTrue(self.init.ok)
        for info in self.init.extensions:
            self.assertIsNotNone(info.first_next_at)
            self.assertLessEqual(info.first_next_at.mono, self.init.ended_at.mono)
            # extensions registered before the runtime was even launched
            self.assertLessEqual(info.registered_at.mono, self.init.runtime_ready_at.mono)
        self.assertLessEqual(self.init.runtime_ready_at.mono, self.init.ended_at.mono)

    def test_invoke_event_order_and_correlation(self):
        """Check 6: start < runtimeDone < report per request; ids and tracing match the INVOKE."""
        events = self.sim.telemetry_events()
        invokes = [r["event"] for r in self.records("ext-a", "event") if r["event"]["eventType"] == "INVOKE"]
        self.assertEqual([e["requestId"] for e in invokes], [r.request_id for r in self.results])
        for res, invoke in zip(self.results, invokes):
            self.assertEqual(res.status, "success")
            self.assertEqual(json.loads(res.response)["request_id"], res.request_id)
            idx = {t: i for i, e in enumerate(events) for t in [e["type"]]
                   if e["type"] in ("platform.start", "platform.runtimeDone", "platform.report")
                   and e["record"]["requestId"] == res.request_id}
            self.assertLess(idx["platform.start"], idx["platform.runtimeDone"])
            self.assertLess(idx["platform.runtimeDone"], idx["platform.report"])
            self.assertRegex(invoke["tracing"]["value"], TRACE_RE)
            for t in ("platform.start", "platform.runtimeDone", "platform.report"):
                self.assertEqual(events[idx[t]]["record"]["tracing"]["value"], invoke["tracing"]["value"])
            self.assertEqual(invoke["deadlineMs"], res.deadline_ms)
            self.assertEqual(invoke["invokedFunctionArn"], "arn:aws:lambda:us-east-1:123456789012:function:test-function")

    def test_runtime_done_after_next_and_report_after_extensions(self):
        """Check 6: runtimeDone only at the runtime's next /next; report only after every extension's /next."""
        for res in self.results:
            self.assertLessEqual(res.response_ended_at.mono, res.runtime_done_at.mono)
            self.assertEqual(set(res.extension_next_at), {"ext-a", "ext-b"})
            for name, at in res.extension_next_at.items():
                self.assertLessEqual(at.mono, res.ended_at.mono)
            self.assertGreaterEqual(res.extension_overhead_ms, 0.0)
            # ext-b holds 30 ms after its INVOKE before /next: the report waits for it
            self.assertGreaterEqual(res.ended_at.mono, res.extension_next_at["ext-b"].mono)

    def test_runtime_done_spans_and_metrics(self):
        """Check 7: span names and durationMs >= sum of spans (±1 ms)."""
        for res in self.results:
            rec = res.runtime_done
            self.assertEqual(rec["status"], "success")
            names = [s["name"] for s in rec["spans"]]
            self.assertTrue(set(names) <= {"responseLatency", "responseDuration", "runtimeOverhead"})
            self.assertIn("responseLatency", names)
            self.assertGreaterEqual(rec["metrics"]["durationMs"] + 1.0, sum(s["durationMs"] for s in rec["spans"]))
            self.assertEqual(rec["metrics"]["producedBytes"], len(res.response))

    def test_report_metrics(self):
        """Check 8: report metrics; initDurationMs only on the first invoke."""
        for i, res in enumerate(self.results):
            m = res.report["metrics"]
            self.assertGreaterEqual(m["billedDurationMs"], math.ceil(m["durationMs"]))
            self.assertEqual(m["memorySizeMB"], 128)
            self.assertLessEqual(m["maxMemoryUsedMB"], m["memorySizeMB"])
            self.assertGreater(m["maxMemoryUsedMB"], 0)
            self.assertEqual("initDurationMs" in m, i == 0)
        self.assertEqual(self.results[0].report["metrics"]["initDurationMs"], self.init.duration_ms)

    def test_report_of_last_invoke_arrives_after_thaw(self):
        """Check 9 (part): report N is delivered only after the thaw (next invoke or shutdown)."""
        last = self.results[-1]
        arrivals = [b for b in self.records("ext-a", "batch")
                    if any(e["type"] == "platform.report" and e["record"]["requestId"] == last.request_id
                           for e in b["events"])]
        self.assertTrue(arrivals)
        self.assertGreaterEqual(arrivals[0]["mono"], self.down.started_at.mono)


class ProvisionedConcurrency(SimTestCase):
    def test_init_ahead_and_no_init_duration_in_reports(self):
        sim = self.make_sim([("ext-a", ["--on-shutdown", "sleep:0.2"])], handler="sim_handlers.env",
                            mode="provisioned-concurrency")
        init = sim.start(timeout=20)
        self.assertEqual(init.initialization_type, "provisioned-concurrency")
        self.assertTrue(sim.is_frozen)
        results = [sim.invoke({}), sim.invoke({})]
        sim.shutdown()
        self.assertEqual(results[0].json()["AWS_LAMBDA_INITIALIZATION_TYPE"], "provisioned-concurrency")
        for kind in ("platform.initStart", "platform.initRuntimeDone", "platform.initReport"):
            self.assertEqual(sim.telemetry_events(kind)[0]["record"]["initializationType"], "provisioned-concurrency")
        for res in results:
            self.assertEqual(res.status, "success")
            self.assertNotIn("initDurationMs", res.report["metrics"])
            self.assertIn("billedDurationMs", res.report["metrics"])
        env = self.records("ext-a", "register")[0]["env"]
        self.assertEqual(env["AWS_LAMBDA_INITIALIZATION_TYPE"], "provisioned-concurrency")


class OutputDrainTest(unittest.TestCase):
    """`drain` (what orders a function's lines before its platform.runtimeDone) must not return while the
    reader holds bytes it took from the pipe but has not emitted: a reader preempted between its read
    and its bookkeeping made the lines an invocation printed arrive after that invocation's runtimeDone."""

    def test_drain_waits_for_a_chunk_the_reader_already_took(self):
        lines = []

        def on_line(_proc, stream, line):
            lines.append((stream, line))

        root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, root, True)
        marker = os.path.join(root, "written")
        script = ("import sys, time; sys.stdout.write('the line\\n'); sys.stdout.flush(); "
                  f"open({marker!r}, 'w').close(); time.sleep(30)")
        proc = processes.ManagedProcess("printer", "runtime", [sys.executable, "-c", script], dict(os.environ), None,
                                        on_line, lambda _p: None)
        real_read, slow_fds = os.read, set()

        def preempted_read(fd, n):
            data = real_read(fd, n)
            if fd in slow_fds and data:
                time.sleep(1.0)  # the reader thread loses the CPU with the chunk in its hands
            return data

        with mock.patch.object(processes.os, "read", preempted_read):
            proc.start()
            try:
                slow_fds.add(proc.popen.stdout.fileno())
                self.assertTrue(wait_until(lambda: os.path.exists(marker), 10.0), "the child never wrote its line")
                self.assertTrue(proc.drain(5.0), "drain timed out")
                self.assertEqual(lines, [("stdout", "the line")], "drain returned before the line was emitted")
            finally:
                proc.popen.kill()
                proc.popen.wait(10)


if __name__ == "__main__":
    unittest.main()
