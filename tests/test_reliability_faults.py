"""Backend faults (issue 9): the real extension under the simulator, exporting to a misbehaving sink.

Every scenario runs a faulty phase (the backend misbehaves for the first invocations) and, where
the fault can end, a healthy phase (the last invocation and SHUTDOWN). Then, for every fault:
invocations succeed, the extension's overhead stays within its budget (+ generous slack), the
extension exits 0 before the deadline, and every function log line (each carries a unique id) is
either delivered exactly once or counted as dropped with the right reason.
"""

import unittest

from lambda_otel.local.sink import OtlpSink, Reply
from tests.reliability_support import (
    AUDIT_SITECUSTOMIZE,
    ReliabilityTestCase,
    dropped_by,
    expected_lines,
    function_lines,
    read_audit,
    records_in_failed_requests,
    shutdown_summary,
)
from tests.support import EXTENSION_NAME, free_port

LINES = 5
FAULTY = 2  # invocations while the backend misbehaves (fewer than the breaker's 3 failures)
HEALTHY = 1
FLUSH_BUDGET_S = 0.3
RUNTIME_DONE_WAIT_S = 1.0
GATE_GRACE_S = 0.25
SLACK_S = 1.5  # shared, noisy machines: generous
OVERHEAD_BOUND_MS = (RUNTIME_DONE_WAIT_S + FLUSH_BUDGET_S + GATE_GRACE_S + SLACK_S) * 1000

FAULT_ENV = {
    "LAMBDA_OTEL_FLUSH_STRATEGY": "end",
    "LAMBDA_OTEL_FLUSH_BUDGET_MS": str(int(FLUSH_BUDGET_S * 1000)),
    "LAMBDA_OTEL_RUNTIME_DONE_WAIT_MS": str(int(RUNTIME_DONE_WAIT_S * 1000)),
}


class FaultScenarioCase(ReliabilityTestCase):
    def run_phases(self, env, fault=None, recover=None, faulty=FAULTY, healthy=HEALTHY, sim=None):
        """Start, ``faulty`` invocations, ``recover()``, ``healthy`` invocations, SHUTDOWN."""
        sim = sim or self.make_sim(env)
        sim.start(timeout=30)
        self.invoke_until_started(sim)  # so that every phase's first invocation exports in its hold
        if fault is not None:
            fault()
        results = [sim.invoke({"logs": LINES}, timeout=30) for _ in range(faulty)]
        if recover is not None:
            recover()
        results += [sim.invoke({"logs": LINES}, timeout=30) for _ in range(healthy)]
        sim.shutdown("spindown", timeout=30)
        output = self.extension_output(sim)
        for r in results:
            self.assertEqual(r.status, "success", f"{r}\n{output}")
            self.assertIsNotNone(r.extension_overhead_ms)
            self.assertLess(r.extension_overhead_ms, OVERHEAD_BOUND_MS, output)
        self.assert_clean_exits(sim)
        summary = shutdown_summary(output)
        self.assertIsNotNone(summary, output)
        return sim, results, summary, output

    def assert_nothing_lost(self, sink, results, summary, allow_duplicates=False):
        seen = function_lines(sink)
        expected = expected_lines(results, LINES)
        self.assertEqual(set(seen), expected)
        if not allow_duplicates:
            self.assertEqual(set(seen.values()), {1}, "a line was delivered twice")
        self.assertEqual(summary["dropped"], {}, summary)
        self.assertEqual(summary["unsent"], 0, summary)
        self.assertEqual(dropped_by(sink.metrics()), 0)

    def assert_rejected_counted(self, sink, results, summary):
        """What the backend refused is counted as export_rejected, exactly, per signal."""
        seen = function_lines(sink)
        self.assertEqual(set(seen.values()) - {1}, set(), "a line was delivered twice")
        missing = expected_lines(results, LINES) - set(seen)
        self.assertTrue(missing, "the fault rejected nothing: the scenario did not happen")
        refused = records_in_failed_requests(sink)
        points = sink.metrics()
        for signal, n in refused.items():
            self.assertEqual(dropped_by(points, signal, "export_rejected"), n, signal)
        self.assertGreaterEqual(refused["logs"], len(missing))
        self.assertEqual(summary["dropped"], {"export_rejected": sum(refused.values())}, summary)
        self.assertEqual(summary["unsent"], 0)


