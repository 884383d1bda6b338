"""Secret header values: references parsed, resolved against moto (Secrets Manager, SSM) on
127.0.0.1, failures explained once, values never written anywhere but the request headers."""

import io
import json
import logging
import time
import unittest

from lambda_otel import aws_secrets
from lambda_otel.aws_api import SECRETS_MANAGER, SSM, AwsApiError, AwsJsonClient, endpoint_url, error_code
from lambda_otel.aws_credentials import EnvironmentCredentials
from lambda_otel.aws_secrets import SecretHeaders, SecretReferenceError, SecretResolver, find_references, parse_reference
from lambda_otel.sigv4 import Credentials, StaticCredentials
from tests.aws_support import ACCOUNT, REGION, Moto, StubAws, encodings, wait_until

SIGNALS = ("traces", "metrics", "logs")


class CaptureLogs:
    """Everything lambda_otel logs, as text (the extension's stderr)."""

    def __init__(self, test):
        self.stream = io.StringIO()
        handler = logging.StreamHandler(self.stream)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger = logging.getLogger("lambda_otel")
        old_level = logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        test.addCleanup(logger.removeHandler, handler)
        test.addCleanup(logger.setLevel, old_level)

    @property
    def text(self):
        return self.stream.getvalue()


def assert_nowhere(test, value, *texts):
    for kind, encoded in encodings(value).items():
        for text in texts:
            test.assertNotIn(encoded, text, f"secret value leaked ({kind})")


