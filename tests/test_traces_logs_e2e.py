"""Issue 4 end to end: spans and logs from the platform.

The real extension process under the simulator, the function in the real awslambdaric runtime,
exports decoded by OtlpSink. What the backend holds is compared with what the simulator (the
platform) generated: trace ids from the X-Ray header it passed, span ids and times from its
platform.start / platform.runtimeDone events, log lines from its function / extension records.
"""

import http.client
import json
import unittest
from collections import Counter
from datetime import datetime, timezone

from lambda_otel.app import STARTED_LINE
from lambda_otel.local.sink import attrs_to_dict
from opentelemetry.proto.trace.v1 import trace_pb2
from tests.support import ExtensionTestCase, counter_total

SERVER = trace_pb2.Span.SPAN_KIND_SERVER
ERROR = trace_pb2.Status.STATUS_CODE_ERROR
MS = 1_000_000  # ns
CHILDREN = ("responseLatency", "responseDuration", "runtimeOverhead")
HANDLER = "platform_handlers.handler"


def platform_ns(text: str) -> int:
    """A Telemetry API time ("2024-05-01T10:00:00.123Z") as epoch ns, parsed independently of convert.py."""
    dt = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    return (int(dt.timestamp()) * 1_000_000 + dt.microsecond) * 1000


def xray_parts(header: str):
    parts = dict(p.split("=", 1) for p in header.split(";"))
    _, epoch, rest = parts["Root"].split("-")
    return bytes.fromhex(epoch + rest), bytes.fromhex(parts["Parent"])


def events_by_request(sim, etype: str):
    return {e["record"]["requestId"]: e for e in sim.telemetry_events(etype)}