class RetryableFaultsTest(FaultScenarioCase):
    """Faults that end: once the backend is back, everything arrives exactly once, nothing is dropped."""

    def fault_then_ok(self, reply, allow_duplicates=False):
        sink = self.make_sink()
        sim, results, summary, _ = self.run_phases(
            self.make_env(sink, **FAULT_ENV),
            fault=lambda: sink.set_reply(reply),
            recover=lambda: sink.set_reply(Reply()),
        )
        faulted = [r for r in sink.requests if r.status != 200]
        self.assertTrue(faulted, "the fault never happened")
        self.assert_nothing_lost(sink, results, summary, allow_duplicates)
        return sink

    def test_502_503_504_429(self):
        for status in (502, 503, 504, 429):
            with self.subTest(status=status):
                self.fault_then_ok(Reply(status=status))

    def test_429_with_retry_after_longer_than_the_budget(self):
        self.fault_then_ok(Reply(status=429, retry_after="1"))

    def test_reset_mid_body(self):
        sink = self.fault_then_ok(Reply(reset=True))
        self.assertTrue(any(r.outcome == "reset" for r in sink.requests))

    def test_accepts_and_never_answers(self):
        sink = self.fault_then_ok(Reply(hang=True))
        self.assertTrue(any(r.end is None or r.outcome == "hung" for r in sink.requests))

    def test_closes_without_answering(self):
        self.fault_then_ok(Reply(close=True))

    def test_answers_slowly_within_the_budget(self):
        # One flush sends up to three requests (traces, metrics, logs) in one budget: each answer
        # takes 0.1 s of a 1 s budget, so none times out and nothing is sent twice.
        sink = self.make_sink()
        sink.set_reply(Reply(delay=0.1))
        env = self.make_env(sink, **dict(FAULT_ENV, LAMBDA_OTEL_FLUSH_BUDGET_MS="1000"))
        _, results, summary, _ = self.run_phases(env)
        self.assert_nothing_lost(sink, results, summary)
        self.assertTrue(all(r.extension_overhead_ms >= 100 for r in results))  # the flush did wait

    def test_answers_slower_than_the_budget(self):
        # The backend processes the request after we gave up on it: OTLP is at-least-once, so a
        # line may arrive twice, but none is lost.
        self.fault_then_ok(Reply(delay=1.0), allow_duplicates=True)

    def test_502_with_a_body_that_is_not_otlp(self):
        self.fault_then_ok(Reply(status=502, non_otlp=True))

    def test_200_with_a_body_that_is_not_otlp(self):
        sink = self.make_sink()
        sink.set_reply(Reply(status=200, non_otlp=True))
        _, results, summary, _ = self.run_phases(self.make_env(sink, **FAULT_ENV))
        self.assert_nothing_lost(sink, results, summary)

    def test_connection_refused_then_backend_comes_up(self):
        port = free_port()
        holder = {}

        def recover():
            holder["sink"] = OtlpSink(port=port).start()
            self.addCleanup(holder["sink"].stop)

        env = self.make_env(None, LAMBDA_OTEL_EXPORTER_ENDPOINT=f"http://127.0.0.1:{port}", **FAULT_ENV)
        _, results, summary, _ = self.run_phases(env, recover=recover)
        self.assert_nothing_lost(holder["sink"], results, summary)


class RejectingFaultsTest(FaultScenarioCase):
    """Faults the backend means: the data is dropped, counted as export_rejected, never retried."""

    def test_400_413_500(self):
        for status in (400, 413, 500):
            with self.subTest(status=status):
                sink = self.make_sink()
                sim, results, summary, output = self.run_phases(
                    self.make_env(sink, **FAULT_ENV),
                    fault=lambda: sink.set_reply(Reply(status=status)),
                    recover=lambda: sink.set_reply(Reply()),
                )
                self.assert_rejected_counted(sink, results, summary)
                # Never retried: each rejected request carried different data.
                self.assertLessEqual(output.count(f"HTTP {status}"), 3, output)


