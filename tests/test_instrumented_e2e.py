"""Issue 14 end to end: lambda-otel beside a function instrumented the standard way, and beside Powertools.

The function runs in ITS OWN virtual environment (tests/fn_venv.py: the real
``opentelemetry-instrumentation-aws-lambda``, ``xray-lambda`` propagator, OTel SDK and
``AwsLambdaResourceDetector``; separately the real ``aws-lambda-powertools``), under the real
awslambdaric, under the simulator; lambda-otel runs as its own process and exports to the sink.
What the backend holds must be one picture per invocation:

* every sampled invocation is ONE tree (one root, every parent present) with ONE SERVER span:
  the function's when it is instrumented, ours when it is not;
* ``Sampled=0`` invocations have no spans from either side, their logs still arrive with the trace id;
* every log record exactly once, in text and in JSON log format (the SDK's copy wins; print output
  comes through the Telemetry API);
* Powertools fields mapped to the conventions, checked against what the function printed.
"""

import json
import unittest
from collections import Counter, defaultdict
from datetime import datetime

from lambda_otel.local.simulator import new_trace_header
from lambda_otel.local.sink import attrs_to_dict
from opentelemetry.proto.trace.v1 import trace_pb2
from tests.fn_venv import OTEL_FUNCTION_PINS, POWERTOOLS_FUNCTION_PINS, function_python
from tests.support import ExtensionTestCase, counter_total

SERVER = trace_pb2.Span.SPAN_KIND_SERVER
INTERNAL = trace_pb2.Span.SPAN_KIND_INTERNAL
ERROR = trace_pb2.Status.STATUS_CODE_ERROR
LEVELS = {"DEBUG": 5, "INFO": 9, "WARNING": 13, "ERROR": 17}


def xray(header: str):
    parts = dict(p.split("=", 1) for p in header.split(";"))
    _, epoch, rest = parts["Root"].split("-")
    return bytes.fromhex(epoch + rest), bytes.fromhex(parts["Parent"]), parts["Sampled"] == "1"


def ours(item) -> bool:
    return item.resource.get("telemetry.distro.name") == "lambda-otel"


