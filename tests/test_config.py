"""Configuration: defaults, precedence between OTEL_* and LAMBDA_OTEL_*, and errors that name the variable."""

import os
import tempfile
import unittest

from lambda_otel.config import VARIABLES, ConfigError, InitType, load_config, parse_key_values


class DefaultsTest(unittest.TestCase):
    def test_empty_environment_gives_documented_defaults(self):
        c = load_config({})
        self.assertIsNone(c.exporter.traces_endpoint)
        self.assertFalse(c.exporter.any_endpoint)
        self.assertEqual(c.exporter.compression, "gzip")
        self.assertEqual(c.flush.strategy, "default")
        self.assertEqual(c.flush.interval_s, 20.0)
        self.assertEqual(c.telemetry.types, ("platform", "function", "extension"))
        self.assertEqual((c.telemetry.max_items, c.telemetry.max_bytes, c.telemetry.timeout_ms), (1000, 262144, 25))
        self.assertEqual(c.receiver.port, 4318)
        self.assertTrue(c.receiver.enabled)
        self.assertEqual(c.metrics_temporality, "cumulative")
        self.assertEqual(c.xray_mode, "link")
        self.assertEqual(c.queue.memory_mb, 128)

    def test_memory_size_is_read(self):
        self.assertEqual(load_config({"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024"}).queue.memory_mb, 1024)


class InitTypeTest(unittest.TestCase):
    def test_each_kind_of_environment(self):
        for raw, kind in (("on-demand", InitType.ON_DEMAND), ("provisioned-concurrency", InitType.PROVISIONED),
                          ("snap-start", InitType.SNAP_START), (" Lambda-Managed-Instances ", InitType.MANAGED_INSTANCES)):
            with self.subTest(raw=raw):
                self.assertIs(load_config({"AWS_LAMBDA_INITIALIZATION_TYPE": raw}).init_type, kind)

    def test_missing_or_unknown_is_on_demand_never_an_error(self):
        self.assertIs(load_config({}).init_type, InitType.ON_DEMAND)
        for raw in ("", "   ", "some-future-kind"):
            with self.subTest(raw=raw):
                self.assertIs(load_config({"AWS_LAMBDA_INITIALIZATION_TYPE": raw}).init_type, InitType.ON_DEMAND)


class EndpointTest(unittest.TestCase):
    def test_base_endpoint_gets_signal_paths(self):
        c = load_config({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector.example:4318/"})
        self.assertEqual(c.exporter.traces_endpoint, "https://collector.example:4318/v1/traces")
        self.assertEqual(c.exporter.metrics_endpoint, "https://collector.example:4318/v1/metrics")
        self.assertEqual(c.exporter.logs_endpoint, "https://collector.example:4318/v1/logs")

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
            }
        )
        self.assertEqual(c.exporter.traces_endpoint, "https://backend.example/v1/traces")
        self.assertEqual(c.exporter.metrics_endpoint, "https://backend.example/v1/metrics")

    def test_endpoint_pointing_at_our_own_receiver_is_refused(self):
        for host in ("127.0.0.1", "localhost"):
            with self.subTest(host=host), self.assertRaises(ConfigError) as ctx:
                load_config({"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{host}:4318"})
            self.assertEqual(ctx.exception.variable, "OTEL_EXPORTER_OTLP_ENDPOINT")
            self.assertIn("LAMBDA_OTEL_EXPORTER_ENDPOINT", str(ctx.exception))

    def test_our_own_receiver_is_refused_in_any_spelling(self):
        spellings = ("localhost.", "LOCALHOST", "127.1", "127.0.0.2", "0", "0.0.0.0", "2130706433", "[::1]",
                     "[0:0:0:0:0:0:0:1]", "[::ffff:127.0.0.1]", "[::]", "api.localhost", "sandbox.localdomain")
        for host in spellings:
            with self.subTest(host=host), self.assertRaises(ConfigError) as ctx:
                load_config({"LAMBDA_OTEL_EXPORTER_ENDPOINT": f"http://{host}:4318"})
            self.assertEqual(ctx.exception.variable, "LAMBDA_OTEL_EXPORTER_ENDPOINT")
        with self.assertRaises(ConfigError) as ctx:
            load_config({"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "https://127.1:4400/v1/logs", "LAMBDA_OTEL_RECEIVER_PORT": "4400"})
        self.assertEqual(ctx.exception.variable, "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")

    def test_remote_hosts_are_not_mistaken_for_loopback(self):
        for host in ("backend.example", "10.0.0.1", "128.0.0.1", "localhost.example.com", "[2001:db8::1]", "1"):
            with self.subTest(host=host):
                load_config({"LAMBDA_OTEL_EXPORTER_ENDPOINT": f"http://{host}:4318"})

    def test_receiver_on_another_port_makes_loopback_endpoint_fine(self):
        c = load_config({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "LAMBDA_OTEL_RECEIVER_PORT": "4400"})
        self.assertEqual(c.exporter.traces_endpoint, "http://127.0.0.1:4318/v1/traces")

    def test_not_a_url(self):
        with self.assertRaises(ConfigError) as ctx:
            load_config({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"})
        self.assertEqual(ctx.exception.variable, "OTEL_EXPORTER_OTLP_ENDPOINT")
        self.assertIn("http://", str(ctx.exception))


class HeadersTest(unittest.TestCase):
    def test_headers_are_percent_decoded(self):
        c = load_config({"OTEL_EXPORTER_OTLP_HEADERS": "api-key=a%20b , x-team=obs"})
        self.assertEqual(c.exporter.headers, {"api-key": "a b", "x-team": "obs"})

    def test_malformed_headers_never_echo_the_value(self):
        with self.assertRaises(ConfigError) as ctx:
            load_config({"OTEL_EXPORTER_OTLP_HEADERS": "Authorization Bearer s3cr3t"})
        self.assertEqual(ctx.exception.variable, "OTEL_EXPORTER_OTLP_HEADERS")
        self.assertNotIn("s3cr3t", str(ctx.exception))

    def test_resource_attributes(self):
        self.assertEqual(parse_key_values("X", "a=1,b=x%2Cy"), {"a": "1", "b": "x,y"})


class ValidationTest(unittest.TestCase):
    """Every bad value names its variable and what is allowed."""

    CASES = [
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
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli", "gzip, none"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "-5", "1.."),
        ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "sometimes", "cumulative, delta, lowmemory"),
        ("LAMBDA_OTEL_XRAY_PARENT", "child", "link, parent"),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "lots", "whole number"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem", "PEM CA bundle"),
    ]

    def test_each_bad_value(self):
        for variable, value, allowed in self.CASES:
            with self.subTest(variable=variable, value=value):
                with self.assertRaises(ConfigError) as ctx:
                    load_config({variable: value})
                self.assertEqual(ctx.exception.variable, variable)
                self.assertIn(variable, str(ctx.exception))
                self.assertIn(allowed, str(ctx.exception))

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


class VariablesListedTest(unittest.TestCase):
    def test_every_variable_is_documented_in_the_readme(self):
        readme = open(os.path.join(os.path.dirname(__file__), "..", "README.rst"), encoding="utf-8").read()
        missing = [v for v in VARIABLES if v not in readme]
        self.assertEqual(missing, [], "variables missing from README.rst's configuration table")


if __name__ == "__main__":
    unittest.main()