class PermanentFaultsTest(FaultScenarioCase):
    def test_backend_down_for_the_whole_life(self):
        """Nothing ever answers: invocations are unaffected, losses counted at shutdown."""
        env = self.make_env(None, LAMBDA_OTEL_EXPORTER_ENDPOINT=f"http://127.0.0.1:{free_port()}", **FAULT_ENV)
        _, results, summary, output = self.run_phases(env, faulty=4, healthy=0)
        self.assertGreaterEqual(sum(summary["dropped"].values()), len(results) * LINES, summary)
        # The real cause (connection refused), not the deadline.
        self.assertLessEqual(set(summary["dropped"]), {"export_failed", "retries_exhausted"}, summary)
        self.assertIn("export_failed", summary["dropped"], summary)

    def test_endpoint_host_under_invalid_fails_fast_without_a_lookup(self):
        audit = self.make_site_dir(AUDIT_SITECUSTOMIZE)
        audit_file = audit / "audit.jsonl"
        env = self.make_env(None, LAMBDA_OTEL_EXPORTER_ENDPOINT="http://collector.example.invalid:4318",
                            LAMBDA_OTEL_TEST_AUDIT_FILE=str(audit_file), **FAULT_ENV)
        sim = self.make_sim_with(env, audit)
        _, results, summary, output = self.run_phases(env, faulty=3, healthy=0, sim=sim)
        self.assertEqual(set(summary["dropped"]), {"export_rejected"}, summary)
        self.assertGreaterEqual(summary["dropped"]["export_rejected"], len(results) * LINES)
        self.assertEqual(output.count("collector.example.invalid"), 1, output)  # logged once
        events = read_audit(audit_file)
        self.assertTrue(events, "the audit hook did not run")
        self.assertFalse([e for e in events if "invalid" in " ".join(e["args"])], events)


class TlsFaultsTest(FaultScenarioCase):
    @classmethod
    def setUpClass(cls):
        import tempfile

        from tests.test_exporter import make_self_signed

        cls.tmp = tempfile.TemporaryDirectory()
        cls.pair = make_self_signed(cls.tmp.name)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def setUp(self):
        if self.pair is None:
            self.skipTest("needs the openssl CLI or 'cryptography' to make a test CA")

    def test_certificate_that_does_not_verify_fails_closed(self):
        # A failure like a dead backend (the breaker opens: invocations stop paying handshakes),
        # not a rejection of the data; what could not be sent is counted at shutdown.
        sink = self.make_sink(tls=self.pair)
        _, results, summary, output = self.run_phases(self.make_env(sink, **FAULT_ENV), faulty=4, healthy=0)
        self.assertEqual([r for r in sink.requests if r.status == 200], [])  # verification never off
        self.assertNotIn("export_rejected", summary["dropped"], summary)
        self.assertTrue(set(summary["dropped"]) <= {"export_failed", "shutdown_deadline", "retries_exhausted"},
                        summary)
        self.assertGreaterEqual(sum(summary["dropped"].values()), len(results) * LINES)
        self.assertEqual(output.count("certificate verification"), 1, output)  # logged once
        self.assertIn("breaker open", output)

    def test_certificate_trusted_through_otel_exporter_otlp_certificate(self):
        sink = self.make_sink(tls=self.pair)
        env = self.make_env(sink, OTEL_EXPORTER_OTLP_CERTIFICATE=self.pair[0], **FAULT_ENV)
        _, results, summary, _ = self.run_phases(env, faulty=2, healthy=0)
        self.assert_nothing_lost(sink, results, summary)


class ThreadDeathTest(ReliabilityTestCase):
    """A thread of ours that dies is reported through /extension/exit/error, not left half-alive."""

    CRASH = r'''
import os
if os.environ.get("LAMBDA_OTEL_TEST_CRASH") == "export":
    from lambda_otel import exporter

    class InjectedCrash(BaseException):
        """Not an Exception: escapes every 'except Exception' like a real bug in a C extension might."""

    def export(self, signal, body, deadline):
        raise InjectedCrash("injected: exporter thread crash")

    exporter.OtlpExporter.export = export
'''

    def test_exporter_thread_crash_is_reported_as_exit_error(self):
        sink = self.make_sink()
        site = self.make_site_dir(self.CRASH)
        env = self.make_env(sink, LAMBDA_OTEL_TEST_CRASH="export", **FAULT_ENV)
        sim = self.make_sim_with(env, site)
        sim.start(timeout=30)
        # The crash happens in the first export, once start-up imported the export client (no
        # hold waits for that): Lambda sees the exit error, fails that invocation and resets the
        # environment (reason failure).
        for _ in range(30):
            first = sim.invoke({"logs": 1}, timeout=30)
            if first.status != "success":
                break
        output = self.extension_output(sim)
        self.assertEqual(first.status, "error", output)
        self.assertEqual(first.error_type, "Extension.ExitError", output)
        self.assertIsNotNone(first.reset)
        self.assertEqual(first.reset.reason, "failure")
        self.assertIn("thread lambda-otel-export died: InjectedCrash", output)
        ext = first.reset.extensions[EXTENSION_NAME]
        self.assertEqual(ext.exit_code, 1, output)
        self.assertTrue(ext.exited_in_time, output)
        info = next(i for i in sim.init_results[0].extensions if i.name == EXTENSION_NAME)
        self.assertEqual((info.state, info.error_type), ("ExitError", "Extension.ThreadDied"))


if __name__ == "__main__":
    unittest.main()
