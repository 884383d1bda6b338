"""ExportWorker and FlushCoordinator against real parts: Aggregator, MetricsState, OtlpExporter
and the OtlpSink backend on 127.0.0.1, with real threads."""

from __future__ import annotations

import random
import socket
import threading
import time
import unittest
from dataclasses import replace
from unittest import mock

from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from lambda_otel import exporter as exporter_mod
from lambda_otel import flush as flush_mod
from lambda_otel import loss as L
from lambda_otel.aggregator import Aggregator
from lambda_otel.config import ExporterConfig, FlushConfig
from lambda_otel.exporter import OtlpExporter
from lambda_otel.flush import (
    MAX_BATCH_ATTEMPTS,
    CircuitBreaker,
    ExportGate,
    ExportWorker,
    FlushCoordinator,
    FlushManager,
    ManagedInstancesCoordinator,
    build_flush,
)
from lambda_otel.local.sink import OtlpSink, Reply
from lambda_otel.metrics import MetricsState
from tests.aws_support import wait_until


def resource() -> resource_pb2.Resource:
    r = resource_pb2.Resource()
    kv = r.attributes.add()
    kv.key, kv.value.string_value = "service.name", "flush-test"
    return r


def spans(n: int, prefix: str = "s") -> trace_pb2.ResourceSpans:
    rs = trace_pb2.ResourceSpans()
    rs.resource.CopyFrom(resource())
    ss = rs.scope_spans.add()
    for i in range(n):
        sp = ss.spans.add()
        sp.name = f"{prefix}{i}"
        sp.trace_id = bytes([1]) * 16
        sp.span_id = (i + 1).to_bytes(8, "big")
    return rs


def logs(n: int) -> logs_pb2.ResourceLogs:
    rl = logs_pb2.ResourceLogs()
    rl.resource.CopyFrom(resource())
    sl = rl.scope_logs.add()
    for i in range(n):
        sl.log_records.add().body.CopyFrom(common_pb2.AnyValue(string_value=f"line {i}"))
    return rl


def epoch_ms_in(seconds: float) -> int:
    return int((time.time() + seconds) * 1000)


def as_after_a_distant_backend(worker: ExportWorker) -> None:
    """The worker has seen only slow requests: its next flush sends its signals at once."""
    worker._recent_requests.extend([1.0] * flush_mod.RECENT_REQUESTS)


class Harness:
    """One extension's worth of flush machinery wired to a fresh sink."""

    def __init__(self, test: unittest.TestCase, endpoints: bool = True, breaker_backoff_s: float = 1.0,
                 exporter_timeout_s: float = 10.0, queue_records: int = 100_000, **flush) -> None:
        self.sink = OtlpSink().start()
        test.addCleanup(self.sink.stop)
        ep = self.sink.endpoint if endpoints else None
        self.loss = L.LossCounter()
        self.exporter = OtlpExporter(ExporterConfig(
            traces_endpoint=ep and ep + "/v1/traces", metrics_endpoint=ep and ep + "/v1/metrics",
            logs_endpoint=ep and ep + "/v1/logs", compression="none", timeout_s=exporter_timeout_s), self.loss)
        test.addCleanup(self.exporter.close)
        self.exporter.warm_up()  # as app.py does on its start-up thread: flushes wait for it
        self.config = replace(FlushConfig(), **flush)
        self.aggregator = Aggregator(16 * 1024 * 1024, queue_records, self.loss)
        self.metrics = MetricsState(resource(), "delta", self.loss)
        self.manager = FlushManager(self.config)
        self.gate = ExportGate()
        breaker = CircuitBreaker(self.config.breaker_failures, self.config.breaker_max_backoff_s,
                                 initial_backoff_s=breaker_backoff_s)
        self.worker = ExportWorker(self.aggregator, self.exporter, self.metrics, self.manager, self.gate,
                                   self.loss, self.config, breaker=breaker)
        self.coordinator = FlushCoordinator(self.manager, self.gate, self.worker, self.config)
        self.worker.start()
        test.addCleanup(self.worker.stop, 5.0)

    def add_spans(self, n: int, prefix: str = "s") -> None:
        self.aggregator.add(L.TRACES, spans(n, prefix), records=n)

    def flush(self, budget: float = 2.0):
        ticket = self.worker.request_flush(time.monotonic() + budget)
        assert ticket.wait(budget + 5.0), "flush ticket never finished"
        return ticket.result

    def span_names(self) -> set:
        return {s.name for s in self.sink.spans()}


