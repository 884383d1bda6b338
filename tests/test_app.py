"""app.py: what the extension registers for in each kind of environment, ``--help``, the
restore renewal, and what start-up imports before its first /next."""

import io
import os
import socket
import subprocess
import sys
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


if __name__ == "__main__":
    unittest.main()
