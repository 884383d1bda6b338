"""FlushManager and CircuitBreaker decisions (fake clock) and the ExportGate (real threads).

The FlushManager scenarios mirror the Rust original's adaptive_export tests (anchor §11.2).
"""

from __future__ import annotations

import threading
import time
import unittest
from dataclasses import replace

from lambda_otel.config import FlushConfig
from lambda_otel.flush import (
    ESCALATION_FAILURES,
    HISTORY_SIZE,
    CircuitBreaker,
    ExportGate,
    FlushManager,
)


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def manager(strategy: str = "default", **kw) -> tuple:
    clock = FakeClock()
    return FlushManager(replace(FlushConfig(), strategy=strategy, **kw), clock), clock


class FlushManagerTest(unittest.TestCase):
    def test_unknown_strategy_is_refused(self):
        with self.assertRaisesRegex(ValueError, "bogus"):
            FlushManager(replace(FlushConfig(), strategy="bogus"))

    def test_end_strategy_flushes_at_invocation_end_and_has_no_timer(self):  # ADAPT-001 / 003
        m, clock = manager("end")
        for _ in range(5):
            m.record_invocation()
            clock.advance(1)
        self.assertTrue(m.flush_at_invocation_end())
        self.assertIsNone(m.next_timer_due())
        self.assertFalse(m.flushes_on_new_data())

    def test_empty_history_is_infrequent_so_default_flushes_at_end(self):  # ADAPT-001 / 020
        m, clock = manager("default")
        self.assertTrue(m.is_infrequent())
        self.assertTrue(m.flush_at_invocation_end())
        m.record_invocation()
        self.assertTrue(m.is_infrequent(), "one invocation is still infrequent")
        self.assertIsNone(m.next_timer_due())

    def test_frequent_pattern_detection(self):  # ADAPT-021
        m, clock = manager("default")
        for _ in range(5):
            m.record_invocation()
            clock.advance(1.0)
        self.assertFalse(m.is_infrequent())
        self.assertAlmostEqual(m.average_interval(), 1.0)

    def test_average_over_120s_is_infrequent(self):
        m, clock = manager("default")
        for _ in range(3):
            m.record_invocation()
            clock.advance(121.0)
        self.assertTrue(m.is_infrequent())
        self.assertTrue(m.flush_at_invocation_end())
        m2, clock2 = manager("default")
        for _ in range(3):
            m2.record_invocation()
            clock2.advance(120.0)
        self.assertFalse(m2.is_infrequent(), "exactly 120 s is not above the threshold")

    def test_default_adapts_to_pattern(self):  # ADAPT-022
        m, clock = manager("default", interval_s=20.0)
        self.assertEqual(m.effective_strategy(), "end")
        for _ in range(5):
            m.record_invocation()
            clock.advance(0.5)
        self.assertEqual(m.effective_strategy(), "periodic")
        self.assertFalse(m.flush_at_invocation_end())
        m.record_flush(True)
        self.assertEqual(m.next_timer_due(), clock.t + 20.0)
        clock.advance(20.0)
        self.assertLessEqual(m.next_timer_due(), clock.t, "due once the interval has passed")

    def test_history_bounded_at_20(self):  # ADAPT-025
        m, clock = manager()
        for _ in range(30):
            m.record_invocation()
            clock.advance(200.0)
        self.assertEqual(m.history_len(), HISTORY_SIZE)
        # Only the last 20 count: 10 more rapid invocations bring the average under 120 s.
        for _ in range(10):
            m.record_invocation()
            clock.advance(1.0)
        self.assertAlmostEqual(m.average_interval(), (10 * 200 + 9 * 1) / 19)
        self.assertFalse(m.is_infrequent())

    def test_periodic_and_continuous_timer_due_times(self):  # ADAPT-002
        for strategy in ("periodic", "continuous"):
            m, clock = manager(strategy, interval_s=10.0)
            self.assertLessEqual(m.next_timer_due(), clock.t, "no flush yet: due at once")
            m.record_flush(True)
            self.assertEqual(m.next_timer_due(), clock.t + 10.0)
            clock.advance(4.0)
            m.record_flush(None)  # an empty flush also restarts the timer
            self.assertEqual(m.next_timer_due(), clock.t + 10.0)
            self.assertFalse(m.flush_at_invocation_end())
        self.assertTrue(manager("continuous")[0].flushes_on_new_data())
        self.assertFalse(manager("periodic")[0].flushes_on_new_data())

    def test_deadline_buffer(self):  # ADAPT-006
        m, clock = manager("end", deadline_margin_s=0.5)
        self.assertTrue(m.deadline_near(clock.t + 0.2))
        self.assertFalse(m.deadline_near(clock.t + 60.0))
        self.assertFalse(m.deadline_near(clock.t + 0.5))

    def test_buffer_full(self):  # ADAPT-005
        m, _ = manager("end", max_batch_records=10, max_batch_bytes=1000)
        self.assertFalse(m.buffer_full(0, 0))
        self.assertFalse(m.buffer_full(9, 999))
        self.assertTrue(m.buffer_full(10, 1))
        self.assertTrue(m.buffer_full(1, 1000))

    def test_escalation_to_continuous_after_20_failures(self):  # ADAPT-023
        m, clock = manager("end")
        with self.assertLogs("lambda_otel.flush", "WARNING") as logs:
            for i in range(ESCALATION_FAILURES):
                self.assertEqual(m.effective_strategy(), "end", f"not yet after {i} failures")
                m.record_flush(False)
        self.assertEqual(len(logs.output), 1, "one line per state change")
        self.assertTrue(m.escalated)
        self.assertEqual(m.effective_strategy(), "continuous")
        self.assertFalse(m.flush_at_invocation_end())
        self.assertIsNotNone(m.next_timer_due())
        m.record_flush(None)  # nothing sent: no evidence either way
        self.assertTrue(m.escalated)
        m.record_flush(True)
        self.assertEqual(m.consecutive_failures, 0)
        self.assertEqual(m.effective_strategy(), "end")

    def test_success_resets_failure_count(self):
        m, _ = manager("end")
        for _ in range(3):
            m.record_flush(False)
        self.assertEqual(m.consecutive_failures, 3)
        m.record_flush(True)
        self.assertEqual(m.consecutive_failures, 0)