class ExportWorkerTest(unittest.TestCase):
    def test_explicit_flush_sends_everything_and_collects_metrics(self):
        h = Harness(self, strategy="end")
        h.gate.open()
        h.add_spans(3)
        h.aggregator.add(L.LOGS, logs(2), records=2)
        h.metrics.add("faas.invocations", 1)
        result = h.flush()
        self.assertTrue(result.success)
        self.assertEqual(result.sent, {"traces": 3, "logs": 2, "metrics": 1})
        self.assertEqual(h.span_names(), {"s0", "s1", "s2"})
        self.assertEqual(len(h.sink.log_records()), 2)
        self.assertEqual([p.name for p in h.sink.metrics()], ["faas.invocations"])
        self.assertEqual(h.aggregator.pending_records(), 0)

    def test_a_flush_sends_its_signals_together_not_in_turn(self):
        # Each answer takes a second: in turn, no two requests would ever be open at once. The first
        # two flushes go in turn (the first opens the connections, the second times the backend
        # on them); the third knows its backend is slow.
        h = Harness(self, strategy="end", flush_budget_s=8.0)
        h.sink.set_reply(Reply(delay=0.05))
        h.gate.open()
        for _ in range(2):
            h.add_spans(1)
            h.aggregator.add(L.LOGS, logs(1), records=1)
            h.metrics.add("faas.invocations", 1)
            self.assertTrue(h.flush(budget=8.0).success)
        h.sink.clear()
        h.sink.set_reply(Reply(delay=1.0))
        h.add_spans(3)
        h.aggregator.add(L.LOGS, logs(2), records=2)
        h.metrics.add("faas.invocations", 1)
        result = h.flush(budget=8.0)
        self.assertTrue(result.success)
        self.assertEqual(result.sent, {"traces": 3, "logs": 2, "metrics": 1})
        self.assertEqual(result.requests, 3)
        requests = h.sink.requests
        self.assertEqual(sorted(r.signal for r in requests), ["logs", "metrics", "traces"])
        last_start = max(r.start for r in requests)
        self.assertEqual(len(h.sink.open_at(last_start)), 3, "the three requests were not open together")
        self.assertEqual(len({r.connection_id for r in requests}), 3)
        self.assertEqual(h.gate.in_flight, 0)

    def test_after_fast_requests_a_flush_sends_its_signals_in_turn(self):
        # Requests quicker than SEND_TOGETHER_MIN_S are mostly our own CPU: lanes would only add
        # thread hand-offs. (The threshold is raised so that this sink's 0.3 s answers count as fast.)
        h = Harness(self, strategy="end", flush_budget_s=8.0)
        h.sink.set_reply(Reply(delay=0.3))
        h.gate.open()
        # 0.3 s answers: slow, then (by a raised threshold) fast. Flush 1 opens the connections and
        # flush 2 times the backend on them, both in turn; flush 3 knows it is slow. (Lanes used
        # are counted at the worker: the sink stamps a request's end after its answer is sent, so
        # the next request of a flush in turn may look open beside it.)
        lanes_used = []
        with mock.patch.object(h.worker, "_lane_for", wraps=h.worker._lane_for) as lane_for:
            for threshold in (0.1, 0.1, 0.1, 10.0):
                with mock.patch.object(flush_mod, "SEND_TOGETHER_MIN_S", threshold):
                    h.add_spans(1)
                    h.aggregator.add(L.LOGS, logs(1), records=1)
                    h.metrics.add("faas.invocations", 1)
                    calls = lane_for.call_count
                    self.assertTrue(h.flush(budget=8.0).success)
                    lanes_used.append(lane_for.call_count - calls)
        self.assertEqual(lanes_used, [0, 0, 2, 0], "in turn, in turn, at once (two lanes), in turn")
        requests = h.sink.requests
        self.assertEqual(len(requests), 12)
        self.assertEqual(max(len(h.sink.open_at(r.start)) for r in requests[6:9]), 3, "flush 3: at once")

    def test_a_lane_is_waited_for_until_its_deadline_however_short_each_wait(self):
        # The flush waits for a lane in bounded steps (MAX_WAIT_S, shortened here) up to its own
        # deadline, not one step: a lane well within its deadline is part of the flush's result.
        with mock.patch.object(flush_mod, "MAX_WAIT_S", 0.1):
            h = Harness(self, strategy="end", flush_budget_s=5.0)
            h.gate.open()
            as_after_a_distant_backend(h.worker)
            h.sink.set_reply(Reply(delay=0.6), path="/v1/logs")
            h.add_spans(1)
            h.aggregator.add(L.LOGS, logs(2), records=2)
            result = h.flush(budget=5.0)
        self.assertTrue(result.success)
        self.assertEqual(result.sent, {"traces": 1, "logs": 2})
        self.assertFalse(result.deferred)
        self.assertEqual(h.worker._busy_signals(), set())

    def test_a_drain_that_raises_beside_a_lane_leaves_no_signal_drained_twice(self):
        h = Harness(self, strategy="end", flush_budget_s=5.0)
        h.gate.open()
        as_after_a_distant_backend(h.worker)
        h.sink.set_reply(Reply(delay=0.5), path="/v1/logs")
        h.add_spans(1)
        h.aggregator.add(L.LOGS, logs(3), records=3)
        real = h.worker._drain_signal
        raised = []

        def traces_raise_once(signal, *args, **kwargs):
            if signal == L.TRACES and not raised:
                raised.append(signal)
                raise RuntimeError("boom on the exporter thread")
            return real(signal, *args, **kwargs)

        with mock.patch.object(h.worker, "_drain_signal", traces_raise_once):
            with self.assertLogs("lambda_otel.flush", "ERROR"):
                self.assertFalse(h.flush(budget=5.0).success)
            self.assertTrue(h.flush(budget=5.0).success)
        log_requests = h.sink.requests_to("/v1/logs")
        self.assertEqual(len(log_requests), 1, "logs were sent by the lane only")
        self.assertEqual(len(h.sink.log_records()), 3)
        self.assertEqual(len(h.span_names()), 1)
        self.assertEqual(h.loss.total(), 0)

    def test_in_turn_data_that_comes_during_the_flush_goes_with_it(self):
        h = Harness(self, strategy="end", flush_budget_s=5.0)
        h.gate.open()
        h.sink.set_reply(Reply(delay=0.3), path="/v1/traces")
        h.add_spans(1)
        adder = threading.Timer(0.1, lambda: h.aggregator.add(L.LOGS, logs(2), records=2))
        adder.start()
        self.addCleanup(adder.cancel)
        result = h.flush(budget=5.0)
        self.assertTrue(result.success)
        self.assertEqual(result.sent, {"traces": 1, "logs": 2})
        self.assertEqual(h.aggregator.pending_records(), 0)

    def test_one_signal_failing_beside_the_others_fails_the_flush_and_keeps_its_data(self):
        for at_once in (False, True):
            with self.subTest(at_once=at_once):
                h = Harness(self, strategy="end")
                if at_once:
                    as_after_a_distant_backend(h.worker)
                h.sink.set_reply(Reply(status=503), path="/v1/logs")
                h.gate.open()
                h.add_spans(2)
                h.aggregator.add(L.LOGS, logs(4), records=4)
                result = h.flush()
                self.assertFalse(result.success)
                self.assertTrue(result.deferred)
                self.assertEqual(result.sent.get("traces"), 2)
                self.assertIsNotNone(result.last_failure)
                self.assertEqual(h.aggregator.pending_records(L.LOGS), 4, "the failed batch is back in the queue")
                self.assertEqual(len(h.worker._lanes), 1 if at_once else 0)
                h.sink.reset_behaviour()
                self.assertTrue(h.flush().success)
                self.assertEqual(len(h.sink.log_records()), 4)
                self.assertEqual(h.loss.total(), 0)

    def test_a_lane_that_raises_reaches_the_worker_and_the_next_flush_still_works(self):
        h = Harness(self, strategy="end")
        h.gate.open()
        as_after_a_distant_backend(h.worker)
        h.add_spans(1)
        h.aggregator.add(L.LOGS, logs(1), records=1)
        real = h.worker._drain_signal
        calls = []

        def failing_for_logs(signal, *args, **kwargs):
            calls.append(signal)
            if signal == L.LOGS and calls.count(L.LOGS) == 1:
                raise RuntimeError("boom in a lane")
            return real(signal, *args, **kwargs)

        with mock.patch.object(h.worker, "_drain_signal", failing_for_logs):
            with self.assertLogs("lambda_otel.flush", "ERROR"):
                self.assertFalse(h.flush().success)
            self.assertEqual(len(h.worker._lanes), 1, "logs was drained on a lane")
            self.assertTrue(h.flush().success)
        self.assertEqual(len(h.sink.log_records()), 1)
        self.assertEqual(len(h.span_names()), 1)

    def test_dropped_metric_goes_out_with_the_next_flush(self):
        h = Harness(self, strategy="end")
        h.gate.open()
        h.loss.add(L.TRACES, L.QUEUE_FULL, 7)
        self.assertTrue(h.flush().success)
        dropped = [p for p in h.sink.metrics() if p.name == "lambda_otel.dropped"]
        self.assertEqual(len(dropped), 1)
        self.assertEqual(dropped[0].point.as_int, 7)
        self.assertIsNone(h.flush().success, "nothing new: nothing sent")

    def test_an_evicted_metrics_item_gives_its_loss_counts_back(self):
        # Delta temporality: the lambda_otel.dropped points a metrics item carries exist nowhere else.
        # Evicted from a full queue, they are reported again, so the backend's sum is the true total.
        h = Harness(self, strategy="end", queue_records=20)
        h.loss.add(L.LOGS, L.EXPORT_REJECTED, 7)
        h.worker._collect_metrics()  # the item with dropped=7 is queued (as a flush does)
        self.assertEqual(h.aggregator.pending_records(L.METRICS), 1)
        h.add_spans(20)  # the queue is full: the metrics item, oldest, is evicted (counted as queue_full)
        self.assertEqual(h.aggregator.pending_records(L.METRICS), 0)
        h.gate.open()
        h.aggregator.take_batch(L.TRACES, 1 << 30, 100)  # room for the next collect
        self.assertTrue(h.flush().success)
        dropped = sum(p.point.as_int for p in h.sink.metrics() if p.name == "lambda_otel.dropped")
        self.assertEqual(dropped, h.loss.total())
        self.assertEqual(h.loss.total(), 7 + 1)

    def test_no_request_while_gate_closed(self):
        h = Harness(self, strategy="periodic", interval_s=0.05)
        h.add_spans(2)
        result = h.flush()
        self.assertTrue(result.deferred)
        self.assertEqual(h.sink.requests, [])
        self.assertEqual(h.aggregator.pending_records(), 2)
        h.gate.open()
        h.worker.wake()
        self.assertTrue(h.sink.wait_for(lambda: len(h.sink.spans()) == 2, 5.0))

    def test_periodic_timer_flushes_without_being_asked(self):
        h = Harness(self, strategy="periodic", interval_s=0.1)
        h.gate.open()
        h.worker.wake()
        h.add_spans(1, "first")
        self.assertTrue(h.sink.wait_for(lambda: "first0" in h.span_names(), 5.0))
        h.add_spans(1, "second")
        self.assertTrue(h.sink.wait_for(lambda: "second0" in h.span_names(), 5.0))

    def test_end_strategy_has_no_timer(self):
        h = Harness(self, strategy="end", interval_s=0.05)
        h.gate.open()
        h.worker.wake()
        h.add_spans(1)
        # Negative check with a bound: many timer intervals pass, nothing is sent.
        self.assertFalse(h.sink.wait_for(lambda: len(h.sink.requests) > 0, 0.5))
        self.assertEqual(h.aggregator.pending_records(), 1)

    def test_continuous_sends_new_data_promptly(self):
        h = Harness(self, strategy="continuous", interval_s=60.0)
        h.gate.open()
        h.worker.wake()
        h.sink.wait_for(lambda: h.worker.flushes >= 1, 2.0)  # the first (immediate) timer flush
        h.add_spans(2)
        self.assertTrue(h.sink.wait_for(lambda: len(h.sink.spans()) == 2, 5.0))

    def test_buffer_full_flushes_even_with_end(self):
        h = Harness(self, strategy="end", max_batch_records=5)
        h.gate.open()
        h.worker.wake()
        h.add_spans(5)
        self.assertTrue(h.sink.wait_for(lambda: len(h.sink.spans()) == 5, 5.0))

    def test_a_full_batch_wakes_the_worker_instead_of_waiting_for_a_poll(self):
        # The idle worker would sleep for a minute: only the queue's on_data wake can start
        # this export within the bound (a fixed poll interval used to delay it).
        with mock.patch.object(flush_mod, "MAX_WAIT_S", 60.0):
            h = Harness(self, strategy="end", max_batch_records=5)
            h.gate.open()
            h.worker.wake()
            threading.Event().wait(0.1)  # let it go idle
            h.add_spans(4)
            self.assertFalse(h.sink.wait_for(lambda: len(h.sink.requests) > 0, 0.3), "not a full batch yet")
            h.add_spans(1, "fifth")
            self.assertTrue(h.sink.wait_for(lambda: len(h.sink.spans()) == 5, 10.0))

    def test_503_requeues_then_succeeds_later(self):
        h = Harness(self, strategy="end", flush_budget_s=0.3)
        h.gate.open()
        h.sink.set_reply(Reply(status=503))
        h.add_spans(4)
        result = h.flush(budget=0.3)
        self.assertFalse(result.success)
        self.assertEqual(h.aggregator.pending_records(), 4, "requeued at the front")
        self.assertGreaterEqual(len(h.sink.requests), 1)
        h.sink.reset_behaviour()
        h.worker.begin_invocation(None)  # a new invocation: a fresh export budget
        self.assertTrue(h.flush().success)
        self.assertEqual(len(h.sink.spans()), 4)
        self.assertEqual(h.loss.snapshot(), {})

    def test_rejected_is_counted(self):
        h = Harness(self, strategy="end")
        h.gate.open()
        h.sink.set_reply(Reply(status=400))
        h.add_spans(3)
        with self.assertLogs("lambda_otel.exporter", "WARNING"):
            result = h.flush()
        self.assertTrue(result.success, "the backend answered: not an outage")
        self.assertEqual(h.loss.snapshot(), {(L.TRACES, L.EXPORT_REJECTED): 3})
        self.assertEqual(h.aggregator.pending_records(), 0)

    def test_partial_success_counted_once(self):
        h = Harness(self, strategy="end")
        h.gate.open()
        h.sink.set_reply(Reply(partial_rejected=2), path="/v1/traces")
        h.add_spans(5)
        with self.assertLogs("lambda_otel.exporter", "WARNING"):
            result = h.flush()
        self.assertEqual(result.sent, {"traces": 3})
        self.assertEqual(h.loss.snapshot(), {(L.TRACES, L.EXPORT_REJECTED): 2})

    def test_retries_exhausted_is_counted(self):
        h = Harness(self, strategy="end", flush_budget_s=0.1, breaker_failures=100)
        h.gate.open()
        h.sink.set_reply(Reply(status=503))
        h.add_spans(3)
        for _ in range(MAX_BATCH_ATTEMPTS):
            h.worker.begin_invocation(None)
            self.assertFalse(h.flush(budget=0.1).success)
        self.assertEqual(h.aggregator.pending_records(), 0)
        self.assertEqual(h.loss.snapshot(), {(L.TRACES, L.RETRIES_EXHAUSTED): 3})

    def test_no_endpoint_is_counted_and_warned_once(self):
        h = Harness(self, strategy="end", endpoints=False)
        h.gate.open()
        with self.assertLogs("lambda_otel.flush", "WARNING") as logs_:
            h.add_spans(2)
            h.flush()
            h.add_spans(3)
            h.flush()
        # One warning per signal (traces, then metrics: lambda_otel.dropped has nowhere to go either).
        self.assertEqual(len(logs_.output), 2)
        self.assertEqual(sum("for traces" in line for line in logs_.output), 1)
        self.assertEqual(h.loss.snapshot()[(L.TRACES, L.NO_ENDPOINT)], 5)
        self.assertEqual(h.manager.consecutive_failures, 0, "no endpoint is not an outage")

    def test_retry_after_is_honoured(self):
        h = Harness(self, strategy="end", flush_budget_s=0.3)
        h.gate.open()
        h.sink.script([Reply(status=429, retry_after="1")])
        h.add_spans(2)
        self.assertFalse(h.flush(budget=0.3).success)
        first = h.sink.requests[0]
        self.assertTrue(h.flush(budget=0.3).deferred, "asked to wait: no request before Retry-After")
        self.assertEqual(len(h.sink.requests), 1)
        h.sink.wait_for(lambda: False, 1.0)  # let the Retry-After pass (bounded wait)
        self.assertTrue(h.flush().success)
        second = h.sink.requests[1]
        self.assertGreaterEqual(second.start - first.end, 0.9)
        self.assertEqual(len(h.sink.spans()), 2)

    def test_stop_is_clean(self):
        h = Harness(self, strategy="periodic", interval_s=0.05)
        h.gate.open()
        self.assertTrue(h.worker.stop(5.0))
        ticket = h.worker.request_flush(time.monotonic() + 1)
        self.assertTrue(ticket.wait(0))
        self.assertTrue(ticket.result.deferred)


