"""SigV4: AWS's published test-suite vectors, and agreement with botocore on real export requests.

The vectors' values (request, credentials, time, expected signatures) are facts from AWS's
"Signature Version 4 test suite"; botocore is an independent implementation (test-only).
"""

import calendar
import datetime
import gzip
import hashlib
import unittest
from unittest import mock

from lambda_otel import sigv4
from lambda_otel.sigv4 import Credentials, SigV4Signer, StaticCredentials

# The test suite's fixed inputs.
SUITE_KEY_ID = "AKIDEXAMPLE"
SUITE_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
SUITE_TOKEN = (
    "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuw"
    "thAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQc"
    "HNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/o"
    "LxBA=="
)
SUITE_TIME = calendar.timegm((2015, 8, 30, 12, 36, 0))  # 20150830T123600Z
SUITE_HOST = "https://example.amazonaws.com"
SCOPE = "AKIDEXAMPLE/20150830/us-east-1/service/aws4_request"


def suite_signer(token=None) -> SigV4Signer:
    return SigV4Signer(StaticCredentials(Credentials(SUITE_KEY_ID, SUITE_SECRET, token)), "us-east-1", "service",
                       clock=lambda: SUITE_TIME)


class TestSuiteVectors(unittest.TestCase):
    """Each case: the suite's request, and the Authorization header AWS publishes for it."""

    def check(self, name, method, url, headers, body, signed, sig, token=None):
        added = suite_signer(token).sign(method, url, headers, body)
        self.assertEqual(added["X-Amz-Date"], "20150830T123600Z", name)
        self.assertEqual(
            added["Authorization"],
            f"AWS4-HMAC-SHA256 Credential={SCOPE}, SignedHeaders={signed}, Signature={sig}",
            name,
        )
        return added

    def test_get_vanilla(self):
        self.check("get-vanilla", "GET", SUITE_HOST + "/", {}, b"", "host;x-amz-date",
                   "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")

    def test_get_vanilla_query_order_key_case(self):
        self.check("get-vanilla-query-order-key-case", "GET", SUITE_HOST + "/?Param2=value2&Param1=value1", {}, b"",
                   "host;x-amz-date", "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500")

    def test_get_utf8(self):
        self.check("get-utf8", "GET", SUITE_HOST + "/\u1234", {}, b"", "host;x-amz-date",
                   "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85")

    def test_get_header_value_trim(self):
        self.check("get-header-value-trim", "GET", SUITE_HOST + "/",
                   {"My-Header1": " value1", "My-Header2": ' "a   b   c"'}, b"",
                   "host;my-header1;my-header2;x-amz-date",
                   "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736")

    def test_post_vanilla(self):
        self.check("post-vanilla", "POST", SUITE_HOST + "/", {}, b"", "host;x-amz-date",
                   "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b")

    def test_post_header_key_case(self):
        self.check("post-header-key-case", "POST", SUITE_HOST + "/", {"My-Header1": "value1"}, b"",
                   "host;my-header1;x-amz-date", "c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c")

    def test_post_x_www_form_urlencoded(self):
        body = b"Param1=value1"
        self.assertEqual(hashlib.sha256(body).hexdigest(),
                         "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e")
        self.check("post-x-www-form-urlencoded", "POST", SUITE_HOST + "/",
                   {"Content-Type": "application/x-www-form-urlencoded"}, body,
                   "content-type;host;x-amz-date", "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a")

    def test_post_sts_header_before(self):
        added = self.check("post-sts-header-before", "POST", SUITE_HOST + "/", {}, b"",
                           "host;x-amz-date;x-amz-security-token",
                           "85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead", token=SUITE_TOKEN)
        self.assertEqual(added["X-Amz-Security-Token"], SUITE_TOKEN)

    def test_sts_string_to_sign(self):
        signed = sigv4.headers_to_sign({"Host": "example.amazonaws.com", "X-Amz-Date": "20150830T123600Z",
                                        "X-Amz-Security-Token": SUITE_TOKEN})
        canonical = sigv4.canonical_request("POST", SUITE_HOST + "/", signed, sigv4.EMPTY_SHA256, "service")
        self.assertEqual(
            sigv4.string_to_sign("20150830T123600Z", "20150830/us-east-1/service/aws4_request", canonical),
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n"
            "c237e1b440d4c63c32ca95b5b99481081cb7b13c7e40434868e71567c1a882f6",
        )

    def test_canonical_request_of_get_vanilla(self):
        signed = sigv4.headers_to_sign({"Host": "example.amazonaws.com", "X-Amz-Date": "20150830T123600Z"})
        self.assertEqual(
            sigv4.canonical_request("GET", SUITE_HOST + "/", signed, sigv4.EMPTY_SHA256, "service"),
            "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n"
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        )


