"""Aggregator: shared budget, drop-oldest accounting, backpressure, batching, requeue, threads."""

import threading
import unittest

from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from lambda_otel.aggregator import MiB, Aggregator, Batch, budget_from_memory
from lambda_otel.loss import LOGS, METRICS, QUEUE_FULL, SHUTDOWN_DEADLINE, TRACES, LossCounter


def spans(name: str, n: int = 1) -> trace_pb2.ResourceSpans:
    rs = trace_pb2.ResourceSpans()
    rs.resource.attributes.add(key="service.name").value.string_value = "svc"
    ss = rs.scope_spans.add()
    for i in range(n):
        span = ss.spans.add()
        span.name = f"{name}-{i}"
        span.trace_id = bytes(16)
        span.span_id = bytes(8)
    return rs


def logs(body: str, n: int = 1) -> logs_pb2.ResourceLogs:
    rl = logs_pb2.ResourceLogs()
    sl = rl.scope_logs.add()
    for i in range(n):
        sl.log_records.add().body.string_value = f"{body}-{i}"
    return rl


def names(batch: Batch) -> list:
    return [s.name for rs in batch.items for ss in rs.scope_spans for s in ss.spans]


class BudgetRuleTest(unittest.TestCase):
    def test_rule(self):
        self.assertEqual(budget_from_memory(128), (int(128 * MiB * 0.05), 13107))
        self.assertEqual(budget_from_memory(64), (4 * MiB, 10_000))  # floors
        self.assertEqual(budget_from_memory(10240), (64 * MiB, 131_072))  # caps
        self.assertEqual(budget_from_memory(0), budget_from_memory(128))
        small, large = budget_from_memory(256), budget_from_memory(1024)
        self.assertLess(small[0], large[0])
        self.assertLess(small[1], large[1])


