"""No hold waits for the export client's import (issue 12.5), tried against what can go wrong with it.

app.py's start-up thread imports ``requests`` after the first ``/next``, and that import progresses
only while the environment is thawed; until it is done, no flush but the final one exports
(``flush.decide``). Here the real extension runs under the simulator with a real function and the
decoding sink, and a sitecustomize (extension process only) makes the import of ``requests`` cost
seconds of CPU, as it may on a small sandbox, or fail. Whatever the import does: every invocation's
hold is short, SHUTDOWN ends in time with exit 0, and every function line is delivered or counted.
"""

from __future__ import annotations

import unittest

from lambda_otel.app import STARTED_LINE
from tests.reliability_support import (
    ReliabilityTestCase,
    dropped_by,
    expected_lines,
    function_lines,
    shutdown_summary,
)
from tests.support import EXTENSION_NAME

LINES = 5
# The hold of a function that prints LINES lines when no hold waits for an import: far below the
# seconds the injected import costs (generous: a shared, noisy machine).
HOLD_BOUND_MS = 1000.0

# Makes ``import requests`` (in the extension process only) cost A5_IMPORT_CPU_S of this thread's CPU,
# holding the module's import lock as a real import does, or fail (LAMBDA_OTEL_TEST_IMPORT=fail).
SLOW_IMPORT = r'''
import os
import sys
import time

_mode = os.environ.get("LAMBDA_OTEL_TEST_IMPORT")
if _mode:
    import importlib.abc

    class _SlowRequests(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "requests":
                if _mode == "fail":
                    raise ImportError("injected: requests cannot be imported")
                end = time.thread_time() + float(os.environ["LAMBDA_OTEL_TEST_IMPORT_CPU_S"])
                while time.thread_time() < end:  # CPU, only while thawed, like a real import
                    pass
            return None

    sys.meta_path.insert(0, _SlowRequests())
'''


class WarmUpCase(ReliabilityTestCase):
    def run_case(self, import_mode: str, cpu_s: float = 0.0, invocations: int = 2, **extra: str):
        sink = self.make_sink()
        site = self.make_site_dir(SLOW_IMPORT)
        env = self.make_env(sink, LAMBDA_OTEL_TEST_IMPORT=import_mode, LAMBDA_OTEL_TEST_IMPORT_CPU_S=str(cpu_s),
                            LAMBDA_OTEL_FLUSH_STRATEGY="end", **extra)
        sim = self.make_sim_with(env, site)
        sim.start(timeout=30)
        results = [sim.invoke({"logs": LINES}, timeout=30) for _ in range(invocations)]
        down = sim.shutdown("spindown", timeout=30)
        output = self.extension_output(sim)
        ext = down.extensions[EXTENSION_NAME]
        self.assertTrue(ext.exited_in_time, f"{ext}\n{output}")
        self.assertEqual(ext.exit_code, 0, output)
        self.assertLess(ext.exited_at.wall * 1000, down.deadline_ms, output)
        for r in results:
            self.assertEqual(r.status, "success", output)
            self.assertLess(r.extension_overhead_ms, HOLD_BOUND_MS, f"a hold waited for the import\n{output}")
        summary = shutdown_summary(output)
        self.assertIsNotNone(summary, output)
        return sink, results, summary, output

    def assert_delivered_or_counted(self, sink, results, summary) -> None:
        self.assertTrue(sink.wait_for(lambda: not sink.open_requests(), timeout=10))
        seen = function_lines(sink)
        expected = expected_lines(results, LINES)
        self.assertLessEqual(set(seen), expected)
        self.assertEqual(set(seen.values()) - {1}, set(), "a line was delivered twice")
        lost = len(expected - set(seen))
        # Each invocation brings its lines plus its platform records: the lost lines are among what
        # the shutdown line counts (the metrics that would carry the count may be lost with them).
        self.assertLessEqual(lost, sum(summary["dropped"].values()), summary)


class ShutdownBeforeStartUpTest(WarmUpCase):
    """SHUTDOWN while start-up still imports the export client: the final flush does not block on
    that import past the deadline (nothing could cut it, and Lambda would kill us, losing all)."""

    def test_import_still_running_at_shutdown_ends_in_time_and_counts_everything(self):
        # 10 s of CPU: more than the invocations and the SHUTDOWN deadline (2 s) give it.
        sink, results, summary, output = self.run_case("slow", cpu_s=10.0)
        self.assertNotIn(STARTED_LINE, output)
        self.assertEqual(function_lines(sink), {}, "nothing can be sent without the export client")
        self.assertGreaterEqual(summary["dropped"].get("shutdown_deadline", 0), len(results) * LINES, summary)
        self.assertEqual(summary["unsent"], summary["dropped"]["shutdown_deadline"], summary)
        self.assert_delivered_or_counted(sink, results, summary)

    def test_import_ending_within_the_shutdown_deadline_lets_the_final_flush_send_everything(self):
        # 0.3 s of CPU: more than two short invocations give it, well within the SHUTDOWN deadline.
        sink, results, summary, output = self.run_case("slow", cpu_s=0.3)
        self.assertEqual(summary["dropped"], {}, summary)
        self.assertEqual(set(function_lines(sink)), expected_lines(results, LINES), output)
        self.assert_delivered_or_counted(sink, results, summary)


class ImportFailsTest(WarmUpCase):
    """The export client cannot be imported (a broken install): nothing waits for it, it is said
    once at start-up, and the data is counted."""

    def test_nothing_waits_and_everything_is_counted(self):
        sink, results, summary, output = self.run_case("fail", invocations=3)
        self.assertEqual(output.count("could not prepare the exporter's HTTP stack: ImportError"), 1, output)
        self.assertNotIn(STARTED_LINE, output)
        self.assertEqual(function_lines(sink), {})
        self.assertGreaterEqual(sum(summary["dropped"].values()), len(results) * LINES, summary)
        self.assertEqual(dropped_by(sink.metrics()), 0, "nothing reaches the backend")
        self.assert_delivered_or_counted(sink, results, summary)


if __name__ == "__main__":
    unittest.main()
