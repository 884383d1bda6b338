"""Flush strategies end to end (issue 6): the real extension under the simulator's real freezes
(SIGSTOP), exporting to a real OtlpSink that records when every request was open.

The simulator and the sink run in this process, so their ``time.monotonic()`` instants compare:
a request is "open at a freeze" when ``start <= frozen_at < end``.

The soak scenario is parameterised (invocations, gaps, long freezes): CI runs a reduced version,
``python -m bench.soak_flush`` runs the issue's full 200-invocation version.
"""

from __future__ import annotations

import random
import re
import threading
import time
import unittest
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List

from lambda_otel.local.sink import Reply, any_value
from tests.support import ExtensionTestCase, counter_total, histogram_totals

FUNCTION_NAME = "test-function"  # the simulator's default; also the invocation span's name
LINE_RE = re.compile(r"^text line \d+ of [0-9a-f-]{36}$")


# --- the soak scenario, shared with bench/soak_flush.py ------------------------------------------


@dataclass
class SoakPlan:
    """What to run: ``invocations`` with a gap (a real freeze) after each, then SHUTDOWN."""

    invocations: int = 40
    short_gap_max_s: float = 0.05  # most gaps: uniform 0..this
    long_freezes: int = 3  # this many gaps are long freezes instead
    long_freeze_s: float = 1.5
    error_every: int = 13  # every n-th invocation raises (0 = never)
    # The sink answers after this delay, so that a request left in flight at /next would still be
    # open when the simulator freezes us a moment later (an instant answer would hide it).
    sink_delay_s: float = 0.02
    seed: int = 6

    def gaps(self) -> List[float]:
        rng = random.Random(self.seed)
        gaps = [rng.uniform(0.0, self.short_gap_max_s) for _ in range(self.invocations)]
        for i in rng.sample(range(max(1, self.invocations - 1)), min(self.long_freezes, self.invocations)):
            gaps[i] = self.long_freeze_s * rng.uniform(0.9, 1.1)
        return gaps

    def events(self) -> List[dict]:
        rng = random.Random(self.seed + 1)
        out = []
        for i in range(self.invocations):
            event: dict = {"logs": rng.randint(1, 3)}
            if self.error_every and i % self.error_every == self.error_every - 1:
                event["error"] = True
            out.append(event)
        return out


@dataclass
class SoakOutcome:
    strategy: str
    invocations: list = field(default_factory=list)  # InvocationResult
    expected_lines: Counter = field(default_factory=Counter)
    errors: int = 0
    shutdown: object = None
    wall_s: float = 0.0


def run_soak(sim, plan: SoakPlan, strategy: str, invoke_timeout: float = 30.0) -> SoakOutcome:
    """Drive ``plan`` through a started simulator; the gap after each invocation is a real freeze."""
    outcome = SoakOutcome(strategy)
    pause = threading.Event()  # never set: a bounded wait is the gap
    t0 = time.monotonic()
    for event, gap in zip(plan.events(), plan.gaps()):
        res = sim.invoke(event, timeout=invoke_timeout)
        outcome.invocations.append(res)
        for i in range(event["logs"]):
            outcome.expected_lines[f"text line {i} of {res.request_id}"] += 1
        outcome.errors += 1 if event.get("error") else 0
        pause.wait(gap)
    outcome.shutdown = sim.shutdown("spindown", timeout=invoke_timeout)
    outcome.wall_s = time.monotonic() - t0
    return outcome


# The sink records a request's end after writing the answer, from a thread of this process: it can
# lag the client's read by a GIL hand-over (the switch interval is 5 ms). Starts are exact enough:
# a sink thread records the start before it answers, so for a freeze-safe extension the recorded
# start is always before the simulator records the extension's /next, and before the freeze.
END_LAG_S = 0.005


