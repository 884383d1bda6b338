"""Load and races (issue 9): a bounded soak, and SHUTDOWN arriving while work is in flight.

The soak is bench/soak.py with 300 invocations of 50 lines (the full 10,000 runs from the command
line, see docs/reliability.md). The races use the real extension under the simulator; the 8
concurrent receiver clients at SHUTDOWN are in tests/test_function_sdk_e2e.py (issue 5) and the
RWLock race at batch granularity in tests/test_shutdown_race.py, so they are not repeated here.
"""

import unittest

from bench.soak import run_soak
from lambda_otel.local.sink import Reply
from tests.reliability_support import ReliabilityTestCase, expected_lines, function_lines, shutdown_summary

SOAK_INVOCATIONS = 300
RSS_GROWTH_BOUND_KB = 16 * 1024  # generous: a leak of ~1 KB per line would show as 15 MB here


class SoakTest(unittest.TestCase):
    def check(self, result):
        report = repr(result)
        self.assertEqual(result.statuses, {"success": SOAK_INVOCATIONS}, report)
        self.assertEqual(result.lines_expected, SOAK_INVOCATIONS * 50)
        self.assertEqual((result.missing, result.duplicates), (0, 0), report)
        self.assertEqual(result.dropped, {}, report)
        self.assertEqual((result.shutdown_exit_code, result.shutdown_in_time), (0, True), report)
        self.assertIsNotNone(result.rss_growth_kb, report)
        self.assertLess(result.rss_growth_kb, RSS_GROWTH_BOUND_KB, report)
        # Stable overhead: the last quarter is not slower than the first beyond noise.
        first, last = result.overhead_ms_first_quarter, result.overhead_ms_last_quarter
        self.assertLess(last["median"], 3 * first["median"] + 50, report)
        self.assertLess(last["p99"], 3 * first["p99"] + 100, report)

    def test_default_strategy(self):
        self.check(run_soak(SOAK_INVOCATIONS, max_seconds=120))

    def test_end_strategy_holds_every_invocation(self):
        self.check(run_soak(SOAK_INVOCATIONS, max_seconds=120, extra_env={"LAMBDA_OTEL_FLUSH_STRATEGY": "end"}))


class ShutdownRaceTest(ReliabilityTestCase):
    """Everything acknowledged is exported or counted as dropped with a reason."""

    def acknowledged_lines(self, sim):
        """Function lines in telemetry batches our listener answered 200."""
        acked = set()
        for batch in sim.batches:
            if batch.subscriber == "lambda-otel" and batch.ok:
                for e in batch.events:
                    if e["type"] == "function" and isinstance(e["record"], str):
                        acked.add(e["record"])
        return acked

    def test_shutdown_right_after_the_last_invocation_while_telemetry_is_posted(self):
        # periodic: nothing waits for runtimeDone, so the last batches (function lines,
        # runtimeDone, report) are still being POSTed when SHUTDOWN arrives.
        sink = self.make_sink()
        sim = self.make_sim(self.make_env(sink, LAMBDA_OTEL_FLUSH_STRATEGY="periodic",
                                          LAMBDA_OTEL_FLUSH_INTERVAL_MS="60000"))
        sim.start(timeout=30)
        results = [sim.invoke({"logs": 200}, timeout=30) for _ in range(3)]
        sim.shutdown(timeout=30)
        self.assert_clean_exits(sim)
        output = self.extension_output(sim)
        seen = function_lines(sink)
        acked = self.acknowledged_lines(sim)
        self.assertEqual(acked, expected_lines(results, 200))  # the simulator delivered them all
        self.assertEqual(set(seen), acked, output)
        self.assertEqual(set(seen.values()), {1})
        self.assertEqual(shutdown_summary(output)["dropped"], {}, output)
        # The race happened: our listener acknowledged telemetry after SHUTDOWN was sent.
        down = sim.shutdowns[-1]
        during = [b for b in sim.batches if b.subscriber == "lambda-otel" and b.ok
                  and b.ended_at.mono >= down.shutdown_events_sent_at.mono]
        self.assertTrue(during, "no telemetry POST overlapped SHUTDOWN")

    def test_shutdown_while_the_backend_is_slow_counts_what_it_could_not_send(self):
        # Each request takes 1.5 s; the 2 s shutdown budget fits at most one per signal (the
        # signals go out at once), and the 60 lines need three requests of 20: the rest is
        # counted as shutdown_deadline and the extension still exits in time.
        sink = self.make_sink()
        sim = self.make_sim(self.make_env(sink, LAMBDA_OTEL_FLUSH_STRATEGY="periodic",
                                          LAMBDA_OTEL_FLUSH_INTERVAL_MS="60000",
                                          LAMBDA_OTEL_MAX_BATCH_RECORDS="20"))
        sim.start(timeout=30)
        results = [sim.invoke({"logs": 20}, timeout=30) for _ in range(3)]
        sink.set_reply(Reply(delay=1.5))
        sim.shutdown(timeout=30)
        self.assert_clean_exits(sim)
        output = self.extension_output(sim)
        summary = shutdown_summary(output)
        seen = function_lines(sink)
        missing = expected_lines(results, 20) - set(seen)
        self.assertTrue(missing, "the slow backend took everything: no race happened")
        self.assertGreaterEqual(summary["unsent"], len(missing), summary)
        self.assertGreaterEqual(summary["dropped"].get("shutdown_deadline", 0), len(missing), summary)
        self.assertLessEqual(set(summary["dropped"]), {"shutdown_deadline"}, summary)


if __name__ == "__main__":
    unittest.main()
