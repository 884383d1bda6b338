"""app.py: what the extension registers for in each kind of environment, ``--help``, the
restore renewal, and what start-up imports before its first /next."""

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest
from contextlib import redirect_stdout
from pathlib import Path

from lambda_otel import app
from lambda_otel.config import InitType, load_config
from lambda_otel.extensions_api import ExtensionsApiClient, Registration

REPO = Path(__file__).resolve().parent.parent


def platform_start(request_id):
    return {"time": "2024-05-01T10:00:00.100Z", "type": "platform.start",
            "record": {"requestId": request_id, "version": "$LATEST"}}


def platform_done(request_id):
    return {"time": "2024-05-01T10:00:00.300Z", "type": "platform.runtimeDone",
            "record": {"requestId": request_id, "status": "success", "metrics": {"durationMs": 200.0}}}


def resource_value(resource, key):
    for kv in resource.attributes:
        if kv.key == key:
            return kv.value.string_value
    return None


class RegistrationEventsTest(unittest.TestCase):
    def test_managed_instances_register_shutdown_only(self):
        self.assertEqual(app.registration_events(InitType.MANAGED_INSTANCES), ("SHUTDOWN",))

    def test_every_other_kind_registers_invoke_and_shutdown(self):
        for kind in (InitType.ON_DEMAND, InitType.PROVISIONED, InitType.SNAP_START):
            self.assertEqual(app.registration_events(kind), ("INVOKE", "SHUTDOWN"), kind)


class StartWithoutMemorySettingTest(unittest.TestCase):
    def test_servers_start_when_lambda_does_not_say_the_memory_size(self):
        # Config keeps "not told" as None (no invented memory); every consumer must cope with it.
        from lambda_otel.subscription import bind_socket

        env = {"AWS_LAMBDA_FUNCTION_NAME": "fn"}  # no AWS_LAMBDA_FUNCTION_MEMORY_SIZE
        config = load_config(env)
        self.assertIsNone(config.queue.memory_mb)
        ext = app.Extension(config, Registration("id"), ExtensionsApiClient("127.0.0.1:9"), env)
        ext.start_servers(bind_socket("127.0.0.1", 0), bind_socket("127.0.0.1", 0))
        self.addCleanup(ext.pipeline.stop)
        self.assertIsNotNone(ext.pipeline.receiver)
        self.assertGreater(ext.pipeline.receiver.port, 0)


class HelpTest(unittest.TestCase):
    def test_help_prints_usage_and_never_calls_the_extensions_api(self):
        with socket.socket() as api:
            api.bind(("127.0.0.1", 0))
            api.listen(4)
            api.settimeout(0.0)
            env = {"AWS_LAMBDA_RUNTIME_API": "127.0.0.1:%d" % api.getsockname()[1]}
            out = io.StringIO()
            with redirect_stdout(out):
                code = app.main(["lambda-otel", "--help"], env=env)
            self.assertEqual(code, 0)
            self.assertIn("usage: lambda-otel", out.getvalue())
            with self.assertRaises(BlockingIOError):  # nobody connected: no register was sent
                api.accept()

    def test_module_help_exits_zero(self):
        proc = subprocess.run([sys.executable, "-m", "lambda_otel", "--help"], cwd=REPO, capture_output=True,
                              text=True, timeout=60, env={**os.environ, "AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9"})
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("usage: lambda-otel", proc.stdout)
        self.assertNotIn("register", proc.stderr)


class RenewAfterRestoreTest(unittest.TestCase):
    def make_extension(self, **extra):
        env = {"AWS_LAMBDA_FUNCTION_NAME": "restore-fn", "LAMBDA_OTEL_RECEIVER_ENABLED": "false", **extra}
        config = load_config(env)
        registration = Registration("id", "restore-fn", "1", None, "123456789012")
        return app.Extension(config, registration, ExtensionsApiClient("127.0.0.1:9"), env)

    def test_restore_gives_a_new_faas_instance_to_everything_exported_afterwards(self):
        ext = self.make_extension()
        pipeline = ext.pipeline
        before = pipeline.resource_attributes["faas.instance"]
        snapshot = pipeline.converter.process([platform_start("r1"), platform_done("r1")])
        self.assertEqual(resource_value(snapshot.resource_spans.resource, "faas.instance"), before)

        ext.renew_after_restore()

        after = pipeline.resource_attributes["faas.instance"]
        self.assertNotEqual(after, before)
        self.assertEqual(resource_value(pipeline.resource, "faas.instance"), after)
        restored = pipeline.converter.process([platform_start("r2"), platform_done("r2")])
        self.assertEqual(resource_value(restored.resource_spans.resource, "faas.instance"), after)
        self.assertEqual(ext.restores, 1)


# Modules the first /next must not wait for: the pipeline and its dependencies, logging (its lines
# are kept until the startup thread sets it up), typing (annotations are for the checker only),
# threading (imported when the startup thread is started, once the first /next is on the wire),
# runpy, the idna codec (getaddrinfo gets the Runtime API host as bytes; config asks DNS nothing,
# even for a backend named by a host name on the receiver's port, the usual http://collector:4318).
NOT_BEFORE_FIRST_NEXT = ("typing", "logging", "threading", "runpy", "pkgutil", "encodings.idna", "http.client",
                         "http.server", "email", "ssl", "requests", "google.protobuf", "readerwriterlock",
                         "lambda_otel.pipeline", "lambda_otel.aggregator", "lambda_otel.telemetry_api",
                         "lambda_otel.receiver")


class ImportsBeforeFirstNextTest(unittest.TestCase):
    """What start-up imports before its first /next (which ends our part of the billed init)."""

    def test_the_first_next_waits_for_no_pipeline_logging_or_typing_import(self):
        from bench.common import write_first_next_probe
        from lambda_otel.local.simulator import Simulator
        from lambda_otel.local.tools import free_port

        root = Path(tempfile.mkdtemp(prefix="lambda-otel-imports-"))
        self.addCleanup(shutil.rmtree, root, True)
        # The layer's bootstrap from the repository, as the launcher runs it, stopped at its first /next.
        bootstrap = REPO / "lambda_otel" / "layer_bootstrap.py"
        ext_dir = write_first_next_probe(root, sys.executable, bootstrap, "lambda-otel")
        out = root / "first-next.json"
        receiver_port = free_port()
        env = {"LAMBDA_OTEL_RECEIVER_PORT": str(receiver_port), "LAMBDA_OTEL_TELEMETRY_PORT": str(free_port()),
               "LAMBDA_OTEL_EXPORTER_ENDPOINT": f"http://collector.internal:{receiver_port}",
               # the function's SDK pointed at our receiver: the self-export check runs too
               "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver_port}"}
        sim = Simulator(extensions_dir=str(ext_dir), env=env, init_timeout_s=30.0)
        self.addCleanup(sim.stop)
        sim.start(wait=False)
        deadline = time.monotonic() + 30.0
        while not out.is_file() and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertTrue(out.is_file(), "the extension never reached its first /next")
        modules = set(json.loads(out.read_text())["modules"])
        # It did register, read the config and subscribe (through the real client and simulator).
        for needed in ("lambda_otel.app", "lambda_otel.config", "lambda_otel.subscription", "json", "socket"):
            self.assertIn(needed, modules)
        self.assertEqual([m for m in NOT_BEFORE_FIRST_NEXT if m in modules], [])


if __name__ == "__main__":
    unittest.main()
