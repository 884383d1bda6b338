"""No hold waits for the export client's import (issue 12.5), tried against what can go wrong with it.

app.py's start-up thread imports ``requests`` after the first ``/next``, and that import progresses
only while the environment is thawed; until it is done, no flush but the final one exports
(``flush.decide``). Here the real extension runs under the simulator with a real function and the
decoding sink, and a sitecustomize (extension process only) makes the import of ``requests`` cost
seconds of CPU, as it may on a small sandbox, or fail. Whatever the import does: every invocation's
hold is short, SHUTDOWN ends in time with exit 0, and every function line is delivered or counted.
"""

from __future__ import annotations

import threading
import time
import unittest

from lambda_otel.app import STARTED_LINE
from lambda_otel.local.sink import any_value
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

# Makes ``import requests`` (in the extension process only) cost LAMBDA_OTEL_TEST_IMPORT_CPU_S of this
# thread's CPU (LAMBDA_OTEL_TEST_IMPORT=slow), take that long without CPU (hang), or fail (fail). As a
# real import: while the module runs, holding only that module's lock (other threads' imports go on).
SLOW_IMPORT = r'''
import os
import sys
import time

_mode = os.environ.get("LAMBDA_OTEL_TEST_IMPORT")
if _mode:
    import importlib.abc
    import importlib.machinery

    class _SlowLoader(importlib.abc.Loader):
        def __init__(self, loader):
            self._loader = loader

        def create_module(self, spec):
            return self._loader.create_module(spec)

        def exec_module(self, module):
            if _mode == "fail":
                raise ImportError("injected: requests cannot be imported")
            seconds = float(os.environ["LAMBDA_OTEL_TEST_IMPORT_CPU_S"])
            if _mode == "hang":  # an import that never ends while the test runs (bounded)
                time.sleep(seconds)
            end = time.thread_time() + seconds
            while _mode == "slow" and time.thread_time() < end:  # CPU, only while thawed, like a real import
                pass
            self._loader.exec_module(module)

    class _SlowRequests(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name != "requests":
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is not None:
                spec.loader = _SlowLoader(spec.loader)
            return spec

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


class ExportsResumeOnceReadyTest(WarmUpCase):
    """In every strategy: once start-up is done, what the invocations before it kept goes at the
    next chance: in ``end`` before the next invocation's freeze, in the others by their timer or
    data (a 200 ms timer here), never only at SHUTDOWN."""

    def resume(self, strategy: str) -> None:
        from tests.test_flush_e2e import arrival_times, freeze_violations

        sink = self.make_sink()
        site = self.make_site_dir(SLOW_IMPORT)
        # 0.1 s more CPU: several short invocations end before it is done (it runs only while thawed:
        # without a hold, in periodic and continuous, start-up takes a dozen or more invocations).
        env = self.make_env(sink, LAMBDA_OTEL_TEST_IMPORT="slow", LAMBDA_OTEL_TEST_IMPORT_CPU_S="0.1",
                            LAMBDA_OTEL_FLUSH_STRATEGY=strategy, LAMBDA_OTEL_FLUSH_INTERVAL_MS="200")
        sim = self.make_sim_with(env, site)
        sim.start(timeout=30)
        before = []
        for _ in range(300):
            before.append(sim.invoke({"logs": LINES}, timeout=30))
            if STARTED_LINE in self.extension_output(sim):
                break
        output = self.extension_output(sim)
        self.assertIn(STARTED_LINE, output)
        self.assertGreater(len(before), 1, f"start-up was done within the first invocation\n{output}")
        after = []
        pause = threading.Event()  # never set: a bounded wait is the gap (a real freeze)
        for _ in range(3):
            after.append(sim.invoke({"logs": LINES}, timeout=30))
            pause.wait(0.3)
        next_freeze = next(f.frozen_at.mono for f in sim.freezes if f.frozen_at.mono > after[0].started_at.mono)
        shutdown_at = time.monotonic()
        sim.shutdown("spindown", timeout=30)
        output = self.extension_output(sim)
        self.assert_clean_exits(sim)
        self.assertTrue(sink.wait_for(lambda: not sink.open_requests(), timeout=10))
        arrived = arrival_times(sink)
        by = next_freeze if strategy == "end" else shutdown_at
        late = [r.request_id for r in before if not arrived.get(r.request_id, float("inf")) < by]
        self.assertEqual(late, [], f"{strategy}: kept too long\n{output}")
        lines = function_lines(sink)
        self.assertEqual(set(lines), expected_lines(before + after, LINES), output)
        self.assertEqual(set(lines.values()), {1}, "a line was delivered twice")
        self.assertEqual(shutdown_summary(output)["dropped"], {}, output)
        self.assertEqual(freeze_violations(sim, sink), [], output)

    def test_end(self):
        self.resume("end")

    def test_default(self):
        self.resume("default")

    def test_periodic(self):
        self.resume("periodic")

    def test_continuous(self):
        self.resume("continuous")


class ManagedInstancesTest(WarmUpCase):
    """Managed Instances never freeze and have no INVOKE: the exports wait for the client only
    until start-up is done (it wakes the worker), then go while the environment runs."""

    def test_exports_resume_once_the_client_is_ready(self):
        sink = self.make_sink()
        site = self.make_site_dir(SLOW_IMPORT)
        env = self.make_env(sink, LAMBDA_OTEL_TEST_IMPORT="slow", LAMBDA_OTEL_TEST_IMPORT_CPU_S="1.0",
                            LAMBDA_OTEL_FLUSH_INTERVAL_MS="200")
        sim = self.make_sim_with(env, site, handler="lmi_handlers.handler", timeout_s=10.0,
                                 mode="managed-instances", concurrency=4)
        sim.start(timeout=60)
        pending = [sim.invoke_async({"sleep": 0.1, "lines": 2}) for _ in range(8)]
        results = [p.wait(60) for p in pending]
        self.assertEqual([r.status for r in results], ["success"] * 8)
        ids = {r.request_id for r in results}

        def exported() -> int:
            return sum(1 for sp in sink.spans() if sp.kind == sp.SPAN_KIND_SERVER
                       and any(kv.key == "faas.invocation_id" and any_value(kv.value) in ids for kv in sp.attributes))

        self.assertTrue(sink.wait_for(lambda: exported() == 8, timeout=20), self.extension_output(sim))
        output = self.extension_output(sim)
        self.assertIn(STARTED_LINE, output)
        sim.shutdown("spindown", timeout=30)
        self.assert_clean_exits(sim)
        self.assertEqual(shutdown_summary(self.extension_output(sim))["dropped"], {})


# Records every lookup of "localhost" (pid, host) in LAMBDA_OTEL_TEST_DNS_LOG; in the process that
# takes the snapshot (the first one), a lookup also takes 3 s, as a slow resolver at init would.
DNS_AUDIT = r'''
import os
import socket
import time