class PlatformSpansTest(ExtensionTestCase):
    """Invocation spans, their children and the init span, against the platform's own values."""

    def run_function(self, xray_mode=None, **env_extra):
        sink = self.make_sink()
        extra = {"AWS_LAMBDA_LOG_FORMAT": "JSON", **env_extra}
        if xray_mode is not None:
            extra["LAMBDA_OTEL_XRAY_PARENT"] = xray_mode
        sim = self.make_sim(self.make_env(sink, **extra), handler=HANDLER, timeout_s=1.0)
        sim.start(timeout=30)
        events = [
            {"text": 2, "logged": ["INFO", "WARNING", "ERROR"]},
            {"text": 1, "error": True},
            {"text": 1, "logged": ["DEBUG"]},
            {"text": 3},
        ]
        results = [sim.invoke(e, timeout=30) for e in events]
        self.assertEqual([r.status for r in results], ["success", "error", "success", "success"])
        down = sim.shutdown("spindown", timeout=30)
        self.assertEqual(down.extensions["lambda-otel"].exit_code, 0, self.extension_output(sim))
        return sim, sink, results

    def check_invocation_spans(self, sim, sink, results, xray_mode):
        starts = events_by_request(sim, "platform.start")
        done = events_by_request(sim, "platform.runtimeDone")
        spans = sink.spans()
        self.assertEqual(len({s.span_id for s in spans}), len(spans), "duplicate span ids")
        server = {attrs_to_dict(s.attributes)["faas.invocation_id"]: s for s in spans if s.kind == SERVER}
        self.assertEqual(set(server), {r.request_id for r in results})
        self.assertEqual(sum(1 for s in spans if s.kind == SERVER), len(results), "an invocation span twice")

        for i, r in enumerate(results):
            span = server[r.request_id]
            start, rd = starts[r.request_id], done[r.request_id]
            root, upstream = xray_parts(r.trace_header)
            with self.subTest(invocation=i):
                self.assertEqual(span.trace_id, root)
                self.assertEqual(span.trace_id.hex(), r.trace_header.split(";")[0][len("Root=1-"):].replace("-", ""))
                if xray_mode == "join":  # the id the function's SDK takes as its SERVER span's parent
                    self.assertEqual(span.span_id, upstream)
                    self.assertEqual(span.parent_span_id, b"")
                    self.assertEqual(len(span.links), 0)
                else:
                    self.assertEqual(span.span_id.hex(), start["record"]["tracing"]["spanId"])
                if xray_mode == "join":
                    pass
                elif xray_mode == "parent":
                    self.assertEqual(span.parent_span_id, upstream)
                    self.assertEqual(len(span.links), 0)
                else:
                    self.assertEqual(span.parent_span_id, b"")
                    self.assertEqual([(l.trace_id, l.span_id) for l in span.links], [(root, upstream)])
                self.assertEqual(span.name, "test-function")  # FaaS semconv: the function's name
                self.assertEqual(span.kind, SERVER)
                self.assertLessEqual(abs(span.start_time_unix_nano - platform_ns(start["time"])), MS)
                self.assertLessEqual(abs(span.end_time_unix_nano - platform_ns(rd["time"])), MS)
                duration_ns = span.end_time_unix_nano - span.start_time_unix_nano
                self.assertLessEqual(abs(duration_ns - rd["record"]["metrics"]["durationMs"] * MS), MS)

                attrs = attrs_to_dict(span.attributes)
                self.assertEqual(attrs["faas.invocation_id"], r.request_id)
                self.assertEqual(attrs["faas.coldstart"], i == 0)
                self.assertEqual(attrs["cloud.resource_id"], sim.function_arn)  # as the function's instrumentation
                if r.status == "success":
                    self.assertNotEqual(span.status.code, ERROR)
                else:
                    self.assertEqual(span.status.code, ERROR)
                    self.assertEqual(span.status.message, rd["record"]["errorType"])
                    # error.type: the exception the runtime reported in its log line, not Runtime.Unknown
                    self.assertEqual(attrs["error.type"], "PlatformTestError")

                children = {s.name: s for s in spans if s.parent_span_id == span.span_id}
                platform_children = {c["name"]: c for c in rd["record"]["spans"]}
                self.assertEqual(set(platform_children), set(CHILDREN))
                for name in CHILDREN:
                    child, expected = children[name], platform_children[name]
                    self.assertEqual(child.trace_id, root)
                    self.assertLessEqual(abs(child.start_time_unix_nano - platform_ns(expected["start"])), MS)
                    child_ns = child.end_time_unix_nano - child.start_time_unix_nano
                    self.assertLessEqual(abs(child_ns - expected["durationMs"] * MS), MS)
        return server

    def check_init_span(self, sim, sink, first_invocations):
        spans = sink.spans()
        inits = [s for s in spans if s.name == "init"]
        self.assertEqual(len(inits), len(first_invocations),
                         [(s.trace_id.hex(), s.span_id.hex(), s.start_time_unix_nano) for s in inits])
        server = {attrs_to_dict(s.attributes)["faas.invocation_id"]: s for s in spans if s.kind == SERVER}
        reports = [e for e in sim.telemetry_events("platform.initReport")]
        self.assertEqual(len(reports), len(first_invocations))
        for init, first, report in zip(sorted(inits, key=lambda s: s.start_time_unix_nano), first_invocations, reports):
            parent = server[first.request_id]
            self.assertEqual(init.trace_id, parent.trace_id)
            self.assertEqual(init.parent_span_id, parent.span_id)
            self.assertLessEqual(abs((init.end_time_unix_nano - init.start_time_unix_nano)
                                     - report["record"]["metrics"]["durationMs"] * MS), MS)

    def check_logs(self, sim, sink, server):
        """Every function line exactly once, in its invocation's trace and span."""
        expected, expected_objects = Counter(), []
        for e in sim.telemetry_events("function"):
            rec = e["record"]
            if isinstance(rec, dict) and "message" not in rec:
                expected_objects.append(rec)  # awslambdaric's JSON error record (errorMessage, stackTrace)
                expected[rec["errorMessage"]] += 1
            else:
                expected[rec["message"] if isinstance(rec, dict) else rec] += 1
        items = [item for item in sink.log_items() if item.scope == "lambda-otel.function"]
        got = Counter(item.record.body.string_value for item in items if item.record.body.HasField("string_value"))
        self.assertEqual(got, expected)
        self.assertTrue(all(n == 1 for n in got.values()), got)
        objects = [item.record for item in items if item.record.event_name == "faas.invocation.exception"]
        self.assertEqual(len(objects), len(expected_objects))
        for rec, sent in zip(objects, expected_objects):
            mapped = attrs_to_dict(rec.attributes)
            self.assertEqual(rec.body.string_value, sent["errorMessage"])
            self.assertEqual(mapped["exception.type"], sent["errorType"])
            self.assertEqual(mapped["exception.message"], sent["errorMessage"])
            self.assertEqual(mapped["exception.stacktrace"], "".join(sent["stackTrace"]))
            self.assertEqual(rec.severity_number, 17)
            self.assertEqual(mapped["faas.invocation_id"], sent["requestId"])

        by_request = {rid: 0 for rid in server}
        for item in items:
            rec = item.record
            body = rec.body.string_value
            attrs = attrs_to_dict(rec.attributes)
            rid = attrs.get("faas.invocation_id")
            if rid is None:
                continue  # awslambdaric's own traceback line names no request id in its text
            with self.subTest(line=body):
                span = server[rid]
                self.assertEqual(rec.trace_id, span.trace_id)
                self.assertEqual(rec.span_id, span.span_id)
                if body.startswith("plain line"):
                    self.assertIn(rid, body)
                    self.assertEqual(rec.severity_number, 0)
                elif body.startswith("logged line"):
                    self.assertIn(rid, body)
                    level = body.split(" at ", 1)[1].split(" ", 1)[0]
                    self.assertEqual(rec.severity_text, level)
                    self.assertEqual(rec.severity_number, {"DEBUG": 5, "INFO": 9, "WARNING": 13, "ERROR": 17}[level])
                    self.assertEqual(attrs["logger"], "platform-e2e")
            if rid in body:
                by_request[rid] += 1
        # Lines that name their request id were all correlated to it (none lost to "no invocation").
        named = Counter()
        for body in got:
            for rid in server:
                if rid in body:
                    named[rid] += 1
        self.assertEqual(by_request, {rid: named[rid] for rid in server})

    def test_join_mode_spans_children_init_and_logs(self):
        sim, sink, results = self.run_function()
        server = self.check_invocation_spans(sim, sink, results, "join")
        self.check_init_span(sim, sink, [results[0]])
        self.check_logs(sim, sink, server)
        points = sink.metrics()
        self.assertEqual(counter_total(points, "faas.invocations"), 3)  # successful ones
        self.assertEqual(counter_total(points, "faas.errors"), 1)
        self.assertEqual(counter_total(points, "lambda_otel.telemetry.ignored"), 0)

    def test_link_mode_links_the_xray_parent(self):
        sim, sink, results = self.run_function(xray_mode="link")
        server = self.check_invocation_spans(sim, sink, results, "link")
        self.check_logs(sim, sink, server)

    def test_parent_mode_uses_the_xray_parent(self):
        sim, sink, results = self.run_function(xray_mode="parent")
        server = self.check_invocation_spans(sim, sink, results, "parent")
        self.check_init_span(sim, sink, [results[0]])
        self.check_logs(sim, sink, server)

    def test_timeout_and_error_spans_and_the_reset_environment(self):
        sink = self.make_sink()
        sim = self.make_sim(self.make_env(sink), handler=HANDLER, timeout_s=1.0)
        sim.start(timeout=30)
        results = [
            sim.invoke({"text": 1}, timeout=30),
            sim.invoke({"text": 1, "sleep": 1.5}, timeout=30),  # past the 1 s timeout: a reset
            sim.invoke({"text": 1}, timeout=30),  # a fresh environment: cold again, its own init span
            sim.invoke({"text": 1, "error": True}, timeout=30),
        ]
        self.assertEqual([r.status for r in results], ["success", "timeout", "success", "error"])
        self.assertIsNotNone(results[2].init)
        sim.shutdown("spindown", timeout=30)

        spans = sink.spans()
        server = {attrs_to_dict(s.attributes)["faas.invocation_id"]: s for s in spans if s.kind == SERVER}
        self.assertEqual(set(server), {r.request_id for r in results})
        done = events_by_request(sim, "platform.runtimeDone")
        timed_out = server[results[1].request_id]
        self.assertEqual(timed_out.status.code, ERROR)
        self.assertEqual(timed_out.status.message, "Sandbox.Timedout")
        self.assertEqual(timed_out.status.message, done[results[1].request_id]["record"]["errorType"])
        self.assertEqual(attrs_to_dict(timed_out.attributes)["error.type"], "Sandbox.Timedout")
        failed = server[results[3].request_id]
        self.assertEqual(failed.status.code, ERROR)
        self.assertEqual(failed.status.message, done[results[3].request_id]["record"]["errorType"])
        for ok in (results[0], results[2]):
            self.assertNotEqual(server[ok.request_id].status.code, ERROR)
        coldstarts = [attrs_to_dict(server[r.request_id].attributes)["faas.coldstart"] for r in results]
        self.assertEqual(coldstarts, [True, False, True, False])

        points = sink.metrics()
        self.assertEqual(counter_total(points, "faas.timeouts"), 1)
        self.assertEqual(counter_total(points, "faas.errors"), 1)
        self.assertTrue([p for p in points if p.name == "faas.timeouts" and p.point.as_int == 1])

        # One init span per execution environment, in that environment's first invocation's trace.
        self.check_init_span(sim, sink, [results[0], results[2]])
        # The line the timed-out invocation printed before it was cut short arrived, once, in its trace.
        lines = [i.record for i in sink.log_items() if i.record.body.string_value == f"plain line 0 of {results[1].request_id}"]
        self.assertEqual(len(lines), 1)
        self.assertEqual(lines[0].trace_id, timed_out.trace_id)
        self.assertEqual(lines[0].span_id, timed_out.span_id)

    def test_hundred_invocations_no_duplicate_span_ids(self):
        sink = self.make_sink()
        sim = self.make_sim(self.make_env(sink), handler="platform_handlers.tiny")
        sim.start(timeout=30)
        results = [sim.invoke(b"{}", timeout=30) for _ in range(100)]
        self.assertEqual(Counter(r.status for r in results), Counter(success=100))
        down = sim.shutdown("spindown", timeout=30)
        self.assertEqual(down.extensions["lambda-otel"].exit_code, 0, self.extension_output(sim))

        spans = sink.spans()
        ids = Counter(s.span_id for s in spans)
        self.assertEqual([i.hex() for i, n in ids.items() if n > 1], [])
        server = [s for s in spans if s.kind == SERVER]
        self.assertEqual(len(server), 100)
        self.assertEqual({attrs_to_dict(s.attributes)["faas.invocation_id"] for s in server},
                         {r.request_id for r in results})
        self.assertEqual(sum(1 for s in spans if s.name == "init"), 1)
        self.assertEqual(counter_total(sink.metrics(), "faas.invocations"), 100)
        self.assertEqual([p for p in sink.metrics() if p.name == "lambda_otel.dropped" and p.point.as_int], [])


