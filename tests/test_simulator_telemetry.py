"""Freeze and Telemetry API delivery as Lambda does them: frozen between invocations, nothing delivered
meanwhile; a batch leaves at maxItems, maxBytes or timeoutMs after its first event; a refused POST is
retried, and what overflows the buffer is reported in platform.logsDropped."""

import unittest

from tests.fixtures.sim.support import SimTestCase, proc_state


def inside(instant_mono, freezes):
    return any(f.frozen_at.mono < instant_mono < (f.thawed_at.mono if f.thawed_at else float("inf"))
               for f in freezes)


class FreezeBetweenInvokes(SimTestCase):
    def test_frozen_between_invokes_and_nothing_delivered_while_frozen(self):
        """Check 9: processes in state T between invokes, no POST while frozen, report N after the thaw."""
        sim = self.make_sim([("ext-a", ["--wait-runtime-done", "--on-shutdown", "sleep:0.3"])],
                            handler="sim_handlers.logs")
        sim.start(timeout=20)
        pids = [sim.runtime_pid, *sim.extension_pids.values()]
        self.assertEqual([proc_state(p) for p in pids], ["T"] * len(pids))  # frozen after init
        results = []
        for i in range(3):
            results.append(sim.invoke({"lines": 2}))
            self.assertTrue(results[-1].frozen_after)
            self.assertTrue(sim.is_frozen)
            self.assertEqual([proc_state(p) for p in pids], ["T"] * len(pids))
        down = sim.shutdown()
        self.assertEqual(len(sim.freezes), 4)  # after init + after each invoke
        for rec in sim.freezes:
            self.assertIsNotNone(rec.thawed_at)
            self.assertLess(rec.frozen_at.mono, rec.thawed_at.mono)
            self.assertLess(rec.frozen_at.wall, rec.thawed_at.wall + 0.001)
        self.assertTrue(sim.batches)
        for batch in sim.batches:
            self.assertFalse(inside(batch.sent_at.mono, sim.freezes), batch)
        for row in self.records("ext-a", "batch"):  # what the listener saw, by its own clock
            self.assertFalse(inside(row["mono"], sim.freezes))
        # report N reaches the extension only after the thaw that starts invoke N+1 (or shutdown)
        starts = [r.started_at.mono for r in results[1:]] + [down.started_at.mono]
        for res, thaw_by in zip(results, starts):
            arrived = [row["mono"] for row in self.records("ext-a", "batch")
                       if any(e["type"] == "platform.report" and e["record"]["requestId"] == res.request_id
                              for e in row["events"])]
            self.assertTrue(arrived, res.request_id)
            self.assertGreaterEqual(min(arrived), thaw_by)
            # runtimeDone N arrived before the extension's /next (the standard flush pattern works)
            done = [row["mono"] for row in self.records("ext-a", "batch")
                    if any(e["type"] == "platform.runtimeDone" and e["record"]["requestId"] == res.request_id
                           for e in row["events"])]
            self.assertLessEqual(min(done), res.extension_next_at["ext-a"].mono)

    def test_freeze_can_be_disabled(self):
        sim = self.make_sim([("ext-a", [])], freeze=False)
        sim.start(timeout=20)
        sim.invoke({})
        self.assertEqual(sim.freezes, [])
        self.assertNotEqual(proc_state(sim.runtime_pid), "T")
        self.assertNotEqual(proc_state(sim.extension_pids["ext-a"]), "T")


