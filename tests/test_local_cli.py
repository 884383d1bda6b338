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


class ArgumentsTest(unittest.TestCase):
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
            script = open(path).read().replace("-m lambda_otel", "-c 'import lambda_otel; print(lambda_otel.__file__)'")
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


if __name__ == "__main__":
    unittest.main()