class CoordinatorTest(unittest.TestCase):
    def test_end_holds_until_runtime_done_then_flushes_with_nothing_open(self):
        h = Harness(self, strategy="end")
        h.coordinator.before_next()  # init: nothing to do
        h.coordinator.on_invoke("req-1", epoch_ms_in(10))
        done_at = []

        def function_finishes():
            time.sleep(0.2)
            h.add_spans(3)
            done_at.append(time.monotonic())
            h.coordinator.on_runtime_done("req-1")

        t = threading.Thread(target=function_finishes)
        t.start()
        self.addCleanup(t.join, 5)
        h.coordinator.before_next()
        returned = time.monotonic()
        answered = [r.status for r in h.sink.requests]
        self.assertTrue(done_at and done_at[0] <= returned, "held until runtimeDone")
        self.assertTrue(h.coordinator.last_hold.runtime_done)
        self.assertEqual(len(h.sink.spans()), 3)
        # The sink records a status before writing the answer (and `end` just after writing it):
        # every request that had started was already answered when before_next returned.
        self.assertTrue(answered and all(s == 200 for s in answered), answered)
        self.assertTrue(all(r.start < returned for r in h.sink.requests))
        self.assertEqual(h.gate.in_flight, 0)
        self.assertFalse(h.gate.is_open)
        self.assertIsNone(h.gate.try_begin())

    def test_no_request_outlives_the_holds_flush_even_one_started_after_it(self):
        # Each logs answer takes 0.15 s: the hold's flush (0.4 s) sends two batches, its third
        # request is cut at the flush's deadline and leaves a full batch. A flush the worker then
        # starts on its own (the batch is full, the gate still open, 0.25 s of failures spent of
        # the 0.4 s budget) must end by the hold's flush deadline too, or closing the gate waits
        # for it: the hold would last up to twice its bound.
        h = Harness(self, strategy="end", flush_budget_s=0.4, max_batch_records=2)
        h.sink.set_reply(Reply(delay=0.15), path="/v1/logs")
        hold_deadlines, export_deadlines = [], []
        real_request, real_export = h.worker.request_flush, h.exporter.export

        def request_flush(deadline, *args, **kwargs):
            hold_deadlines.append(deadline)
            return real_request(deadline, *args, **kwargs)

        def export(signal, items, deadline):
            export_deadlines.append(deadline)
            return real_export(signal, items, deadline)

        started = threading.Event()
        real_close = h.coordinator._close_gate

        def close_gate_late():
            # Give the worker the chance to start another request before the gate closes (bounded).
            started.wait(1.0)
            return real_close()

        h.coordinator.on_invoke("req-1", epoch_ms_in(10))
        for i in range(3):
            h.aggregator.add(L.LOGS, logs(2), records=2)
        h.coordinator.on_runtime_done("req-1")
        with mock.patch.object(h.worker, "request_flush", request_flush), \
                mock.patch.object(h.exporter, "export", export), \
                mock.patch.object(h.coordinator, "_close_gate", close_gate_late):
            real_finish = flush_mod.FlushTicket._finish

            def finish(ticket, result):
                real_finish(ticket, result)
                # From now on, any export is one the hold did not ask for.
                h.exporter.export = lambda *a: (started.set(), export(*a))[1]

            with mock.patch.object(flush_mod.FlushTicket, "_finish", finish):
                h.coordinator.before_next()
        self.assertEqual(len(hold_deadlines), 1)
        self.assertTrue(export_deadlines, "the hold's flush sent the logs")
        late = [d for d in export_deadlines if d > hold_deadlines[0] + 1e-6]
        self.assertEqual(late, [], "a request of this invocation ends after the hold's flush deadline")
        self.assertFalse(h.gate.is_open)
        self.assertEqual(h.gate.in_flight, 0)

    def test_no_hold_waits_for_the_export_client_import(self):
        # app.py: the start-up thread imports requests after the first /next; an invocation that
        # ends before that keeps its data (gate closed: nothing in flight across the freeze) and
        # sends it at the next INVOKE, while the function runs.
        h = Harness(self, strategy="end")
        h.exporter.expect_warm_up()
        h.coordinator.on_invoke("first", epoch_ms_in(10))
        h.add_spans(3, "first")
        h.coordinator.on_runtime_done("first")
        h.coordinator.before_next()
        hold = h.coordinator.last_hold
        self.assertTrue(hold.held and hold.runtime_done)
        self.assertTrue(hold.flushed is not None and hold.flushed.deferred and hold.flushed.requests == 0)
        self.assertEqual(h.sink.requests, [])
        self.assertEqual(h.aggregator.pending_records(), 3, "kept, not dropped")
        self.assertFalse(h.gate.is_open)
        h.exporter.warm_up(on_ready=h.worker.wake)  # the import ends while we are frozen (gate closed)
        self.assertFalse(h.sink.wait_for(lambda: len(h.sink.requests) > 0, 0.3), "nothing while frozen")
        h.coordinator.on_invoke("second", epoch_ms_in(10))
        self.assertTrue(h.sink.wait_for(lambda: {"first0", "first1", "first2"} <= h.span_names(), 5.0),
                        "sent at INVOKE, before the second invocation's hold")
        h.add_spans(1, "second")
        h.coordinator.on_runtime_done("second")
        h.coordinator.before_next()
        self.assertIn("second0", h.span_names())
        self.assertEqual(h.aggregator.pending_records(), 0)

    def test_data_kept_for_the_export_client_goes_once_it_is_ready_while_the_gate_is_open(self):
        h = Harness(self, strategy="end", max_batch_records=2)
        h.exporter.expect_warm_up()
        h.coordinator.on_invoke("first", epoch_ms_in(10))
        h.add_spans(4)  # full batches: exported at once, but not before the client is ready
        self.assertFalse(h.sink.wait_for(lambda: len(h.sink.requests) > 0, 0.3))
        h.exporter.warm_up(on_ready=h.worker.wake)
        self.assertTrue(h.sink.wait_for(lambda: len(h.sink.spans()) == 4, 5.0))
        h.coordinator.on_runtime_done("first")
        h.coordinator.before_next()
        self.assertFalse(h.gate.is_open)

    def test_the_final_flush_waits_for_the_export_client_only_until_its_deadline(self):
        # SHUTDOWN while start-up still imports the export client: an export now would wait for
        # that import inside the request, where no deadline cuts it (Lambda then kills us and
        # everything is lost, uncounted). It waits for the import until the deadline, no longer.
        h = Harness(self, strategy="end", shutdown_margin_s=0.2)
        h.exporter.expect_warm_up()  # and it never ends
        h.add_spans(3)
        h.aggregator.add(L.LOGS, logs(2), records=2)
        summary = h.coordinator.on_shutdown_event(epoch_ms_in(1.0))
        self.assertTrue(summary.completed, "the worker answered in time")
        self.assertEqual(h.sink.requests, [], "no request before the client is ready")
        self.assertEqual(h.loss.snapshot(), {(L.TRACES, L.SHUTDOWN_DEADLINE): 3, (L.LOGS, L.SHUTDOWN_DEADLINE): 2})
        self.assertEqual(summary.shutdown_deadline, 5)

    def test_the_final_flush_sends_everything_once_the_export_client_is_ready(self):
        h = Harness(self, strategy="end")
        h.exporter.expect_warm_up()
        h.add_spans(3)
        ready = threading.Timer(0.3, h.exporter.warm_up, kwargs={"on_ready": h.worker.wake})
        ready.start()
        self.addCleanup(ready.cancel)
        summary = h.coordinator.on_shutdown_event(epoch_ms_in(5.0))
        self.assertEqual((summary.sent.get("traces"), summary.shutdown_deadline), (3, 0))
        self.assertEqual(h.loss.snapshot(), {})

    def test_the_client_ready_while_a_hold_closes_the_gate_leaves_no_request_open(self):
        # The start-up thread's wake and the events thread's gate close race: whichever wins, no
        # request is open once before_next returns (the freeze), and none starts until the next INVOKE.
        rng = random.Random(5)
        for round_ in range(30):
            h = Harness(self, strategy="end", max_batch_records=2)
            h.sink.set_reply(Reply(delay=0.05))  # a request started in the hold is still open at its end
            h.exporter.expect_warm_up()
            rid = f"r{round_}"
            h.coordinator.on_invoke(rid, epoch_ms_in(10))
            h.add_spans(6, rid)  # full batches: exported as soon as the client is ready
            h.coordinator.on_runtime_done(rid)
            ready = threading.Timer(rng.uniform(0.0, 0.001), h.exporter.warm_up, kwargs={"on_ready": h.worker.wake})
            ready.start()
            h.coordinator.before_next()
            frozen_at = time.monotonic()
            ready.join(5.0)
            self.assertTrue(h.coordinator.last_hold.gate_closed, round_)
            self.assertEqual(h.gate.in_flight, 0, f"round {round_}: a request open at the freeze")
            # (The sink records a request's end after answering, from its own thread: it may lag.)
            self.assertTrue(h.sink.wait_for(lambda: not h.sink.open_requests(), 5.0))
            self.assertFalse(h.sink.wait_for(lambda: any(r.start > frozen_at for r in h.sink.requests), 0.05),
                             f"round {round_}: sent while frozen")
            h.coordinator.on_invoke(f"{rid}-next", epoch_ms_in(10))  # what was kept goes now
            self.assertTrue(h.sink.wait_for(lambda: {f"{rid}{i}" for i in range(6)} <= h.span_names(), 5.0), round_)
            h.coordinator.on_runtime_done(f"{rid}-next")
            h.coordinator.before_next()
            h.worker.stop(5.0)
            h.sink.stop()

    def test_long_function_is_waited_for_beyond_the_fallback_wait(self):
        # While runtimeDone arrives, the hold waits for it up to the invocation deadline:
        # the function runs meanwhile, and its data must go out before the freeze.
        h = Harness(self, strategy="end", runtime_done_wait_s=0.1)
        h.coordinator.on_invoke("long", epoch_ms_in(10))
        t = threading.Timer(0.4, lambda: (h.add_spans(2), h.coordinator.on_runtime_done("long")))
        t.start()
        self.addCleanup(t.cancel)
        h.coordinator.before_next()
        self.assertTrue(h.coordinator.last_hold.runtime_done)
        self.assertEqual(len(h.sink.spans()), 2)

    def test_missed_runtime_done_shortens_next_waits_until_one_is_seen(self):
        h = Harness(self, strategy="end", runtime_done_wait_s=0.2)
        with self.assertLogs("lambda_otel.flush", "INFO") as logs_:
            # First miss: waited to the deadline minus the margin (1.0 - 0.5 s), then falls back.
            for expected in (0.2, 0.1, 0.05, 0.05):
                h.coordinator.on_invoke("silent", epoch_ms_in(1.0))
                h.coordinator.before_next()
                self.assertFalse(h.coordinator.last_hold.runtime_done)
                self.assertAlmostEqual(h.coordinator.runtime_done_wait_s, expected)
                self.assertFalse(h.gate.is_open)
            # The missed runtimeDone shows up later: telemetry works, the function was long.
            h.coordinator.on_runtime_done("silent")
            h.coordinator.on_invoke("fast", epoch_ms_in(10))
            h.coordinator.on_runtime_done("fast")
            h.coordinator.before_next()
        self.assertTrue(h.coordinator.last_hold.runtime_done)
        self.assertAlmostEqual(h.coordinator.runtime_done_wait_s, 0.2, msg="restored")
        self.assertEqual(len(logs_.output), 2, "one line per state change")

    def test_timely_runtime_done_restores_trust(self):
        h = Harness(self, strategy="end", runtime_done_wait_s=0.1)
        h.coordinator.on_invoke("silent", epoch_ms_in(0.8))
        h.coordinator.before_next()
        self.assertFalse(h.coordinator.last_hold.runtime_done)
        h.coordinator.on_invoke("ok", epoch_ms_in(10))
        h.coordinator.on_runtime_done("ok")
        h.coordinator.before_next()
        # Trusted again: a long function is waited for once more.
        h.coordinator.on_invoke("long", epoch_ms_in(10))
        t = threading.Timer(0.3, lambda: h.coordinator.on_runtime_done("long"))
        t.start()
        self.addCleanup(t.cancel)
        h.coordinator.before_next()
        self.assertTrue(h.coordinator.last_hold.runtime_done)

    def test_periodic_holds_an_invocation_whose_predecessor_came_near_the_budget(self):
        h = Harness(self, strategy="periodic", interval_s=60.0, max_batch_records=100, queue_records=2000)
        # A predecessor that brought half of the budget (2000 records) is chatty.
        h.coordinator.on_invoke("quiet", epoch_ms_in(10))
        h.coordinator.before_next()
        self.assertFalse(h.coordinator.last_hold.held, "nothing known yet: periodic does not hold")
        h.coordinator.on_invoke("chatty", epoch_ms_in(10))
        h.gate.close()  # as after before_next: the function runs with the gate closed
        h.aggregator.add(L.LOGS, logs(1000), records=1000)
        h.coordinator.before_next()
        self.assertFalse(h.coordinator.last_hold.held)
        h.coordinator.on_invoke("next", epoch_ms_in(10))
        t = threading.Timer(0.2, lambda: (h.aggregator.add(L.LOGS, logs(300), records=300),
                                          h.coordinator.on_runtime_done("next")))
        t.start()
        self.addCleanup(t.cancel)
        h.coordinator.before_next()
        self.assertTrue(h.coordinator.last_hold.held, "the predecessor brought half the budget: hold")
        self.assertTrue(h.coordinator.last_hold.runtime_done)
        self.assertEqual(h.aggregator.pending_records(), 0, "drained while held")
        self.assertEqual(len(h.sink.log_records()), 1300)

    def test_dropped_telemetry_bounds_the_wait_for_runtime_done(self):
        # Lambda dropped events (platform.logsDropped): this invocation's runtimeDone may be
        # among them, so the hold may not wait for it until the invocation deadline (60 s here).
        h = Harness(self, strategy="end", runtime_done_wait_s=0.2)
        h.coordinator.on_invoke("lost-done", epoch_ms_in(60))
        t = threading.Timer(0.1, h.coordinator.on_telemetry_dropped)
        t.start()
        self.addCleanup(t.cancel)
        t0 = time.monotonic()
        with self.assertLogs("lambda_otel.flush", "INFO"):  # the runtimeDone miss is logged once
            h.coordinator.before_next()
        self.assertFalse(h.coordinator.last_hold.runtime_done)
        self.assertLess(time.monotonic() - t0, 30.0, "waited as if runtimeDone were still coming")

    def test_periodic_does_not_hold_but_waits_for_the_request_in_flight(self):
        h = Harness(self, strategy="periodic", interval_s=0.05)
        h.sink.set_reply(Reply(delay=0.3))
        h.add_spans(2)
        h.coordinator.on_invoke("req", epoch_ms_in(10))
        self.assertTrue(h.sink.wait_for(lambda: len(h.sink.open_requests()) > 0, 5.0))
        h.coordinator.before_next()
        answered = [r.status for r in h.sink.requests]
        self.assertFalse(h.coordinator.last_hold.held)
        self.assertTrue(h.coordinator.last_hold.gate_closed)
        self.assertTrue(answered and all(s == 200 for s in answered), answered)

    def test_near_deadline_flushes_at_invoke_within_the_deadline(self):
        h = Harness(self, strategy="end")
        h.add_spans(2)
        deadline_ms = epoch_ms_in(0.4)
        h.coordinator.on_invoke("short", deadline_ms)
        self.assertTrue(h.sink.wait_for(lambda: len(h.sink.spans()) == 2, 5.0))
        h.coordinator.before_next()
        self.assertLess(time.time() * 1000, deadline_ms, "no hold past the invocation deadline")

    def test_flush_due_at_invoke_runs_before_next_returns(self):
        # The events thread calls before_next right after on_invoke: the gate is open only in
        # between, so a due periodic flush must be waited for there or it never runs.
        h = Harness(self, strategy="periodic", interval_s=0.05)
        h.add_spans(3)
        h.coordinator.on_invoke("req", epoch_ms_in(10))
        h.coordinator.before_next()
        self.assertEqual(len(h.sink.spans()), 3)
        self.assertTrue(all(r.status == 200 for r in h.sink.requests))
        self.assertFalse(h.gate.is_open)
        # Not due (just flushed, interval 50 ms not over): no wait, no request.
        h.add_spans(1, "later")
        before = len(h.sink.requests)
        h.coordinator.on_invoke("req2", epoch_ms_in(10))
        h.coordinator.before_next()
        self.assertEqual(h.aggregator.pending_records(), 1)
        self.assertEqual(len(h.sink.requests), before)

    def test_continuous_flushes_pending_data_at_invoke(self):
        h = Harness(self, strategy="continuous", interval_s=60.0)
        h.coordinator.on_invoke("first", epoch_ms_in(10))  # the timer's first flush (nothing pending)
        h.coordinator.before_next()
        h.add_spans(2)
        h.coordinator.on_invoke("req", epoch_ms_in(10))
        h.coordinator.before_next()
        self.assertEqual(len(h.sink.spans()), 2)

    def test_failed_probe_backs_off(self):
        # Every probe is one more attempt of the same batch: under load the limit of attempts
        # (a separate rule, tested above) could drop it before the last assertion.
        patcher = mock.patch.object(flush_mod, "MAX_BATCH_ATTEMPTS", 1000)
        patcher.start()
        self.addCleanup(patcher.stop)
        h = Harness(self, strategy="end", flush_budget_s=0.2, breaker_failures=1, breaker_backoff_s=0.2)
        h.sink.set_reply(Reply(status=503))
        h.gate.open()
        h.add_spans(2)
        with self.assertLogs("lambda_otel.flush", "WARNING"):
            self.assertFalse(h.flush(0.2).success)
        first = h.worker.breaker.next_probe_at
        self.assertIsNotNone(first)
        # The worker probes by itself (gate open) once due; a failed probe must push the next one out.
        self.assertTrue(h.sink.wait_for(lambda: any(r.start >= first for r in h.sink.requests), 5.0))
        self.assertTrue(h.sink.wait_for(lambda: (h.worker.breaker.next_probe_at or first) > first, 5.0),
                        "a failed probe was not recorded: probing again at every chance")
        self.assertTrue(h.worker.breaker.is_open)
        # Kept, not dropped (between probes: during one, the batch is out of the queue).
        self.assertTrue(h.sink.wait_for(lambda: h.aggregator.pending_records() == 2, 5.0), h.loss.snapshot())
        self.assertEqual(h.loss.snapshot(), {})

    def test_probe_at_invoke_closes_the_breaker_when_the_backend_is_back(self):
        h = Harness(self, strategy="end", flush_budget_s=0.3, breaker_failures=1, breaker_backoff_s=0.1)
        h.sink.set_reply(Reply(status=503))
        h.gate.open()
        h.add_spans(2)
        with self.assertLogs("lambda_otel.flush", "WARNING"):
            h.flush(0.3)
        h.gate.close()
        self.assertTrue(h.worker.breaker.is_open)
        h.sink.reset_behaviour()
        threading.Event().wait(max(0.0, h.worker.breaker.next_probe_at - time.monotonic()))
        h.coordinator.on_invoke("r", epoch_ms_in(10))
        with self.assertLogs("lambda_otel.flush", "INFO"):
            h.coordinator.before_next()  # at once, as the events thread does
        self.assertFalse(h.worker.breaker.is_open)
        self.assertEqual(len(h.sink.spans()), 2)

    def test_dead_backend_bounded_hold_then_breaker_then_probe_and_recovery(self):
        h = Harness(self, strategy="end", flush_budget_s=0.3, breaker_failures=2, breaker_backoff_s=0.2)
        h.sink.set_reply(Reply(hang=True))
        for i in range(2):
            h.coordinator.on_invoke(f"r{i}", epoch_ms_in(10))
            h.add_spans(2, f"r{i}-")
            h.coordinator.on_runtime_done(f"r{i}")
            t0 = time.monotonic()
            with self.assertLogs("lambda_otel.flush", "WARNING") if i == 1 else _nothing():
                h.coordinator.before_next()
            self.assertLess(time.monotonic() - t0, 0.3 + 1.0, "the hold is bounded by the flush budget")
            self.assertTrue(h.coordinator.last_hold.held)
            self.assertFalse(h.coordinator.last_hold.flushed.success)
        self.assertTrue(h.worker.breaker.is_open)
        # Breaker open: no hold, no request.
        before = len(h.sink.requests)
        h.coordinator.on_invoke("r2", epoch_ms_in(10))
        h.add_spans(2, "r2-")
        h.coordinator.on_runtime_done("r2")
        h.coordinator.before_next()
        self.assertFalse(h.coordinator.last_hold.held)
        self.assertEqual(len(h.sink.requests), before)
        self.assertEqual(h.aggregator.pending_records(), 6, "kept buffering")
        # The backend comes back; a probe after the backoff (during an invocation) closes the breaker.
        h.sink.reset_behaviour()
        h.coordinator.on_invoke("r3", epoch_ms_in(10))
        with self.assertLogs("lambda_otel.flush", "INFO"):
            self.assertTrue(h.sink.wait_for(lambda: not h.worker.breaker.is_open, 5.0))
        h.coordinator.on_runtime_done("r3")
        h.coordinator.before_next()
        self.assertTrue(h.coordinator.last_hold.held)
        names = h.span_names()
        self.assertEqual(names, {f"r{i}-{j}" for i in range(3) for j in range(2)})
        self.assertEqual(h.loss.snapshot(), {})

    def test_shutdown_with_slow_backend_ends_before_deadline_and_counts_the_rest(self):
        h = Harness(self, strategy="end", shutdown_margin_s=0.2)
        h.sink.set_reply(Reply(delay=2.0))
        h.add_spans(4)
        h.aggregator.add(L.LOGS, logs(3), records=3)
        deadline_ms = epoch_ms_in(1.0)
        summary = h.coordinator.on_shutdown_event(deadline_ms)
        self.assertLess(time.time() * 1000, deadline_ms)
        self.assertTrue(summary.completed)
        self.assertEqual(summary.sent, {})
        # (The last metrics request, with these counts, cannot be sent either: it only describes
        # the loss, which this summary logs; it is not counted as one.)
        self.assertEqual(h.loss.snapshot(), {(L.TRACES, L.SHUTDOWN_DEADLINE): 4, (L.LOGS, L.SHUTDOWN_DEADLINE): 3})
        self.assertEqual(summary.shutdown_deadline, 7)
        self.assertEqual(summary.dropped, {L.SHUTDOWN_DEADLINE: 7})
        self.assertFalse(h.worker.is_alive())

    def test_shutdown_sends_everything_and_honours_short_retry_after(self):
        h = Harness(self, strategy="periodic")
        h.sink.script([Reply(status=503, retry_after="0.2")], path="/v1/traces")
        h.add_spans(3)
        h.metrics.add("aws.lambda.shutdowns", 1, {"aws.lambda.shutdown.reason": "spindown"})
        summary = h.coordinator.on_shutdown_event(epoch_ms_in(2.0))
        self.assertEqual(summary.sent, {"traces": 3, "metrics": 1})
        self.assertEqual(summary.shutdown_deadline, 0)
        traces = h.sink.requests_to("/v1/traces")
        self.assertEqual([r.status for r in traces], [503, 200])
        self.assertGreaterEqual(traces[1].start - traces[0].end, 0.15)

    def test_shutdown_retry_after_past_the_deadline_counts_the_rest_without_waiting(self):
        h = Harness(self, strategy="end")
        h.sink.set_reply(Reply(status=503, retry_after="30"))
        h.add_spans(2)
        deadline_ms = epoch_ms_in(1.5)
        summary = h.coordinator.on_shutdown_event(deadline_ms)
        self.assertLess(time.time() * 1000, deadline_ms)
        self.assertEqual(len(h.sink.requests_to("/v1/traces")), 1, "no retry inside the Retry-After")
        # The backend's refusal, not our deadline, lost them: counted as export_failed.
        self.assertEqual(h.loss.snapshot(), {(L.TRACES, L.EXPORT_FAILED): 2})
        self.assertEqual(summary.shutdown_deadline, 2)

    def test_dead_backend_at_shutdown_counts_export_failed_within_the_deadline(self):
        h = Harness(self, strategy="end", shutdown_margin_s=0.2)
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))
        port = dead.getsockname()[1]
        dead.close()  # nothing listens there: connection refused
        h.exporter.close()
        h.worker.exporter = h.exporter = OtlpExporter(ExporterConfig(
            traces_endpoint=f"http://127.0.0.1:{port}/v1/traces", compression="none"), h.loss)
        self.addCleanup(h.exporter.close)
        h.exporter.warm_up()
        h.add_spans(3)
        deadline_ms = epoch_ms_in(1.0)
        summary = h.coordinator.on_shutdown_event(deadline_ms)
        self.assertLess(time.time() * 1000, deadline_ms)
        loss = h.loss.snapshot()
        self.assertEqual(loss.pop((L.TRACES, L.EXPORT_FAILED)), 3, "the real cause, not the deadline")
        self.assertEqual(loss, {})
        self.assertEqual(summary.shutdown_deadline, 3)

    def test_the_last_metrics_request_carries_the_shutdown_losses(self):
        # The backend refuses traces for good but takes metrics: what the final flush counted
        # must reach it in lambda_otel.dropped, so the backend's sum equals the shutdown line.
        h = Harness(self, strategy="end")
        h.sink.set_reply(Reply(status=503), path="/v1/traces")
        h.add_spans(4)
        summary = h.coordinator.on_shutdown_event(epoch_ms_in(1.5))
        self.assertEqual(summary.shutdown_deadline, 4)
        dropped = [p for p in h.sink.metrics() if p.name == "lambda_otel.dropped"]
        self.assertEqual(sum(p.point.as_int for p in dropped), 4, "the shutdown's losses never reached the backend")

    def test_headers_not_ready_is_not_a_failure(self):
        h = Harness(self, strategy="end", breaker_failures=1)
        h.gate.open()
        h.add_spans(2)
        outcome = exporter_mod.ExportOutcome(exporter_mod.NOT_READY, error="headers not resolved")
        with mock.patch.object(h.exporter, "export", return_value=outcome):
            result = h.flush()
        self.assertIsNone(result.success, "nothing was sent: no evidence either way")
        self.assertFalse(h.worker.breaker.is_open)
        self.assertEqual(h.manager.consecutive_failures, 0)
        batch = h.aggregator.take_batch(L.TRACES, 1 << 20, 100)
        self.assertEqual((batch.records, batch.attempts), (2, 0), "kept, and not counted as an attempt")

    def test_metrics_ride_along_with_every_flush(self):
        h = Harness(self, strategy="end")
        h.gate.open()
        for i in range(3):
            h.metrics.add("faas.invocations", 1)
            h.add_spans(1, f"f{i}-")
            self.assertEqual(h.flush().sent, {"traces": 1, "metrics": 1})
        values = [p.point.as_int for p in h.sink.metrics() if p.name == "faas.invocations"]
        self.assertEqual(values, [1, 1, 1], "delta temporality: one point per flush")


