"""Exporting to AWS: the configuration checks (SigV4 service and region, per-signal headers and
their references, CloudWatch's limits and log headers) and the exporter's hooks."""

import calendar
import threading
import unittest

from lambda_otel import aws_export
from lambda_otel.aws_export import ExportSigner, build_auth, header_templates
from lambda_otel.config import ConfigError, load_config
from lambda_otel.sigv4 import Credentials, StaticCredentials

XRAY = "https://xray.eu-west-1.amazonaws.com/v1/traces"
LOGS = "https://logs.eu-west-1.amazonaws.com/v1/logs"
METRICS = "https://monitoring.eu-west-1.amazonaws.com/v1/metrics"
SECRET = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:otlp-key"
CREDS = {"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "secret", "AWS_SESSION_TOKEN": "token"}


def config(**env):
    return load_config({"AWS_REGION": "us-east-1", "AWS_LAMBDA_FUNCTION_NAME": "my-fn", **CREDS, **env})


class HostFacts(unittest.TestCase):
    def test_service_and_region_from_host(self):
        self.assertEqual(aws_export.service_from_host("xray.us-east-1.amazonaws.com"), "xray")
        self.assertEqual(aws_export.service_from_host("logs.eu-west-1.amazonaws.com"), "logs")
        self.assertEqual(aws_export.service_from_host("monitoring.ap-southeast-2.amazonaws.com"), "monitoring")
        self.assertEqual(aws_export.service_from_host("logs-fips.us-gov-west-1.amazonaws.com"), "logs")
        self.assertEqual(aws_export.service_from_host("XRAY.cn-north-1.amazonaws.com.cn."), "xray")
        self.assertIsNone(aws_export.service_from_host("xray.example.com"))
        self.assertIsNone(aws_export.service_from_host("127.0.0.1"))
        self.assertEqual(aws_export.region_from_host("logs.eu-west-1.amazonaws.com"), "eu-west-1")
        self.assertIsNone(aws_export.region_from_host("logs.notaregion.amazonaws.com"))
        self.assertIsNone(aws_export.region_from_host("a.eu-west-1.example.com"))


class AwsConfiguration(unittest.TestCase):
    def test_default_is_no_signing_and_no_aws_headers(self):
        c = config(LAMBDA_OTEL_EXPORTER_ENDPOINT="https://otlp.example.com")
        self.assertEqual(c.aws.auth, "none")
        self.assertFalse(c.aws.cloudwatch)
        self.assertIsNone(c.aws.log_group)
        self.assertIsNone(build_auth(c, env={}).signer)

    def test_services_and_region_from_the_endpoints(self):
        c = config(LAMBDA_OTEL_EXPORTER_AUTH="sigv4", LAMBDA_OTEL_EXPORTER_TRACES_ENDPOINT=XRAY,
                   LAMBDA_OTEL_EXPORTER_METRICS_ENDPOINT=METRICS, LAMBDA_OTEL_EXPORTER_LOGS_ENDPOINT=LOGS)
        self.assertEqual((c.aws.traces_service, c.aws.metrics_service, c.aws.logs_service), ("xray", "monitoring", "logs"))
        self.assertEqual(c.aws.region, "eu-west-1", "the endpoint's region wins over AWS_REGION")
        self.assertTrue(c.aws.cloudwatch)
        self.assertEqual(c.warnings, ())

    def test_explicit_service_and_region(self):
        c = config(LAMBDA_OTEL_EXPORTER_AUTH="sigv4", LAMBDA_OTEL_EXPORTER_ENDPOINT="https://collector.example.com",
                   LAMBDA_OTEL_EXPORTER_SIGV4_SERVICE="aps", LAMBDA_OTEL_EXPORTER_LOGS_SIGV4_SERVICE="logs",
                   LAMBDA_OTEL_EXPORTER_SIGV4_REGION="ap-south-1")
        self.assertEqual((c.aws.traces_service, c.aws.logs_service, c.aws.region), ("aps", "logs", "ap-south-1"))
        c = config(LAMBDA_OTEL_EXPORTER_AUTH="sigv4", LAMBDA_OTEL_EXPORTER_ENDPOINT="https://collector.example.com",
                   LAMBDA_OTEL_EXPORTER_SIGV4_SERVICE="xray")
        self.assertEqual(c.aws.region, "us-east-1", "AWS_REGION when no host names a region")

    def test_unknown_service_is_a_clear_error(self):
        with self.assertRaises(ConfigError) as ctx:
            config(LAMBDA_OTEL_EXPORTER_AUTH="sigv4", LAMBDA_OTEL_EXPORTER_ENDPOINT="https://collector.example.com")
        self.assertEqual(ctx.exception.variable, "LAMBDA_OTEL_EXPORTER_SIGV4_SERVICE")
        self.assertIn("collector.example.com", str(ctx.exception))
        with self.assertRaises(ConfigError) as ctx:
            config(LAMBDA_OTEL_EXPORTER_AUTH="sigv4", LAMBDA_OTEL_EXPORTER_TRACES_ENDPOINT=XRAY,
                   LAMBDA_OTEL_EXPORTER_TRACES_SIGV4_SERVICE="X Ray!")
        self.assertEqual(ctx.exception.variable, "LAMBDA_OTEL_EXPORTER_TRACES_SIGV4_SERVICE")
        with self.assertRaises(ConfigError) as ctx:
            config(LAMBDA_OTEL_EXPORTER_AUTH="bearer")
        self.assertIn("allowed: none, sigv4", str(ctx.exception))
        with self.assertRaises(ConfigError) as ctx:
            config(LAMBDA_OTEL_EXPORTER_AUTH="sigv4", LAMBDA_OTEL_EXPORTER_TRACES_ENDPOINT=XRAY,
                   LAMBDA_OTEL_EXPORTER_SIGV4_REGION="mars-1")
        self.assertEqual(ctx.exception.variable, "LAMBDA_OTEL_EXPORTER_SIGV4_REGION")

    def test_missing_region_is_a_clear_error(self):
        with self.assertRaises(ConfigError) as ctx:
            load_config({"LAMBDA_OTEL_EXPORTER_AUTH": "sigv4", "LAMBDA_OTEL_EXPORTER_SIGV4_SERVICE": "xray",
                         "LAMBDA_OTEL_EXPORTER_ENDPOINT": "https://collector.example.com", **CREDS})
        self.assertEqual(ctx.exception.variable, "LAMBDA_OTEL_EXPORTER_SIGV4_REGION")

    def test_missing_credentials_are_a_warning_not_an_init_failure(self):
        c = load_config({"LAMBDA_OTEL_EXPORTER_AUTH": "sigv4", "LAMBDA_OTEL_EXPORTER_TRACES_ENDPOINT": XRAY})
        self.assertEqual(len(c.warnings), 1)
        self.assertIn("AWS_ACCESS_KEY_ID", c.warnings[0])
        snap = load_config({"LAMBDA_OTEL_EXPORTER_AUTH": "sigv4", "LAMBDA_OTEL_EXPORTER_TRACES_ENDPOINT": XRAY,
                            "AWS_LAMBDA_INITIALIZATION_TYPE": "snap-start"})
        self.assertEqual(snap.warnings, (), "a SnapStart snapshot has no credentials until restore")

    def test_cloudwatch_endpoints_are_recognised_by_host_or_signing_service(self):
        self.assertTrue(config(LAMBDA_OTEL_EXPORTER_TRACES_ENDPOINT=XRAY).aws.cloudwatch)
        self.assertFalse(config(LAMBDA_OTEL_EXPORTER_ENDPOINT="https://otlp.example.com").aws.cloudwatch)
        # A VPC endpoint's DNS name says nothing; the SigV4 service does.
        vpce = "https://vpce-0abc-1234.xray.eu-west-1.vpce.amazonaws.com/v1/traces"
        c = config(LAMBDA_OTEL_EXPORTER_AUTH="sigv4", LAMBDA_OTEL_EXPORTER_TRACES_ENDPOINT=vpce,
                   LAMBDA_OTEL_EXPORTER_SIGV4_SERVICE="xray")
        self.assertTrue(c.aws.cloudwatch)
        # Batch caps above CloudWatch's limits are fine: the exporter splits requests under them.
        config(LAMBDA_OTEL_EXPORTER_TRACES_ENDPOINT=XRAY, LAMBDA_OTEL_MAX_BATCH_BYTES=str(8 * 1024 * 1024),
               LAMBDA_OTEL_QUEUE_MAX_BYTES=str(64 * 1024 * 1024))

    def test_log_group_and_stream(self):
        c = config(LAMBDA_OTEL_EXPORTER_LOGS_ENDPOINT=LOGS)
        self.assertEqual((c.aws.log_group, c.aws.log_stream), ("/aws/lambda/my-fn", "lambda-otel"))
        self.assertEqual(header_templates(c)["logs"], {"x-aws-log-group": "/aws/lambda/my-fn", "x-aws-log-stream": "lambda-otel"})
        self.assertEqual(header_templates(c)["traces"], {})
        c = config(LAMBDA_OTEL_EXPORTER_LOGS_ENDPOINT=LOGS, AWS_LAMBDA_LOG_GROUP_NAME="/custom/group")
        self.assertEqual(c.aws.log_group, "/custom/group")
        c = config(LAMBDA_OTEL_EXPORTER_LOGS_ENDPOINT=LOGS, LAMBDA_OTEL_EXPORTER_LOGS_LOG_GROUP="/otel/logs",
                   LAMBDA_OTEL_EXPORTER_LOGS_LOG_STREAM="stream-1")
        self.assertEqual(header_templates(c)["logs"], {"x-aws-log-group": "/otel/logs", "x-aws-log-stream": "stream-1"})
        # A header the user sets wins.
        c = config(LAMBDA_OTEL_EXPORTER_LOGS_ENDPOINT=LOGS, LAMBDA_OTEL_EXPORTER_LOGS_HEADERS="X-AWS-Log-Group=/mine")
        self.assertEqual(header_templates(c)["logs"], {"X-AWS-Log-Group": "/mine", "x-aws-log-stream": "lambda-otel"})
        self.assertIsNone(config(LAMBDA_OTEL_EXPORTER_ENDPOINT="https://otlp.example.com").aws.log_group)

    def test_per_signal_headers_and_their_precedence(self):
        c = config(OTEL_EXPORTER_OTLP_HEADERS="a=general", OTEL_EXPORTER_OTLP_TRACES_HEADERS="a=traces")
        self.assertEqual(c.exporter.headers_for("traces"), {"a": "traces"})
        self.assertEqual(c.exporter.headers_for("logs"), {"a": "general"})
        self.assertEqual(c.exporter.header_sources["traces"], "OTEL_EXPORTER_OTLP_TRACES_HEADERS")
        # Ours beats the function's, even the function's per-signal one.
        c = config(LAMBDA_OTEL_EXPORTER_HEADERS="a=ours", OTEL_EXPORTER_OTLP_TRACES_HEADERS="a=theirs")
        self.assertEqual(c.exporter.headers_for("traces"), {"a": "ours"})
        c = config(LAMBDA_OTEL_EXPORTER_HEADERS="a=ours", LAMBDA_OTEL_EXPORTER_LOGS_HEADERS="a=ours-logs")
        self.assertEqual(c.exporter.headers_for("logs"), {"a": "ours-logs"})
        self.assertEqual(c.exporter.header_sources["logs"], "LAMBDA_OTEL_EXPORTER_LOGS_HEADERS")

    def test_malformed_reference_in_ours_is_fatal_and_names_the_variable(self):
        with self.assertRaises(ConfigError) as ctx:
            config(LAMBDA_OTEL_EXPORTER_HEADERS="authorization=Bearer%20${arn:aws:secretsmanager:eu-west-1:12:secret:x},k=v")
        self.assertEqual(ctx.exception.variable, "LAMBDA_OTEL_EXPORTER_HEADERS")
        self.assertIn("12-digit account", str(ctx.exception))
        self.assertNotIn("Bearer", str(ctx.exception))

    def test_malformed_reference_in_shared_is_a_warning_and_holds_that_signal(self):
        c = config(OTEL_EXPORTER_OTLP_TRACES_HEADERS="authorization=${arn:aws:s3:::bucket}",
                   OTEL_EXPORTER_OTLP_HEADERS=f"authorization=${{{SECRET}}}")
        self.assertEqual(list(c.exporter.held_signals), ["traces"])
        self.assertEqual(len(c.warnings), 1)
        self.assertIn("OTEL_EXPORTER_OTLP_TRACES_HEADERS", c.warnings[0])
        self.assertIn("exports no traces until it is fixed", c.warnings[0])
        source = build_auth(c, env={}).header_source
        self.assertIsNone(source.headers("traces"), "held: never sent without its headers")


class CloudWatchRequestLimits(unittest.TestCase):
    """The pipeline's exporter keeps each request under CloudWatch's 10,000 spans, signed."""

    def test_a_large_batch_is_split_into_signed_requests_under_the_limit(self):
        import os
        import time
        from unittest import mock

        from opentelemetry.proto.trace.v1 import trace_pb2

        from lambda_otel.local.sink import OtlpSink
        from lambda_otel.pipeline import Pipeline

        sink = OtlpSink().start()
        self.addCleanup(sink.stop)
        env = {"LAMBDA_OTEL_EXPORTER_AUTH": "sigv4", "LAMBDA_OTEL_EXPORTER_ENDPOINT": sink.endpoint,
               "LAMBDA_OTEL_EXPORTER_SIGV4_SERVICE": "xray", "LAMBDA_OTEL_RECEIVER_ENABLED": "false",
               "LAMBDA_OTEL_MAX_BATCH_RECORDS": "100000", "LAMBDA_OTEL_QUEUE_MAX_RECORDS": "1000000", **CREDS}
        with mock.patch.dict(os.environ, env):
            pipeline = Pipeline(config(**env), {})
        rs = trace_pb2.ResourceSpans()
        spans = rs.scope_spans.add().spans
        for i in range(25_000):
            span = spans.add()
            span.name, span.trace_id, span.span_id = "s", i.to_bytes(16, "big"), (i + 1).to_bytes(8, "big")
        with mock.patch.dict(os.environ, CREDS):
            outcome = pipeline.exporter.export("traces", [rs], time.monotonic() + 30)
        self.assertEqual(outcome.kind.name, "SUCCESS", outcome)
        counts = [sum(len(ss.spans) for r in req.decoded.resource_spans for ss in r.scope_spans) for req in sink.requests]
        self.assertEqual(sum(counts), 25_000)
        self.assertTrue(all(n <= aws_export.CLOUDWATCH_MAX_REQUEST_RECORDS for n in counts), counts)
        self.assertTrue(all("/xray/aws4_request" in r.headers["authorization"] for r in sink.requests))

    def test_a_403_quoting_the_canonical_request_never_shows_the_token(self):
        import time

        from lambda_otel.exporter import OtlpExporter
        from lambda_otel.local.sink import OtlpSink, Reply
        from lambda_otel.loss import LossCounter

        sink = OtlpSink().start()
        self.addCleanup(sink.stop)
        token = "the-session-token-value"
        sink.set_reply(Reply(status=403, body=("{\"message\":\"x-amz-security-token:" + token + "\"}").encode(),
                             content_type="application/json"))
        c = config(LAMBDA_OTEL_EXPORTER_AUTH="sigv4", LAMBDA_OTEL_EXPORTER_ENDPOINT=sink.endpoint,
                   LAMBDA_OTEL_EXPORTER_SIGV4_SERVICE="xray")
        signer = ExportSigner(StaticCredentials(Credentials("AKID", "s3cr3t", token)), "eu-west-1",
                              {c.exporter.endpoint("traces"): "xray"})
        exporter = OtlpExporter(c.exporter, LossCounter(), signer=signer)
        from opentelemetry.proto.trace.v1 import trace_pb2

        rs = trace_pb2.ResourceSpans()
        rs.scope_spans.add().spans.add().name = "s"
        with self.assertLogs("lambda_otel", "WARNING") as logs:
            outcome = exporter.export("traces", [rs], time.monotonic() + 10)
        self.assertEqual(outcome.status, 403)
        self.assertNotIn(token, outcome.error or "")
        self.assertNotIn(token, "\n".join(logs.output))
        self.assertEqual(sink.requests[0].headers["x-amz-security-token"], token, "sent, but never shown")


class SignerHooks(unittest.TestCase):
    WHEN = calendar.timegm((2026, 12, 1, 12, 0, 0))

    def test_each_endpoint_is_signed_for_its_own_service(self):
        signer = ExportSigner(StaticCredentials(Credentials("AKID", "secret", "tok")), "eu-west-1",
                              {XRAY: "xray", LOGS: "logs"}, clock=lambda: self.WHEN)
        traces = signer.sign("POST", XRAY, {"Content-Type": "application/x-protobuf"}, b"x")
        logs = signer.sign("POST", LOGS, {"Content-Type": "application/x-protobuf"}, b"x")
        self.assertIn("/20261201/eu-west-1/xray/aws4_request", traces["Authorization"])
        self.assertIn("/20261201/eu-west-1/logs/aws4_request", logs["Authorization"])
        self.assertEqual(traces["X-Amz-Security-Token"], "tok")
        self.assertEqual(signer.sign("POST", "https://elsewhere.example.com/v1/traces", {}, b"x"), {},
                         "no credentials for a URL that is not a configured endpoint")

    def test_expired_token_answer_rereads_credentials_once(self):
        class Counting(StaticCredentials):
            refreshes = 0

            def refresh(self):
                Counting.refreshes += 1

        signer = ExportSigner(Counting(Credentials("AKID", "s")), "eu-west-1", {XRAY: "xray"})
        expired = b'{"__type":"ExpiredTokenException","message":"The security token included in the request is expired"}'
        self.assertFalse(signer.on_rejected(403, b'{"__type":"AccessDeniedException"}'))
        self.assertTrue(signer.on_rejected(403, expired))
        self.assertFalse(signer.on_rejected(403, expired), "not again right away: no resend loop")
        self.assertGreaterEqual(Counting.refreshes, 1)

    def test_requests_refused_together_renew_once_and_each_is_resent(self):
        # Traces and logs go out from two threads at once and are refused together: the second
        # refusal was signed before the first one's re-read, so it is resent without a second re-read.
        signer = ExportSigner(StaticCredentials(Credentials("AKID", "s")), "eu-west-1", {XRAY: "xray", LOGS: "logs"})
        renewals = []
        real_renew = signer.renew_after_restore
        signer.renew_after_restore = lambda: (renewals.append(1), real_renew())
        expired = b'{"__type":"ExpiredTokenException","message":"The security token included in the request is expired"}'
        signed = threading.Barrier(2, timeout=5)
        first_renewed = threading.Event()
        answers = {}

        def export(url, first):
            signer.sign("POST", url, {}, b"x")
            signed.wait()  # both signed before either is refused
            if not first:
                first_renewed.wait(5)
            answers[url] = [signer.on_rejected(403, expired)]
            if first:
                first_renewed.set()
            signer.sign("POST", url, {}, b"x")  # the resend, refused again: no second re-read, no loop
            answers[url].append(signer.on_rejected(403, expired))

        threads = [threading.Thread(target=export, args=(XRAY, True)), threading.Thread(target=export, args=(LOGS, False))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        self.assertEqual(answers, {XRAY: [True, False], LOGS: [True, False]})
        self.assertEqual(len(renewals), 1, "the credentials were re-read once")

    def test_secret_values_for_redaction(self):
        signer = ExportSigner(StaticCredentials(Credentials("AKID", "the-secret", "the-token")), "eu-west-1", {XRAY: "xray"})
        self.assertEqual(set(signer.secret_values()), {"the-secret", "the-token"})

    def test_start_loads_credentials_ahead_of_the_first_export(self):
        class Counting(StaticCredentials):
            def __init__(self, creds):
                super().__init__(creds)
                self.gets = 0

            def get(self):
                self.gets += 1
                return super().get()

        from tests.aws_support import wait_until

        creds = Counting(Credentials("AKID", "s"))
        auth = build_auth(config(LAMBDA_OTEL_EXPORTER_AUTH="sigv4", LAMBDA_OTEL_EXPORTER_TRACES_ENDPOINT=XRAY),
                          env={}, credentials=creds)
        self.assertEqual(creds.gets, 0, "nothing loaded at build time (a SnapStart snapshot has no credentials)")
        auth.start()
        auth.start()
        self.assertTrue(wait_until(lambda: creds.gets == 1, 10))

    def test_without_aws_use_nothing_of_it_is_imported(self):
        import subprocess
        import sys

        code = ("import sys; from lambda_otel.config import load_config; from lambda_otel.aws_export import build_auth; "
                "a = build_auth(load_config({'OTEL_EXPORTER_OTLP_HEADERS': 'k=v'}), env={}); "
                "assert a.signer is None and a.header_source.headers('traces') == {'k': 'v'}; "
                "print(sorted(m for m in sys.modules if m in ('lambda_otel.sigv4', 'lambda_otel.aws_secrets', "
                "'lambda_otel.aws_credentials', 'lambda_otel.aws_api', 'hashlib', 'hmac')))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.strip(), "[]")

    def test_build_auth_wires_config(self):
        c = config(LAMBDA_OTEL_EXPORTER_AUTH="sigv4", LAMBDA_OTEL_EXPORTER_TRACES_ENDPOINT=XRAY,
                   LAMBDA_OTEL_EXPORTER_LOGS_ENDPOINT=LOGS)
        auth = build_auth(c, env=CREDS)
        self.assertIsNotNone(auth.signer)
        added = auth.signer.sign("POST", LOGS, {}, b"body")
        self.assertIn("/eu-west-1/logs/aws4_request", added["Authorization"])
        self.assertEqual(auth.header_source.headers("logs"),
                         {"x-aws-log-group": "/aws/lambda/my-fn", "x-aws-log-stream": "lambda-otel"})
        self.assertEqual(auth.header_source.headers("traces"), {})


class LogStreamCreation(unittest.TestCase):
    """CloudWatch Logs' OTLP endpoint needs an existing stream: created at start (moto as CloudWatch Logs)."""

    @classmethod
    def setUpClass(cls):
        from tests.aws_support import Moto

        cls.moto = Moto()
        cls.moto.logs.create_log_group(logGroupName="/aws/lambda/my-fn")

    @classmethod
    def tearDownClass(cls):
        cls.moto.stop()

    def setUp(self):
        self.moto.relax_iam()

    def auth(self, key=("AKID", "secret"), **env):
        c = config(LAMBDA_OTEL_EXPORTER_AUTH="sigv4", LAMBDA_OTEL_EXPORTER_LOGS_ENDPOINT=LOGS, **env)
        creds = {"AWS_ACCESS_KEY_ID": key[0], "AWS_SECRET_ACCESS_KEY": key[1], "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS": self.moto.url}
        return build_auth(c, env=creds)

    def streams(self):
        return [s["logStreamName"] for s in self.moto.logs.describe_log_streams(logGroupName="/aws/lambda/my-fn")["logStreams"]]

    def test_created_once_then_logs_may_be_sent(self):
        auth = self.auth(LAMBDA_OTEL_EXPORTER_LOGS_LOG_STREAM="created-here")
        auth.start()
        self.assertEqual(auth.header_source.headers("logs"),
                         {"x-aws-log-group": "/aws/lambda/my-fn", "x-aws-log-stream": "created-here"})
        self.assertTrue(auth.header_source.log_stream.ready(10))
        self.assertEqual(auth.header_source.log_stream.outcome, "created")
        self.assertIn("created-here", self.streams())
        again = self.auth(LAMBDA_OTEL_EXPORTER_LOGS_LOG_STREAM="created-here")
        again.start()
        self.assertTrue(again.header_source.log_stream.ready(10))
        self.assertEqual(again.header_source.log_stream.outcome, "exists")

    def test_missing_group_and_missing_permission_are_logged_and_logs_still_flow(self):
        with self.assertLogs("lambda_otel.aws_export", "WARNING") as logs:
            auth = self.auth(LAMBDA_OTEL_EXPORTER_LOGS_LOG_GROUP="/no/such/group", LAMBDA_OTEL_SECRETS_TIMEOUT_MS="1200")
            auth.start()
            self.assertTrue(auth.header_source.log_stream.ready(10))
        self.assertEqual(auth.header_source.log_stream.outcome, "ResourceNotFoundException")
        self.assertIn("'/no/such/group'", logs.output[0])
        self.assertIsNotNone(auth.header_source.headers("logs"), "sent anyway, in case the stream exists")

        user = self.moto.user("lambda-otel-no-create", ["logs:PutLogEvents"])
        self.moto.enforce_iam()
        with self.assertLogs("lambda_otel.aws_export", "WARNING") as logs:
            auth = self.auth(key=user, LAMBDA_OTEL_EXPORTER_LOGS_LOG_STREAM="denied")
            auth.start()
            self.assertTrue(auth.header_source.log_stream.ready(10))
        self.assertEqual(auth.header_source.log_stream.outcome, "AccessDenied")
        self.assertIn("logs:CreateLogStream", logs.output[0])

    def test_not_without_sigv4_or_when_turned_off(self):
        self.assertIsNone(build_auth(config(LAMBDA_OTEL_EXPORTER_LOGS_ENDPOINT=LOGS), env={}).header_source.log_stream)
        off = config(LAMBDA_OTEL_EXPORTER_AUTH="sigv4", LAMBDA_OTEL_EXPORTER_LOGS_ENDPOINT=LOGS,
                     LAMBDA_OTEL_EXPORTER_LOGS_CREATE_STREAM="false")
        self.assertIsNone(build_auth(off, env={}).header_source.log_stream)

    def test_logs_wait_for_the_setup_under_way(self):
        from tests.aws_support import StubAws

        stub = StubAws(lambda h, b: (200, {}), delay=1.0)
        self.addCleanup(stub.stop)
        c = config(LAMBDA_OTEL_EXPORTER_AUTH="sigv4", LAMBDA_OTEL_EXPORTER_LOGS_ENDPOINT=LOGS)
        auth = build_auth(c, env={"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b",
                                  "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS": stub.url})
        auth.header_source._first_wait_s = 0.0
        auth.start()
        self.assertIsNone(auth.header_source.headers("logs"), "no logs export before the stream exists")
        self.assertEqual(auth.header_source.headers("traces"), {}, "other signals are not held")
        self.assertTrue(auth.header_source.log_stream.ready(10))
        self.assertIsNotNone(auth.header_source.headers("logs"))
        self.assertEqual(stub.requests[0]["x-amz-target"], "Logs_20140328.CreateLogStream")


class BenchSmoke(unittest.TestCase):
    def test_bench_sigv4_quick_runs(self):
        import subprocess
        import sys
        from pathlib import Path

        root = Path(__file__).resolve().parent.parent
        out = subprocess.run([sys.executable, "-m", "bench.bench_sigv4", "--quick"], cwd=root, capture_output=True,
                             text=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("SigV4 (ours)", out.stdout)


if __name__ == "__main__":
    unittest.main()