class CircuitBreakerTest(unittest.TestCase):
    def test_opens_after_n_failures_and_backs_off_exponentially_with_cap(self):
        clock = FakeClock()
        b = CircuitBreaker(failures=3, max_backoff_s=8.0, clock=clock, rng=lambda: 1.0)
        b.record(False)
        b.record(False)
        self.assertFalse(b.is_open)
        with self.assertLogs("lambda_otel.flush", "WARNING"):
            b.record(False)
        self.assertTrue(b.is_open)
        waits = []
        for _ in range(6):
            self.assertFalse(b.probe_due())
            waits.append(b.next_probe_at - clock.t)
            clock.t = b.next_probe_at
            self.assertTrue(b.probe_due())
            b.record(False)  # the probe failed
        self.assertEqual(waits, [1.0, 2.0, 4.0, 8.0, 8.0, 8.0])
        with self.assertLogs("lambda_otel.flush", "INFO"):
            b.record(True)
        self.assertFalse(b.is_open)
        self.assertIsNone(b.next_probe_at)
        # After closing, the backoff starts over.
        with self.assertLogs("lambda_otel.flush", "WARNING"):
            for _ in range(3):
                b.record(False)
        self.assertEqual(b.next_probe_at - clock.t, 1.0)

    def test_jitter_keeps_wait_between_half_and_full_backoff(self):
        clock = FakeClock()
        b = CircuitBreaker(failures=1, max_backoff_s=60.0, clock=clock, rng=lambda: 0.0)
        with self.assertLogs("lambda_otel.flush", "WARNING"):
            b.record(False)
        self.assertEqual(b.next_probe_at - clock.t, 0.5)

    def test_success_before_threshold_resets(self):
        b = CircuitBreaker(failures=2, max_backoff_s=60.0, clock=FakeClock())
        b.record(False)
        b.record(True)
        b.record(False)
        self.assertFalse(b.is_open)


class ExportGateTest(unittest.TestCase):
    def test_closed_at_start_and_no_request_starts_while_closed(self):
        gate = ExportGate()
        self.assertFalse(gate.is_open)
        self.assertIsNone(gate.try_begin())
        gate.open()
        token = gate.try_begin()
        self.assertIsNotNone(token)
        self.assertEqual(gate.in_flight, 1)
        gate.end(token)
        self.assertTrue(gate.close(1.0))
        self.assertIsNone(gate.try_begin())
        self.assertEqual(gate.in_flight, 0)

    def test_close_waits_for_the_request_in_flight(self):
        gate = ExportGate()
        gate.open()
        token = gate.try_begin(time.monotonic() + 5)
        ended_at = []
        started = threading.Event()

        def request():
            started.set()
            time.sleep(0.2)  # the "HTTP request"
            ended_at.append(time.monotonic())
            gate.end(token)

        t = threading.Thread(target=request)
        t.start()
        self.addCleanup(t.join, 5)
        started.wait(5)
        self.assertTrue(gate.close(5.0))
        closed_at = time.monotonic()
        self.assertEqual(len(ended_at), 1)
        self.assertLessEqual(ended_at[0], closed_at)
        self.assertIsNone(gate.try_begin(), "closed: nothing new starts")

    def test_close_is_bounded_and_reports_a_stuck_request_once(self):
        gate = ExportGate()
        gate.open()
        token = gate.try_begin()
        self.addCleanup(gate.end, token)
        with self.assertLogs("lambda_otel.flush", "WARNING") as logs:
            self.assertFalse(gate.close(0.05))
            self.assertFalse(gate.close(0.05))
        self.assertEqual(len(logs.output), 1)
        self.assertEqual(gate.close_timeouts, 2)

    def test_default_close_bound_is_the_in_flight_deadline_plus_grace(self):
        gate = ExportGate()
        gate.open()
        token = gate.try_begin(time.monotonic() + 0.1)
        self.addCleanup(gate.end, token)
        t0 = time.monotonic()
        with self.assertLogs("lambda_otel.flush", "WARNING"):
            self.assertFalse(gate.close(grace=0.05))
        self.assertLess(time.monotonic() - t0, 5.0)  # generous: the bound is the behaviour

    def test_close_then_open_again(self):
        gate = ExportGate()
        gate.open()
        self.assertTrue(gate.close(0.1))
        gate.open()
        self.assertTrue(gate.wait_open(0.1))
        self.assertIsNotNone(gate.try_begin())


if __name__ == "__main__":
    unittest.main()