class LateLaneTest(unittest.TestCase):
    """A lane still sending past its flush's deadline (a starved CPU): its signal is left to it,
    and the final flush drains that signal after it, in the time it still has."""

    def worker_sending_at_once(self, exporter, max_batch_records: int):
        """A worker (not started: the test calls its flushes) whose signals go on lanes, gate open."""
        loss = L.LossCounter()
        config = replace(FlushConfig(), strategy="end", max_batch_records=max_batch_records, flush_budget_s=5.0)
        aggregator = Aggregator(16 << 20, 100_000, loss)
        gate = ExportGate()
        gate.open()
        worker = ExportWorker(aggregator, exporter, None, FlushManager(config), gate, loss, config)
        as_after_a_distant_backend(worker)
        self.addCleanup(worker.stop, 5.0)
        return worker, aggregator, loss

    def test_the_final_flush_sends_what_a_late_lane_left_in_the_queue(self):
        release = threading.Event()
        self.addCleanup(release.set)
        sent = []

        class Exporter:
            def ready(self):
                return True

            def export(self, signal, items, deadline):
                if signal == L.LOGS and not any(s == L.LOGS for s, _ in sent):
                    release.wait(5)  # the lane's request overruns its flush
                sent.append((signal, list(items)))
                return exporter_mod.ExportOutcome(exporter_mod.SUCCESS, round_trip_s=1.0)

        worker, aggregator, loss = self.worker_sending_at_once(Exporter(), max_batch_records=1)
        aggregator.add(L.TRACES, "t", records=1, nbytes=10)
        aggregator.add(L.LOGS, "l1", records=1, nbytes=10)
        aggregator.add(L.LOGS, "l2", records=1, nbytes=10)
        with self.assertLogs("lambda_otel.flush", "WARNING"):
            first = worker._flush(time.monotonic() + 0.2)
        self.assertTrue(first.deferred)
        self.assertEqual(worker._busy_signals(), {L.LOGS})
        threading.Timer(0.3, release.set).start()
        final = worker._final_flush(time.monotonic() + 3.0)
        self.assertEqual(final.shutdown_dropped, 0)
        self.assertEqual(loss.total(), 0)
        self.assertEqual(sorted(item for s, items in sent if s == L.LOGS for item in items), ["l1", "l2"])
        self.assertEqual(worker._busy_signals(), set())

    def test_a_lane_past_the_shutdown_deadline_has_its_batch_counted_once(self):
        release = threading.Event()
        self.addCleanup(release.set)
        answered = threading.Event()
        calls = []

        class Exporter:
            def ready(self):
                return True

            def export(self, signal, items, deadline):
                calls.append((signal, list(items)))
                if signal == L.LOGS:
                    release.wait(5)  # the lane's request outlasts even the final flush (a starved CPU)
                    answered.set()
                    # The answer comes after the final flush counted the batch: it must not count it again.
                    return exporter_mod.ExportOutcome(exporter_mod.REJECTED, status=400)
                return exporter_mod.ExportOutcome(exporter_mod.SUCCESS, round_trip_s=1.0)

        worker, aggregator, loss = self.worker_sending_at_once(Exporter(), max_batch_records=2)
        aggregator.add(L.TRACES, "t", records=1, nbytes=10)
        for i in range(5):  # the lane's batch carries 2; 3 stay queued
            aggregator.add(L.LOGS, f"l{i}", records=1, nbytes=10)
        with self.assertLogs("lambda_otel.flush", "WARNING"):
            worker._flush(time.monotonic() + 0.2)
        self.assertEqual(worker._busy_signals(), {L.LOGS})
        with self.assertLogs("lambda_otel.flush", "WARNING") as logs:
            final = worker._final_flush(time.monotonic() + 0.3)
        self.assertIn("the 2 records it carried are counted as shutdown_deadline", "\n".join(logs.output))
        self.assertEqual(final.shutdown_dropped, 5, "the 3 queued and the 2 of the late request")
        self.assertEqual(loss.snapshot(), {(L.LOGS, L.SHUTDOWN_DEADLINE): 5})
        release.set()
        self.assertTrue(answered.wait(5))
        self.assertTrue(wait_until(lambda: not worker._busy_signals(), 5))
        self.assertEqual(loss.snapshot(), {(L.LOGS, L.SHUTDOWN_DEADLINE): 5}, "counted once, not again as rejected")
        self.assertEqual([s for s, _ in calls].count(L.LOGS), 1, "the abandoned lane took no other batch")

    def test_a_flush_with_no_deadline_waits_for_its_lanes_in_bounded_steps(self):
        h = Harness(self, strategy="end")
        h.gate.open()
        as_after_a_distant_backend(h.worker)
        h.add_spans(1)
        h.aggregator.add(L.LOGS, logs(1), records=1)
        result = h.worker._flush(float("inf"))  # on the test's thread; the worker thread idles
        self.assertTrue(result.success)
        self.assertEqual(result.sent, {"traces": 1, "logs": 1})


