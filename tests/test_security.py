"""Security (issue 9): what the running extension exposes, leaks and contacts.

The extension runs as its own process under the simulator; what it listens on is read from
/proc (its own socket inodes against /proc/net/tcp{,6}), what it contacts from an audit hook
installed in its process only (a sitecustomize on its PYTHONPATH), what it leaks from every
line it printed and every log record it exported.
"""

import os
import socket
import unittest

from lambda_otel.config import ConfigError, load_config
from lambda_otel.local.sink import Reply
from lambda_otel.receiver import OtlpReceiver
from tests.reliability_support import AUDIT_SITECUSTOMIZE, ReliabilityTestCase, read_audit
from tests.support import EXTENSION_NAME

SECRET = "s3cr3t-Bearer-7f2c9a"
API_KEY = "k3y-91be0d"


def listening_sockets(pid: int):
    """(ip, port) of every TCP socket in LISTEN state that process ``pid`` holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            with open(f"/proc/{pid}/net/{table}", encoding="ascii") as fh:
                rows = fh.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A = LISTEN
                continue
            addr_hex, port_hex = local.split(":")
            raw = bytes.fromhex(addr_hex)
            # /proc prints the address as 32-bit words in host (little-endian) order.
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.append((socket.inet_ntop(family, raw), int(port_hex, 16)))
    return found


class ListeningTest(ReliabilityTestCase):
    def test_every_listening_socket_is_loopback(self):
        sink = self.make_sink()
        env = self.make_env(sink)
        sim = self.make_sim(env)
        sim.start(timeout=30)
        self.assertEqual(sim.invoke({}, timeout=30).status, "success")
        pid = sim.extension_pids[EXTENSION_NAME]
        listening = listening_sockets(pid)
        ports = {port for _, port in listening}
        self.assertIn(int(env["LAMBDA_OTEL_RECEIVER_PORT"]), ports, listening)
        self.assertIn(int(env["LAMBDA_OTEL_TELEMETRY_PORT"]), ports, listening)
        for ip, port in listening:
            self.assertIn(ip, ("127.0.0.1", "::1"), f"port {port} listens on {ip}")
        sim.shutdown(timeout=30)
        self.assert_clean_exits(sim)

    def test_receiver_refuses_a_non_loopback_host_before_binding(self):
        from lambda_otel.aggregator import Aggregator
        from lambda_otel.loss import LossCounter

        loss = LossCounter()
        for host in ("0.0.0.0", "::", "10.1.2.3", "sandbox.example.com"):
            with self.subTest(host=host), self.assertRaises(ValueError) as ctx:
                OtlpReceiver(Aggregator(1 << 20, 1000, loss), loss, host=host, port=0)
            self.assertIn("loopback", str(ctx.exception))


class SecretsTest(ReliabilityTestCase):
    def test_header_values_never_appear_in_output_or_exported_logs(self):
        sink = self.make_sink()
        echo = f"denied for Authorization: Bearer {SECRET}, x-api-key {API_KEY}".encode()
        # Every failure path that produces a message: errors that echo the secret, retries,
        # a reset, a hang (timeout), a non-OTLP body; then a healthy backend for the lines.
        sink.script([Reply(status=401, body=echo), Reply(status=503, body=echo), Reply(status=400, body=echo),
                     Reply(reset=True), Reply(status=502, body=echo), Reply(hang=True), Reply(status=413, body=echo),
                     Reply(status=200, body=echo), Reply(status=429, body=echo, retry_after="0")])
        env = self.make_env(sink, OTEL_EXPORTER_OTLP_HEADERS=f"Authorization=Bearer%20{SECRET},x-api-key={API_KEY}",
                            LAMBDA_OTEL_FLUSH_STRATEGY="end", LAMBDA_OTEL_FLUSH_BUDGET_MS="300",
                            LAMBDA_OTEL_LOG_LEVEL="debug")
        sim = self.make_sim(env)
        sim.start(timeout=30)
        for _ in range(5):
            self.assertEqual(sim.invoke({"logs": 2}, timeout=30).status, "success")
        sim.shutdown(timeout=30)
        self.assert_clean_exits(sim)
        output = self.extension_output(sim)
        self.assertIn("HTTP 401", output)  # the failures were reported...
        self.assertIn("<redacted>", output)  # ...with the echoed secret redacted
        self.assertNotIn(SECRET, output)
        self.assertNotIn(API_KEY, output)
        # The header was sent (so the redaction had something to hide).
        self.assertTrue(all(r.headers.get("authorization") == f"Bearer {SECRET}" for r in sink.requests))
        # Nor in any telemetry the extension's lines became (exported log records).
        exported = " ".join(item.record.body.string_value for item in sink.log_items())
        self.assertIn("[lambda-otel]", exported)
        self.assertNotIn(SECRET, exported)
        self.assertNotIn(API_KEY, exported)

    def test_malformed_shared_headers_are_named_not_echoed_and_never_fail_init(self):
        sink = self.make_sink()
        env = self.make_env(sink, OTEL_EXPORTER_OTLP_HEADERS=f"Authorization: Bearer {SECRET}")
        sim = self.make_sim(env)
        init = sim.start(timeout=30, check=False)
        self.assertEqual(init.status, "success")
        sim.shutdown(timeout=30)
        output = self.extension_output(sim)
        self.assertIn("OTEL_EXPORTER_OTLP_HEADERS: ", output)
        self.assertNotIn(SECRET, output)

    def test_malformed_headers_of_ours_are_an_init_error_without_the_value(self):
        env = self.make_env(self.make_sink(), LAMBDA_OTEL_EXPORTER_HEADERS=f"Authorization=Bearer%20{SECRET}%0D%0AX: 1")
        sim = self.make_sim(env)
        init = sim.start(timeout=30, check=False)
        ext = next(e for e in init.extensions if e.name == EXTENSION_NAME)
        self.assertEqual(ext.error_type, "Extension.ConfigInvalid")
        output = self.extension_output(sim)
        self.assertIn("LAMBDA_OTEL_EXPORTER_HEADERS", output)
        self.assertNotIn(SECRET, output)


class SelfExportTest(ReliabilityTestCase):
    def test_shared_endpoint_that_is_our_own_receiver_warns_and_never_fails_init(self):
        env = self.make_env(None)
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.1:{env['LAMBDA_OTEL_RECEIVER_PORT']}"
        sim = self.make_sim(env)
        init = sim.start(timeout=30, check=False)
        self.assertEqual(init.status, "success")
        self.assertEqual(sim.invoke({}, timeout=30).status, "success")
        sim.shutdown(timeout=30)
        self.assert_clean_exits(sim)
        output = self.extension_output(sim)
        self.assertEqual(output.count("OTEL_EXPORTER_OTLP_ENDPOINT: "), 1, output)
        self.assertIn("would loop", output)

    def test_our_endpoint_that_is_our_own_receiver_is_an_init_error_without_credentials(self):
        env = self.make_env(None)
        # "vm" and the like: hosts-file aliases of 127.0.0.1 only show in a lookup.
        host = "localhost.localdomain"
        env["LAMBDA_OTEL_EXPORTER_ENDPOINT"] = f"http://alice:{SECRET}@{host}:{env['LAMBDA_OTEL_RECEIVER_PORT']}/?token={API_KEY}"
        sim = self.make_sim(env)
        init = sim.start(timeout=30, check=False)
        self.assertNotEqual(init.status, "success")
        ext = next(e for e in init.extensions if e.name == EXTENSION_NAME)
        self.assertEqual(ext.error_type, "Extension.ConfigInvalid")
        output = self.extension_output(sim)
        self.assertIn("LAMBDA_OTEL_EXPORTER_ENDPOINT", output)
        self.assertIn("would loop", output)
        self.assertNotIn(SECRET, output)
        self.assertNotIn(API_KEY, output)


class ConfigErrorsNameTheVariableTest(unittest.TestCase):
    OURS = {
        "LAMBDA_OTEL_EXPORTER_ENDPOINT": "collector:4318",
        "LAMBDA_OTEL_EXPORTER_TRACES_ENDPOINT": "ftp://x/v1/traces",
        "LAMBDA_OTEL_EXPORTER_COMPRESSION": "br",
        "LAMBDA_OTEL_EXPORTER_PROTOCOL": "grpc",
        "LAMBDA_OTEL_EXPORTER_TIMEOUT": "soon",
        "LAMBDA_OTEL_EXPORTER_CERTIFICATE": "/nonexistent/ca.pem",
        "LAMBDA_OTEL_EXPORTER_HEADERS": "no-equals-sign",
        "LAMBDA_OTEL_EXPORTER_METRICS_TEMPORALITY_PREFERENCE": "sometimes",
        "LAMBDA_OTEL_FLUSH_STRATEGY": "never",
        "LAMBDA_OTEL_FLUSH_INTERVAL_MS": "-5",
        "LAMBDA_OTEL_FLUSH_BUDGET_MS": "1e3",
        "LAMBDA_OTEL_QUEUE_MAX_BYTES": "12",
        "LAMBDA_OTEL_TELEMETRY_PORT": "9001",
        "LAMBDA_OTEL_TELEMETRY_TYPES": "platform,kernel",
        "LAMBDA_OTEL_RECEIVER_ENABLED": "maybe",
        "LAMBDA_OTEL_RECEIVER_PORT": "80",
        "LAMBDA_OTEL_XRAY_PARENT": "child",
        "LAMBDA_OTEL_LOG_LEVEL": "loud",
    }
    SHARED = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "ftp://x/v1/traces",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "br",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "soon",
        "OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent/ca.pem",
        "OTEL_EXPORTER_OTLP_HEADERS": "no-equals-sign",
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "sometimes",
        "OTEL_RESOURCE_ATTRIBUTES": "k",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "lots",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "someday",
    }

    def test_each_bad_value_of_ours_is_refused_with_the_variable_named(self):
        for name, value in self.OURS.items():
            with self.subTest(name=name), self.assertRaises(ConfigError) as ctx:
                load_config({name: value})
            self.assertEqual(ctx.exception.variable, name)
            self.assertTrue(str(ctx.exception).startswith(f"{name}: "), str(ctx.exception))

    def test_each_bad_shared_value_is_a_warning_with_the_variable_named(self):
        for name, value in self.SHARED.items():
            with self.subTest(name=name):
                warnings = load_config({name: value}).warnings
                self.assertEqual(len(warnings), 1, warnings)
                self.assertTrue(warnings[0].startswith(f"{name}: "), warnings[0])
                self.assertIn("ignored: lambda-otel", warnings[0])


class StartupNetworkTest(ReliabilityTestCase):
    def test_no_lookup_or_connection_before_the_first_export_except_the_lambda_apis(self):
        sink = self.make_sink()
        site = self.make_site_dir(AUDIT_SITECUSTOMIZE)
        audit_file = site / "audit.jsonl"
        # "localhost" needs a name lookup, so the first export shows up as one.
        env = self.make_env(None, LAMBDA_OTEL_EXPORTER_ENDPOINT=f"http://localhost:{sink.port}",
                            LAMBDA_OTEL_FLUSH_STRATEGY="end", LAMBDA_OTEL_TEST_AUDIT_FILE=str(audit_file))
        sim = self.make_sim_with(env, site)
        init = sim.start(timeout=30)
        first = sim.invoke({"logs": 1}, timeout=30)
        self.assertEqual(first.status, "success")
        sim.shutdown(timeout=30)
        self.assert_clean_exits(sim)
        self.assertTrue(sink.log_items(), "nothing was exported")

        events = read_audit(audit_file)
        api = repr(("127.0.0.1", sim.port))
        exports = [e for e in events if "'localhost'" in e["args"][0]]
        self.assertTrue(exports, f"the audit hook saw no export lookup: {events}")
        first_export = exports[0]["t"]
        self.assertGreater(first_export, init.ended_at.mono)  # exports start after init
        before = [e for e in events if e["t"] < first_export]
        self.assertTrue(before, "the audit hook saw no Lambda API call")
        for e in before:
            if e["event"] == "socket.connect":
                self.assertEqual(e["args"][0], api, e)
            else:
                self.assertEqual(e["event"], "socket.getaddrinfo", e)
                # The Extensions API client passes the host as bytes (no idna codec import before /next).
                self.assertIn(e["args"][0], ("'127.0.0.1'", "b'127.0.0.1'"), e)
                self.assertEqual(e["args"][1:], [repr(sim.port)], e)


if __name__ == "__main__":
    unittest.main()