class InstrumentedFunctionTest(ExtensionTestCase):
    """opentelemetry-instrumentation-aws-lambda + xray-lambda, in the function's own venv."""

    EVENTS = [  # (event, sampled)
        ({"spans": 2, "logged": ["INFO", "WARNING"], "print": 1}, True),
        ({"spans": 1, "logged": ["ERROR", "DEBUG", "INFO"], "print": 2}, False),
        ({"spans": 3, "logged": ["INFO"], "print": 0}, True),
        ({"spans": 1, "logged": ["WARNING"], "print": 1, "error": True}, True),
        ({"spans": 0, "logged": ["INFO", "INFO"], "print": 1}, False),
        ({"spans": 2, "logged": [], "print": 1}, True),
    ]

    @classmethod
    def setUpClass(cls):
        cls.python = function_python(OTEL_FUNCTION_PINS)

    def run_function(self, log_format="Text", instrumented=True, late_logs=False):
        sink = self.make_sink()
        env = self.make_env(sink, AWS_LAMBDA_LOG_FORMAT=log_format, OTEL_PROPAGATORS="xray-lambda",
                            OTEL_FN_INSTRUMENT="1" if instrumented else "0", OTEL_BSP_SCHEDULE_DELAY="60000",
                            OTEL_BLRP_SCHEDULE_DELAY="60000", OTEL_FN_LATE_LOGS="1" if late_logs else "0")
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{env['LAMBDA_OTEL_RECEIVER_PORT']}"
        handler = "otel_function.handler"
        sim = self.make_sim(env, handler=handler, runtime_cmd=[self.python, "-m", "awslambdaric", handler],
                            timeout_s=10.0)
        sim.start(timeout=60)
        results = []
        events = [(dict(e, last=i == len(self.EVENTS) - 1), sampled) for i, (e, sampled) in enumerate(self.EVENTS)]
        for event, sampled in events:
            r = sim.invoke(event, trace_header=new_trace_header(sampled=sampled), timeout=60)
            self.assertEqual(r.status, "error" if event.get("error") else "success", r.error_body)
            results.append((r, event, sampled))
        down = sim.shutdown("spindown", timeout=30)
        self.assertEqual(down.extensions["lambda-otel"].exit_code, 0, self.extension_output(sim))
        return sim, sink, results

    def check_trees(self, sink, results, instrumented):
        by_trace = defaultdict(list)
        for item in sink.span_items():
            by_trace[item.span.trace_id].append(item)
        for i, (r, event, sampled) in enumerate(results):
            root_id, parent_id, _ = xray(r.trace_header)
            items = by_trace.pop(root_id, [])
            with self.subTest(invocation=i, sampled=sampled):
                if not sampled:
                    self.assertEqual(items, [], "spans of an unsampled trace were exported")
                    continue
                spans = [it.span for it in items]
                ids = {s.span_id for s in spans}
                self.assertEqual(len(ids), len(spans), "duplicate span ids")
                roots = [s for s in spans if not s.parent_span_id]
                self.assertEqual(len(roots), 1, "one tree: exactly one root")
                self.assertEqual([s for s in spans if s.parent_span_id and s.parent_span_id not in ids], [],
                                 "every parent is in the trace")
                servers = [it for it in items if it.span.kind == SERVER]
                self.assertEqual(len(servers), 1, "exactly one SERVER span")
                (platform,) = [it.span for it in items if ours(it) and it.span.name == "test-function"]
                self.assertEqual(platform.span_id, parent_id)  # the X-Ray Parent the function saw
                self.assertIs(roots[0], platform)
                self.assertEqual(attrs_to_dict(platform.attributes)["faas.invocation_id"], r.request_id)
                if instrumented:
                    (fn,) = [it for it in servers if not ours(it)]
                    self.assertEqual(fn.span.parent_span_id, platform.span_id)
                    self.assertEqual(platform.kind, INTERNAL)
                    work = [s for s in spans if s.name.startswith("work ")]
                    self.assertEqual(len(work), event["spans"])
                    self.assertTrue(all(s.parent_span_id == fn.span.span_id for s in work))
                else:
                    self.assertTrue(ours(servers[0]))
                    self.assertEqual(platform.kind, SERVER)
                if event.get("error"):
                    self.assertEqual(platform.status.code, ERROR)
                    self.assertEqual(attrs_to_dict(platform.attributes)["error.type"], "FunctionError")
        self.assertEqual([k.hex() for k in by_trace], [], "spans in traces of no invocation")

    def check_logs_once(self, sink, results):
        items = sink.log_items()
        got = Counter(it.record.body.string_value for it in items if it.record.body.HasField("string_value"))
        traces = defaultdict(set)
        for it in items:
            traces[it.record.body.string_value].add(it.record.trace_id)
        for r, event, _ in results:
            root_id, _, _ = xray(r.trace_header)
            expected = [f"logged {i} at {level} of {r.request_id}" for i, level in enumerate(event["logged"])]
            expected += [f"printed {i} of {r.request_id}" for i in range(event["print"])]
            for text in expected:
                with self.subTest(line=text):
                    self.assertEqual(got[text], 1, "not exactly once")
                    self.assertEqual(traces[text], {root_id}, "not in its invocation's trace")
        logged = sum(len(e["logged"]) for _, e, _ in results)
        return logged

    def test_instrumented_text_format_one_tree_sampling_and_logs_once(self):
        sim, sink, results = self.run_function("Text")
        self.check_trees(sink, results, instrumented=True)
        logged = self.check_logs_once(sink, results)
        points = sink.metrics()
        self.assertEqual(counter_total(points, "lambda_otel.logs.deduplicated"), logged)
        self.assertEqual(counter_total(points, "faas.invocations"), len(results) - 1)  # successful ones
        self.assertEqual(counter_total(points, "faas.errors", **{"error.type": "FunctionError"}), 1)
        # The uncaught exception: one ERROR record with exception.* from the runtime's own line.
        (exc,) = [it.record for it in sink.log_items() if it.record.event_name == "faas.invocation.exception"]
        a = attrs_to_dict(exc.attributes)
        self.assertEqual((a["exception.type"], exc.severity_number), ("FunctionError", 17))
        self.assertEqual(a["exception.message"], f"asked to fail in {results[3][0].request_id}")
        self.assertIn('raise FunctionError(f"asked to fail in {rid}")', a["exception.stacktrace"])
        self.check_resource_agreement(sink)

    def test_instrumented_json_format_logs_once(self):
        sim, sink, results = self.run_function("JSON")
        self.check_trees(sink, results, instrumented=True)
        logged = self.check_logs_once(sink, results)
        self.assertEqual(counter_total(sink.metrics(), "lambda_otel.logs.deduplicated"), logged)

    def test_sdk_sending_its_logs_late_still_logs_once(self):
        """The SDK exports an invocation's records during the next one (no flush before returning):
        the Telemetry API's lines went out first, the SDK's late copies are dropped."""
        sim, sink, results = self.run_function("Text", late_logs=True)
        self.check_trees(sink, results, instrumented=True)
        logged = self.check_logs_once(sink, results)
        self.assertEqual(counter_total(sink.metrics(), "lambda_otel.logs.deduplicated"), logged)

    def test_uninstrumented_function_keeps_our_server_root(self):
        sim, sink, results = self.run_function("Text", instrumented=False)
        self.check_trees(sink, results, instrumented=False)
        self.check_logs_once(sink, results)
        self.assertEqual(counter_total(sink.metrics(), "lambda_otel.logs.deduplicated"), 0)

    def check_resource_agreement(self, sink):
        """Keys both resources set agree (faas.max_memory: the detector sends MB where semconv says
        bytes; faas.instance: the log stream name is not in an extension's environment)."""
        theirs = next(it.resource for it in sink.span_items() if not ours(it))
        mine = next(it.resource for it in sink.span_items() if ours(it))
        shared = (set(theirs) & set(mine)) - {"faas.max_memory", "faas.instance", "service.name"}
        self.assertGreaterEqual(shared, {"cloud.provider", "cloud.platform", "cloud.region", "faas.name", "faas.version"})
        self.assertEqual({k: mine[k] for k in shared}, {k: theirs[k] for k in shared})