_log = os.environ.get("LAMBDA_OTEL_TEST_DNS_LOG")
if _log:
    _snapshot_pid = os.getpid()
    _getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host == "localhost":
            with open(_log, "a") as out:
                out.write(f"{os.getpid()} {host}\n")
            if os.getpid() == _snapshot_pid:
                time.sleep(3.0)
        return _getaddrinfo(host, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo
'''


class SnapStartTest(WarmUpCase):
    """SnapStart builds everything and imports the export client before the snapshot, on the main
    thread: no DNS lookup then (a restore forgets its answers, and a slow one would leave a lookup
    thread across the snapshot); each restore resolves and exports on its own."""

    def test_no_lookup_before_the_snapshot_and_each_restore_exports(self):
        import shlex
        import stat
        import sys

        from lambda_otel.local.simulator import Simulator
        from tests.support import FUNCTIONS, REPO

        sink = self.make_sink()
        site = self.make_site_dir(DNS_AUDIT)
        dns_log = site / "dns.log"
        ext_dir = site / "extensions"
        ext_dir.mkdir()
        launcher = ext_dir / EXTENSION_NAME
        path = shlex.quote(f"{site}:{REPO}")
        launcher.write_text(f"#!/bin/sh\nexport PYTHONPATH={path}\n"
                            f"exec {shlex.quote(sys.executable)} -m lambda_otel.local.restore_fork \"$0\"\n")
        launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR)
        env = self.make_env(None, LAMBDA_OTEL_EXPORTER_ENDPOINT=f"http://localhost:{sink.port}",
                            LAMBDA_OTEL_FLUSH_STRATEGY="end", LAMBDA_OTEL_TEST_DNS_LOG=str(dns_log))
        sim = Simulator(extensions_dir=str(ext_dir), handler="e2e_handlers.handler", handler_dir=str(FUNCTIONS),
                        env=env, timeout_s=3.0, mode="snapstart")
        self.addCleanup(sim.stop)
        init = sim.start(timeout=60)
        self.assertTrue(init.ok, self.extension_output(sim))
        results = [sim.invoke({"logs": LINES}, timeout=30) for _ in range(2)]
        down = sim.shutdown("spindown", timeout=30)
        output = self.extension_output(sim)
        self.assertEqual([r.status for r in results], ["success"] * 2, output)
        self.assertEqual(down.extensions[EXTENSION_NAME].exit_code, 0, output)
        lookups = dns_log.read_text().split() if dns_log.exists() else []
        restored = {str(r.extension_pids[EXTENSION_NAME]) for r in sim.restores}
        self.assertTrue(lookups, "the restore resolves the endpoint itself")
        self.assertEqual({pid for pid in lookups[::2]} - restored, set(), f"looked up before the snapshot\n{output}")
        self.assertEqual(set(function_lines(sink)), expected_lines(results, LINES), output)


class ChattyFirstInvocationTest(WarmUpCase):
    """A chatty first invocation while the export client is still being imported: nothing drains
    until it is ready; then full batches go at once (the start-up wakes the worker). What is lost
    is exactly what is counted, and no request is open at a freeze."""

    def run_chatty(self, cpu_s: float, lines: int, strategy: str):
        sink = self.make_sink()
        site = self.make_site_dir(SLOW_IMPORT)
        env = self.make_env(sink, LAMBDA_OTEL_TEST_IMPORT="slow", LAMBDA_OTEL_TEST_IMPORT_CPU_S=str(cpu_s),
                            LAMBDA_OTEL_FLUSH_STRATEGY=strategy)
        sim = self.make_sim_with(env, site, handler="chatty_handlers.handler", memory_mb=128, timeout_s=60)
        sim.start(timeout=30)
        results = [sim.invoke({"lines": lines}, timeout=120), sim.invoke({"lines": 10}, timeout=120)]
        down = sim.shutdown("spindown", timeout=30)
        output = self.extension_output(sim)
        ext = down.extensions[EXTENSION_NAME]
        self.assertTrue(ext.exited_in_time and ext.exit_code == 0, f"{ext}\n{output}")
        self.assertEqual([r.status for r in results], ["success"] * 2, output)
        self.assertTrue(sink.wait_for(lambda: not sink.open_requests(), timeout=10))
        return sim, sink, results, output

    def test_end_lost_is_exactly_what_is_counted_and_nothing_is_open_at_a_freeze(self):
        # The scenario must overflow our queue. On a loaded runner Lambda's own buffer may drop so
        # much of the burst (platform.logsDropped) that what reaches us fits: then it is run once
        # more (bounded), and every run's accounting is checked all the same.
        for attempt in (1, 2):
            overflowed = self.check_chatty_first_invocation(last=attempt == 2)
            if overflowed:
                return

    def check_chatty_first_invocation(self, last: bool) -> bool:
        from tests.test_flush_e2e import chatty_lines, final_flush_line, freeze_violations

        lines = 50_000  # ~4 budgets at 128 MB: the queue overflows while the client is not ready
        sim, sink, results, output = self.run_chatty(1.0, lines, "end")
        summary = final_flush_line(sim)
        counted = shutdown_summary(output)["dropped"]
        got = chatty_lines(sink)
        expected = {(r.request_id, i) for r, n in zip(results, (lines, 10)) for i in range(n)}
        self.assertLessEqual(set(got), expected)
        # As ChattyFunctionTest counts it, but from the shutdown line (the import may not be done
        # before SHUTDOWN, so no metric may reach the backend): Lambda's own drops
        # (platform.logsDropped, counted as it says) and ours (every record that reached us is
        # delivered or counted; the count also holds the few platform spans and metrics lost).
        delivered = [e for b in sim.batches if b.subscriber == EXTENSION_NAME and b.ok for e in b.events]
        lines_in = sum(1 for e in delivered if e["type"] == "function")
        notices = [e["record"] for e in delivered if e["type"] == "platform.logsDropped"]
        notices_out = sum(1 for lr in sink.log_records() if str(any_value(lr.body)).startswith("Lambda dropped "))
        by_lambda = counted.pop("platform_logs_dropped", 0)
        by_us = sum(counted.values())
        self.assertEqual(by_lambda, sum(r["droppedRecords"] for r in notices), summary)
        lost_by_us = (lines_in + len(notices)) - (len(got) + notices_out)
        self.assertLessEqual(lost_by_us, by_us, summary)
        self.assertLessEqual(by_us - lost_by_us, 2 * 1000 + 100, f"over-counted beyond two cut batches; {summary}")
        problems = freeze_violations(sim, sink)
        self.assertEqual(problems, [], "\n".join(problems[:20]))
        if last:
            self.assertGreater(lost_by_us, 0, f"the scenario did not overflow the queue: {lines_in} lines "
                               f"reached us, Lambda dropped {by_lambda}; {summary}")
        return lost_by_us > 0

class SdkFunctionWhileNotReadyTest(WarmUpCase):
    """A real SDK function (BatchSpanProcessor, 128 MB) exporting bursts of spans to the receiver
    while start-up never finishes importing the export client: the receiver's answers do not depend
    on it, so no SDK export call waits (no 503 to retry), and every span is counted at SHUTDOWN."""

    def test_the_sdk_never_waits_and_every_span_is_counted(self):
        from tests.test_function_sdk_e2e import BURST_SPANS, SdkFunctionCase, sink_records

        sink = self.make_sink()
        capture = SdkFunctionCase.capture_dir(self)
        env = SdkFunctionCase.sdk_env(self, sink, capture, LAMBDA_OTEL_TEST_IMPORT="hang",
                                      LAMBDA_OTEL_TEST_IMPORT_CPU_S="600", LAMBDA_OTEL_FLUSH_STRATEGY="end")
        sim = self.make_sim_with(env, self.make_site_dir(SLOW_IMPORT), handler="sdk_handlers.handler",
                                 memory_mb=128, timeout_s=30)
        sim.start(timeout=60)
        results = [sim.invoke({"spans": BURST_SPANS, "logs": 0, "tag": f"t{i}"}, timeout=60) for i in range(2)]
        sim.shutdown("spindown", timeout=30)
        output = self.extension_output(sim)
        self.assert_clean_exits(sim)
        self.assertNotIn(STARTED_LINE, output)
        export_ms = []
        for res in results:
            self.assertEqual(res.status, "success", f"{res.error_type}: {res.error_body}\n{output[-3000:]}")
            self.assertLess(res.extension_overhead_ms, HOLD_BOUND_MS, output)
            export_ms.extend(res.json()["export_ms"])
        self.assertLess(max(export_ms), 1000.0, sorted(export_ms)[-5:])
        sent = sum(SdkFunctionCase.captured(self, capture, "traces").values())
        self.assertGreaterEqual(sent, 2 * BURST_SPANS, "the receiver answered 200 to every SDK request")
        self.assertEqual(sum(sink_records(sink, "traces", "sdk-e2e-function").values()), 0)
        summary = shutdown_summary(output)
        self.assertGreaterEqual(sum(summary["dropped"].values()), sent, summary)


if __name__ == "__main__":
    unittest.main()