def freeze_violations(sim, sink, open_at_freeze: bool = True) -> List[str]:
    """Export requests open at a freeze, started while frozen, or started after the extension's
    ``/next`` that preceded the freeze (should be none).

    ``open_at_freeze=False`` checks only starts: with a backend slower than the request deadline the
    client gives up (closes its socket) while the sink, which does not notice, still counts the
    request as open until it answers.
    """
    requests = sink.requests
    problems = []
    for n, fr in enumerate(sim.freezes):
        frozen = fr.frozen_at.mono
        thawed = fr.thawed_at.mono if fr.thawed_at is not None else float("inf")
        before = [i for i in sim.invocations if i.ended_at is not None and i.ended_at.mono <= frozen]
        nxt = before[-1].extension_next_at.get("lambda-otel") if before and fr.reason == "after-invoke" else None
        quiet_from = nxt.mono if nxt is not None else frozen
        for r in requests:
            where = f"freeze {n} ({fr.reason}): {r.path} #{r.seq} [{r.start - frozen:+.4f}s, " \
                    f"{((r.end or thawed) - frozen):+.4f}s] from the freeze"
            if open_at_freeze and r.start <= frozen and (r.end is None or r.end > frozen + END_LAG_S):
                problems.append(f"{where}: open at the freeze")
            elif quiet_from < r.start < thawed:
                problems.append(f"{where}: started after our /next ({quiet_from - frozen:+.4f}s) or while frozen")
    return problems


def function_lines(sink) -> Counter:
    """Function log lines the backend accepted, by text (each names its request id)."""
    out: Counter = Counter()
    for lr in sink.log_records():
        body = any_value(lr.body)
        if isinstance(body, str) and LINE_RE.match(body.strip()):
            out[body.strip()] += 1
    return out


def invocation_span_ids(sink) -> Counter:
    """faas.invocation_id of every invocation (SERVER) span the backend accepted."""
    out: Counter = Counter()
    for span in sink.spans():
        if span.name == FUNCTION_NAME and span.kind == span.SPAN_KIND_SERVER:
            attrs = {kv.key: any_value(kv.value) for kv in span.attributes}
            out[attrs.get("faas.invocation_id")] += 1
    return out


def arrival_times(sink) -> Dict[str, float]:
    """When each invocation's span reached the backend (end of the accepting request), by request id."""
    out: Dict[str, float] = {}
    for req in sink.requests:
        if req.path != "/v1/traces" or req.decoded is None or req.status != 200 or req.end is None:
            continue
        for rs in req.decoded.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    if span.name == FUNCTION_NAME:
                        rid = {kv.key: any_value(kv.value) for kv in span.attributes}.get("faas.invocation_id")
                        out.setdefault(rid, req.end)
    return out


def dropped(sink, **attrs: str) -> int:
    return counter_total(sink.metrics(), "lambda_otel.dropped", **attrs)