class ExtensionLogsTest(ExtensionTestCase):
    def test_own_lines_come_back_marked_and_do_not_feed_themselves(self):
        sink = self.make_sink()
        sim = self.make_sim(self.make_env(sink), handler=HANDLER)
        sim.start(timeout=30)
        # Start-up runs only while the environment is thawed and may outlast a fixed number of
        # invocations on a loaded runner; the line it ends with must be printed before SHUTDOWN.
        results = self.invoke_until_started(sim) + [sim.invoke({"text": 1}, timeout=30) for _ in range(12)]
        self.assertTrue(all(r.status == "success" for r in results))
        sim.shutdown("spindown", timeout=30)

        records = [i for i in sink.log_items() if i.scope == "lambda-otel.extension"]
        self.assertTrue(records, "the extension's start-up line was not exported")
        for item in records:
            rec = item.record
            self.assertTrue(rec.body.string_value.startswith("[lambda-otel] "), rec.body)
            self.assertIs(attrs_to_dict(rec.attributes).get("lambda_otel.self"), True)
            self.assertEqual(rec.severity_text, rec.body.string_value.split(" ", 2)[1])
        # Exactly once each, and only what the extension printed (nothing generated by exporting them).
        printed = Counter(e["record"] for e in sim.telemetry_events("extension"))
        got = Counter(i.record.body.string_value for i in records)
        self.assertEqual(got - printed, Counter())
        self.assertTrue(all(n == 1 for n in got.values()), got)
        # At info level, invocations produce no lines of ours at all: no line falls inside any invocation
        # but the one that says start-up is over (its thread may still run in the first invocations).
        def per_invocation(line: str) -> bool:
            return "SHUTDOWN" not in line and "flush" not in line and STARTED_LINE not in line

        starts = events_by_request(sim, "platform.start")
        first_start = min(platform_ns(e["time"]) for e in starts.values())
        during = [e for e in sim.telemetry_events("extension") if platform_ns(e["time"]) >= first_start
                  and per_invocation(e["record"])]
        self.assertEqual(during, [], self.extension_output(sim))
        # Only the SHUTDOWN lines (printed after the last invocation) may be correlated to it, by time.
        correlated = [r.record.body.string_value for r in records if attrs_to_dict(r.record.attributes).get("faas.invocation_id")]
        self.assertEqual([b for b in correlated if per_invocation(b)], [])
        self.assertEqual(got[f"[lambda-otel] INFO lambda_otel: {STARTED_LINE}"], 1, "said once")


