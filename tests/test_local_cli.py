"""lambda-otel-local, run end to end as a subprocess (simulator, real processes, real OTLP sink)."""

import io
import os
import subprocess
import sys
import tempfile
import textwrap
import unittest
from contextlib import redirect_stderr

from opentelemetry.proto.trace.v1 import trace_pb2

from lambda_otel.local import cli
from lambda_otel.local.sink import OtlpSink, SpanItem

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE_EXTENSIONS = os.path.join(ROOT, "tests", "fixtures", "cli", "extensions")
APP = os.path.join(ROOT, "lambda_otel", "app.py")


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lambda_otel.local", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )


def lines_after(text: str, heading: str) -> list:
    """The indented lines under a heading such as 'Spans (6):'."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    out = []
    for line in lines[start + 1:]:
        if not line.startswith(" "):
            break
        out.append(line)
    return out


class FixtureExtensionTest(unittest.TestCase):
    """The CLI with --extensions-dir: a tiny stdlib extension that exports OTLP/JSON per INVOKE."""

    def test_prints_metrics_span_trees_logs_and_summary(self):
        proc = run_cli("--extensions-dir", FIXTURE_EXTENSIONS, "--invocations", "3",
                       "--env", "OTEL_SERVICE_NAME=from-cli-env")
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        out = proc.stdout
        metrics = lines_after(out, "Metrics (")
        self.assertIn("  fixture.invocations = 3  [sum, 3 points]", metrics)
        self.assertIn("  fixture.shutdowns = 1  [sum, 1 point]", metrics)

        spans = lines_after(out, "Spans (6)")
        self.assertEqual(sum(1 for line in spans if line.startswith("  trace ")), 3)
        # Each child is printed right under its parent, one level deeper.
        for i, line in enumerate(spans):
            if "- fixture.invoke" in line:
                self.assertIn("- fixture.child", spans[i + 1])
                self.assertGreater(len(spans[i + 1]) - len(spans[i + 1].lstrip()), len(line) - len(line.lstrip()))
        self.assertIn("[from-cli-env, span", "\n".join(spans))  # --env reached the extension

        logs = lines_after(out, "Logs (3)")
        self.assertEqual(len(logs), 3)
        for line in logs:
            trace = line.split("trace=")[1].split()[0]
            request_id = line.split("fixture saw ")[1]
            self.assertEqual(trace, request_id.replace("-", ""))  # the log's trace id is printed

        summary = "\n".join(lines_after(out, "Summary:"))
        self.assertIn("invocations: 3 (1 error, 2 success)", summary)
        self.assertIn("extension overhead", summary)
        self.assertIn("extension fixture-ext: exit code 0, exited in time", summary)
        self.assertIn("/v1/traces 200 x3", summary)

    def test_endpoint_forwards_and_prints_only_the_summary(self):
        collector = OtlpSink().start()  # stands in for a real collector
        self.addCleanup(collector.stop)
        proc = run_cli("--extensions-dir", FIXTURE_EXTENSIONS, "--invocations", "2",
                       "--endpoint", collector.endpoint)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertNotIn("Metrics (", proc.stdout)
        self.assertNotIn("Spans (", proc.stdout)
        self.assertIn("invocations: 2 (1 error, 1 success)", proc.stdout)
        self.assertNotIn("backend requests", proc.stdout)  # there is no local sink to report on
        self.assertEqual(sorted(s.name for s in collector.spans()), ["fixture.child"] * 2 + ["fixture.invoke"] * 2)
        self.assertEqual(len(collector.log_records()), 2)

    def test_custom_handler(self):
        with tempfile.TemporaryDirectory() as task:
            with open(os.path.join(task, "myapp.py"), "w") as fh:
                fh.write(textwrap.dedent("""
                    def handle(event, context):
                        print("custom handler ran", event.get("n"))
                        return {"n": event.get("n")}
                """))
            proc = run_cli("--extensions-dir", FIXTURE_EXTENSIONS, "-n", "2",
                           "--handler", "myapp.handle", "--handler-dir", task, "--verbose")
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertIn("invocations: 2 (2 success)", proc.stdout)  # this handler ignores "error"
        self.assertIn("custom handler ran 1", proc.stdout)  # --verbose prints the runtime's output
        self.assertIn("sink: POST /v1/traces -> 200 2 spans", proc.stdout)  # and each sink request

    def test_init_failure_is_reported_and_the_run_goes_on(self):
        proc = run_cli("--extensions-dir", FIXTURE_EXTENSIONS, "-n", "1",
                       "--handler", "no_such_module.handler", "--handler-dir", ROOT)
        self.assertEqual(proc.returncode, 1, proc.stdout + proc.stderr)
        self.assertIn("lambda-otel-local: init failed: error Runtime.ImportModuleError", proc.stderr)
        summary = "\n".join(lines_after(proc.stdout, "Summary:"))
        self.assertIn("init: error", summary)
        self.assertIn("invocations: 1 (1 error)", summary)  # Lambda retries init on the invoke; it fails again


@unittest.skipUnless(os.path.exists(APP), "extension not built yet (lambda_otel/app.py is missing)")
class LambdaOtelEndToEndTest(unittest.TestCase):
    """The zero-configuration run: the real lambda-otel extension, the demo function, the sink."""

    def test_zero_configuration_run(self):
        proc = run_cli()
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        out = proc.stdout
        metrics = "\n".join(lines_after(out, "Metrics ("))
        self.assertIn("faas.invocations = 4", metrics)  # successful ones (one invocation fails)
        spans = lines_after(out, "Spans (")
        self.assertTrue(any("demo.handler" in line for line in spans), out)
        self.assertTrue(any("ERROR" in line for line in spans), out)  # the failing invocation
        logs = "\n".join(lines_after(out, "Logs ("))
        self.assertEqual(logs.count("demo: handling request"), 5)
        self.assertRegex(logs, r"trace=[0-9a-f]{32} demo: handling request")
        summary = "\n".join(lines_after(out, "Summary:"))
        self.assertIn("invocations: 5 (1 error, 4 success)", summary)
        self.assertIn("extension lambda-otel: exit code 0, exited in time", summary)
        self.assertIn("drops reported to the backend (lambda_otel.dropped, as of its last export): none", summary)
        self.assertNotIn("dropped by the extension (its final flush line)", summary)  # nothing was lost
        self.assertNotIn("never delivered", summary)
        self.assertRegex(metrics, r"faas\.mem_usage = count=5 sum=[0-9.]+ min=[0-9.]+ max=[0-9.]+ MiB")
        self.assertEqual(proc.stderr.count("Traceback"), 0, proc.stderr)

    def test_the_function_spans_hang_under_the_invocation_span(self):
        """One tree per invocation with exactly one SERVER span: the demo's, under lambda-otel's."""
        proc = run_cli("-n", "3")
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        traces = span_trees(lines_after(proc.stdout, "Spans ("))
        self.assertEqual(len(traces), 3)
        for spans in traces.values():
            roots = [(name, tags) for depth, name, tags in spans if depth == 0]
            self.assertEqual(len(roots), 1, spans)  # one tree ...
            self.assertEqual(roots[0][0], "test-function")  # ... rooted at the invocation span
            self.assertEqual([name for _, name, tags in spans if "server" in tags], ["demo.handler"])
            depth = {name: d for d, name, _ in spans}
            self.assertEqual((depth["demo.handler"], depth["demo.work"]), (1, 2))
        self.assertNotIn("(parent not received)", proc.stdout)

    def test_init_error_cause_is_said_once_without_verbose(self):
        proc = run_cli("-n", "2", "--env", "LAMBDA_OTEL_FLUSH_STRATEGY=bogus")
        self.assertEqual(proc.returncode, 1, proc.stdout + proc.stderr)
        self.assertEqual(proc.stderr.count("\n"), 1, proc.stderr)  # one line, not one per retried init
        self.assertIn("init failed: error Extension.InitError", proc.stderr)
        self.assertIn("LAMBDA_OTEL_FLUSH_STRATEGY: 'bogus' is not allowed", proc.stderr)  # the cause itself
        summary = "\n".join(lines_after(proc.stdout, "Summary:"))
        self.assertIn("LAMBDA_OTEL_FLUSH_STRATEGY", summary)
        self.assertEqual(summary.count("(init failed again)"), 2)
        self.assertIn("drops reported to the backend: unknown (no metrics reached it)", summary)

    def test_mistyped_handler_is_one_clear_line(self):
        proc = run_cli("-n", "1", "--handler", "demo_function.no_such_handler",
                       "--handler-dir", os.path.join(ROOT, "lambda_otel", "local"))
        self.assertEqual(proc.returncode, 1, proc.stdout + proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)
        self.assertNotIn("socketserver", proc.stderr)
        self.assertIn("Runtime.HandlerNotFound", proc.stderr)
        self.assertIn("no_such_handler", proc.stderr)

    def test_what_was_dropped_is_in_the_summary(self):
        """A dead traces endpoint: the spans lambda-otel gave up on are counted in the summary, by reason."""
        proc = run_cli("-n", "2", "--env", "LAMBDA_OTEL_EXPORTER_TRACES_ENDPOINT=http://127.0.0.1:1/v1/traces")
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        summary = "\n".join(lines_after(proc.stdout, "Summary:"))
        self.assertRegex(summary, r"dropped by the extension \(its final flush line\): [1-9]\d* \("
                                  r"(retries_exhausted|export_failed|shutdown_deadline): ")
        self.assertNotIn("/v1/traces", summary)  # no span reached the backend ...
        self.assertIn("/v1/metrics 200", summary)  # ... the other signals did

    def test_printed_lines_are_capped(self):
        proc = run_cli("-n", "4", "--max-lines", "3")
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        logs = lines_after(proc.stdout, "Logs (")
        self.assertEqual(len(logs), 4)
        self.assertRegex(logs[-1], r"^  \.\.\. \d+ more \(--max-lines 0 prints all\)$")
        spans = lines_after(proc.stdout, "Spans (")
        self.assertEqual(sum(1 for line in spans if line.startswith("  trace ")), 1)  # whole traces only
        self.assertRegex(spans[-1], r"^  \.\.\. 3 more trace\(s\), \d+ spans")

    def test_managed_instances_mode(self):
        """Overlapping invocations in worker processes, lambda-otel registered for SHUTDOWN only, exit 0."""
        proc = run_cli("-n", "8", "--mode", "managed-instances", "--concurrency", "4")
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        summary = "\n".join(lines_after(proc.stdout, "Summary:"))
        self.assertIn("init (lambda-managed-instances): success", summary)
        self.assertIn("invocations: 8 (1 error, 7 success)", summary)
        self.assertEqual(summary.count("extension overhead -"), 8)  # no INVOKE event, so no post-invoke phase
        self.assertRegex(summary, r"overlap: at most [1-4] invocations at once \(concurrency 4: as many runtime "
                                  r"worker processes\)")
        self.assertIn("extension lambda-otel: exit code 0, exited in time", summary)
        metrics = "\n".join(lines_after(proc.stdout, "Metrics ("))
        self.assertIn("faas.invocations = 7 {invocation}", metrics)
        traces = span_trees(lines_after(proc.stdout, "Spans ("))
        self.assertEqual(len(traces), 8)
        for spans in traces.values():
            self.assertEqual(len([name for depth, name, _ in spans if depth == 0]), 1, spans)

    def test_snapstart_mode_two_restores_two_sandboxes(self):
        proc = run_cli("-n", "4", "--mode", "snapstart")
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        summary = "\n".join(lines_after(proc.stdout, "Summary:"))
        self.assertIn("init (snap-start): success", summary)
        self.assertRegex(summary, r"restore 1: success in [0-9.]+ ms \(lambda-otel pid \d+\)")
        self.assertRegex(summary, r"restore 2: success in [0-9.]+ ms \(lambda-otel pid \d+\)")
        self.assertEqual(summary.count("extension lambda-otel: exit code 0, exited in time"), 2)
        metrics = "\n".join(lines_after(proc.stdout, "Metrics ("))
        # the 3 successful invocations, counted by two sandboxes, summed (not the latest of one)
        self.assertRegex(metrics, r"faas\.invocations = 3 \{invocation\}  \[sum, \d+ points, 2 sandboxes\]")
        self.assertRegex(metrics, r"aws\.lambda\.restore_duration = count=2 ")


def span_trees(lines: list) -> dict:
    """{trace id: [(depth, name, tags)]} from the printed span trees."""
    traces: dict = {}
    current = None
    for line in lines:
        if line.startswith("  trace "):
            current = traces.setdefault(line.split()[1], [])
        elif line.lstrip().startswith("- ") and current is not None:
            depth = (len(line) - len(line.lstrip()) - 4) // 2
            name = line.lstrip()[2:].split(" ")[0]
            tags = line.rsplit("[", 1)[1].split("]")[0].split(", ")
            current.append((depth, name, tags))
    return traces


def metric_point(name, value, instance, unit="", kind="sum", delta=False, when=1):
    from opentelemetry.proto.metrics.v1 import metrics_pb2

    from lambda_otel.local.sink import MetricPoint

    metric = metrics_pb2.Metric(name=name, unit=unit)
    temporality = 1 if delta else 2
    if kind == "sum":
        point = metric.sum.data_points.add(as_int=value, time_unix_nano=when)
        metric.sum.aggregation_temporality = temporality
    else:
        point = metric.histogram.data_points.add(count=1, sum=value, min=value, max=value, time_unix_nano=when)
        metric.histogram.aggregation_temporality = temporality
    return MetricPoint(name, point, {"faas.instance": instance}, metric)


class ArgumentsTest(unittest.TestCase):
    def test_series_are_summed_over_sandboxes(self):
        """A backend's view: the latest cumulative point of each sandbox, added up; delta points all added."""
        points = [metric_point("faas.invocations", 1, "a", when=1), metric_point("faas.invocations", 2, "a", when=2),
                  metric_point("faas.invocations", 5, "b", when=3),
                  metric_point("d", 1, "a", delta=True), metric_point("d", 1, "a", delta=True, when=2),
                  metric_point("faas.mem_usage", 64 * 1024 * 1024, "a", unit="By", kind="histogram"),
                  metric_point("faas.mem_usage", 32 * 1024 * 1024, "b", unit="By", kind="histogram")]
        out = io.StringIO()
        cli.print_metrics(points, out)
        text = out.getvalue()
        self.assertIn("faas.invocations = 7  [sum, 3 points, 2 sandboxes]", text)
        self.assertIn("d = 2  [sum, 2 points]", text)
        self.assertIn("faas.mem_usage = count=2 sum=96.000 min=32.000 max=64.000 MiB  [histogram, 2 points, 2 sandboxes]",
                      text)

    def test_final_flush_drops_summed_over_processes(self):
        lines = [("stderr", "[lambda-otel] WARNING lambda_otel.flush: final flush: sent {'logs': 3}, unsent at deadline 0, "
                            "dropped over lifetime {'queue_full': 5, 'export_failed': 2}, 0.120s"),
                 ("stdout", "unrelated"),
                 ("stderr", "[lambda-otel] INFO lambda_otel.flush: final flush: sent {}, unsent at deadline 0, "
                            "dropped over lifetime {'queue_full': 1}, 0.010s")]
        self.assertEqual(cli.final_flush_drops(lines), {"queue_full": 6, "export_failed": 2})
        self.assertEqual(cli.final_flush_drops([("stderr", "final flush: dropped over lifetime {bad")]), {})

    def test_dropped_counts_per_signal_and_reason(self):
        from opentelemetry.proto.common.v1 import common_pb2

        points = []
        for instance, value in (("a", 3), ("b", 4)):
            mp = metric_point("lambda_otel.dropped", value, instance)
            for key, val in (("signal", "logs"), ("reason", "queue_full")):
                mp.point.attributes.append(common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(string_value=val)))
            points.append(mp)
        self.assertEqual(cli.dropped_counts(points), {("logs", "queue_full"): 7})
        self.assertEqual(cli.dropped_counts([metric_point("faas.invocations", 1, "a")]), {})

    def test_modes_and_limits(self):
        args = cli.parse_args(["--mode", "managed-instances", "--concurrency", "8"])
        self.assertEqual((args.mode, args.concurrency), ("managed-instances", 8))
        self.assertIn("--mode", self.assert_usage_error("--mode", "provisioned"))
        self.assertIn("--concurrency", self.assert_usage_error("--concurrency", "0"))
        self.assertIn("--restores", self.assert_usage_error("--restores", "0"))
        self.assertIn("--max-lines", self.assert_usage_error("--max-lines", "-1"))

    def assert_usage_error(self, *argv: str) -> str:
        err = io.StringIO()
        with redirect_stderr(err), self.assertRaises(SystemExit) as ctx:
            cli.parse_args(list(argv))
        self.assertEqual(ctx.exception.code, 2)
        return err.getvalue()

    def test_bad_arguments(self):
        self.assertIn("--invocations", self.assert_usage_error("--invocations", "0"))
        self.assertIn("KEY=VALUE", self.assert_usage_error("--env", "NOEQUALS"))
        self.assertIn("module.function", self.assert_usage_error("--handler", "nodot"))
        self.assertIn("needs --handler", self.assert_usage_error("--handler-dir", "/tmp"))
        self.assertIn("not a folder", self.assert_usage_error("--extensions-dir", "/nonexistent/dir"))

    def test_env_and_payloads(self):
        args = cli.parse_args(["--env", "A=1", "--env", "B=x=y", "--endpoint", "http://127.0.0.1:1"])
        env = cli.build_env(args, args.endpoint, own_extension=True)
        self.assertEqual((env["A"], env["B"]), ("1", "x=y"))
        self.assertEqual(env["LAMBDA_OTEL_EXPORTER_ENDPOINT"], "http://127.0.0.1:1")
        self.assertEqual(env["OTEL_EXPORTER_OTLP_ENDPOINT"], f"http://127.0.0.1:{env['LAMBDA_OTEL_RECEIVER_PORT']}")
        self.assertNotIn("OTEL_EXPORTER_OTLP_ENDPOINT", cli.build_env(args, None, own_extension=False))
        self.assertEqual([p.get("error", False) for p in cli.payloads(5)], [False, False, True, False, False])
        self.assertEqual(cli.payloads(1), [{"n": 1}])

    def test_launcher_runs_this_checkout(self):
        with tempfile.TemporaryDirectory() as folder:
            path = cli.write_launcher(folder)
            self.assertEqual(os.path.basename(path), "lambda-otel")
            self.assertTrue(os.access(path, os.X_OK))
            # The launcher's interpreter and path must be the ones running now: check by running it
            # with a module that only prints where lambda_otel comes from.
            with open(path) as fh:
                script = fh.read().replace("-m lambda_otel", "-c 'import lambda_otel; print(lambda_otel.__file__)'")
            probe = os.path.join(folder, "probe")
            with open(probe, "w") as fh:
                fh.write(script)
            os.chmod(probe, 0o755)
            out = subprocess.run([probe], capture_output=True, text=True, timeout=60, cwd=folder,
                                 env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
            self.assertEqual(out.stdout.strip(), os.path.join(ROOT, "lambda_otel", "__init__.py"), out.stderr)

    def test_span_tree_survives_bad_parent_links(self):
        def item(span_id: bytes, parent: bytes, name: str) -> SpanItem:
            span = trace_pb2.Span(trace_id=b"\x01" * 16, span_id=span_id, parent_span_id=parent, name=name,
                                  start_time_unix_nano=1, end_time_unix_nano=2_000_001)
            return SpanItem(span, {"service.name": "s"}, "scope")

        out = io.StringIO()
        cli.print_spans([item(b"a" * 8, b"b" * 8, "A"), item(b"b" * 8, b"a" * 8, "B"),
                         item(b"c" * 8, b"z" * 8, "orphan")], out)
        text = out.getvalue()
        self.assertIn("- orphan 2.0 ms", text)
        self.assertIn("(parent not received)", text)
        self.assertIn("(parent links form a cycle:)", text)  # shown once each, no endless loop
        self.assertEqual((text.count("- A "), text.count("- B ")), (1, 1))


class SimulatorMainTest(unittest.TestCase):
    def test_exits_non_zero_when_init_fails(self):
        proc = subprocess.run([sys.executable, "-m", "lambda_otel.local.simulator", "--handler", "no_such_module.handler",
                               "--handler-dir", ROOT, "--invokes", "1"],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        self.assertEqual(proc.returncode, 1, proc.stdout + proc.stderr)
        self.assertIn('"errorType": "Runtime.ImportModuleError"', proc.stdout)


if __name__ == "__main__":
    unittest.main()
