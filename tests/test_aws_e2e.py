"""Issue 16 end to end: the real extension process under the simulator, exporting all three
signals SigV4-signed to a sink that verifies every signature with botocore (as CloudWatch's OTLP
endpoints would), with an API key header kept in Secrets Manager (moto on 127.0.0.1).

What is proved: every export request carries a valid signature over the bytes sent (gzip and
none, with a session token) and CloudWatch Logs' headers; the secret reaches the backend only in
its header, never stderr or the exported telemetry; failures (wrong key, expired credentials,
missing secret, malformed references) are explained and never cost the function anything.
"""

import json
import threading
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf import json_format

from lambda_otel.sigv4 import Credentials, SigV4Signer, StaticCredentials
from tests.aws_support import Moto, SigV4Verifier, encodings
from tests.support import ExtensionTestCase

REGION = "eu-west-1"
KEY_ID = "ASIAE2ETESTKEY"
SECRET_KEY = "e2e/secret+key=="
TOKEN = "IQoJb3JpZ2luX2VjE2e2e//session+token=="
SERVICES = {"/v1/traces": "xray", "/v1/metrics": "monitoring", "/v1/logs": "logs"}
API_KEY = "e2e-api-key-7f3c9a1d-do-not-leak"
LOG_GROUP = "/aws/lambda/test-function"


def sigv4_env(**extra):
    env = {
        "LAMBDA_OTEL_EXPORTER_AUTH": "sigv4",
        "LAMBDA_OTEL_EXPORTER_TRACES_SIGV4_SERVICE": "xray",
        "LAMBDA_OTEL_EXPORTER_METRICS_SIGV4_SERVICE": "monitoring",
        "LAMBDA_OTEL_EXPORTER_LOGS_SIGV4_SERVICE": "logs",
        "LAMBDA_OTEL_EXPORTER_SIGV4_REGION": REGION,
        "LAMBDA_OTEL_EXPORTER_LOGS_LOG_GROUP": LOG_GROUP,
        "LAMBDA_OTEL_EXPORTER_LOGS_CREATE_STREAM": "false",
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_SESSION_TOKEN": TOKEN,
    }
    env.update(extra)
    return env


class VerifierSelfTest(unittest.TestCase):
    """The verifier must refuse what AWS would refuse, or the end-to-end test proves nothing."""

    def setUp(self):
        import time

        self.verifier = SigV4Verifier({KEY_ID: (SECRET_KEY, TOKEN)}, REGION, SERVICES)
        self.signer = SigV4Signer(StaticCredentials(Credentials(KEY_ID, SECRET_KEY, TOKEN)), REGION, "logs",
                                  clock=time.time)

    def signed(self, body=b"payload", extra=None):
        headers = {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip",
                   "x-aws-log-group": LOG_GROUP, **(extra or {})}
        headers.update(self.signer.sign("POST", "http://127.0.0.1:4318/v1/logs", headers, body))
        headers["Host"] = "127.0.0.1:4318"
        headers["User-Agent"] = "changed-by-a-proxy"
        return {k.lower(): v for k, v in headers.items()}

    def test_accepts_a_good_request_and_refuses_tampering(self):
        headers = self.signed()
        self.assertIsNone(self.verifier("POST", "/v1/logs", headers, b"payload"))
        self.assertEqual(self.verifier("POST", "/v1/logs", headers, b"payloaD"), "SignatureDoesNotMatch")
        self.assertIn("scope", self.verifier("POST", "/v1/traces", headers, b"payload"))
        self.assertEqual(self.verifier("POST", "/v1/logs", dict(headers, **{"x-aws-log-group": "/other"}), b"payload"),
                         "SignatureDoesNotMatch")
        self.assertIn("not signed", self.verifier("POST", "/v1/logs", dict(headers, **{"x-aws-log-stream": "s"}), b"payload"))
        self.assertIn("X-Amz-Security-Token",
                      self.verifier("POST", "/v1/logs", dict(headers, **{"x-amz-security-token": "other"}), b"payload"))
        no_auth = {k: v for k, v in headers.items() if k != "authorization"}
        self.assertEqual(self.verifier("POST", "/v1/logs", no_auth, b"payload"), "no SigV4 Authorization header")
        self.assertEqual(self.verifier.verified, 1)