class BadTelemetryInputTest(ExtensionTestCase):
    def post(self, port: int, body: bytes) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.addCleanup(conn.close)
        conn.request("POST", "/", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status

    def test_unknown_wrong_and_missing_fields_are_counted_valid_ones_exported(self):
        sink = self.make_sink()
        env = self.make_env(sink)
        # freeze=False: the test POSTs between invocations, when Lambda would have frozen the sandbox.
        sim = self.make_sim(env, handler=HANDLER, freeze=False)
        sim.start(timeout=30)
        self.assertEqual(sim.invoke({"text": 1}, timeout=30).status, "success")

        rid = "0f1e2d3c-0000-4000-8000-00000000bad1"
        header = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
        span_id = "53995c3f42cd8ad8"  # join mode: the header's Parent (tracing.spanId differs)
        now = datetime.now(timezone.utc)
        t = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
        tracing = {"spanId": "8a3c60f7d188f8fa", "type": "X-Amzn-Trace-Id", "value": header}
        batch = [
            {"time": t, "type": "platform.start", "record": {"requestId": rid, "version": "$LATEST", "tracing": tracing}},
            {"time": t, "type": "function", "record": "a valid line among bad ones"},
            {"time": t, "type": "platform.someday", "record": {"requestId": rid}},  # unknown_type
            {"time": t, "type": "function.v2", "record": "x"},  # unknown_type
            {"time": t, "type": 42, "record": {}},  # malformed_event (type not a string)
            {"time": t, "type": "platform.start"},  # malformed_event (no record)
            "not an event",  # malformed_event
            {"time": t, "type": "platform.start", "record": {"version": "$LATEST"}},  # malformed_record (no requestId)
            {"time": t, "type": "platform.report", "record": {"requestId": rid, "metrics": "fast"}},  # malformed_record
            {"time": t, "type": "function", "record": 12345},  # malformed_record (not text or object)
            {"time": t, "type": "platform.runtimeDone",
             "record": {"requestId": rid, "status": "success", "metrics": {"durationMs": 2.5}, "tracing": tracing,
                        "spans": [{"name": "responseLatency", "start": t, "durationMs": 1.0}]}},
        ]
        port = int(env["LAMBDA_OTEL_TELEMETRY_PORT"])
        self.assertEqual(self.post(port, json.dumps(batch).encode()), 200)
        self.assertEqual(sim.invoke({"text": 1}, timeout=30).status, "success")
        sim.shutdown("spindown", timeout=30)

        spans = [s for s in sink.spans() if s.span_id.hex() == span_id]
        self.assertEqual(len(spans), 1)
        self.assertEqual(spans[0].trace_id.hex(), "5759e988bd862e3fe1be46a994272793")
        self.assertEqual(attrs_to_dict(spans[0].attributes)["faas.invocation_id"], rid)
        self.assertEqual([s.name for s in sink.spans() if s.parent_span_id.hex() == span_id], ["responseLatency"])
        valid = [i.record for i in sink.log_items() if i.record.body.string_value == "a valid line among bad ones"]
        self.assertEqual(len(valid), 1)
        self.assertEqual(valid[0].span_id.hex(), span_id)

        points = sink.metrics()
        self.assertEqual(counter_total(points, "lambda_otel.telemetry.ignored", reason="unknown_type"), 2)
        self.assertEqual(counter_total(points, "lambda_otel.telemetry.ignored", reason="malformed_event"), 3)
        self.assertEqual(counter_total(points, "lambda_otel.telemetry.ignored", reason="malformed_record"), 3)
        self.assertEqual(counter_total(points, "lambda_otel.telemetry.ignored"), 8)
        # The platform's real invocations around it were unaffected.
        self.assertEqual(sum(1 for s in sink.spans() if s.kind == SERVER), 3)


if __name__ == "__main__":
    unittest.main()


class SnapStartRestoreSpansTest(ExtensionTestCase):
    """Issue 15: each restore of one snapshot (the simulator's snapstart mode, the extension forked
    per restore) exports its own restore span and metrics, and no cold-start init of the snapshot."""

    def test_restore_span_and_metrics_per_copy(self):
        import shutil
        import tempfile
        from pathlib import Path

        from lambda_otel.local.simulator import Simulator
        from tests.support import FUNCTIONS, final_cumulative
        from tests.test_snapstart_e2e import write_fork_launcher

        sink = self.make_sink()
        root = Path(tempfile.mkdtemp(prefix="lambda-otel-restore-"))
        self.addCleanup(shutil.rmtree, root, True)
        (root / "extensions").mkdir()
        write_fork_launcher(root / "extensions")
        sim = Simulator(extensions_dir=str(root / "extensions"), handler="e2e_handlers.handler",
                        handler_dir=str(FUNCTIONS), env=self.make_env(sink, LAMBDA_OTEL_FLUSH_STRATEGY="end"),
                        timeout_s=3.0, mode="snapstart")
        self.addCleanup(sim.stop)
        self.assertTrue(sim.start(timeout=60).ok)
        rounds = []
        for _ in range(2):
            rounds.append([sim.invoke({"logs": 1}, timeout=30) for _ in range(2)])
            sim.shutdown("spindown", timeout=30)
        sim.stop()

        reports = [e for e in sim.telemetry_events("platform.restoreReport")]
        self.assertEqual(len(reports), 2)
        items = sink.span_items()
        for i, results in enumerate(rounds):
            rids = {r.request_id for r in results}
            with self.subTest(restore=i + 1):
                mine = [it for it in items if it.span.kind == SERVER
                        and attrs_to_dict(it.span.attributes)["faas.invocation_id"] in rids]
                self.assertEqual(len(mine), 2)
                (instance,) = {it.resource["faas.instance"] for it in mine}
                spans = [it.span for it in items if it.resource.get("faas.instance") == instance]
                names = Counter(s.name for s in spans)
                self.assertEqual(names["restore"], 1)
                self.assertEqual(names["init"], 0, "the snapshot's init is not this copy's cold start")
                (restore,) = [s for s in spans if s.name == "restore"]
                first = min(mine, key=lambda it: it.span.start_time_unix_nano).span
                self.assertEqual((restore.trace_id, restore.parent_span_id), (first.trace_id, first.span_id))
                self.assertIs(attrs_to_dict(first.attributes)["faas.coldstart"], True)
                duration_ms = reports[i]["record"]["metrics"]["durationMs"]
                self.assertLessEqual(abs((restore.end_time_unix_nano - restore.start_time_unix_nano) - duration_ms * MS), MS)
        points = sink.metrics()
        restore_points = final_cumulative(points, "aws.lambda.restore_duration")
        self.assertEqual(sorted(p.count for p in restore_points.values()), [1, 1])
        self.assertEqual(counter_total(points, "faas.coldstarts"), 2)
        self.assertEqual(final_cumulative(points, "faas.init_duration"), {})


class SamplerFromTheSharedEnvironmentTest(ExtensionTestCase):
    """OTEL_TRACES_SAMPLER is the function's too: honoured, and never a failed init."""

    def run_with(self, **env):
        sink = self.make_sink()
        sim = self.make_sim(self.make_env(sink, **env), handler=HANDLER)
        init = sim.start(timeout=30)
        self.assertTrue(init.ok, self.extension_output(sim))
        results = [sim.invoke({"text": 1}, timeout=30) for _ in range(2)]
        sim.shutdown("spindown", timeout=30)
        return sim, sink, results

    def test_unknown_values_warn_once_and_keep_the_default(self):
        sim, sink, results = self.run_with(OTEL_TRACES_SAMPLER="no_such_sampler", OTEL_TRACES_SAMPLER_ARG="lots")
        output = [line for _, line in sim.process_output("lambda-otel")]
        for variable in ("OTEL_TRACES_SAMPLER:", "OTEL_TRACES_SAMPLER_ARG:"):
            warnings = [line for line in output if variable in line]
            self.assertEqual(len(warnings), 1, output)  # once, at start
            self.assertIn("WARNING", warnings[0])
        server = [s for s in sink.spans() if s.kind == SERVER]
        self.assertEqual(len(server), len(results))  # parentbased_always_on, Sampled=1

    def test_always_off_exports_no_span_but_every_log_and_metric(self):
        sim, sink, results = self.run_with(OTEL_TRACES_SAMPLER="always_off")
        self.assertEqual(sink.spans(), [])
        for r in results:
            (line,) = [i.record for i in sink.log_items() if i.record.body.string_value == f"plain line 0 of {r.request_id}"]
            self.assertEqual(line.trace_id, xray_parts(r.trace_header)[0])  # still in its trace
        self.assertEqual(counter_total(sink.metrics(), "faas.invocations"), len(results))
