"""Configuration: the declared table, defaults, precedence between OTEL_* and LAMBDA_OTEL_*, which values
may fail init (ours) and which only warn (shared), consistent limits, the self-export check and redaction."""

import ast
import re
import tempfile
import unittest
from pathlib import Path
from unittest import mock

from lambda_otel import config_reference
from lambda_otel.config import (
    SETTINGS,
    VARIABLES,
    Config,
    ConfigError,
    InitType,
    OtlpProtocol,
    is_ours,
    load_config,
    parse_key_values,
    redact_url,
)
from tests.support import ExtensionTestCase, free_port

REPO = Path(__file__).resolve().parent.parent


def warning_for(config: Config, variable: str) -> str:
    found = [w for w in config.warnings if w.startswith(f"{variable}: ")]
    assert len(found) == 1, f"expected one warning for {variable}, got {config.warnings}"
    return found[0]


class DefaultsTest(unittest.TestCase):
    def test_empty_environment_gives_documented_defaults(self):
        c = load_config({})
        self.assertIsNone(c.exporter.traces_endpoint)
        self.assertFalse(c.exporter.any_endpoint)
        self.assertEqual(c.exporter.compression, "gzip")
        self.assertEqual(c.flush.strategy, "default")
        self.assertEqual(c.flush.interval_s, 20.0)
        self.assertEqual(c.telemetry.types, ("platform", "function", "extension"))
        self.assertEqual((c.telemetry.max_items, c.telemetry.max_bytes, c.telemetry.timeout_ms), (10000, 1048576, 25))
        self.assertEqual(c.receiver.port, 4318)
        self.assertTrue(c.receiver.enabled)
        self.assertEqual(c.metrics_temporality, "cumulative")
        self.assertEqual(c.xray_mode, "join")
        self.assertIsNone(c.queue.memory_mb)
        self.assertEqual(c.queue.budget(), load_config({"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128"}).queue.budget())
        self.assertEqual(c.warnings, ())
        self.assertEqual(c, Config(), "load_config({}) is exactly the dataclass defaults")

    def test_memory_size_is_read(self):
        self.assertEqual(load_config({"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024"}).queue.memory_mb, 1024)

    def test_function_facts_for_the_resource(self):
        c = load_config({"AWS_LAMBDA_FUNCTION_NAME": "fn", "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                         "AWS_DEFAULT_REGION": "eu-west-1", "AWS_LAMBDA_LOG_STREAM_NAME": "2026/12/01/[$LATEST]ab"})
        self.assertEqual((c.function.name, c.function.version, c.function.region, c.function.log_stream_name),
                         ("fn", "$LATEST", "eu-west-1", "2026/12/01/[$LATEST]ab"))
        both = load_config({"AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "eu-west-1"})
        self.assertEqual(both.function.region, "us-east-1")


class InitTypeTest(unittest.TestCase):
    def test_each_kind_of_environment(self):
        for raw, kind in (("on-demand", InitType.ON_DEMAND), ("provisioned-concurrency", InitType.PROVISIONED),
                          ("snap-start", InitType.SNAP_START), (" Lambda-Managed-Instances ", InitType.MANAGED_INSTANCES)):
            with self.subTest(raw=raw):
                self.assertIs(load_config({"AWS_LAMBDA_INITIALIZATION_TYPE": raw}).init_type, kind)
                self.assertIs(InitType.from_env(raw), kind)

    def test_missing_or_unknown_is_on_demand_never_an_error(self):
        self.assertIs(load_config({}).init_type, InitType.ON_DEMAND)
        for raw in ("", "   ", "some-future-kind"):
            with self.subTest(raw=raw):
                self.assertIs(load_config({"AWS_LAMBDA_INITIALIZATION_TYPE": raw}).init_type, InitType.ON_DEMAND)
                self.assertIs(InitType.from_env(raw), InitType.ON_DEMAND)
        c = load_config({"AWS_LAMBDA_INITIALIZATION_TYPE": "some-future-kind"})
        self.assertIn("on-demand", warning_for(c, "AWS_LAMBDA_INITIALIZATION_TYPE"))


class EndpointTest(unittest.TestCase):
    def test_base_endpoint_gets_signal_paths(self):
        c = load_config({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector.example:4318/"})
        self.assertEqual(c.exporter.traces_endpoint, "https://collector.example:4318/v1/traces")
        self.assertEqual(c.exporter.metrics_endpoint, "https://collector.example:4318/v1/metrics")
        self.assertEqual(c.exporter.logs_endpoint, "https://collector.example:4318/v1/logs")

    def test_base_endpoint_with_a_query_keeps_the_query_after_the_path(self):
        c = load_config({"LAMBDA_OTEL_EXPORTER_ENDPOINT": "https://collector.example/otlp/?token=abc"})
        self.assertEqual(c.exporter.traces_endpoint, "https://collector.example/otlp/v1/traces?token=abc")

    def test_per_signal_endpoint_is_used_as_is(self):
        c = load_config(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "https://a.example",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://b.example/custom/traces",
            }
        )
        self.assertEqual(c.exporter.traces_endpoint, "https://b.example/custom/traces")
        self.assertEqual(c.exporter.logs_endpoint, "https://a.example/v1/logs")

    def test_lambda_otel_endpoint_wins_over_the_shared_otel_one(self):
        # The function's SDK points at our receiver; the extension must export elsewhere.
        c = load_config(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces",
                "LAMBDA_OTEL_EXPORTER_ENDPOINT": "https://backend.example",
                "LAMBDA_OTEL_EXPORTER_LOGS_ENDPOINT": "https://logs.example/ingest",
            }
        )
        self.assertEqual(c.exporter.traces_endpoint, "https://backend.example/v1/traces")
        self.assertEqual(c.exporter.metrics_endpoint, "https://backend.example/v1/metrics")
        self.assertEqual(c.exporter.logs_endpoint, "https://logs.example/ingest")
        self.assertEqual(c.warnings, (), "shadowed shared values are none of our business")

    def test_a_bad_shared_per_signal_endpoint_falls_back_to_the_base_one(self):
        c = load_config({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://a.example",
                         "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "ftp://x/v1/traces"})
        self.assertEqual(c.exporter.traces_endpoint, "https://a.example/v1/traces")
        self.assertIn("uses OTEL_EXPORTER_OTLP_ENDPOINT instead", warning_for(c, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))

    def test_not_a_url(self):
        with self.assertRaises(ConfigError) as ctx:
            load_config({"LAMBDA_OTEL_EXPORTER_ENDPOINT": "collector:4318"})
        self.assertEqual(ctx.exception.variable, "LAMBDA_OTEL_EXPORTER_ENDPOINT")
        self.assertIn("http://", str(ctx.exception))
        c = load_config({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"})
        self.assertFalse(c.exporter.any_endpoint)
        self.assertIn("exports no traces", warning_for(c, "OTEL_EXPORTER_OTLP_ENDPOINT"))

    def test_a_shadowed_bad_value_of_ours_still_fails(self):
        env = {f"LAMBDA_OTEL_EXPORTER_{s}_ENDPOINT": "https://x.example/v1" for s in ("TRACES", "METRICS", "LOGS")}
        env["LAMBDA_OTEL_EXPORTER_ENDPOINT"] = "collector:4318"
        with self.assertRaises(ConfigError) as ctx:
            load_config(env)
        self.assertEqual(ctx.exception.variable, "LAMBDA_OTEL_EXPORTER_ENDPOINT")


class SelfExportTest(unittest.TestCase):
    """An endpoint that is our own receiver loops: fatal from our variables, a warning from the shared ones."""

    def test_our_own_receiver_in_any_spelling_is_refused(self):
        spellings = ("127.0.0.1", "localhost", "localhost.", "LOCALHOST", "127.1", "127.0.0.2", "0", "0.0.0.0",
                     "2130706433", "[::1]", "[0:0:0:0:0:0:0:1]", "[::ffff:127.0.0.1]", "[::]", "api.localhost",
                     "sandbox.localdomain", "localhost.localdomain", "ip6-localhost", "ip6-loopback")
        for host in spellings:
            with self.subTest(host=host), self.assertRaises(ConfigError) as ctx:
                load_config({"LAMBDA_OTEL_EXPORTER_ENDPOINT": f"http://{host}:4318"})
            self.assertEqual(ctx.exception.variable, "LAMBDA_OTEL_EXPORTER_ENDPOINT")
            self.assertIn("would loop", str(ctx.exception))
        with self.assertRaises(ConfigError) as ctx:
            load_config({"LAMBDA_OTEL_EXPORTER_LOGS_ENDPOINT": "https://127.1:4400/v1/logs",
                         "LAMBDA_OTEL_RECEIVER_PORT": "4400"})
        self.assertEqual(ctx.exception.variable, "LAMBDA_OTEL_EXPORTER_LOGS_ENDPOINT")

    def test_config_never_asks_dns(self):
        # It runs before the first /next: a name on the receiver's port (the usual
        # http://collector:4318) costs no lookup there; the exporter judges what the name resolves to
        # (tests.test_exporter.SelfExportAtRunTimeTest, tests.test_local_e2e's alias case).
        asked = []

        def no_dns(*args, **kwargs):
            asked.append(args)
            raise OSError("no lookup here")

        with mock.patch("socket.getaddrinfo", no_dns), mock.patch("socket.gethostbyname", no_dns):
            for url in ("http://collector:4318", "http://vm:4318", "https://backend.example", "http://10.0.0.1:4318"):
                with self.subTest(url=url):
                    c = load_config({"LAMBDA_OTEL_EXPORTER_ENDPOINT": url})
                    self.assertEqual(c.exporter.logs_endpoint, url + "/v1/logs")
                    c = load_config({"OTEL_EXPORTER_OTLP_ENDPOINT": url})
                    self.assertEqual(c.exporter.traces_endpoint, url + "/v1/traces")
                    self.assertEqual(c.warnings, ())
        self.assertEqual(asked, [])

    def test_remote_hosts_are_not_mistaken_for_loopback(self):
        for host in ("backend.example", "10.0.0.1", "128.0.0.1", "localhost.example.com", "[2001:db8::1]", "1"):
            with self.subTest(host=host):
                load_config({"LAMBDA_OTEL_EXPORTER_ENDPOINT": f"http://{host}:4318"})

    def test_receiver_on_another_port_makes_loopback_endpoint_fine(self):
        c = load_config({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "LAMBDA_OTEL_RECEIVER_PORT": "4400"})
        self.assertEqual(c.exporter.traces_endpoint, "http://127.0.0.1:4318/v1/traces")

    def test_the_shared_endpoint_pointing_at_us_only_warns(self):
        # The usual set-up of a function whose SDK sends to us, before LAMBDA_OTEL_EXPORTER_ENDPOINT is set.
        c = load_config({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4318"})
        self.assertFalse(c.exporter.any_endpoint)
        message = warning_for(c, "OTEL_EXPORTER_OTLP_ENDPOINT")
        self.assertIn("would loop", message)
        self.assertIn("traces, metrics, logs", message)
        self.assertIn("LAMBDA_OTEL_EXPORTER_ENDPOINT", message)


class RedactionTest(unittest.TestCase):
    SECRETS = ("pa55w0rd", "t0k3n", "alice")

    def test_redact_url(self):
        self.assertEqual(redact_url("https://alice:pa55w0rd@c.example:4318/v1/traces?token=t0k3n&x"),
                         "https://<redacted>@c.example:4318/v1/traces?token=<redacted>&<redacted>")
        self.assertEqual(redact_url("https://c.example/v1/traces"), "https://c.example/v1/traces")
        self.assertEqual(redact_url("alice:pa55w0rd@c.example"), "<redacted>")

    def test_config_errors_never_show_url_credentials(self):
        for url in ("https://alice:pa55w0rd@127.0.0.1:4318/?token=t0k3n", "https://alice:pa55w0rd@c.example:99999",
                    "alice:pa55w0rd@c.example:4318", "ftp://alice:pa55w0rd@c.example/?token=t0k3n",
                    "http://alice:pa55w0rd@[::1"):
            with self.subTest(url=url), self.assertRaises(ConfigError) as ctx:
                load_config({"LAMBDA_OTEL_EXPORTER_ENDPOINT": url})
            for secret in self.SECRETS:
                self.assertNotIn(secret, str(ctx.exception))

    def test_warnings_never_show_url_credentials(self):
        for url in ("https://alice:pa55w0rd@127.0.0.1:4318/?token=t0k3n", "ftp://alice:pa55w0rd@c.example/?token=t0k3n"):
            with self.subTest(url=url):
                c = load_config({"OTEL_EXPORTER_OTLP_ENDPOINT": url})
                self.assertTrue(c.warnings)
                for secret in self.SECRETS:
                    self.assertNotIn(secret, " ".join(c.warnings))

    def test_the_init_error_sent_to_lambda_has_no_credentials(self):
        from lambda_otel import app

        with self.assertRaises(app.StartupError) as ctx:  # prepare() fails before it uses the client
            app.prepare(client=None, registration=None,
                      env={"LAMBDA_OTEL_EXPORTER_ENDPOINT": "https://alice:pa55w0rd@localhost:4318/?token=t0k3n"})
        self.assertEqual(ctx.exception.error_type, "Extension.ConfigInvalid")
        self.assertIn("LAMBDA_OTEL_EXPORTER_ENDPOINT", str(ctx.exception))
        for secret in self.SECRETS:
            self.assertNotIn(secret, str(ctx.exception))


class HeadersTest(unittest.TestCase):
    def test_headers_are_percent_decoded(self):
        c = load_config({"OTEL_EXPORTER_OTLP_HEADERS": "api-key=a%20b , x-team=obs"})
        self.assertEqual(c.exporter.headers, {"api-key": "a b", "x-team": "obs"})

    def test_malformed_headers_never_echo_the_value(self):
        with self.assertRaises(ConfigError) as ctx:
            load_config({"LAMBDA_OTEL_EXPORTER_HEADERS": "Authorization Bearer s3cr3t"})
        self.assertEqual(ctx.exception.variable, "LAMBDA_OTEL_EXPORTER_HEADERS")
        self.assertNotIn("s3cr3t", str(ctx.exception))
        c = load_config({"OTEL_EXPORTER_OTLP_HEADERS": "Authorization Bearer s3cr3t"})
        self.assertEqual(c.exporter.headers, {})
        self.assertIn("sends no extra headers", warning_for(c, "OTEL_EXPORTER_OTLP_HEADERS"))
        self.assertNotIn("s3cr3t", " ".join(c.warnings))

    def test_line_breaks_in_header_values_are_refused_without_echo(self):
        for raw in ("Authorization=Bearer%20s3cr3t%0AX-Injected:%201", "Authorization=s3cr3t%0D%0A", "k%0A=s3cr3t"):
            with self.subTest(raw=raw), self.assertRaises(ConfigError) as ctx:
                load_config({"LAMBDA_OTEL_EXPORTER_HEADERS": raw})
            self.assertIn("control character", str(ctx.exception))
            self.assertNotIn("s3cr3t", str(ctx.exception))

    def test_resource_attributes(self):
        self.assertEqual(parse_key_values("X", "a=1,b=x%2Cy"), {"a": "1", "b": "x,y"})
        c = load_config({"OTEL_RESOURCE_ATTRIBUTES": "k"})
        self.assertEqual(c.resource_attributes, {})
        self.assertIn("adds no attributes", warning_for(c, "OTEL_RESOURCE_ATTRIBUTES"))


class ProtocolTest(unittest.TestCase):
    def test_http_json_is_accepted_per_signal(self):
        c = load_config({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
        self.assertEqual({s: c.exporter.protocol(s) for s in ("traces", "metrics", "logs")},
                         dict.fromkeys(("traces", "metrics", "logs"), OtlpProtocol.HTTP_JSON))
        self.assertEqual(c.warnings, ())
        c = load_config({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json", "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": "http/protobuf",
                         "LAMBDA_OTEL_EXPORTER_METRICS_PROTOCOL": "http/protobuf"})
        self.assertEqual((c.exporter.traces_protocol, c.exporter.metrics_protocol, c.exporter.logs_protocol),
                         (OtlpProtocol.HTTP_JSON, OtlpProtocol.HTTP_PROTOBUF, OtlpProtocol.HTTP_PROTOBUF))

    def test_grpc_keeps_http_protobuf_and_says_so_once(self):
        c = load_config({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
        self.assertEqual(c.exporter.protocol("traces"), OtlpProtocol.HTTP_PROTOBUF)
        message = warning_for(c, "OTEL_EXPORTER_OTLP_PROTOCOL")
        self.assertIn("not supported by lambda-otel", message)
        self.assertIn("http/protobuf", message)
        c = load_config({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"})
        self.assertEqual(c.exporter.traces_protocol, OtlpProtocol.HTTP_JSON)
        self.assertEqual(c.exporter.logs_protocol, OtlpProtocol.HTTP_PROTOBUF)
        with self.assertRaises(ConfigError) as ctx:
            load_config({"LAMBDA_OTEL_EXPORTER_PROTOCOL": "grpc"})
        self.assertIn("http/protobuf, http/json", str(ctx.exception))


class ValidationTest(unittest.TestCase):
    """Every bad value names its variable and what is allowed: fatal for ours, a warning for shared ones."""

    OURS = [
        ("LAMBDA_OTEL_FLUSH_STRATEGY", "sometimes", "default, end, periodic, continuous"),
        ("LAMBDA_OTEL_FLUSH_INTERVAL_MS", "soon", "100.."),
        ("LAMBDA_OTEL_TELEMETRY_TIMEOUT_MS", "24", "25..30000"),
        ("LAMBDA_OTEL_TELEMETRY_TIMEOUT_MS", "30001", "25..30000"),
        ("LAMBDA_OTEL_TELEMETRY_MAX_ITEMS", "999", "1000..10000"),
        ("LAMBDA_OTEL_TELEMETRY_MAX_BYTES", "262143", "262144..1048576"),
        ("LAMBDA_OTEL_TELEMETRY_TYPES", "platform,metrics", "platform, function, extension"),
        ("LAMBDA_OTEL_TELEMETRY_PORT", "9001", "except 9001"),
        ("LAMBDA_OTEL_RECEIVER_ENABLED", "maybe", "true, false"),
        ("LAMBDA_OTEL_RECEIVER_PORT", "80", "1024..65535"),
        ("LAMBDA_OTEL_EXPORTER_COMPRESSION", "brotli", "gzip, none"),
        ("LAMBDA_OTEL_EXPORTER_TIMEOUT", "-5", "1.."),
        ("LAMBDA_OTEL_EXPORTER_METRICS_TEMPORALITY_PREFERENCE", "sometimes", "cumulative, delta, lowmemory"),
        ("LAMBDA_OTEL_EXPORTER_CERTIFICATE", "/nonexistent/ca.pem", "PEM CA bundle"),
        ("LAMBDA_OTEL_XRAY_PARENT", "child", "link, parent"),
        ("LAMBDA_OTEL_LOG_LEVEL", "loud", "debug, info, warning, error"),
    ]
    SHARED = [
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli", "gzip, none", "gzip"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", "http/protobuf", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "-5", "1..", "10000"),
        ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "sometimes", "cumulative, delta, lowmemory", "cumulative"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem", "PEM CA bundle", "system CAs"),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "lots", "whole number", None),
    ]

    def test_each_bad_value_of_ours_fails(self):
        for variable, value, allowed in self.OURS:
            with self.subTest(variable=variable, value=value):
                with self.assertRaises(ConfigError) as ctx:
                    load_config({variable: value})
                self.assertEqual(ctx.exception.variable, variable)
                self.assertTrue(str(ctx.exception).startswith(f"{variable}: "))
                self.assertIn(allowed, str(ctx.exception))

    def test_each_bad_shared_value_is_ignored_with_one_warning(self):
        for variable, value, allowed, instead in self.SHARED:
            with self.subTest(variable=variable, value=value):
                c = load_config({variable: value})
                message = warning_for(c, variable)
                self.assertIn(allowed, message)
                if instead is not None:
                    self.assertIn(f"ignored: lambda-otel uses the default ({instead}) instead", message)
                else:
                    self.assertIn("ignored: lambda-otel ", message)
                self.assertEqual(len(c.warnings), 1)
                self.assertEqual(c, Config(warnings=c.warnings))

    def test_every_shared_value_of_the_table_never_fails(self):
        garbage = ("\x01", "-1", "grpc", "key", "ftp://x", "999999999999", "sometimes", "/nonexistent")
        for variable in VARIABLES:
            if is_ours(variable):
                continue
            for value in garbage:
                with self.subTest(variable=variable, value=value):
                    load_config({variable: value})

    def test_same_port_for_receiver_and_listener(self):
        with self.assertRaises(ConfigError) as ctx:
            load_config({"LAMBDA_OTEL_RECEIVER_PORT": "4500", "LAMBDA_OTEL_TELEMETRY_PORT": "4500"})
        self.assertEqual(ctx.exception.variable, "LAMBDA_OTEL_RECEIVER_PORT")

    def test_lowmemory_temporality_means_delta(self):
        c = load_config({"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "LowMemory"})
        self.assertEqual(c.metrics_temporality, "delta")

    def test_certificate_that_exists(self):
        with tempfile.NamedTemporaryFile(suffix=".pem") as fh:
            c = load_config({"OTEL_EXPORTER_OTLP_CERTIFICATE": fh.name})
            self.assertEqual(c.exporter.certificate, fh.name)

    def test_values_are_trimmed_and_case_insensitive(self):
        c = load_config({"LAMBDA_OTEL_FLUSH_STRATEGY": " End ", "LAMBDA_OTEL_TELEMETRY_TYPES": "function, PLATFORM"})
        self.assertEqual(c.flush.strategy, "end")
        self.assertEqual(c.telemetry.types, ("platform", "function"))

    def test_timeouts_in_milliseconds(self):
        c = load_config({"OTEL_EXPORTER_OTLP_TIMEOUT": "2500", "LAMBDA_OTEL_FLUSH_BUDGET_MS": "300"})
        self.assertEqual(c.exporter.timeout_s, 2.5)
        self.assertEqual(c.flush.flush_budget_s, 0.3)
        self.assertEqual(load_config({"LAMBDA_OTEL_EXPORTER_TIMEOUT": "700", "OTEL_EXPORTER_OTLP_TIMEOUT": "2500"})
                         .exporter.timeout_s, 0.7)


class LimitsTest(unittest.TestCase):
    """A buffer smaller than one batch never counts as full: refused at start, naming both variables."""

    def assert_refused(self, env, variable, other):
        with self.assertRaises(ConfigError) as ctx:
            load_config(env)
        self.assertEqual(ctx.exception.variable, variable)
        self.assertIn(other, str(ctx.exception))

    def test_queue_records_below_one_batch(self):
        self.assert_refused({"LAMBDA_OTEL_QUEUE_MAX_RECORDS": "999"}, "LAMBDA_OTEL_QUEUE_MAX_RECORDS",
                            "LAMBDA_OTEL_MAX_BATCH_RECORDS (1000)")
        self.assert_refused({"LAMBDA_OTEL_QUEUE_MAX_RECORDS": "500", "LAMBDA_OTEL_MAX_BATCH_RECORDS": "501"},
                            "LAMBDA_OTEL_QUEUE_MAX_RECORDS", "LAMBDA_OTEL_MAX_BATCH_RECORDS")
        load_config({"LAMBDA_OTEL_QUEUE_MAX_RECORDS": "500", "LAMBDA_OTEL_MAX_BATCH_RECORDS": "500"})

    def test_queue_bytes_below_one_batch(self):
        self.assert_refused({"LAMBDA_OTEL_QUEUE_MAX_BYTES": str(1024 * 1024)}, "LAMBDA_OTEL_QUEUE_MAX_BYTES",
                            "LAMBDA_OTEL_MAX_BATCH_BYTES (4194304)")
        load_config({"LAMBDA_OTEL_QUEUE_MAX_BYTES": str(1024 * 1024), "LAMBDA_OTEL_MAX_BATCH_BYTES": str(1024 * 1024)})

    def test_a_batch_above_the_budget_derived_from_memory(self):
        # 128 MB derives 6.4 MiB and 13,107 records.
        self.assert_refused({"LAMBDA_OTEL_MAX_BATCH_BYTES": str(16 * 1024 * 1024)}, "LAMBDA_OTEL_MAX_BATCH_BYTES",
                            "LAMBDA_OTEL_QUEUE_MAX_BYTES")
        self.assert_refused({"LAMBDA_OTEL_MAX_BATCH_RECORDS": "20000"}, "LAMBDA_OTEL_MAX_BATCH_RECORDS",
                            "LAMBDA_OTEL_QUEUE_MAX_RECORDS")
        load_config({"LAMBDA_OTEL_MAX_BATCH_BYTES": str(16 * 1024 * 1024), "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024"})


class TableTest(unittest.TestCase):
    """Configuration declared once: every variable read is in the table, the docs are generated from it."""

    ENV_NAME = re.compile(r"^(?:AWS|OTEL|LAMBDA_OTEL)_[A-Z0-9_]*[A-Z0-9]$")
    ENV_PREFIX = re.compile(r"^(?:AWS|OTEL|LAMBDA_OTEL)_[A-Z0-9_]*$")

    def test_every_variable_named_in_the_code_is_declared(self):
        undeclared = {}
        for path in sorted((REPO / "lambda_otel").rglob("*.py")):
            if "local" in path.relative_to(REPO / "lambda_otel").parts:
                continue  # the simulator plays Lambda: it sets these variables, it does not read them
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and self.ENV_NAME.match(node.value):
                    if node.value not in VARIABLES:
                        undeclared.setdefault(node.value, path.name)
                # A name built at run time (f"AWS_ENDPOINT_URL_{service}"): some declared name must fit it.
                if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
                    prefix = str(node.values[0].value)
                    if self.ENV_PREFIX.match(prefix) and not any(v.startswith(prefix) for v in VARIABLES):
                        undeclared.setdefault(prefix + "{...}", path.name)
        self.assertEqual(undeclared, {}, "add a Setting row to lambda_otel/config.py for each")

    def test_load_config_reads_only_declared_variables(self):
        class Recording(dict):
            def __init__(self):
                super().__init__()
                self.read = set()

            def get(self, key, default=None):
                self.read.add(key)
                return super().get(key, default)

            def __getitem__(self, key):
                self.read.add(key)
                return super().__getitem__(key)

        env = Recording()
        load_config(env)
        self.assertEqual(sorted(env.read - set(VARIABLES)), [])
        read_by_config = {n for s in SETTINGS if s.field is not None for n in s.names}
        self.assertEqual(sorted(read_by_config - env.read), [], "declared but never read")

    def test_ours_come_first_in_every_row(self):
        for s in SETTINGS:
            with self.subTest(names=s.names):
                ours = [is_ours(n) for n in s.names]
                self.assertEqual(ours, sorted(ours, reverse=True))

    def test_every_field_and_default_exists(self):
        for s in SETTINGS:
            with self.subTest(field=s.field):
                if s.field is None:
                    self.assertTrue(s.read_by)
                    continue
                obj = Config()
                for part in s.field.split("."):
                    obj = getattr(obj, part)
                self.assertEqual(obj, s.default())
                self.assertTrue(s.doc and s.parser.allowed)

    def test_docs_are_generated_from_the_table(self):
        self.assertEqual((REPO / "docs" / "configuration.md").read_text(encoding="utf-8"), config_reference.markdown(),
                         "run: python -m lambda_otel.config_reference --write")
        readme = (REPO / "README.rst").read_text(encoding="utf-8")
        self.assertEqual(readme, config_reference.readme_with_table(readme),
                         "run: python -m lambda_otel.config_reference --write")

    def test_every_variable_is_documented(self):
        for doc in ("README.rst", "docs/configuration.md"):
            text = (REPO / doc).read_text(encoding="utf-8")
            with self.subTest(doc=doc):
                self.assertEqual([v for v in VARIABLES if v not in text], [])

    def test_the_check_command_fails_on_a_stale_doc(self):
        with tempfile.TemporaryDirectory() as tmp:
            doc, readme = Path(tmp) / "configuration.md", Path(tmp) / "README.rst"
            doc.write_text("stale\n")
            readme.write_text((REPO / "README.rst").read_text(encoding="utf-8"))
            with mock.patch.object(config_reference, "DOC", doc), mock.patch.object(config_reference, "README", readme), \
                    mock.patch.object(config_reference, "ROOT", Path(tmp)), mock.patch("sys.stderr"):
                self.assertEqual(config_reference.main(["--check"]), 1)
                with mock.patch("builtins.print"):
                    self.assertEqual(config_reference.main(["--write"]), 0)
                self.assertEqual(config_reference.main(["--check"]), 0)


class SharedValuesNeverFailInitTest(ExtensionTestCase):
    """End to end: values valid for the function's SDK start the real extension under the simulator."""

    def run_with(self, **shared):
        sink = self.make_sink()
        env = self.make_env(sink, LAMBDA_OTEL_FLUSH_STRATEGY="end", **shared)
        sim = self.make_sim(env)
        init = sim.start(timeout=30, check=False)
        self.assertEqual(init.status, "success", self.extension_output(sim))
        self.assertEqual(sim.invoke({"logs": 2}, timeout=30).status, "success")
        down = sim.shutdown("spindown", timeout=30)
        self.assertEqual(down.extensions["lambda-otel"].exit_code, 0)
        return sim, sink, self.extension_output(sim)

    def test_grpc_protocol_starts_and_warns_once(self):
        sim, sink, output = self.run_with(OTEL_EXPORTER_OTLP_PROTOCOL="grpc")
        self.assertEqual(output.count("OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' is not supported"), 1, output)
        self.assertTrue(sink.log_items(), "exported over OTLP/HTTP")

    def test_http_json_protocol_starts_without_a_warning_and_exports_json(self):
        sim, sink, output = self.run_with(OTEL_EXPORTER_OTLP_PROTOCOL="http/json")
        self.assertNotIn("OTEL_EXPORTER_OTLP_PROTOCOL", output)
        self.assertTrue(sink.requests, "exported")
        self.assertEqual({r.headers.get("content-type") for r in sink.requests}, {"application/json"})
        self.assertTrue(sink.log_items(), "the sink decoded the OTLP/JSON")

    def test_per_signal_protocols(self):
        sim, sink, output = self.run_with(OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
                                          OTEL_EXPORTER_OTLP_LOGS_PROTOCOL="http/json")
        types = {(r.path, r.headers.get("content-type")) for r in sink.requests}
        self.assertIn(("/v1/logs", "application/json"), types)
        self.assertIn(("/v1/metrics", "application/x-protobuf"), types)
        self.assertEqual(output.count("OTEL_EXPORTER_OTLP_PROTOCOL: "), 1, output)

    def test_malformed_shared_values_start_and_warn(self):
        receiver_port = free_port()
        sim, sink, output = self.run_with(
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver_port}",  # the function's SDK -> us
            LAMBDA_OTEL_RECEIVER_PORT=str(receiver_port),
            OTEL_EXPORTER_OTLP_HEADERS="Authorization Bearer s3cr3t", OTEL_EXPORTER_OTLP_TIMEOUT="soon",
            OTEL_RESOURCE_ATTRIBUTES="k", AWS_LAMBDA_FUNCTION_MEMORY_SIZE="128")
        for variable in ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_RESOURCE_ATTRIBUTES"):
            self.assertEqual(output.count(f"{variable}: "), 1, output)
        self.assertNotIn("OTEL_EXPORTER_OTLP_ENDPOINT", output, "shadowed by LAMBDA_OTEL_EXPORTER_ENDPOINT")
        self.assertNotIn("s3cr3t", output)
        self.assertTrue(sink.log_items())


class SelfExportEndToEndTest(ExtensionTestCase):
    """The real extension, its receiver, this machine's resolver: a hosts-file alias of loopback on
    the receiver's port, which config cannot see without DNS, is refused by the exporter; nothing
    loops, every refused record is counted, one line says why."""

    def test_logs_to_an_alias_of_our_receiver_are_refused_and_counted_the_rest_is_exported(self):
        from tests.reliability_support import shutdown_summary
        from tests.test_exporter import loopback_alias

        name = loopback_alias()
        if name is None:
            self.skipTest("no hosts-file alias of 127.0.0.1 on this machine")
        sink = self.make_sink()
        env = self.make_env(sink, LAMBDA_OTEL_FLUSH_STRATEGY="end")
        env["LAMBDA_OTEL_EXPORTER_LOGS_ENDPOINT"] = f"http://{name}:{env['LAMBDA_OTEL_RECEIVER_PORT']}/v1/logs"
        sim = self.make_sim(env)
        init = sim.start(timeout=30, check=False)
        self.assertEqual(init.status, "success", self.extension_output(sim))
        self.invoke_until_started(sim)
        results = [sim.invoke({"logs": 5}, timeout=30) for _ in range(4)]
        self.assertEqual({r.status for r in results}, {"success"})
        sim.shutdown("spindown", timeout=30)
        output = self.extension_output(sim)
        self.assertEqual(output.count("would loop"), 1, output)
        summary = shutdown_summary(output)
        self.assertIsNotNone(summary, output)
        self.assertGreaterEqual(summary["dropped"].get("export_rejected", 0), 4 * 5, summary)
        self.assertEqual(set(summary["dropped"]), {"export_rejected"}, summary)
        self.assertEqual(sink.log_items(), [], "logs go nowhere but the count")
        self.assertTrue(sink.span_items(), "traces still reach the backend")


if __name__ == "__main__":
    unittest.main()
