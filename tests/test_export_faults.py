"""Hostile backends against the real extension under the simulator (issue 13, exporter side).

A backend may answer anything: a Retry-After no server should send, or an answer dripped a byte
at a time. Whatever it does, the extension keeps running, every invocation stays within its
budget, no request is open while the sandbox is frozen, it exits 0 before the SHUTDOWN deadline,
and every function log line is delivered or counted.
"""

import email.utils
import time
import unittest

from lambda_otel.local.sink import Reply
from tests.reliability_support import dropped_by, expected_lines, function_lines
from tests.support import free_port
from tests.test_reliability_faults import FAULT_ENV, LINES, FaultScenarioCase

HOSTILE_RETRY_AFTER = ("1e10", "inf", "1e400", "NaN", "-5", "Fri, 31 Dec 9999 23:59:59 GMT")


class HostileBackendTest(FaultScenarioCase):
    def extension_output(self, sim) -> str:
        # The simulator reads the extension's stderr on a thread of its own: after the exit, give
        # it a moment (bounded) to catch up with the last lines (the final flush's summary).
        deadline = time.monotonic() + 5.0
        output = super().extension_output(sim)
        while "final flush:" not in output and time.monotonic() < deadline:
            time.sleep(0.05)
            output = super().extension_output(sim)
        return output

    def assert_delivered_or_counted(self, sink, results, summary):
        seen = function_lines(sink)
        expected = expected_lines(results, LINES)
        self.assertTrue(set(seen) <= expected)
        lost = len(expected - set(seen))
        counted = dropped_by(sink.metrics(), "logs") if not summary["dropped"] else sum(summary["dropped"].values())
        self.assertGreaterEqual(counted, lost, (summary, lost))

    def test_retry_after_values_no_server_should_send(self):
        future = email.utils.formatdate(time.time() + 50 * 365 * 86400, usegmt=True)
        for value in HOSTILE_RETRY_AFTER + (future,):
            with self.subTest(retry_after=value):
                sink = self.make_sink()
                sim, results, summary, output = self.run_phases(
                    self.make_env(sink, **FAULT_ENV),
                    fault=lambda: sink.set_reply(Reply(status=503, retry_after=value)),
                    recover=lambda: sink.set_reply(Reply()),
                )
                self.assertNotIn("Traceback", output)
                self.assertNotIn("OverflowError", output)
                self.assertTrue(any(r.status == 503 for r in sink.requests), "the fault never happened")
                self.assert_delivered_or_counted(sink, results, summary)

    def test_a_dead_backend_is_named_once_at_warning_without_its_credentials(self):
        port = free_port()  # nothing listens there: connection refused
        env = self.make_env(None, LAMBDA_OTEL_EXPORTER_ENDPOINT=f"http://user:pw-s3cret@127.0.0.1:{port}/?token=t0ken",
                            **FAULT_ENV)
        sim, results, summary, output = self.run_phases(env, faulty=3, healthy=0)
        named = [line for line in output.splitlines() if "failed (connect)" in line]
        self.assertEqual(len(named), 1, output)  # once, not per invocation or per signal
        self.assertIn("WARNING", named[0])
        self.assertIn(f"127.0.0.1:{port}/v1/", named[0])
        self.assertIn("refused", named[0])
        for secret in ("pw-s3cret", "t0ken"):
            self.assertNotIn(secret, output)
        lost = len(expected_lines(results, LINES))
        self.assertGreaterEqual(sum(summary["dropped"].values()), lost, summary)
        # The real cause, not "ran out of time": the backend never answered.
        self.assertIn("export_failed", summary["dropped"], summary)
        self.assertNotIn("shutdown_deadline", summary["dropped"], summary)

    def test_an_answer_dripped_a_byte_at_a_time(self):
        sink = self.make_sink()
        sim, results, summary, output = self.run_phases(
            self.make_env(sink, **FAULT_ENV),
            fault=lambda: sink.set_reply(Reply(drip=0.05)),
            recover=lambda: sink.set_reply(Reply()),
        )
        dripped = [r for r in sink.requests if r.outcome == "error"]
        self.assertTrue(dripped, "no request was cut: the fault never happened")
        # Not one request stays open across a freeze, however slowly the backend answers.
        for freeze in sim.freezes:
            open_then = sink.open_at(freeze.frozen_at.mono)
            self.assertEqual(open_then, [], [(freeze.frozen_at.mono - r.start, (r.end or 0) - freeze.frozen_at.mono, r.outcome) for r in open_then])
        self.assertIn("before the request's deadline", output)  # the first failure, named once
        # The sink decoded (and so counts as delivered) what it was dripping an answer for: at least
        # once, never lost.
        seen = function_lines(sink)
        self.assertEqual(set(seen), expected_lines(results, LINES))
        self.assertEqual(summary["unsent"], 0, summary)



class HeadersNotReadyTest(unittest.TestCase):
    """Headers a HeaderSource does not know yet: nothing is sent, nothing is lost, no failure is
    counted, and the worker does not spin; what is still waiting at SHUTDOWN is counted."""

    class Source:
        def __init__(self):
            self.value = None
            self.calls = 0

        def headers(self, signal=None):
            self.calls += 1
            return None if self.value is None else {"Authorization": self.value}

        def secret_values(self):
            return (self.value,) if self.value else ()

    def make(self):
        from lambda_otel.config import ExporterConfig
        from lambda_otel.exporter import OtlpExporter
        from tests.test_exporter import quiet_exporter_logs
        from tests.test_flush_worker import Harness

        quiet_exporter_logs(self)
        h = Harness(self, strategy="continuous", breaker_failures=1)
        source = self.Source()
        exporter = OtlpExporter(ExporterConfig(traces_endpoint=h.sink.url("traces")), h.loss, header_source=source)
        self.addCleanup(exporter.close)
        h.worker.exporter = exporter
        return h, source

    def test_data_waits_for_the_headers_without_failures(self):
        h, source = self.make()
        h.gate.open()
        h.add_spans(3)
        time.sleep(1.0)  # continuous: the worker would send at once, if it could
        self.assertEqual(h.sink.requests, [])
        self.assertLessEqual(source.calls, 5)  # asked again about every NOT_READY_RETRY_S, not in a loop
        self.assertFalse(h.worker.breaker.is_open)
        self.assertEqual(h.aggregator.pending_records(), 3)
        source.value = "Bearer resolved"
        self.assertTrue(h.sink.wait_for(lambda: len(h.sink.spans()) == 3, timeout=5))
        self.assertEqual(h.loss.snapshot(), {})

    def test_still_not_ready_at_shutdown_is_counted(self):
        h, source = self.make()
        h.gate.open()
        h.add_spans(3)
        ticket = h.worker.request_flush(time.monotonic() + 0.8, final=True)
        self.assertTrue(ticket.wait(5))
        counted = {reason: n for (signal, reason), n in h.loss.snapshot().items() if signal == "traces"}
        self.assertEqual(sum(counted.values()), 3, counted)  # every span, once, by one reason
        self.assertLessEqual(set(counted), {"shutdown_deadline", "export_failed"})
        self.assertEqual(h.sink.requests, [])


if __name__ == "__main__":
    unittest.main()