class SignerBehaviour(unittest.TestCase):
    def test_signing_key_is_cached_per_day_and_renewed_the_next_day(self):
        now = [SUITE_TIME]
        signer = SigV4Signer(StaticCredentials(Credentials(SUITE_KEY_ID, SUITE_SECRET)), "us-east-1", "service",
                             clock=lambda: now[0])
        with mock.patch.object(sigv4, "signing_key", wraps=sigv4.signing_key) as derive:
            signer.sign("POST", SUITE_HOST + "/", {}, b"a")
            signer.sign("POST", SUITE_HOST + "/", {}, b"b")
            self.assertEqual(derive.call_count, 1)
            now[0] += 86400
            added = signer.sign("POST", SUITE_HOST + "/", {}, b"c")
            self.assertEqual(derive.call_count, 2)
        self.assertIn("/20150831/us-east-1/service/", added["Authorization"])

    def test_new_credentials_take_effect_after_refresh(self):
        class Rotating:
            def __init__(self):
                self.n = 0

            def get(self):
                return Credentials(f"AKID{self.n}", f"secret{self.n}", None)

            def refresh(self):
                self.n += 1

        signer = SigV4Signer(Rotating(), "us-east-1", "xray", clock=lambda: SUITE_TIME)
        first = signer.sign("POST", "https://xray.us-east-1.amazonaws.com/v1/traces", {}, b"x")["Authorization"]
        signer.renew_after_restore()
        second = signer.sign("POST", "https://xray.us-east-1.amazonaws.com/v1/traces", {}, b"x")["Authorization"]
        self.assertIn("Credential=AKID0/", first)
        self.assertIn("Credential=AKID1/", second)

    def test_secrets_never_in_repr(self):
        creds = Credentials("AKIDEXAMPLE", "the-secret-key", "the-session-token")
        signer = SigV4Signer(StaticCredentials(creds), "us-east-1", "logs")
        for text in (repr(creds), str(creds), repr(signer)):
            self.assertNotIn("the-secret-key", text)
            self.assertNotIn("the-session-token", text)

    def test_content_sha256_header_only_for_services_that_want_it(self):
        body = b"payload"
        s3 = SigV4Signer(StaticCredentials(Credentials("A", "B")), "us-east-1", "s3", clock=lambda: SUITE_TIME)
        xray = SigV4Signer(StaticCredentials(Credentials("A", "B")), "us-east-1", "xray", clock=lambda: SUITE_TIME)
        self.assertEqual(s3.sign("PUT", "https://b.s3.amazonaws.com/k", {}, body)["x-amz-content-sha256"],
                         hashlib.sha256(body).hexdigest())
        self.assertIn("x-amz-content-sha256", s3.sign("PUT", "https://b.s3.amazonaws.com/k", {}, body)["Authorization"])
        self.assertNotIn("x-amz-content-sha256", xray.sign("POST", "https://xray.us-east-1.amazonaws.com/v1/traces", {}, body))

    def test_expired_token_answers(self):
        self.assertTrue(sigv4.is_expired_credentials_answer(
            403, b'{"__type":"ExpiredTokenException","message":"The security token included in the request is expired"}'))
        self.assertTrue(sigv4.is_expired_credentials_answer(400, b"<Error><Code>ExpiredToken</Code></Error>"))
        self.assertFalse(sigv4.is_expired_credentials_answer(403, b'{"__type":"AccessDeniedException"}'))
        self.assertFalse(sigv4.is_expired_credentials_answer(503, b"ExpiredToken"))


