"""The flush decision (``decide``, fake clock), FlushManager and CircuitBreaker (fake clock), and
the ExportGate (real threads)."""

from __future__ import annotations

import threading
import time
import unittest
from dataclasses import replace

from lambda_otel.config import STRATEGIES as CONFIG_STRATEGIES
from lambda_otel.config import FlushConfig
from lambda_otel.flush import (
    CONTINUOUS_MIN_GAP_S,
    ESCALATION_FAILURES,
    MAX_WAIT_S,
    PROBE_TIMEOUT_S,
    Action,
    CircuitBreaker,
    ExportGate,
    FlushManager,
    FlushResult,
    FlushState,
    FlushTicket,
    Occasion,
    Strategy,
    bounded,
    decide,
    decide_managed_instances,
    effective_strategy,
    SEND_TOGETHER_MIN_S,
    holds_next,
    near_budget,
    send_together,
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

    def test_strategies_are_the_ones_config_accepts(self):
        self.assertEqual({s.value for s in Strategy}, set(CONFIG_STRATEGIES))

    def test_end_strategy_flushes_at_invocation_end_and_has_no_timer(self):
        m, clock = manager("end")
        for _ in range(5):
            m.record_invocation()
            clock.advance(1)
        self.assertIs(m.effective_strategy(), Strategy.END)
        self.assertTrue(holds_next(m.effective_strategy(), breaker_open=False))
        self.assertFalse(holds_next(m.effective_strategy(), breaker_open=True))
        self.assertIsNone(m.next_timer_due())

    def test_empty_history_is_infrequent_so_default_flushes_at_end(self):
        m, clock = manager("default")
        self.assertIs(m.effective_strategy(), Strategy.END)
        m.record_invocation()
        self.assertIs(m.effective_strategy(), Strategy.END, "one invocation is still infrequent")
        self.assertIsNone(m.next_timer_due())

    def test_frequent_pattern_detection(self):
        m, clock = manager("default")
        for _ in range(5):
            m.record_invocation()
            clock.advance(1.0)
        self.assertIs(m.effective_strategy(), Strategy.PERIODIC)

    def test_average_over_120s_is_infrequent(self):
        m, clock = manager("default")
        for _ in range(3):
            m.record_invocation()
            clock.advance(121.0)
        self.assertIs(m.effective_strategy(), Strategy.END)
        m2, clock2 = manager("default")
        for _ in range(3):
            m2.record_invocation()
            clock2.advance(120.0)
        self.assertIs(m2.effective_strategy(), Strategy.PERIODIC, "exactly 120 s is not above the threshold")
        self.assertIs(effective_strategy(Strategy.DEFAULT, 120.0, 0), Strategy.PERIODIC)
        self.assertIs(effective_strategy(Strategy.DEFAULT, 120.001, 0), Strategy.END)
        self.assertIs(effective_strategy(Strategy.DEFAULT, None, 0), Strategy.END)

    def test_default_adapts_to_pattern(self):
        m, clock = manager("default", interval_s=20.0)
        self.assertIs(m.effective_strategy(), Strategy.END)
        for _ in range(5):
            m.record_invocation()
            clock.advance(0.5)
        self.assertIs(m.effective_strategy(), Strategy.PERIODIC)
        m.record_flush(True)
        self.assertEqual(m.next_timer_due(), clock.t + 20.0)
        clock.advance(20.0)
        self.assertLessEqual(m.next_timer_due(), clock.t, "due once the interval has passed")

    def test_history_bounded_at_20(self):
        m, clock = manager()
        for _ in range(30):
            m.record_invocation()
            clock.advance(200.0)
        self.assertIs(m.effective_strategy(), Strategy.END)
        # Only the last 20 count: 10 more rapid invocations bring the average under 120 s
        # ((10 x 200 + 9 x 1) / 19 = 105.7 s); with all 40 remembered it would stay above.
        for _ in range(10):
            m.record_invocation()
            clock.advance(1.0)
        self.assertIs(m.effective_strategy(), Strategy.PERIODIC)

    def test_periodic_and_continuous_timer_due_times(self):
        for strategy in ("periodic", "continuous"):
            m, clock = manager(strategy, interval_s=10.0)
            self.assertLessEqual(m.next_timer_due(), clock.t, "no flush yet: due at once")
            m.record_flush(True)
            self.assertEqual(m.next_timer_due(), clock.t + 10.0)
            clock.advance(4.0)
            m.record_flush(None)  # an empty flush also restarts the timer
            self.assertEqual(m.next_timer_due(), clock.t + 10.0)
            self.assertFalse(holds_next(m.effective_strategy(), breaker_open=False))
        self.assertIs(manager("continuous")[0].effective_strategy(), Strategy.CONTINUOUS)

    def test_escalation_to_continuous_after_20_failures(self):
        m, clock = manager("end")
        with self.assertLogs("lambda_otel.flush", "WARNING") as logs:
            for i in range(ESCALATION_FAILURES):
                self.assertIs(m.effective_strategy(), Strategy.END, f"not yet after {i} failures")
                m.record_flush(False)
        self.assertEqual(len(logs.output), 1, "one line per state change")
        self.assertIs(m.effective_strategy(), Strategy.CONTINUOUS)
        self.assertIsNotNone(m.next_timer_due())
        m.record_flush(None)  # nothing sent: no evidence either way
        self.assertIs(m.effective_strategy(), Strategy.CONTINUOUS)
        m.record_flush(True)
        self.assertEqual(m.consecutive_failures, 0)
        self.assertIs(m.effective_strategy(), Strategy.END)

    def test_success_resets_failure_count(self):
        m, _ = manager("end")
        for _ in range(3):
            m.record_flush(False)
        self.assertEqual(m.consecutive_failures, 3)
        m.record_flush(True)
        self.assertEqual(m.consecutive_failures, 0)


NOW = 1000.0
CFG = replace(FlushConfig(), flush_budget_s=1.0, deadline_margin_s=0.5, max_batch_records=10,
              max_batch_bytes=1000, interval_s=20.0)


def state(occasion: Occasion = Occasion.BACKGROUND, strategy: Strategy = Strategy.END, **kw) -> FlushState:
    kw.setdefault("gate_open", True)
    return FlushState(occasion=occasion, strategy=strategy, config=CFG, **kw)


class DecideTest(unittest.TestCase):
    """The one flush decision, over snapshots: every branch, no threads, no clock."""

    def test_background_waits_while_the_gate_is_closed_whatever_is_pending(self):
        d = decide(NOW, state(gate_open=False, pending_records=10_000, timer_due=NOW - 1))
        self.assertEqual((d.action, d.wait_s), (Action.WAIT, None))

    def test_a_full_batch_flushes_at_once_in_every_strategy(self):
        for strategy in (Strategy.END, Strategy.PERIODIC, Strategy.CONTINUOUS):
            for records, nbytes in ((10, 1), (1, 1000)):
                d = decide(NOW, state(strategy=strategy, pending_records=records, pending_bytes=nbytes,
                                      last_flush_end=NOW))
                self.assertIs(d.action, Action.FLUSH, (strategy, records, nbytes))
                self.assertEqual(d.until, NOW + CFG.flush_budget_s)
        d = decide(NOW, state(pending_records=9, pending_bytes=999))
        self.assertEqual((d.action, d.wait_s), (Action.WAIT, None), "end, not full: nothing until woken")

    def test_the_timer(self):
        d = decide(NOW, state(strategy=Strategy.PERIODIC, timer_due=NOW + 3.0))
        self.assertEqual((d.action, d.wait_s), (Action.WAIT, 3.0))
        self.assertIs(decide(NOW, state(strategy=Strategy.PERIODIC, timer_due=NOW)).action, Action.FLUSH)

    def test_continuous_flushes_pending_data_at_most_once_per_gap(self):
        s = dict(strategy=Strategy.CONTINUOUS, pending_records=1, timer_due=NOW + 10)
        self.assertIs(decide(NOW, state(last_flush_end=NOW - CONTINUOUS_MIN_GAP_S, **s)).action, Action.FLUSH)
        d = decide(NOW, state(last_flush_end=NOW - 0.04, **s))
        self.assertIs(d.action, Action.WAIT)
        self.assertAlmostEqual(d.wait_s, CONTINUOUS_MIN_GAP_S - 0.04)
        # At INVOKE the gap does not apply: the gate may close right after.
        self.assertIs(decide(NOW, state(Occasion.INVOKE, last_flush_end=NOW, **s)).action, Action.FLUSH)
        self.assertIs(decide(NOW, state(strategy=Strategy.CONTINUOUS, timer_due=NOW + 10)).action, Action.WAIT)

    def test_the_invocation_budget_and_cap_stop_background_and_requested_flushes(self):
        full = dict(pending_records=100, timer_due=NOW)
        self.assertIs(decide(NOW, state(budget_spent=True, **full)).action, Action.WAIT)
        self.assertIs(decide(NOW, state(Occasion.REQUEST, budget_spent=True, request_deadline=NOW + 1)).action,
                      Action.DEFER)
        self.assertIs(decide(NOW, state(cap=NOW + 0.005, **full)).action, Action.WAIT)
        d = decide(NOW, state(cap=NOW + 0.3, **full))
        self.assertEqual((d.action, d.until), (Action.FLUSH, NOW + 0.3), "a flush never runs past the cap")

    def test_retry_after(self):
        d = decide(NOW, state(not_before=NOW + 2.0, pending_records=100))
        self.assertEqual((d.action, d.wait_s), (Action.WAIT, 2.0))
        self.assertIs(decide(NOW, state(Occasion.REQUEST, not_before=NOW + 2.0)).action, Action.DEFER)
        self.assertIs(decide(NOW, state(Occasion.INVOKE, not_before=NOW + 2.0, timer_due=NOW)).action, Action.WAIT)
        # A huge Retry-After is only a (bounded) wait: the worker re-decides every MAX_WAIT_S.
        d = decide(NOW, state(not_before=NOW + 1e10, pending_records=100))
        self.assertEqual(bounded(d.wait_s), MAX_WAIT_S)

    def test_breaker_open_only_probes_when_due_and_with_something_to_send(self):
        s = dict(breaker_open=True, next_probe_at=NOW + 1.5, pending_records=100, timer_due=NOW)
        d = decide(NOW, state(**s))
        self.assertEqual((d.action, d.wait_s), (Action.WAIT, 1.5))
        self.assertIs(decide(NOW, state(Occasion.REQUEST, request_deadline=NOW + 1, **s)).action, Action.DEFER)
        s["next_probe_at"] = NOW
        d = decide(NOW, state(**s))
        self.assertEqual((d.action, d.until), (Action.PROBE, NOW + PROBE_TIMEOUT_S))
        self.assertIs(decide(NOW, state(Occasion.REQUEST, request_deadline=NOW + 1, **s)).action, Action.PROBE)
        s["pending_records"] = 0
        self.assertEqual(decide(NOW, state(**s)).action, Action.WAIT, "nothing to probe with: until data comes")
        self.assertIs(decide(NOW, state(Occasion.INVOKE, **s)).action, Action.PROBE, "metrics may ride along")

    def test_requested_flush_runs_to_its_deadline_final_always_runs(self):
        d = decide(NOW, state(Occasion.REQUEST, gate_open=False, request_deadline=NOW + 0.7))
        self.assertEqual((d.action, d.until), (Action.FLUSH, NOW + 0.7))
        d = decide(NOW, state(Occasion.FINAL, gate_open=False, budget_spent=True, breaker_open=True,
                              not_before=NOW + 99, request_deadline=NOW + 1.8))
        self.assertEqual((d.action, d.until), (Action.FINAL, NOW + 1.8))

    def test_at_invoke_a_near_deadline_flushes_up_to_the_cap(self):
        d = decide(NOW, state(Occasion.INVOKE, invocation_deadline=NOW + 0.4, cap=NOW + 0.2))
        self.assertEqual((d.action, d.until), (Action.FLUSH, NOW + 0.2))
        d = decide(NOW, state(Occasion.INVOKE, invocation_deadline=NOW + 60, cap=NOW + 59.5))
        self.assertIs(d.action, Action.WAIT, "far deadline, nothing due: no flush at INVOKE")
        d = decide(NOW, state(Occasion.INVOKE, invocation_deadline=NOW + 60, cap=NOW + 59.5, timer_due=NOW))
        self.assertEqual((d.action, d.until), (Action.FLUSH, NOW + CFG.flush_budget_s))
        d = decide(NOW, state(Occasion.INVOKE, invocation_deadline=NOW + 0.4, cap=NOW + 0.2, breaker_open=True,
                              next_probe_at=NOW + 5))
        self.assertIs(d.action, Action.WAIT, "breaker open: no flush at a near deadline either")

    def test_nothing_but_the_final_flush_waits_for_the_export_client_import(self):
        not_ready = dict(client_ready=False, pending_records=100, timer_due=NOW, left_over=True)
        self.assertEqual(decide(NOW, state(**not_ready)).action, Action.WAIT, "woken once the client is ready")
        self.assertIs(decide(NOW, state(Occasion.REQUEST, request_deadline=NOW + 1, **not_ready)).action,
                      Action.DEFER, "a hold's flush is deferred at once, not waited for")
        self.assertIs(decide(NOW, state(Occasion.INVOKE, invocation_deadline=NOW + 0.4, cap=NOW + 0.2,
                                        **not_ready)).action, Action.WAIT)
        d = decide(NOW, state(Occasion.FINAL, request_deadline=NOW + 1.5, **not_ready))
        self.assertEqual((d.action, d.until), (Action.FINAL, NOW + 1.5), "SHUTDOWN is the last chance")
        d = decide(NOW, state(**dict(not_ready, client_ready=True)))
        self.assertIs(d.action, Action.FLUSH, "ready again: the kept data goes")

    def test_what_a_hold_left_behind_goes_at_the_next_chance(self):
        for strategy in (Strategy.END, Strategy.PERIODIC, Strategy.CONTINUOUS):
            d = decide(NOW, state(Occasion.INVOKE, strategy=strategy, left_over=True, pending_records=3,
                                  invocation_deadline=NOW + 60, cap=NOW + 59.5, last_flush_end=NOW))
            self.assertEqual((d.action, d.until), (Action.FLUSH, NOW + CFG.flush_budget_s), strategy)
            d = decide(NOW, state(strategy=strategy, left_over=True, pending_records=3, last_flush_end=NOW))
            self.assertIs(d.action, Action.FLUSH, f"{strategy}: in the background too, while the gate is open")
        self.assertIs(decide(NOW, state(left_over=True, pending_records=0)).action, Action.WAIT, "nothing left")
        self.assertIs(decide(NOW, state(left_over=True, pending_records=3, gate_open=False)).action, Action.WAIT)
        self.assertIs(decide(NOW, state(left_over=True, pending_records=3, not_before=NOW + 2)).action, Action.WAIT)
        self.assertIs(decide(NOW, state(left_over=True, pending_records=3, breaker_open=True,
                                        next_probe_at=NOW + 2)).action, Action.WAIT)

    def test_near_budget_holds_in_every_strategy(self):
        budget = (1000, 1_000_000)
        self.assertFalse(near_budget((0, 0), (499, 1000), budget))
        self.assertTrue(near_budget((0, 0), (500, 1000), budget), "half the records")
        self.assertTrue(near_budget((0, 0), (10, 500_000), budget), "half the bytes")
        self.assertTrue(near_budget((300, 0), (200, 0), budget), "pending plus a recent invocation's volume")
        for strategy in (Strategy.PERIODIC, Strategy.CONTINUOUS):
            self.assertFalse(holds_next(strategy, breaker_open=False))
            self.assertTrue(holds_next(strategy, breaker_open=False, near_budget=True))
            self.assertFalse(holds_next(strategy, breaker_open=True, near_budget=True), "never with the breaker open")

    def test_managed_instances_export_in_the_background_without_gate_budget_or_cap(self):
        # No freeze and no INVOKE: the gate, the invocation budget and cap mean nothing there.
        s = dict(strategy=Strategy.PERIODIC, gate_open=False, budget_spent=True, cap=NOW - 1)
        d = decide_managed_instances(NOW, state(timer_due=NOW, **s))
        self.assertEqual((d.action, d.until), (Action.FLUSH, NOW + CFG.flush_budget_s))
        self.assertIs(decide_managed_instances(NOW, state(pending_records=10, **s)).action, Action.FLUSH, "full batch")
        d = decide_managed_instances(NOW, state(timer_due=NOW + 4, **s))
        self.assertEqual((d.action, d.wait_s), (Action.WAIT, 4))
        # What still applies: Retry-After and the breaker.
        self.assertIs(decide_managed_instances(NOW, state(timer_due=NOW, not_before=NOW + 1, **s)).action, Action.WAIT)
        d = decide_managed_instances(NOW, state(timer_due=NOW, breaker_open=True, next_probe_at=NOW, pending_records=1, **s))
        self.assertIs(d.action, Action.PROBE)

    def test_final_loss_reason_names_the_backend_failure(self):
        from lambda_otel.exporter import FailureCause
        from lambda_otel.flush import final_loss_reason
        from lambda_otel.loss import EXPORT_FAILED, SHUTDOWN_DEADLINE

        self.assertEqual(final_loss_reason(None), SHUTDOWN_DEADLINE)
        self.assertEqual(final_loss_reason(FailureCause.TIMEOUT), SHUTDOWN_DEADLINE)
        for cause in (FailureCause.CONNECT, FailureCause.DNS, FailureCause.TLS, FailureCause.HTTP_STATUS):
            self.assertEqual(final_loss_reason(cause), EXPORT_FAILED, cause)

    def test_bounded(self):
        self.assertEqual([bounded(x) for x in (-1.0, 0.0, 0.5, 1e10, float("inf"), float("nan"))],
                         [0.0, 0.0, 0.5, MAX_WAIT_S, MAX_WAIT_S, 0.0])

    def test_waits_past_timeout_max_are_safe(self):
        # A deadline computed from a hostile Retry-After or a far deadlineMs must never reach
        # Condition.wait unbounded (OverflowError past threading.TIMEOUT_MAX).
        huge = threading.TIMEOUT_MAX * 2
        gate = ExportGate()
        gate.open()
        token = gate.try_begin(time.monotonic() + huge)
        ticket = FlushTicket(NOW)
        ender = threading.Timer(0.1, lambda: (gate.end(token), ticket._finish(FlushResult())))
        ender.start()
        self.addCleanup(ender.cancel)
        self.assertTrue(gate.close(huge))
        self.assertTrue(ticket.wait(huge))


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
        self.assertTrue(gate.is_open)
        self.assertIsNotNone(gate.try_begin())


class SendTogetherTest(unittest.TestCase):
    def test_one_signal_is_never_sent_on_a_lane(self):
        self.assertFalse(send_together(1, []))
        self.assertFalse(send_together(0, [1.0]))

    def test_before_any_request_the_signals_go_in_turn(self):
        self.assertFalse(send_together(3, []))

    def test_a_backend_on_this_host_is_sent_to_in_turn(self):
        fast = SEND_TOGETHER_MIN_S / 3
        self.assertFalse(send_together(3, [fast] * 9))

    def test_a_distant_backend_is_sent_to_at_once(self):
        self.assertTrue(send_together(2, [SEND_TOGETHER_MIN_S * 5] * 9))

    def test_slow_requests_beside_a_quick_one_are_our_cpu_or_a_new_connection(self):
        # A busy CPU or a connection being opened makes requests slower, never quicker: one quick
        # request shows the backend is near.
        fast, slow = SEND_TOGETHER_MIN_S / 3, 1.0
        self.assertFalse(send_together(3, [fast] + [slow] * 8))
        self.assertTrue(send_together(3, [SEND_TOGETHER_MIN_S] * 9), "every one slow enough: at once")


if __name__ == "__main__":
    unittest.main()