class SinkVerifyHook(unittest.TestCase):
    """OtlpSink(verify=...) answers 403 to a request the verifier refuses, over real HTTP."""

    def test_signed_export_accepted_tampered_refused(self):
        import gzip
        import time

        import requests
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

        from lambda_otel.local.sink import OtlpSink

        verifier = SigV4Verifier({KEY_ID: (SECRET_KEY, TOKEN)}, REGION, SERVICES)
        sink = OtlpSink(verify=verifier).start()
        self.addCleanup(sink.stop)
        msg = ExportLogsServiceRequest()
        msg.resource_logs.add().scope_logs.add().log_records.add().body.string_value = "hello"
        body = gzip.compress(msg.SerializeToString())
        signer = SigV4Signer(StaticCredentials(Credentials(KEY_ID, SECRET_KEY, TOKEN)), REGION, "logs", clock=time.time)
        url = sink.url("logs")
        headers = {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}
        good = dict(headers, **signer.sign("POST", url, headers, body))
        self.assertEqual(requests.post(url, data=body, headers=good, timeout=5).status_code, 200)
        bad = requests.post(url, data=body + b"\0", headers=good, timeout=5)
        self.assertEqual(bad.status_code, 403)
        self.assertIn("SignatureDoesNotMatch", bad.text)
        self.assertEqual([r.auth_error for r in sink.requests], [None, "SignatureDoesNotMatch"])
        self.assertEqual(len(sink.log_records()), 1, "a refused request is not accepted telemetry")