class AggregatorTest(unittest.TestCase):
    def setUp(self):
        self.loss = LossCounter()

    def test_records_budget_drops_oldest_across_signals(self):
        agg = Aggregator(max_bytes=10 * MiB, max_records=5, loss=self.loss)
        self.assertTrue(agg.add(TRACES, spans("t0", 2), 2))
        self.assertTrue(agg.add(LOGS, logs("l0", 2), 2))
        self.assertTrue(agg.add(TRACES, spans("t1", 1), 1))
        self.assertEqual(agg.pending_records(), 5)
        # 2 more records: the oldest item overall (traces t0, 2 records) must go.
        self.assertTrue(agg.add(LOGS, logs("l1", 2), 2))
        self.assertEqual(self.loss.snapshot(), {(TRACES, QUEUE_FULL): 2})
        self.assertEqual(agg.pending_records(TRACES), 1)
        self.assertEqual(agg.pending_records(LOGS), 4)
        # next: l0 is the oldest now
        self.assertTrue(agg.add(METRICS, metrics_pb2.ResourceMetrics(), 1))
        self.assertEqual(self.loss.snapshot(), {(TRACES, QUEUE_FULL): 2, (LOGS, QUEUE_FULL): 2})
        self.assertEqual(agg.pending_records(), 4)

    def test_bytes_budget_and_item_bigger_than_budget(self):
        item = spans("x", 1)
        size = item.ByteSize()
        agg = Aggregator(max_bytes=size * 3, max_records=1000, loss=self.loss)
        for _ in range(3):
            self.assertTrue(agg.add(TRACES, spans("x", 1), 1))
        self.assertEqual(agg.pending_bytes(), size * 3)
        self.assertTrue(agg.add(TRACES, spans("x", 1), 1))
        self.assertEqual(agg.pending_bytes(), size * 3)
        self.assertEqual(self.loss.total(QUEUE_FULL), 1)
        # explicit nbytes larger than the whole budget: refused and counted, nothing evicted
        self.assertFalse(agg.add(LOGS, logs("big", 7), 7, nbytes=size * 4))
        self.assertEqual(self.loss.snapshot()[(LOGS, QUEUE_FULL)], 7)
        self.assertEqual(agg.pending_records(), 3)

    def test_evict_false_is_backpressure_without_loss(self):
        agg = Aggregator(max_bytes=10 * MiB, max_records=4, loss=self.loss)
        self.assertTrue(agg.add(TRACES, spans("a", 3), 3, evict=False))
        self.assertFalse(agg.has_room(0, 2))
        self.assertTrue(agg.has_room(0, 1))
        self.assertFalse(agg.add(TRACES, spans("b", 2), 2, evict=False))
        self.assertEqual(self.loss.snapshot(), {})
        self.assertEqual(agg.pending_records(), 3)
        # all-or-nothing for a multi-item request
        ok = agg.add_many(LOGS, [(logs("x"), 1, None), (logs("y"), 1, None)], evict=False)
        self.assertFalse(ok)
        self.assertEqual(agg.pending_records(LOGS), 0)
        self.assertTrue(agg.add_many(LOGS, [(logs("x"), 1, None)], evict=False))
        self.assertEqual(agg.pending_records(), 4)

    def test_take_batch_limits_and_order(self):
        agg = Aggregator(max_bytes=10 * MiB, max_records=1000, loss=self.loss)
        for i in range(5):
            agg.add(TRACES, spans(f"s{i}", 2), 2)
        batch = agg.take_batch(TRACES, max_bytes=10 * MiB, max_records=5)
        self.assertEqual(batch.records, 4)
        self.assertEqual(names(batch), ["s0-0", "s0-1", "s1-0", "s1-1"])
        self.assertEqual(batch.nbytes, sum(i.ByteSize() for i in batch.items))
        # at least one item even when it alone exceeds the limits
        batch2 = agg.take_batch(TRACES, max_bytes=1, max_records=1)
        self.assertEqual(names(batch2), ["s2-0", "s2-1"])
        self.assertEqual(agg.pending_records(), 4)
        self.assertIsNone(agg.take_batch(LOGS, 100, 100))

    def test_requeue_keeps_order_and_counts_overflow(self):
        agg = Aggregator(max_bytes=10 * MiB, max_records=6, loss=self.loss)
        for i in range(3):
            agg.add(TRACES, spans(f"s{i}", 2), 2)
        batch = agg.take_batch(TRACES, 10 * MiB, 4)
        self.assertEqual(agg.pending_records(), 2)
        agg.requeue(batch)
        again = agg.take_batch(TRACES, 10 * MiB, 100)
        self.assertEqual(names(again), ["s0-0", "s0-1", "s1-0", "s1-1", "s2-0", "s2-1"])
        self.assertEqual(self.loss.snapshot(), {})
        # while the batch is out, new data fills the budget; requeue drops the oldest (the batch's)
        for i in range(3, 6):
            agg.add(LOGS, logs(f"l{i}", 2), 2)
        self.assertEqual(agg.pending_records(), 6)
        agg.requeue(again)
        self.assertEqual(self.loss.snapshot(), {(TRACES, QUEUE_FULL): 6})
        self.assertEqual(agg.pending_records(), 6)
        self.assertEqual(agg.pending_records(TRACES), 0)

    def test_attempts_survive_requeue(self):
        agg = Aggregator(max_bytes=10 * MiB, max_records=100, loss=self.loss)
        for i in range(3):
            agg.add(TRACES, spans(f"s{i}", 1), 1)
        batch = agg.take_batch(TRACES, 10 * MiB, 2)
        self.assertEqual(batch.attempts, 0)
        batch.attempts = 3
        agg.requeue(batch)
        # Re-taken (even together with an untried item) it still carries its attempts.
        again = agg.take_batch(TRACES, 10 * MiB, 100)
        self.assertEqual(names(again), ["s0-0", "s1-0", "s2-0"])
        self.assertEqual(again.attempts, 3)

    def test_requeue_partial_overflow_drops_front_first(self):
        agg = Aggregator(max_bytes=10 * MiB, max_records=4, loss=self.loss)
        agg.add(TRACES, spans("a", 2), 2)
        agg.add(TRACES, spans("b", 2), 2)
        batch = agg.take_batch(TRACES, 10 * MiB, 100)
        agg.add(LOGS, logs("new", 2), 2)
        agg.requeue(batch)
        self.assertEqual(self.loss.snapshot(), {(TRACES, QUEUE_FULL): 2})
        self.assertEqual(names(agg.take_batch(TRACES, 10 * MiB, 100)), ["b-0", "b-1"])

    def test_requeue_hand_made_batch(self):
        agg = Aggregator(max_bytes=10 * MiB, max_records=100, loss=self.loss)
        agg.add(TRACES, spans("queued"), 1)
        agg.requeue(Batch(TRACES, [spans("retry", 2)], 2, 0))
        self.assertEqual(agg.pending_records(), 3)
        self.assertEqual(names(agg.take_batch(TRACES, 10 * MiB, 100)), ["retry-0", "retry-1", "queued-0"])

    def test_on_data_is_called_after_each_add_outside_the_lock(self):
        agg = Aggregator(10 * MiB, 100, self.loss)
        seen = []
        # The callback may use the aggregator (the lock is released): a deadlock would hang here.
        agg.set_on_data(lambda: seen.append(agg.pending_records()))
        agg.add(LOGS, logs("x", 3), 3)
        agg.add_many(TRACES, [(spans("a"), 1, None), (spans("b"), 1, None)])
        self.assertEqual(seen, [3, 5], "once per add, after the data is queued")
        self.assertFalse(agg.add(TRACES, spans("big", 200), 200))  # never fits: nothing queued, no call
        self.assertEqual(len(seen), 2)
        agg.set_on_data(None)
        agg.add(LOGS, logs("y"), 1)
        self.assertEqual(len(seen), 2)
        agg.take_batch(TRACES, MiB, 100)

    def test_telemetry_waits_for_room_while_the_queue_drains_instead_of_evicting(self):
        agg = Aggregator(10 * MiB, 10, self.loss)
        agg.add(LOGS, logs("old", 10), 10)
        # No one drains the queue (no admission wait set): the oldest make room at once.
        self.assertTrue(agg.add_many(LOGS, [(logs("a", 2), 2, None)], wait_for_room=True))
        self.assertEqual(self.loss.snapshot(), {(LOGS, QUEUE_FULL): 10})
        # Draining (a hold): the producer waits until the exporter took a batch, nothing is lost.
        agg.add(LOGS, logs("b", 8), 8)
        agg.set_admission_wait(10.0)
        consumer = threading.Timer(0.1, lambda: agg.take_batch(LOGS, MiB, 100))
        consumer.start()
        self.addCleanup(consumer.cancel)
        self.assertTrue(agg.add_many(LOGS, [(logs("c", 3), 3, None)], wait_for_room=True))
        self.assertEqual(self.loss.snapshot(), {(LOGS, QUEUE_FULL): 10}, "nothing more evicted")
        bodies = [lr.body.string_value for rl in agg.take_batch(LOGS, MiB, 100).items
                  for sl in rl.scope_logs for lr in sl.log_records]
        self.assertEqual(bodies, ["c-0", "c-1", "c-2"])
        # The receiver's adds (its caller is the function) never wait.
        agg.add(LOGS, logs("d", 10), 10)
        agg.add(LOGS, logs("e", 1), 1)
        self.assertEqual(self.loss.total(QUEUE_FULL), 20, "the whole oldest item made room, at once")

    def test_on_lost_hears_of_every_dropped_item_outside_the_lock(self):
        agg = Aggregator(10 * MiB, 4, self.loss)
        heard = []
        # The callback may use the aggregator (the lock is released): a deadlock would hang here.
        agg.set_on_lost(lambda signal, items: heard.append((signal, len(items), agg.pending_records())))
        agg.add(METRICS, metrics_pb2.ResourceMetrics(), 2)
        agg.add(LOGS, logs("a", 2), 2)
        self.assertEqual(heard, [])
        agg.add(LOGS, logs("b", 2), 2)  # the metrics item is the oldest: evicted
        self.assertEqual(heard, [(METRICS, 1, 4)])
        self.assertEqual(agg.discard_all(SHUTDOWN_DEADLINE), 4)
        self.assertEqual(heard[1:], [(LOGS, 2, 0)])
        self.assertEqual(self.loss.snapshot(), {(METRICS, QUEUE_FULL): 2, (LOGS, SHUTDOWN_DEADLINE): 4})

    def test_discard_all(self):
        agg = Aggregator(10 * MiB, 100, self.loss)
        agg.add(LOGS, logs("x", 3), 3)
        self.assertEqual(agg.discard_all(SHUTDOWN_DEADLINE), 3)
        self.assertEqual(self.loss.snapshot(), {(LOGS, SHUTDOWN_DEADLINE): 3})
        self.assertEqual((agg.pending_records(), agg.pending_bytes()), (0, 0))

    def test_thread_safety_smoke(self):
        """Producers and a consumer at once: every record is taken, refused or counted as lost."""
        agg = Aggregator(max_bytes=10 * MiB, max_records=200, loss=self.loss)
        producers, per_producer = 6, 300
        taken, refused = [], []
        requeues = [0]
        done = threading.Event()
        data = threading.Event()
        agg.set_on_data(data.set)

        def produce(k):
            mine = 0
            for i in range(per_producer):
                signal = (TRACES, LOGS)[i % 2]
                item = spans(f"p{k}", 1) if signal == TRACES else logs(f"p{k}", 1)
                evict = k % 2 == 0
                if not agg.add(signal, item, 1, evict=evict):
                    self.assertFalse(evict)
                    mine += 1
            refused.append(mine)

        def consume():
            for _ in range(100_000):
                if done.is_set() and not agg.pending_records():
                    return
                for signal in (TRACES, LOGS):
                    batch = agg.take_batch(signal, MiB, 50)
                    if batch and requeues[0] < 50 and batch.records % 3 == 0:
                        requeues[0] += 1
                        agg.requeue(batch)
                    elif batch:
                        taken.append(batch.records)
                data.wait(0.01)
                data.clear()

        threads = [threading.Thread(target=produce, args=(k,)) for k in range(producers)]
        consumer = threading.Thread(target=consume)
        consumer.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        done.set()
        consumer.join(30)
        self.assertFalse(consumer.is_alive())
        self.assertEqual(len(refused), producers)
        self.assertEqual(sum(taken) + sum(refused) + self.loss.total(QUEUE_FULL), producers * per_producer)
        self.assertEqual((agg.pending_records(), agg.pending_bytes()), (0, 0))

if __name__ == "__main__":
    unittest.main()