class PowertoolsLoggerTest(ExtensionTestCase):
    """Powertools' Logger (real package, own venv): every mapped field against what it printed."""

    def test_fields_mapped_to_conventions(self):
        python = function_python(POWERTOOLS_FUNCTION_PINS)
        sink = self.make_sink()
        handler = "powertools_function.handler"
        sim = self.make_sim(self.make_env(sink), handler=handler, runtime_cmd=[python, "-m", "awslambdaric", handler],
                            timeout_s=10.0)
        sim.start(timeout=60)
        results = [sim.invoke({"order": i}, timeout=60) for i in range(2)]
        self.assertEqual([r.status for r in results], ["success", "success"])
        sim.shutdown("spindown", timeout=30)

        printed = []
        for e in sim.telemetry_events("function"):
            rec = e["record"]
            if isinstance(rec, str) and rec.startswith("{"):
                rec = json.loads(rec)
            if isinstance(rec, dict) and "service" in rec:
                printed.append(rec)
        self.assertEqual(len(printed), 6)
        records = {(attrs_to_dict(it.record.attributes).get("faas.invocation_id"), it.record.body.string_value): it.record
                   for it in sink.log_items() if it.scope == "lambda-otel.function"}
        for sent in printed:
            with self.subTest(message=sent["message"], rid=sent["function_request_id"]):
                rec = records[(sent["function_request_id"], sent["message"])]
                a = attrs_to_dict(rec.attributes)
                ts = datetime.strptime(sent["timestamp"], "%Y-%m-%d %H:%M:%S,%f%z")
                self.assertEqual(rec.time_unix_nano // 1_000_000, int(ts.timestamp() * 1000))
                self.assertEqual(rec.severity_number, LEVELS[sent["level"]])
                self.assertEqual(rec.severity_text, sent["level"])
                root = sent["xray_trace_id"]
                self.assertEqual(rec.trace_id.hex(), root[2:10] + root[11:])
                function, line = sent["location"].rsplit(":", 1)
                self.assertEqual((a["code.function.name"], a["code.line.number"]), (function, int(line)))
                self.assertEqual(a["faas.coldstart"], sent["cold_start"])
                self.assertEqual(a["powertools.service"], "checkout")  # never a second service.name
                for dropped in ("function_request_id", "xray_trace_id", "function_name", "function_arn",
                                "function_memory_size", "timestamp", "level", "message", "service", "location",
                                "cold_start", "service.name"):
                    self.assertNotIn(dropped, a)
                if "exception" in sent:
                    self.assertEqual(a["exception.type"], sent["exception_name"])
                    self.assertEqual(a["exception.stacktrace"], sent["exception"])
                    self.assertEqual(a["exception.message"], "'user'")
                    self.assertNotIn("exception_name", a)
                if "order_id" in sent:
                    self.assertEqual(a["order_id"], sent["order_id"])
        self.assertEqual(len(records), 6)


if __name__ == "__main__":
    unittest.main()