class ManagedInstancesTest(unittest.TestCase):
    """Lambda Managed Instances: no freeze, no INVOKE, overlapping invocations."""

    def harness(self, **flush) -> Harness:
        h = Harness(self, **flush)
        h.worker.stop(5.0)  # replace the freeze-safe parts with the Managed Instances ones
        h.coordinator = build_flush(h.config, h.aggregator, h.exporter, h.metrics, h.loss, managed_instances=True)
        h.worker, h.gate, h.manager = h.coordinator.worker, h.coordinator.gate, h.coordinator.manager
        self.assertIsInstance(h.coordinator, ManagedInstancesCoordinator)
        h.worker.start()
        self.addCleanup(h.worker.stop, 5.0)
        h.coordinator.start()
        return h

    def test_exports_in_the_background_with_no_invoke(self):
        h = self.harness(strategy="end", interval_s=0.1)  # end means nothing here: the timer drives
        self.assertTrue(h.gate.is_open, "open for good from start")
        for i in range(3):
            h.add_spans(2, f"t{i}-")
            self.assertTrue(h.sink.wait_for(lambda: f"t{i}-1" in h.span_names(), 5.0), f"round {i}")
        self.assertTrue(h.gate.is_open)

    def test_a_dead_backend_never_spends_a_budget_for_good(self):
        # There is no invocation to renew a per-invocation budget: failures past flush_budget_s
        # must not stop exports for the environment's life; the breaker alone handles the outage.
        h = self.harness(interval_s=0.1, flush_budget_s=0.1, breaker_failures=1000)
        h.sink.set_reply(Reply(status=503))
        h.add_spans(2)
        self.assertTrue(h.sink.wait_for(lambda: len(h.sink.requests) >= 3, 10.0))
        h.sink.reset_behaviour()
        self.assertTrue(h.sink.wait_for(lambda: len(h.sink.spans()) == 2, 10.0))

    def test_shutdown_flushes_everything(self):
        h = self.harness(interval_s=60.0)
        h.add_spans(3, "last")
        deadline_ms = epoch_ms_in(2.0)
        summary = h.coordinator.on_shutdown_event(deadline_ms)
        self.assertLess(time.time() * 1000, deadline_ms)
        self.assertEqual((summary.sent.get("traces"), summary.shutdown_deadline), (3, 0))