def overhead_stats(invocations) -> Dict[str, float]:
    values = sorted(r.extension_overhead_ms for r in invocations if r.extension_overhead_ms is not None)
    if not values:
        return {"n": 0, "median": 0.0, "p99": 0.0, "max": 0.0}
    return {
        "n": len(values),
        "median": values[len(values) // 2],
        "p99": values[min(len(values) - 1, int(round(0.99 * (len(values) - 1))))],
        "max": values[-1],
    }


def strategy_env(strategy: str) -> Dict[str, str]:
    env = {"LAMBDA_OTEL_FLUSH_STRATEGY": strategy}
    if strategy == "periodic":
        env["LAMBDA_OTEL_FLUSH_INTERVAL_MS"] = "200"
    return env


# --- the tests -------------------------------------------------------------------------------------


class FlushE2ECase(ExtensionTestCase):
    def assert_clean_shutdown(self, sim, down) -> None:
        ext = down.extensions["lambda-otel"]
        self.assertTrue(ext.exited_in_time, f"{ext}\n{self.extension_output(sim)}")
        self.assertEqual(ext.exit_code, 0, self.extension_output(sim))
        self.assertLess(ext.exited_at.wall * 1000, down.deadline_ms)

    def assert_freeze_safe(self, sim, sink) -> None:
        self.assertTrue(sink.wait_for(lambda: not sink.open_requests(), timeout=10))
        self.assertGreater(len(sim.freezes), 0)
        problems = freeze_violations(sim, sink)
        self.assertEqual(problems, [], "\n".join(problems[:20]) + "\n" + self.extension_output(sim)[-3000:])


class StrategySoakTest(FlushE2ECase):
    """Scenario 1: no request open at any freeze, every record exactly once, per strategy."""

    PLAN = SoakPlan()
    REPORTS: List[dict] = []  # one summary per soak, for bench/soak_flush.py

    def soak(self, strategy: str) -> None:
        sink = self.make_sink()
        sink.set_reply(Reply(delay=self.PLAN.sink_delay_s))
        sim = self.make_sim(self.make_env(sink, **strategy_env(strategy)))
        sim.start(timeout=30)
        out = run_soak(sim, self.PLAN, strategy)

        self.assertEqual([r.status for r in out.invocations].count("success"),
                         self.PLAN.invocations - out.errors)
        self.assert_clean_shutdown(sim, out.shutdown)
        # A real freeze after every invocation (and after init): the gaps were frozen time.
        self.assertGreaterEqual(len([f for f in sim.freezes if f.reason == "after-invoke"]), self.PLAN.invocations)
        self.assert_freeze_safe(sim, sink)

        lines = function_lines(sink)
        self.assertEqual(set(lines), set(out.expected_lines), "function log lines missing or unexpected")
        self.assertEqual([k for k, v in lines.items() if v != 1], [], "function log lines duplicated")
        spans = invocation_span_ids(sink)
        rids = {r.request_id for r in out.invocations}
        self.assertEqual(set(spans), rids)
        self.assertEqual([k for k, v in spans.items() if v != 1], [], "invocation spans duplicated")

        # Latency, as each strategy promises (the freeze-safe gate must not starve exports).
        arrived = arrival_times(sink)
        shutdown_at = out.shutdown.started_at.mono
        if strategy in ("end", "default"):
            # end: before the freeze that follows the invocation; default: the first invocation
            # (fewer than 2 seen = infrequent = end); later ones go by the 20 s timer.
            # No hold waits for the export client's import (app.py): invocations that ended before
            # start-up was done send theirs at the next chance; from the first on time, every one is.
            checked = out.invocations if strategy == "end" else out.invocations[:1]
            on_time = [arrived[r.request_id] < next(f.frozen_at.mono for f in sim.freezes
                                                    if f.frozen_at.mono > r.started_at.mono) for r in checked]
            first = on_time.index(True) if True in on_time else len(on_time)
            late = [r.request_id for r, ok in zip(checked[first:], on_time[first:]) if not ok]
            self.assertEqual(late, [], "exported only after the invocation's freeze")
            if strategy == "end":
                self.assertLess(first, len(checked) // 2, "start-up took half the soak")
        else:
            # A 200 ms timer (periodic) or new data (continuous) flushes at the next INVOKE.
            early = sum(1 for r in out.invocations if arrived[r.request_id] < shutdown_at)
            self.assertGreater(early, self.PLAN.invocations // 2, "data waited for SHUTDOWN")

        points = sink.metrics()
        self.assertEqual(counter_total(points, "faas.invocations"), self.PLAN.invocations - out.errors)
        self.assertEqual(counter_total(points, "faas.errors"), out.errors)
        self.assertEqual(histogram_totals(points, "faas.invoke_duration")[0], self.PLAN.invocations)
        self.assertEqual(dropped(sink), 0)
        ext = out.shutdown.extensions["lambda-otel"]
        self.REPORTS.append({
            "strategy": strategy, "invocations": len(out.invocations), "freezes": len(sim.freezes),
            "frozen_s": sum((f.thawed_at.mono - f.frozen_at.mono) for f in sim.freezes if f.thawed_at),
            "requests": len(sink.requests), "before_shutdown": sum(1 for t in arrived.values() if t < shutdown_at),
            "overhead": overhead_stats(out.invocations), "wall_s": out.wall_s,
            "shutdown_ms": (ext.exited_at.mono - out.shutdown.started_at.mono) * 1000,
        })

    def test_default(self):
        self.soak("default")

    def test_end(self):
        self.soak("end")

    def test_periodic(self):
        self.soak("periodic")

    def test_continuous(self):
        self.soak("continuous")


class OutageTest(FlushE2ECase):
    """Scenario 2: the backend answers 503 for 50 invocations, then comes back."""

    BUDGET_S = 0.3
    SLACK_S = 1.0  # generous: runtimeDone latency, scheduling, a loaded CI machine

    def test_breaker_bounds_overhead_and_buffered_data_arrives_after_recovery(self):
        sink = self.make_sink()
        env = self.make_env(sink, LAMBDA_OTEL_FLUSH_STRATEGY="end",
                            LAMBDA_OTEL_FLUSH_BUDGET_MS=str(int(self.BUDGET_S * 1000)),
                            LAMBDA_OTEL_BREAKER_MAX_BACKOFF_MS="2000")
        sim = self.make_sim(env)
        sim.start(timeout=30)
        pause = threading.Event()
        before = [sim.invoke({"logs": 1}, timeout=30) for _ in range(3)]

        sink.set_reply(Reply(status=503))
        outage_start = time.monotonic()
        during = []
        for _ in range(50):
            during.append(sim.invoke({"logs": 2}, timeout=30))
            pause.wait(0.02)
        outage_end = time.monotonic()
        sink.reset_behaviour()

        # Back: the breaker's probe (within ~2 s of backoff) closes it inside an invocation.
        after = []
        for _ in range(30):
            after.append(sim.invoke({"logs": 1}, timeout=30))
            if "export breaker closed" in self.extension_output(sim):
                break
            pause.wait(0.25)
        recovered_at = time.monotonic()
        after += [sim.invoke({"logs": 1}, timeout=30) for _ in range(3)]
        shutdown_start = time.monotonic()
        down = sim.shutdown("spindown", timeout=30)
        invocations = before + during + after

        self.assertEqual({r.status for r in invocations}, {"success"})
        self.assert_clean_shutdown(sim, down)
        output = self.extension_output(sim)
        self.assertIn("export breaker open", output)
        self.assertIn("export breaker closed", output, "the breaker never closed before SHUTDOWN")
        self.assertNotIn("Traceback", output)

        # Overhead: what a dead backend may cost an invocation is the flush budget.
        bound_ms = (self.BUDGET_S + self.SLACK_S) * 1000
        worst = max(r.extension_overhead_ms for r in invocations)
        self.assertLessEqual(worst, bound_ms, overhead_stats(invocations))

        # Few requests while it was down: 3 failed flushes, then one probe per backoff (>= 0.5 s).
        outage_requests = [r for r in sink.requests if outage_start <= r.start < outage_end]
        failing_flushes = 3 + (outage_end - outage_start) / 0.5 + 1
        self.assertLessEqual(len(outage_requests), failing_flushes * 8,  # exporter.MAX_ATTEMPTS per flush
                             f"{len(outage_requests)} requests in {outage_end - outage_start:.1f}s")

        self.assert_freeze_safe(sim, sink)

        # What was buffered arrives after recovery (before SHUTDOWN), exactly once; anything
        # missing is counted in lambda_otel.dropped.
        arrived = arrival_times(sink)
        outage_rids = [r.request_id for r in during]
        before_shutdown = [rid for rid in outage_rids if arrived.get(rid, float("inf")) < shutdown_start]
        lines = function_lines(sink)
        expected = {f"text line {i} of {r.request_id}" for r in during for i in range(2)}
        expected |= {f"text line 0 of {r.request_id}" for r in before + after}
        self.assertEqual([k for k, v in lines.items() if v != 1], [], "function log lines duplicated")
        self.assertLessEqual(set(lines), expected)
        missing_lines = len(expected - set(lines))
        self.assertLessEqual(missing_lines, dropped(sink, signal="logs"))
        spans = invocation_span_ids(sink)
        self.assertEqual([k for k, v in spans.items() if v != 1], [], "invocation spans duplicated")
        missing_spans = len({r.request_id for r in invocations} - set(spans))
        self.assertLessEqual(missing_spans, dropped(sink, signal="traces"))
        self.assertEqual(counter_total(sink.metrics(), "faas.invocations"), len(invocations))
        self.assertGreater(len(before_shutdown), len(outage_rids) // 2,
                           f"only {len(before_shutdown)}/{len(outage_rids)} outage spans arrived before SHUTDOWN "
                           f"(recovered {recovered_at - outage_end:.1f}s after the outage)")


class SlowBackendShutdownTest(FlushE2ECase):
    """Scenario 3: a backend answering in 2 s cannot make the extension overrun SHUTDOWN."""

    def test_shutdown_ends_before_the_deadline_and_counts_what_was_not_sent(self):
        sink = self.make_sink()
        sink.set_reply(Reply(delay=2.0))
        sim = self.make_sim(self.make_env(sink, LAMBDA_OTEL_FLUSH_STRATEGY="end"))
        sim.start(timeout=30)
        for _ in range(2):
            self.assertEqual(sim.invoke({"logs": 3}, timeout=30).status, "success")
        down = sim.shutdown("spindown", timeout=30)
        self.assert_clean_shutdown(sim, down)
        output = self.extension_output(sim)
        mentions = [line for line in output.splitlines() if "shutdown_deadline" in line or "unsent at deadline" in line]
        self.assertEqual(len(mentions), 1, output)
        unsent = re.search(r"unsent at deadline (\d+)", mentions[0])
        self.assertIsNotNone(unsent, mentions[0])
        self.assertGreater(int(unsent.group(1)), 0, mentions[0])
        self.assertIn("'shutdown_deadline': ", mentions[0])
        self.assertEqual(freeze_violations(sim, sink, open_at_freeze=False), [])


class RetryAfterTest(FlushE2ECase):
    """Scenario 4: 429 and 503 with Retry-After hold every request to that path until it passed."""

    def test_429_and_503_retry_after_are_honoured(self):
        sink = self.make_sink()
        sink.script([Reply(status=503, retry_after="1")], path="/v1/traces")
        sink.script([Reply(status=429, retry_after="1")], path="/v1/logs")
        sim = self.make_sim(self.make_env(sink, LAMBDA_OTEL_FLUSH_STRATEGY="end"))
        sim.start(timeout=30)
        pause = threading.Event()
        results = []
        for _ in range(8):
            results.append(sim.invoke({"logs": 2}, timeout=30))
            pause.wait(0.3)
        down = sim.shutdown("spindown", timeout=30)
        self.assert_clean_shutdown(sim, down)
        self.assert_freeze_safe(sim, sink)

        for path, status in (("/v1/traces", 503), ("/v1/logs", 429)):
            reqs = sink.requests_to(path)
            refused = [r for r in reqs if r.status == status]
            self.assertEqual(len(refused), 1, [(r.status, r.start) for r in reqs])
            later = [r for r in reqs if r.seq > refused[0].seq]
            self.assertTrue(later, f"nothing sent to {path} after the {status}")
            # The client read the answer after the request started: Retry-After ends after start + 1 s.
            early = [r.start - refused[0].start for r in later if r.start < refused[0].start + 1.0]
            self.assertEqual(early, [], f"{path}: requests {early} s after the {status} with Retry-After: 1")

        expected = {f"text line {i} of {r.request_id}" for r in results for i in range(2)}
        lines = function_lines(sink)
        self.assertEqual(set(lines), expected)
        self.assertEqual(set(lines.values()), {1})
        self.assertEqual(set(invocation_span_ids(sink)), {r.request_id for r in results})
        self.assertEqual(set(invocation_span_ids(sink).values()), {1})
        self.assertEqual(dropped(sink), 0)


class IdleThenShutdownTest(FlushE2ECase):
    """Scenario 5: one invocation, a long idle freeze, SHUTDOWN: everything arrives."""

    def test_single_invocation_then_shutdown_after_a_long_freeze(self):
        sink = self.make_sink()
        sim = self.make_sim(self.make_env(sink))
        sim.start(timeout=30)
        res = sim.invoke({"logs": 2}, timeout=30)
        self.assertEqual(res.status, "success")
        threading.Event().wait(3.0)
        self.assertTrue(sim.is_frozen)
        down = sim.shutdown("spindown", timeout=30)
        self.assert_clean_shutdown(sim, down)
        self.assert_freeze_safe(sim, sink)
        points = sink.metrics()
        self.assertEqual(counter_total(points, "faas.invocations"), 1)
        self.assertEqual(histogram_totals(points, "faas.invoke_duration")[0], 1)
        self.assertEqual(histogram_totals(points, "aws.lambda.billed_duration")[0], 1)
        self.assertEqual(counter_total(points, "aws.lambda.shutdowns", **{"aws.lambda.shutdown.reason": "spindown"}), 1)
        self.assertEqual(function_lines(sink), Counter({f"text line {i} of {res.request_id}": 1 for i in range(2)}))
        self.assertEqual(invocation_span_ids(sink), Counter({res.request_id: 1}))
        self.assertEqual(dropped(sink), 0)


class StaleConnectionTest(FlushE2ECase):
    """Scenario 6: the kept-alive connection died during a long freeze; the export after thaw
    succeeds at once, without counting a failure (with LAMBDA_OTEL_BREAKER_FAILURES=1 one counted
    failure would open the breaker and defer the data)."""

    def run_two_invocations(self, sink, between) -> tuple:
        env = self.make_env(sink, LAMBDA_OTEL_FLUSH_STRATEGY="end", LAMBDA_OTEL_BREAKER_FAILURES="1")
        sim = self.make_sim(env)
        sim.start(timeout=30)
        self.warm = self.invoke_until_started(sim)
        first = sim.invoke({"logs": 1}, timeout=30)  # exported in its hold: a pooled connection
        threading.Event().wait(2.0)  # frozen
        sink = between() or sink
        second = sim.invoke({"logs": 1}, timeout=30)
        second_freeze = sim.freezes[-1]
        self.assertTrue(second.frozen_after)
        return sim, sink, first, second, second_freeze

    def assert_delivered_before(self, sim, sink, res, freeze) -> None:
        line = f"text line 0 of {res.request_id}"
        ends = [r.end for r in sink.requests_to("/v1/logs") if r.status == 200 and r.decoded is not None
                and any(any_value(lr.body) == line for rl in r.decoded.resource_logs
                        for sl in rl.scope_logs for lr in sl.log_records)]
        self.assertEqual(len(ends), 1, self.extension_output(sim))
        self.assertLess(ends[0], freeze.frozen_at.mono, "exported only after the freeze: the resend was deferred")

    def test_reset_on_the_reused_connection_is_resent_at_once(self):
        sink = self.make_sink()
        sim, sink, first, second, freeze = self.run_two_invocations(
            sink, lambda: sink.script([Reply(stale_keepalive=True)]))
        down = sim.shutdown("spindown", timeout=30)
        self.assert_clean_shutdown(sim, down)
        resets = [r for r in sink.requests if r.outcome == "reset"]
        self.assertEqual(len(resets), 1)
        self.assertGreater(resets[0].nth_on_connection, 0)
        self.assert_delivered_before(sim, sink, second, freeze)
        self.assertNotIn("export breaker open", self.extension_output(sim))
        self.assert_freeze_safe(sim, sink)
        self.assertEqual(set(invocation_span_ids(sink)),
                         {first.request_id, second.request_id} | {w.request_id for w in self.warm})
        self.assertEqual(dropped(sink), 0)

    def test_backend_restarted_during_the_freeze(self):
        from lambda_otel.local.sink import OtlpSink

        old = self.make_sink()
        port = old.port
        holder = {}

        def restart():
            old.stop()  # closes the kept-alive connection (FIN) while we are frozen
            holder["new"] = self.make_sink(port=port)
            return holder["new"]

        sim, new, first, second, freeze = self.run_two_invocations(old, restart)
        self.assertIsInstance(new, OtlpSink)
        down = sim.shutdown("spindown", timeout=30)
        self.assert_clean_shutdown(sim, down)
        self.assert_delivered_before(sim, new, second, freeze)
        self.assertNotIn("export breaker open", self.extension_output(sim))
        self.assertEqual(freeze_violations(sim, old), [])
        self.assert_freeze_safe(sim, new)
        self.assertEqual(dropped(new), 0)


if __name__ == "__main__":
    unittest.main()


# --- a chatty function (issue 12.2) ----------------------------------------------------------------

CHATTY_RE = re.compile(r"^chatty (\d{6}) of ([0-9a-f-]{36}) x+$")


def chatty_lines(sink) -> Counter:
    """(request id, line number) of every chatty line the backend accepted."""
    out: Counter = Counter()
    for lr in sink.log_records():
        body = any_value(lr.body)
        m = CHATTY_RE.match(body.strip()) if isinstance(body, str) else None
        if m:
            out[(m.group(2), int(m.group(1)))] += 1
    return out


def final_flush_line(sim) -> str:
    """The extension's one summary line of its final flush (what it sent, left, dropped and why)."""
    lines = [line for _, line in sim.process_output("lambda-otel") if "final flush:" in line]
    return lines[-1] if lines else "(no final flush line: the extension did not log one)"


class ChattyFunctionTest(FlushE2ECase):
    """A function printing many ~110-byte lines per invocation, with a backend that answers at once.

    Within the buffer's budget nothing may be lost in any strategy; what is lost beyond it must be
    exactly what is counted. At 128 MB the budget is 13,107 records, so 20,000 lines per invocation
    only fit because full batches are exported while the function runs (the invocation is held when
    its predecessors came near the budget, which keeps the export window open).
    """

    def run_chatty(self, strategy: str, lines: int, invocations: int, at_least_once: bool = False, rate: int = 0,
                   **env_extra: str):
        sink = self.make_sink()
        env = self.make_env(sink, LAMBDA_OTEL_FLUSH_STRATEGY=strategy, LAMBDA_OTEL_LOG_LEVEL="warning", **env_extra)
        sim = self.make_sim(env, handler="chatty_handlers.handler", memory_mb=128, timeout_s=60)
        sim.start(timeout=30)
        results = [sim.invoke({"lines": lines, "rate": rate}, timeout=120) for _ in range(invocations)]
        down = sim.shutdown("spindown", timeout=30)
        self.assert_clean_shutdown(sim, down)
        self.assertEqual([r.status for r in results], ["success"] * invocations)
        self.assertTrue(sink.wait_for(lambda: not sink.open_requests(), timeout=10))
        got = chatty_lines(sink)
        if not at_least_once:
            self.assertEqual([k for k, n in got.items() if n != 1], [], "lines delivered twice")
        expected = {(r.request_id, i) for r in results for i in range(lines)}
        self.assertLessEqual(set(got), expected)
        lost = len(expected) - len(got)
        return sim, sink, results, lost

    def test_default_20000_lines_per_invocation_back_to_back_loses_nothing(self):
        """At 50,000 lines/s (unpaced, the rate is the machine's: a loaded 2-vCPU runner then loses
        lines at Lambda's Telemetry API, which reports them, see the unpaced test below)."""
        sim, sink, results, lost = self.run_chatty("default", 20_000, 5, rate=50_000)
        summary = final_flush_line(sim)
        self.assertEqual(lost, 0, f"{lost} of {5 * 20_000} lines lost; {summary}")
        self.assertEqual(dropped(sink), 0, summary)
        self.assert_freeze_safe(sim, sink)

    def test_end_single_100000_line_invocation_loses_nothing(self):
        """100,000 lines at 50,000 lines/s (bench_chatty: `end` carries 80,000/s without loss at 128 MB)."""
        sim, sink, results, lost = self.run_chatty("end", 100_000, 1, rate=50_000)
        summary = final_flush_line(sim)
        self.assertEqual(lost, 0, f"{lost} of 100000 lines lost; {summary}")
        self.assertEqual(dropped(sink), 0, summary)
        self.assert_freeze_safe(sim, sink)

    def test_end_unpaced_100000_line_burst_counts_exactly_what_it_loses(self):
        """The same lines printed as fast as the function can. Whether Lambda's Telemetry API and
        lambda-otel keep up then depends on the CPU the function, the simulator and the backend
        leave (on 2 shared vCPUs: some runs lose nothing, some lose lines at Lambda or in the first
        invocation's queue); what is lost is exactly what is counted."""
        self.assert_lost_is_counted("end", must_overflow=False)

    def assert_lost_is_counted(self, strategy: str, must_overflow: bool = True) -> None:
        sim, sink, results, lost = self.run_chatty(strategy, 100_000, 1, at_least_once=True)
        summary = final_flush_line(sim)
        # Two places can lose lines, and each must count what it lost. Lambda's Telemetry
        # API, when we read slower than the function prints: it tells us in platform.logsDropped
        # (its count may include a platform event) and we count that number as it is. Our queue,
        # beyond the budget: the records that reached us (lines, and one notice per logsDropped)
        # are delivered or counted.
        delivered = [e for b in sim.batches if b.subscriber == "lambda-otel" and b.ok for e in b.events]
        lines_in = sum(1 for e in delivered if e["type"] == "function")
        notices = [e["record"] for e in delivered if e["type"] == "platform.logsDropped"]
        notices_out = sum(1 for lr in sink.log_records()
                          if str(any_value(lr.body)).startswith("Lambda dropped "))
        by_lambda = dropped(sink, signal="logs", reason="platform_logs_dropped")
        by_us = dropped(sink, signal="logs") - by_lambda
        got = 100_000 - lost
        self.assertEqual(by_lambda, sum(r["droppedRecords"] for r in notices), summary)
        self.assertLessEqual(100_000 - lines_in, by_lambda, summary)
        lost_by_us = (lines_in + len(notices)) - (got + notices_out)
        # Nothing is lost silently. OTLP over HTTP is at least once: under load a request can be
        # cut at its deadline after the backend took it; that batch is kept and may be resent
        # (a duplicate) or, in this flood, evicted and counted although it arrived. So the count
        # may exceed the loss by such batches (1000 records each), never fall short of it.
        self.assertLessEqual(lost_by_us, by_us, summary)
        self.assertLessEqual(by_us - lost_by_us, 2 * 1000, f"over-counted beyond two cut batches; {summary}")
        if must_overflow:
            self.assertGreater(by_us, 0, "the test should overflow the queue")
        self.assert_freeze_safe(sim, sink)

    def test_periodic_single_100000_line_invocation_counts_exactly_what_it_loses(self):
        self.assert_lost_is_counted("periodic")

    def test_continuous_single_100000_line_invocation_counts_exactly_what_it_loses(self):
        self.assert_lost_is_counted("continuous")