class Batching(SimTestCase):
    def test_max_items_and_subscribed_categories(self):
        """Check 10: a POST as soon as maxItems are buffered; only subscribed categories; {time,type,record}."""
        sim = self.make_sim([("ext-a", ["--subscribe", "platform,function", "--max-items", "1000",
                                        "--timeout-ms", "30000", "--print-lines", "3",
                                        "--on-shutdown", "sleep:0.3"])],
                            handler="sim_handlers.logs")
        sim.start(timeout=20)
        sim.invoke({"lines": 2500, "sleep": 0.5})  # the sender gets the CPU while the function still runs
        down = sim.shutdown()
        mine = [b for b in sim.batches if b.subscriber == "ext-a"]
        for batch in mine:
            self.assertLessEqual(len(batch.events), 1000)
            for event in batch.events:
                self.assertEqual(set(event), {"time", "type", "record"})
                self.assertIn(event["type"].split(".")[0], ("platform", "function"))
        # every batch but the final shutdown flush left on count (the 30 s timer never fired) ...
        self.assertEqual([len(b.events) for b in mine[:-1]], [1000] * (len(mine) - 1))
        self.assertGreaterEqual(len(mine), 3)
        # ... and at least one of them during the invocation, not only at the shutdown flush
        self.assertTrue([b for b in mine if len(b.events) == 1000 and b.sent_at.mono < down.started_at.mono])
        self.assertTrue(sim.telemetry_events("extension"))  # extension lines exist but were not subscribed
        delivered = [e for b in mine if b.ok for e in b.events]
        lines = [e["record"] for e in delivered if e["type"] == "function" and isinstance(e["record"], str)]
        self.assertEqual([line for line in lines if line.startswith("plain line")],
                         [f"plain line {i}" for i in range(2500)])  # every line once, in order

    def test_max_bytes(self):
        """Check 10: a POST as soon as maxBytes are buffered, each body within 2*maxBytes + metadata."""
        sim = self.make_sim([("ext-a", ["--subscribe", "function", "--max-items", "10000", "--max-bytes", "262144",
                                        "--timeout-ms", "30000", "--on-shutdown", "sleep:0.3"])],
                            handler="sim_handlers.bulk")
        sim.start(timeout=20)
        sim.invoke({"lines": 600, "size": 2000})  # ~1.2 MB of function records
        down = sim.shutdown()
        mine = [b for b in sim.batches if b.subscriber == "ext-a"]
        self.assertGreaterEqual(len(mine), 4)
        for batch in mine:
            self.assertLess(len(batch.events), 10000)
            self.assertLessEqual(batch.nbytes, 2 * 262144 + 4096)
        for batch in mine[:-1]:  # all but the shutdown flush left on size (the 30 s timer never fired)
            self.assertGreaterEqual(batch.nbytes, 262144)
        self.assertLess(mine[0].sent_at.mono, down.started_at.mono)  # during the invocation
        lines = [e["record"] for b in mine if b.ok for e in b.events if e["type"] == "function"]
        self.assertEqual([line[:6] for line in lines if not line.startswith("START")],
                         [f"{i:06d}" for i in range(600)])

    def test_timeout_ms_timer_starts_with_first_event(self):
        """Check 10: below maxItems/maxBytes a batch leaves timeoutMs after its first event (not before)."""
        sim = self.make_sim([("ext-a", ["--subscribe", "platform", "--timeout-ms", "200", "--wait-runtime-done",
                                        "--on-shutdown", "sleep:0.3"])], handler="sim_handlers.slow")
        sim.start(timeout=20)
        res = sim.invoke({"sleep": 0.5})
        sim.shutdown()
        self.assertEqual(res.status, "success")
        with_done = [b for b in sim.batches if b.ok and any(
            e["type"] == "platform.runtimeDone" and e["record"]["requestId"] == res.request_id for e in b.events)]
        self.assertEqual(len(with_done), 1)
        batch = with_done[0]
        self.assertEqual(batch.events[0]["type"], "platform.runtimeDone")  # it opened a new batch
        self.assertGreaterEqual(batch.sent_at.mono, res.runtime_done_at.mono + 0.2)
        self.assertLess(batch.sent_at.mono, res.runtime_done_at.mono + 0.2 + 2.0)  # generous upper bound
        # the extension waited for it before /next: it arrived within the invocation
        self.assertLess(batch.sent_at.mono, res.extension_next_at["ext-a"].mono)


class LogRecords(SimTestCase):
    def test_function_and_extension_lines(self):
        """Check 14: stdout/stderr lines are function/extension records (JSON lines as objects)."""
        sim = self.make_sim([("ext-a", ["--print-lines", "2", "--wait-runtime-done", "--on-shutdown", "sleep:0.3"]),
                             ("ext-b", ["--subscribe", "platform", "--on-shutdown", "sleep:0.3"])],
                            handler="sim_handlers.logs")
        sim.start(timeout=20)
        sim.invoke({"lines": 3})
        sim.shutdown()
        received = self.received_events("ext-a")
        function = [e["record"] for e in received if e["type"] == "function"]
        for i in range(3):
            self.assertIn(f"plain line {i}", function)
        self.assertIn("to stderr", function)
        self.assertIn({"level": "INFO", "message": "structured", "n": 1}, function)
        extension = [e["record"] for e in received if e["type"] == "extension"]
        self.assertIn("ext-a line 0", extension)
        self.assertIn("ext-a line 1", extension)
        # ext-b subscribed to platform only: no log records for it
        self.assertFalse([e for e in self.received_events("ext-b") if e["type"] in ("function", "extension")])
        self.assertTrue([e for e in self.received_events("ext-b") if e["type"] == "platform.report"])


class DeliveryFailures(SimTestCase):
    def test_retry_until_accepted(self):
        """Non-2xx -> the same batch is retried with backoff until the listener accepts it."""
        sim = self.make_sim([("ext-a", ["--listener-fail-first", "2", "--on-shutdown", "sleep:0.5"])])
        sim.start(timeout=20)
        sim.invoke({})
        sim.shutdown()
        mine = [b for b in sim.batches if b.subscriber == "ext-a"]
        self.assertEqual([b.status for b in mine[:3]], [500, 500, 200])
        self.assertEqual([b.attempt for b in mine[:3]], [1, 2, 3])
        self.assertEqual(mine[0].events, mine[2].events)

    def test_overflow_drops_and_reports_logs_dropped(self):
        """A lagging consumer loses records and is told so by platform.logsDropped."""
        sim = self.make_sim([("ext-a", ["--listener-delay-ms", "700", "--max-items", "1000", "--timeout-ms", "25",
                                        "--on-shutdown", "sleep:0.5"])],
                            handler="sim_handlers.logs", subscriber_buffer_items=1000)
        sim.start(timeout=20)
        sim.invoke({"lines": 6000})
        sim.shutdown()
        dropped = [e for e in self.received_events("ext-a") if e["type"] == "platform.logsDropped"]
        self.assertTrue(dropped)
        self.assertGreater(dropped[0]["record"]["droppedRecords"], 0)
        self.assertGreater(dropped[0]["record"]["droppedBytes"], 0)
        self.assertIn(dropped[0], sim.telemetry_events("platform.logsDropped"))
        total_dropped = sum(e["record"]["droppedRecords"] for e in dropped)
        received_lines = [e for e in self.received_events("ext-a") if e["type"] == "function"]
        self.assertLess(len(received_lines), 6002)  # 6000 lines + a JSON line + a stderr line were printed
        self.assertGreaterEqual(len(received_lines) + total_dropped, 6002)


if __name__ == "__main__":
    unittest.main()