class ManagedInstancesBudgetTest(unittest.TestCase):
    def test_the_buffer_is_sized_by_the_instance_memory_once_init_start_tells_it(self):
        from lambda_otel.aggregator import budget_from_memory
        from lambda_otel.config import load_config
        from lambda_otel.pipeline import Pipeline

        env = {"AWS_LAMBDA_INITIALIZATION_TYPE": "lambda-managed-instances", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128"}
        pipeline = Pipeline(load_config(env), {"service.name": "lmi"})
        self.assertIsInstance(pipeline.coordinator, ManagedInstancesCoordinator)
        self.assertEqual((pipeline.aggregator.max_bytes, pipeline.aggregator.max_records), budget_from_memory(128))
        pipeline.process_batch([{"time": "2026-12-01T00:00:00.000Z", "type": "platform.initStart", "record": {
            "initializationType": "lambda-managed-instances", "phase": "init", "runtimeVersion": "python:3.13",
            "instanceId": "i-0abc", "instanceMaxMemory": 4 * 1024 ** 3}}])
        self.assertEqual((pipeline.aggregator.max_bytes, pipeline.aggregator.max_records), budget_from_memory(4096),
                         "the per-request memory setting, not the instance's")
        # Elsewhere the function's memory setting stays the budget.
        on_demand = Pipeline(load_config({"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128"}), {"service.name": "od"})
        self.assertNotIsInstance(on_demand.coordinator, ManagedInstancesCoordinator)
        self.assertEqual(on_demand.aggregator.max_records, budget_from_memory(128)[1])


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    unittest.main()