def _export_bodies():
    """Real Export*ServiceRequest bodies, one per signal, as the exporter would send them."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    traces = ExportTraceServiceRequest()
    span = traces.resource_spans.add().scope_spans.add().spans.add()
    span.name, span.trace_id, span.span_id = "invoke", bytes(range(16)), bytes(range(8))
    metrics = ExportMetricsServiceRequest()
    metric = metrics.resource_metrics.add().scope_metrics.add().metrics.add()
    metric.name = "faas.invocations"
    metric.sum.data_points.add().as_int = 3
    logs = ExportLogsServiceRequest()
    logs.resource_logs.add().scope_logs.add().log_records.add().body.string_value = "hello \u00e9"
    return {"traces": traces.SerializeToString(), "metrics": metrics.SerializeToString(), "logs": logs.SerializeToString()}


class BotocoreAgreement(unittest.TestCase):
    """Sign the same export request with us and with botocore; the Authorization headers must match."""

    ENDPOINTS = {
        "traces": ("https://xray.eu-west-1.amazonaws.com/v1/traces", "xray", {}),
        "metrics": ("https://monitoring.eu-west-1.amazonaws.com/v1/metrics", "monitoring", {}),
        "logs": ("https://logs.eu-west-1.amazonaws.com/v1/logs", "logs",
                 {"x-aws-log-group": "/aws/lambda/my-fn", "x-aws-log-stream": "lambda-otel"}),
    }

    def botocore_sign(self, url, service, headers, body, creds, when):
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials as BotoCredentials

        request = AWSRequest(method="POST", url=url, data=body, headers=dict(headers))
        fixed = datetime.datetime.fromtimestamp(when, datetime.timezone.utc).replace(tzinfo=None)
        with mock.patch("botocore.auth.get_current_datetime", return_value=fixed):
            SigV4Auth(BotoCredentials(creds.access_key_id, creds.secret_access_key, creds.session_token),
                      service, "eu-west-1").add_auth(request)
        return request.headers

    def test_all_signals_gzip_and_none_with_session_token(self):
        creds = Credentials("ASIAEXAMPLEKEYID", "sEcReT/with+chars=", "IQoJb3JpZ2luX2VjE//token+/=")
        when = 1764633600.0 + 12345
        for signal, body in _export_bodies().items():
            url, service, extra = self.ENDPOINTS[signal]
            for compression in ("gzip", "none"):
                payload = gzip.compress(body, 1) if compression == "gzip" else body
                headers = {"User-Agent": "lambda-otel/test", "Content-Type": "application/x-protobuf", **extra}
                if compression == "gzip":
                    headers["Content-Encoding"] = "gzip"
                with self.subTest(signal=signal, compression=compression):
                    ours = SigV4Signer(StaticCredentials(creds), "eu-west-1", service, clock=lambda: when)
                    added = ours.sign("POST", url, headers, payload)
                    theirs = self.botocore_sign(url, service, headers, payload, creds, when)
                    self.assertEqual(added["Authorization"], theirs["Authorization"])
                    self.assertEqual(added["X-Amz-Date"], theirs["X-Amz-Date"])
                    self.assertEqual(added["X-Amz-Security-Token"], theirs["X-Amz-Security-Token"])
                    signed = added["Authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
                    self.assertIn("content-type", signed)
                    self.assertIn("x-amz-security-token", signed)
                    self.assertNotIn("user-agent", signed)
                    if compression == "gzip":
                        self.assertIn("content-encoding", signed)
                    if signal == "logs":
                        self.assertIn("x-aws-log-group", signed)
                        self.assertIn("x-aws-log-stream", signed)

    def test_signature_covers_the_bytes_sent(self):
        creds = Credentials("AKIDEXAMPLE", "secret")
        signer = SigV4Signer(StaticCredentials(creds), "eu-west-1", "xray", clock=lambda: SUITE_TIME)
        body = _export_bodies()["traces"]
        url = self.ENDPOINTS["traces"][0]
        plain = signer.sign("POST", url, {}, body)["Authorization"]
        zipped = signer.sign("POST", url, {}, gzip.compress(body, 1))["Authorization"]
        self.assertNotEqual(plain, zipped)

    def test_paths_ports_queries_and_unusual_characters(self):
        creds = Credentials("AKIDEXAMPLE", "secret", None)
        when = SUITE_TIME
        for url in (
            "http://127.0.0.1:4318/v1/traces",
            "https://example.amazonaws.com:8443/a/b/../c/./d",
            "https://example.amazonaws.com/path%20with%20space/x",
            "https://example.amazonaws.com/v1/logs?b=2&a=1&a=0&empty=",
            "https://example.amazonaws.com/caf\u00e9/:colon@at",
            "https://[::1]:9000/v1/metrics",
        ):
            with self.subTest(url=url):
                ours = SigV4Signer(StaticCredentials(creds), "eu-west-1", "xray", clock=lambda: when)
                added = ours.sign("POST", url, {"Content-Type": "application/x-protobuf"}, b"body")
                theirs = self.botocore_sign(url, "xray", {"Content-Type": "application/x-protobuf"}, b"body", creds, when)
                self.assertEqual(added["Authorization"], theirs["Authorization"])


if __name__ == "__main__":
    unittest.main()