class SignedExportEndToEnd(ExtensionTestCase):
    @classmethod
    def setUpClass(cls):
        cls.moto = Moto()
        cls.secret_arn = cls.moto.secret("lambda-otel-e2e/api-key", json.dumps({"apiKey": API_KEY}))
        cls.moto.logs.create_log_group(logGroupName=LOG_GROUP)

    @classmethod
    def tearDownClass(cls):
        cls.moto.stop()

    def run_function(self, sink, env, invocations=3):
        sim = self.make_sim(self.make_env(sink, **env))
        sim.start(timeout=30)
        results = [sim.invoke({"logs": 3}, timeout=30) for _ in range(invocations)]
        self.assertEqual([r.status for r in results], ["success"] * invocations, self.extension_output(sim))
        down = sim.shutdown("spindown", timeout=30)
        self.assertEqual(down.extensions["lambda-otel"].exit_code, 0, self.extension_output(sim))
        return sim

    def test_every_export_is_signed_verified_and_carries_the_secret_header_only(self):
        for compression in ("gzip", "none"):
            with self.subTest(compression=compression):
                verifier = SigV4Verifier({KEY_ID: (SECRET_KEY, TOKEN)}, REGION, SERVICES)
                sink = self.make_sink(verify=verifier)
                stream = f"lambda-otel-{compression}"
                sim = self.run_function(sink, sigv4_env(
                    LAMBDA_OTEL_EXPORTER_COMPRESSION=compression,
                    LAMBDA_OTEL_EXPORTER_HEADERS=f"x-api-key=${{{self.secret_arn}#apiKey}}",
                    AWS_ENDPOINT_URL_SECRETS_MANAGER=self.moto.url,
                    # The log stream is created in CloudWatch Logs (moto) before the first logs export.
                    LAMBDA_OTEL_EXPORTER_LOGS_CREATE_STREAM="true",
                    LAMBDA_OTEL_EXPORTER_LOGS_LOG_STREAM=stream,
                    AWS_ENDPOINT_URL_CLOUDWATCH_LOGS=self.moto.url,
                ))
                streams = self.moto.logs.describe_log_streams(logGroupName=LOG_GROUP)["logStreams"]
                self.assertIn(stream, [s["logStreamName"] for s in streams])
                requests = sink.requests
                self.assertEqual(verifier.refused, [])
                self.assertEqual({r.path for r in requests}, set(SERVICES), "all three signals exported")
                self.assertEqual(verifier.verified, len(requests))
                self.assertTrue(all(r.status == 200 and r.auth_error is None for r in requests))
                self.assertTrue(sink.spans() and sink.metrics() and sink.log_records())
                for r in requests:
                    self.assertEqual(r.headers.get("x-api-key"), API_KEY)
                    self.assertEqual(r.headers.get("content-encoding", "none"), compression if compression == "gzip" else "none")
                    if r.path == "/v1/logs":
                        self.assertEqual(r.headers["x-aws-log-group"], LOG_GROUP)
                        self.assertEqual(r.headers["x-aws-log-stream"], stream)
                # The secret is in its header and nowhere else: not stderr, not the telemetry, not other headers.
                output = self.extension_output(sim)
                exported = "\n".join(json_format.MessageToJson(r.decoded) for r in requests if r.decoded is not None)
                raw = b"".join(r.decoded.SerializeToString() for r in requests if r.decoded is not None)
                other_headers = json.dumps([{k: v for k, v in r.headers.items() if k != "x-api-key"} for r in requests])
                for kind, encoded in encodings(API_KEY).items():
                    self.assertNotIn(encoded, output, f"secret in stderr ({kind})")
                    self.assertNotIn(encoded, exported, f"secret in exported telemetry ({kind})")
                    self.assertNotIn(encoded.encode(), raw, f"secret in exported telemetry ({kind})")
                    self.assertNotIn(encoded, other_headers, f"secret in another header ({kind})")
                for text in (output, exported):
                    self.assertNotIn(SECRET_KEY, text)
                    self.assertNotIn(TOKEN, text)

    def test_a_wrong_secret_key_is_refused_by_the_backend_and_the_function_is_unaffected(self):
        verifier = SigV4Verifier({KEY_ID: (SECRET_KEY, TOKEN)}, REGION, SERVICES)
        sink = self.make_sink(verify=verifier)
        sim = self.run_function(sink, sigv4_env(AWS_SECRET_ACCESS_KEY="not-the-key"), invocations=2)
        self.assertTrue(sink.requests, "exports were attempted")
        self.assertEqual(verifier.verified, 0)
        self.assertTrue(all(r.status == 403 and r.auth_error == "SignatureDoesNotMatch" for r in sink.requests))
        self.assertIn("403", self.extension_output(sim))
        self.assertNotIn("not-the-key", self.extension_output(sim))

    def test_a_missing_secret_means_nothing_is_exported_with_a_wrong_header(self):
        missing = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:lambda-otel-e2e/absent"
        sink = self.make_sink()
        sim = self.run_function(sink, {"LAMBDA_OTEL_EXPORTER_HEADERS": f"x-api-key=${{{missing}}}",
                                       "AWS_ENDPOINT_URL_SECRETS_MANAGER": self.moto.url,
                                       "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}, invocations=2)
        self.assertEqual(sink.requests, [], "no request without the secret header")
        output = self.extension_output(sim)
        self.assertIn(f"cannot resolve {missing} in LAMBDA_OTEL_EXPORTER_HEADERS: ResourceNotFoundException", output)
        self.assertEqual(output.count(f"cannot resolve {missing}"), 1, "logged once")

    def test_malformed_reference_in_a_shared_variable_never_fails_init(self):
        sink = self.make_sink()
        sim = self.run_function(sink, {"OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=${arn:aws:secretsmanager:nowhere:1:secret:x}"},
                                invocations=1)
        output = self.extension_output(sim)
        self.assertIn("OTEL_EXPORTER_OTLP_HEADERS", output)
        self.assertIn("not a Secrets Manager secret ARN", output)
        self.assertEqual(sink.requests, [])

    def test_malformed_reference_in_our_variable_is_an_init_error_naming_it(self):
        sink = self.make_sink()
        sim = self.make_sim(self.make_env(sink, LAMBDA_OTEL_EXPORTER_HEADERS="k=${arn:aws:ssm:eu-west-1:123456789012:param/x}"))
        init = sim.start(timeout=30, check=False)
        output = self.extension_output(sim)
        self.assertIn("Extension.ConfigInvalid", output + repr(init))
        self.assertIn("LAMBDA_OTEL_EXPORTER_HEADERS", output)

    def test_missing_credentials_are_reported_and_the_function_still_runs(self):
        sink = self.make_sink()
        sim = self.run_function(sink, {"LAMBDA_OTEL_EXPORTER_AUTH": "sigv4", "LAMBDA_OTEL_EXPORTER_SIGV4_SERVICE": "xray"},
                                invocations=2)
        output = self.extension_output(sim)
        self.assertIn("AWS_ACCESS_KEY_ID", output)
        self.assertTrue(all("authorization" not in r.headers for r in sink.requests), "nothing sent unsigned")


class ExpiredCredentialsEndToEnd(ExtensionTestCase):
    """Container credentials (as SnapStart provides them): an expired-token answer makes the
    extension fetch new credentials and resend, without losing the batch."""

    def test_expired_token_answer_renews_credentials(self):
        issued = []

        class Endpoint(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                issued.append(self.headers.get("Authorization"))
                n = len(issued)
                body = json.dumps({"AccessKeyId": f"ASIAROTATED{n}", "SecretAccessKey": f"secret-{n}",
                                   "Token": f"token-{n}", "Expiration": "2099-01-01T00:00:00Z"}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)

        verifier = SigV4Verifier({f"ASIAROTATED{n}": (f"secret-{n}", f"token-{n}") for n in (1, 2, 3)}, REGION, SERVICES)

        def verify(method, path, headers, body):
            problem = verifier(method, path, headers, body)
            if problem is None and "Credential=ASIAROTATED1/" in headers.get("authorization", ""):
                return "ExpiredTokenException: The security token included in the request is expired"
            return problem

        sink = self.make_sink(verify=verify)
        env = sigv4_env(AWS_CONTAINER_CREDENTIALS_FULL_URI=f"http://127.0.0.1:{server.server_address[1]}/creds",
                        AWS_CONTAINER_AUTHORIZATION_TOKEN="container-auth")
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            env.pop(name)
        sim = self.make_sim(self.make_env(sink, **env))
        sim.start(timeout=30)
        for _ in range(2):
            self.assertEqual(sim.invoke({"logs": 1}, timeout=30).status, "success")
        down = sim.shutdown("spindown", timeout=30)
        self.assertEqual(down.extensions["lambda-otel"].exit_code, 0, self.extension_output(sim))
        self.assertGreaterEqual(len(issued), 2, "credentials fetched again after the expired-token answer")
        self.assertTrue(all(a == "container-auth" for a in issued))
        accepted = [r for r in sink.requests if r.status == 200]
        self.assertTrue(accepted and all("Credential=ASIAROTATED1/" not in r.headers["authorization"] for r in accepted))
        self.assertEqual({r.path for r in accepted}, set(SERVICES), "every signal delivered after the renewal")


class SnapStartEndToEnd(ExtensionTestCase):
    """SnapStart: the snapshot is taken with no credentials, so nothing is resolved or signed before a
    restore; every restored copy fetches its own credentials (container endpoint) and secret."""

    @classmethod
    def setUpClass(cls):
        cls.moto = Moto()
        cls.secret_arn = cls.moto.secret("lambda-otel-e2e/snap-key", API_KEY)

    @classmethod
    def tearDownClass(cls):
        cls.moto.stop()

    def test_each_restored_copy_resolves_and_signs_with_its_own_credentials(self):
        import shlex
        import shutil
        import stat
        import sys
        import tempfile
        from pathlib import Path

        from lambda_otel.local.simulator import Simulator
        from tests.support import FUNCTIONS, REPO

        issued = []

        class Endpoint(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                issued.append(self.headers.get("Authorization"))
                n = len(issued)
                body = json.dumps({"AccessKeyId": f"ASIACOPY{n}", "SecretAccessKey": f"secret-{n}", "Token": f"token-{n}",
                                   "Expiration": "2099-01-01T00:00:00Z"}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)

        verifier = SigV4Verifier({f"ASIACOPY{n}": (f"secret-{n}", f"token-{n}") for n in range(1, 6)}, REGION, SERVICES)
        sink = self.make_sink(verify=verifier)
        env = sigv4_env(AWS_CONTAINER_CREDENTIALS_FULL_URI=f"http://127.0.0.1:{server.server_address[1]}/creds",
                        AWS_CONTAINER_AUTHORIZATION_TOKEN="container-auth",
                        LAMBDA_OTEL_EXPORTER_HEADERS=f"x-api-key=${{{self.secret_arn}}}",
                        AWS_ENDPOINT_URL_SECRETS_MANAGER=self.moto.url)
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            env.pop(name)

        root = Path(tempfile.mkdtemp(prefix="lambda-otel-snap-"))
        self.addCleanup(shutil.rmtree, root, True)
        ext_dir = root / "extensions"
        ext_dir.mkdir()
        launcher = ext_dir / "lambda-otel"
        launcher.write_text(f"#!/bin/sh\nexport PYTHONPATH={shlex.quote(str(REPO))}\n"
                            f"exec {shlex.quote(sys.executable)} -m lambda_otel.local.restore_fork\n")
        launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR)
        sim = Simulator(extensions_dir=str(ext_dir), handler="e2e_handlers.handler", handler_dir=str(FUNCTIONS),
                        env=self.make_env(sink, **env), mode="snapstart", timeout_s=3.0)
        self.addCleanup(sim.stop)
        sim.start(timeout=30)
        self.assertEqual(issued, [], "no credentials fetched before the snapshot")
        self.assertEqual(sink.requests, [])
        for restore in range(2):
            self.assertEqual(sim.invoke({"logs": 2}, timeout=30).status, "success", self.extension_output(sim))
            sim.shutdown("spindown", timeout=30)
        self.assertEqual(verifier.refused, [], self.extension_output(sim))
        keys = {r.headers["authorization"].split("Credential=")[1].split("/")[0] for r in sink.requests}
        self.assertEqual(len(keys), 2, f"each restored copy signs with its own credentials: {keys}")
        self.assertEqual(len(issued), 2)
        self.assertTrue(sink.requests and all(r.headers.get("x-api-key") == API_KEY for r in sink.requests))
        for kind, encoded in encodings(API_KEY).items():
            self.assertNotIn(encoded, self.extension_output(sim), kind)


if __name__ == "__main__":
    unittest.main()