class ReferenceParsing(unittest.TestCase):
    def test_secrets_manager_plain_and_json_key(self):
        ref = parse_reference(f"${{arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:otlp/key-AbCdEf}}", "V")
        self.assertEqual((ref.service, ref.region, ref.json_key), ("secretsmanager", REGION, None))
        self.assertEqual(ref.lookup, f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:otlp/key-AbCdEf")
        ref = parse_reference(f"${{arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:otlp#apiKey}}", "V")
        self.assertEqual(ref.json_key, "apiKey")
        self.assertEqual(ref.arn, f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:otlp")

    def test_ssm_parameters_are_looked_up_by_arn(self):
        arn = f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/team/otlp/key"
        self.assertEqual(parse_reference(f"${{{arn}}}", "V").lookup, arn)
        self.assertEqual(parse_reference(f"${{arn:aws:ssm:{REGION}:210987654321:parameter/shared}}", "V").region, REGION)
        self.assertEqual(parse_reference("${arn:aws-cn:ssm:cn-north-1:123456789012:parameter/x}", "V").region, "cn-north-1")

    def test_several_references_and_surrounding_text(self):
        value = (f"Bearer ${{arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:a}} and "
                 f"${{arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/b}}")
        self.assertEqual([r.service for r in find_references(value, "V")], ["secretsmanager", "ssm"])
        self.assertEqual(find_references("no references here ${HOME} $", "V"), [])

    def test_malformed_references_name_the_variable_and_not_the_value(self):
        cases = {
            "${arn:aws:secretsmanager:eu-west-1:123:secret:x}": "12-digit account",
            "${arn:aws:secretsmanager:nowhere:123456789012:secret:x}": "not a Secrets Manager secret ARN",
            "${arn:aws:secretsmanager:eu-west-1:123456789012:secret:}": "not a Secrets Manager secret ARN",
            "${arn:aws:ssm:eu-west-1:123456789012:parameter}": "not an SSM parameter ARN",
            "${arn:aws:s3:::my-bucket/key}": "secretsmanager or ssm only",
            "${arn:aws:secretsmanager:eu-west-1:123456789012:secret:x#}": "JSON key",
            "${arn:aws:secretsmanager:eu-west-1:123456789012:secret:x": "not closed",
        }
        for ref, expected in cases.items():
            with self.subTest(ref=ref):
                with self.assertRaises(SecretReferenceError) as ctx:
                    find_references(f"Bearer tok-do-not-print {ref}", "LAMBDA_OTEL_EXPORTER_HEADERS")
                message = str(ctx.exception)
                self.assertTrue(message.startswith("LAMBDA_OTEL_EXPORTER_HEADERS: "), message)
                self.assertIn(expected, message)
                self.assertNotIn("tok-do-not-print", message)


class ErrorAnswers(unittest.TestCase):
    def test_error_codes_from_json_xml_and_headers(self):
        self.assertEqual(error_code(400, b'{"__type":"com.amazonaws.secretsmanager#ResourceNotFoundException",'
                                         b'"Message":"not found"}', {}), ("ResourceNotFoundException", "not found"))
        self.assertEqual(error_code(400, b'{"__type":"AccessDeniedException","message":"no"}', {})[0],
                         "AccessDeniedException")
        self.assertEqual(error_code(403, b"<ErrorResponse><Error><Code>AccessDenied</Code></Error></ErrorResponse>", {})[0],
                         "AccessDenied")
        self.assertEqual(error_code(500, b"", {"x-amzn-ErrorType": "InternalFailure:http://x"})[0], "InternalFailure")
        self.assertEqual(error_code(502, b"<html>bad gateway</html>", {})[0], "HTTP502")

    def test_endpoint_overrides_follow_the_sdk_convention(self):
        self.assertEqual(endpoint_url(SECRETS_MANAGER, "eu-west-1", {}), "https://secretsmanager.eu-west-1.amazonaws.com")
        self.assertEqual(endpoint_url(SSM, "cn-north-1", {}), "https://ssm.cn-north-1.amazonaws.com.cn")
        env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_ENDPOINT_URL_SSM": "http://127.0.0.1:2/"}
        self.assertEqual(endpoint_url(SSM, "eu-west-1", env), "http://127.0.0.1:2")
        self.assertEqual(endpoint_url(SECRETS_MANAGER, "eu-west-1", env), "http://127.0.0.1:1")
        env["AWS_ENDPOINT_URL_SECRETS_MANAGER"] = "http://127.0.0.1:3"
        self.assertEqual(endpoint_url(SECRETS_MANAGER, "eu-west-1", env), "http://127.0.0.1:3")
        env["AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"] = "true"
        self.assertEqual(endpoint_url(SSM, "eu-west-1", env), "https://ssm.eu-west-1.amazonaws.com")


class AgainstMoto(unittest.TestCase):
    """Secrets Manager and SSM as moto implements them, with IAM enforcement where it matters."""

    @classmethod
    def setUpClass(cls):
        cls.moto = Moto()
        m = cls.moto
        cls.plain_value = "plain-s3cr3t-\u00e9-value"
        cls.json_value = "json-s3cr3t-api-key"
        cls.ssm_value = "ssm-s3cr3t-securestring"
        cls.plain_arn = m.secret("lambda-otel-test/plain", cls.plain_value)
        cls.json_arn = m.secret("lambda-otel-test/json", json.dumps({"apiKey": cls.json_value, "port": 4318}))
        cls.ssm_arn = m.parameter("/lambda-otel-test/otlp-key", cls.ssm_value)
        cls.text_arn = m.parameter("lambda-otel-test-flat", "flat-value", kind="String")
        cls.reader = m.user("lambda-otel-reader", ["secretsmanager:GetSecretValue", "ssm:GetParameter"])
        cls.ssm_only = m.user("lambda-otel-ssm-only", ["ssm:GetParameter"])
        cls.env = {"AWS_ENDPOINT_URL_SECRETS_MANAGER": m.url, "AWS_ENDPOINT_URL_SSM": m.url}

    @classmethod
    def tearDownClass(cls):
        cls.moto.stop()

    def setUp(self):
        self.moto.relax_iam()
        self.logs = CaptureLogs(self)

    def resolver(self, key=("testing", "testing"), timeout_s=5.0):
        return SecretResolver(StaticCredentials(Credentials(*key)), self.env, timeout_s=timeout_s)

    def source(self, headers, resolver=None, **kw):
        templates = {s: headers for s in SIGNALS}
        sources = {s: "LAMBDA_OTEL_EXPORTER_HEADERS" for s in SIGNALS}
        return SecretHeaders(templates, sources, resolver or self.resolver(), **kw)

    def test_plain_json_and_securestring_values(self):
        src = self.source({
            "authorization": f"Bearer ${{{self.plain_arn}}}",
            "x-api-key": f"${{{self.json_arn}#apiKey}}",
            "x-port": f"${{{self.json_arn}#port}}",
            "x-ssm": f"${{{self.ssm_arn}}}",
            "x-flat": f"${{{self.text_arn}}}",
            "x-static": "as-is",
        }, first_wait_s=0.0)
        self.assertIsNone(src.headers("traces"), "nothing to send before the references are resolved")
        self.assertTrue(src.wait(10))
        self.assertEqual(src.headers("logs"), {
            "authorization": f"Bearer {self.plain_value}",
            "x-api-key": self.json_value,
            "x-port": "4318",
            "x-ssm": self.ssm_value,
            "x-flat": "flat-value",
            "x-static": "as-is",
        })
        self.assertEqual(set(src.secret_values()), {self.plain_value, self.json_value, "4318", self.ssm_value, "flat-value"})
        self.assertIn("resolved 5 secret header reference(s)", self.logs.text)
        for value in (self.plain_value, self.json_value, self.ssm_value):
            assert_nowhere(self, value, self.logs.text)

    def test_signed_calls_pass_moto_signature_and_policy_checks(self):
        self.moto.enforce_iam()
        src = self.source({"authorization": f"${{{self.plain_arn}}}", "x-ssm": f"${{{self.ssm_arn}}}"},
                          resolver=self.resolver(self.reader))
        src.start()
        self.assertTrue(src.wait(10), self.logs.text)
        self.assertEqual(src.headers("traces")["x-ssm"], self.ssm_value)

    def test_access_denied_is_logged_once_with_arn_and_code_and_nothing_is_sent(self):
        self.moto.enforce_iam()
        now = [1000.0]
        src = self.source({"authorization": f"${{{self.plain_arn}}}", "x-ssm": f"${{{self.ssm_arn}}}"},
                          resolver=self.resolver(self.ssm_only), clock=lambda: now[0])
        src.start()
        self.assertFalse(src.wait(10))
        self.assertIsNone(src.headers("traces"))
        text = self.logs.text
        self.assertIn(f"cannot resolve {self.plain_arn} in LAMBDA_OTEL_EXPORTER_HEADERS: AccessDenied", text)
        self.assertIn("nothing is exported until it resolves", text)
        self.assertNotIn(self.ssm_arn, text, "the reference that resolved is not an error")
        # Retried after the backoff, logged once per (reference, code).
        rounds = src.rounds
        now[0] += aws_secrets.RETRY_FIRST_S + 0.1
        self.assertIsNone(src.headers("traces"))
        self.assertTrue(wait_until(lambda: src.rounds > rounds, 10))
        self.assertEqual(self.logs.text.count(f"cannot resolve {self.plain_arn}"), 1)
        # The permission is granted: the next retry succeeds, no restart needed.
        self.moto.relax_iam()
        now[0] += 2 * aws_secrets.RETRY_FIRST_S + 0.1
        self.assertIsNone(src.headers("traces"))
        self.assertTrue(src.wait(10))
        self.assertEqual(src.headers("traces")["authorization"], self.plain_value)
        assert_nowhere(self, self.plain_value, self.logs.text)
        assert_nowhere(self, self.ssm_value, self.logs.text)

    def test_wrong_secret_key_fails_moto_signature_check(self):
        self.moto.enforce_iam()
        values, errors = self.resolver((self.reader[0], "not-the-secret")).resolve(
            find_references(f"${{{self.plain_arn}}}", "V"), time.monotonic() + 5)
        self.assertEqual(values, {})
        self.assertEqual([e.code for e in errors.values()], ["SignatureDoesNotMatch"])

    def test_missing_secret_and_missing_json_key(self):
        missing = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:lambda-otel-test/absent"
        src = self.source({"a": f"${{{missing}}}", "b": f"${{{self.json_arn}#nokey}}",
                           "c": f"${{{self.plain_arn}#apiKey}}",
                           "d": f"${{arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/lambda-otel-test/absent}}"})
        src.start()
        self.assertFalse(src.wait(10))
        text = self.logs.text
        self.assertIn(f"cannot resolve {missing} in LAMBDA_OTEL_EXPORTER_HEADERS: ResourceNotFoundException", text)
        self.assertIn(f"{self.json_arn}#nokey in LAMBDA_OTEL_EXPORTER_HEADERS: JsonKeyNotFound", text)
        self.assertIn(f"{self.plain_arn}#apiKey in LAMBDA_OTEL_EXPORTER_HEADERS: SecretNotJson", text)
        self.assertIn("ParameterNotFound", text)
        assert_nowhere(self, self.plain_value, text)
        assert_nowhere(self, self.json_value, text)

    def test_refresh_interval_picks_up_a_rotated_secret_and_keeps_the_old_one_meanwhile(self):
        arn = self.moto.secret("lambda-otel-test/rotating", "value-one")
        now = [0.0]
        src = self.source({"authorization": f"${{{arn}}}"}, refresh_s=60.0, clock=lambda: now[0])
        src.start()
        self.assertTrue(src.wait(10))
        self.moto.secretsmanager.put_secret_value(SecretId=arn, SecretString="value-two")
        now[0] += 30
        self.assertEqual(src.headers("traces")["authorization"], "value-one")
        now[0] += 31
        self.assertEqual(src.headers("traces")["authorization"], "value-one", "old value while refreshing")
        self.assertTrue(wait_until(lambda: src.headers("traces")["authorization"] == "value-two", 10))

    def test_first_export_waits_briefly_for_the_resolution_under_way(self):
        src = self.source({"authorization": f"${{{self.plain_arn}}}"}, first_wait_s=10.0)
        src.start()
        self.assertEqual(src.headers("traces"), {"authorization": self.plain_value})

    def test_start_is_idempotent(self):
        src = self.source({"authorization": f"${{{self.plain_arn}}}"})
        src.start()
        src.start()
        self.assertTrue(src.wait(10))
        src.start()
        self.assertTrue(src.wait(0.2))
        self.assertEqual(src.rounds, 1, "one round for several start() calls")

    def test_renew_after_restore_resolves_again(self):
        arn = self.moto.secret("lambda-otel-test/restored", "before-snapshot")
        src = self.source({"authorization": f"${{{arn}}}"})
        src.start()
        self.assertTrue(src.wait(10))
        self.moto.secretsmanager.put_secret_value(SecretId=arn, SecretString="after-restore")
        src.renew_after_restore()
        self.assertTrue(wait_until(lambda: src.headers("traces")["authorization"] == "after-restore", 10))

    def test_per_signal_templates(self):
        src = SecretHeaders(
            {"traces": {"authorization": f"${{{self.plain_arn}}}"}, "metrics": {}, "logs": {"x-ssm": f"${{{self.ssm_arn}}}"}},
            {"traces": "LAMBDA_OTEL_EXPORTER_TRACES_HEADERS", "metrics": "OTEL_EXPORTER_OTLP_HEADERS",
             "logs": "LAMBDA_OTEL_EXPORTER_LOGS_HEADERS"}, self.resolver())
        src.start()
        self.assertTrue(src.wait(10))
        self.assertEqual(src.headers("traces"), {"authorization": self.plain_value})
        self.assertEqual(src.headers("metrics"), {})
        self.assertEqual(src.headers("logs"), {"x-ssm": self.ssm_value})


class AgainstStub(unittest.TestCase):
    """What moto cannot express: an expired token, a slow endpoint."""

    def setUp(self):
        self.logs = CaptureLogs(self)

    def test_expired_token_rereads_credentials_and_retries(self):
        def answer(headers, body):
            if headers.get("x-amz-security-token") == "old-token":
                return 400, {"__type": "ExpiredTokenException", "message": "The security token included in the request is expired"}
            return 200, {"SecretString": "fresh-value"}

        stub = StubAws(answer)
        self.addCleanup(stub.stop)
        env = {"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "old", "AWS_SESSION_TOKEN": "old-token",
               "AWS_ENDPOINT_URL": stub.url}
        creds = EnvironmentCredentials(env)
        creds.get()
        env.update(AWS_SECRET_ACCESS_KEY="new", AWS_SESSION_TOKEN="new-token")  # renewed meanwhile
        client = AwsJsonClient(SECRETS_MANAGER, REGION, creds, env)
        self.assertEqual(client.call("GetSecretValue", {"SecretId": "x"}, time.monotonic() + 5), {"SecretString": "fresh-value"})
        self.assertEqual([r["x-amz-security-token"] for r in stub.requests], ["old-token", "new-token"])
        self.assertEqual(stub.requests[0]["x-amz-target"], "secretsmanager.GetSecretValue")
        self.assertEqual(stub.requests[0]["content-type"], "application/x-amz-json-1.1")

    def test_expired_token_that_stays_expired_is_an_error_not_a_loop(self):
        stub = StubAws(lambda h, b: (400, {"__type": "ExpiredTokenException", "message": "expired"}))
        self.addCleanup(stub.stop)
        env = {"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "s", "AWS_SESSION_TOKEN": "t", "AWS_ENDPOINT_URL": stub.url}
        client = AwsJsonClient(SSM, REGION, EnvironmentCredentials(env), env)
        with self.assertRaises(AwsApiError) as ctx:
            client.call("GetParameter", {"Name": "x"}, time.monotonic() + 5)
        self.assertEqual(ctx.exception.code, "ExpiredTokenException")
        self.assertEqual(len(stub.requests), 2)

    def test_a_signature_error_quoting_the_canonical_request_never_leaks_the_token(self):
        def answer(headers, body):
            canonical = "POST\n/\n\nhost:x\nx-amz-security-token:" + headers["x-amz-security-token"]
            return 400, {"__type": "InvalidSignatureException",
                         "message": "The request signature we calculated does not match the signature you provided. "
                                    "Check your AWS Secret Access Key and signing method.\n\nThe Canonical String "
                                    f"for this request should have been\n'{canonical}'"}

        stub = StubAws(answer)
        self.addCleanup(stub.stop)
        env = {"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_SESSION_TOKEN": "the-session-token",
               "AWS_ENDPOINT_URL": stub.url}
        arn = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:x"
        src = SecretHeaders({"traces": {"authorization": f"${{{arn}}}"}}, {"traces": "V"},
                            SecretResolver(EnvironmentCredentials(env), env))
        src.start()
        self.assertFalse(src.wait(10))
        self.assertIn("InvalidSignatureException (The request signature we calculated", self.logs.text)
        self.assertNotIn("the-session-token", self.logs.text)
        self.assertNotIn("Canonical String", self.logs.text)

    def test_slow_endpoint_is_bounded_and_reported(self):
        stub = StubAws(lambda h, b: (200, {"SecretString": "too-late"}), delay=30.0)
        self.addCleanup(stub.stop)
        env = {"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "s", "AWS_ENDPOINT_URL": stub.url}
        resolver = SecretResolver(EnvironmentCredentials(env), env)
        arn = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:slow"
        src = SecretHeaders({"traces": {"authorization": f"${{{arn}}}"}}, {"traces": "OTEL_EXPORTER_OTLP_HEADERS"},
                            resolver, timeout_s=0.5)
        started = time.monotonic()
        src.start()
        self.assertIsNone(src.headers("traces"))
        self.assertFalse(src.wait(20))
        self.assertLess(time.monotonic() - started, 15, "a round must end at its timeout, not the endpoint's answer")
        self.assertIn(f"cannot resolve {arn} in OTEL_EXPORTER_OTLP_HEADERS: Timeout", self.logs.text)

    def test_missing_credentials_are_an_error_naming_the_variables(self):
        stub = StubAws(lambda h, b: (200, {"SecretString": "never"}))
        self.addCleanup(stub.stop)
        env = {"AWS_ENDPOINT_URL": stub.url}
        arn = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:x"
        src = SecretHeaders({"traces": {"authorization": f"${{{arn}}}"}}, {"traces": "OTEL_EXPORTER_OTLP_HEADERS"},
                            SecretResolver(EnvironmentCredentials(env), env))
        src.start()
        self.assertFalse(src.wait(10))
        self.assertIn("MissingCredentials", self.logs.text)
        self.assertIn("AWS_ACCESS_KEY_ID", self.logs.text)
        self.assertEqual(stub.requests, [], "nothing is sent unsigned")

    def test_control_characters_in_a_value_are_refused(self):
        stub = StubAws(lambda h, b: (200, {"SecretString": "line1\r\nX-Injected: yes"}))
        self.addCleanup(stub.stop)
        env = {"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "s", "AWS_ENDPOINT_URL": stub.url}
        arn = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:x"
        src = SecretHeaders({"traces": {"authorization": f"${{{arn}}}"}}, {"traces": "V"},
                            SecretResolver(EnvironmentCredentials(env), env))
        src.start()
        self.assertFalse(src.wait(10))
        self.assertIn("InvalidHeaderValue", self.logs.text)
        self.assertNotIn("X-Injected", self.logs.text)

    def test_headers_without_references_need_no_resolution(self):
        src = SecretHeaders({"traces": {"authorization": "Bearer literal"}}, {"traces": "V"},
                            SecretResolver(StaticCredentials(Credentials("a", "b")), {}))
        self.assertFalse(src.has_references)
        self.assertEqual(src.headers("traces"), {"authorization": "Bearer literal"})


if __name__ == "__main__":
    unittest.main()
