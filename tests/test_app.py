"""app.py: what the extension registers for in each kind of environment, ``--help``, the
restore renewal, and what start-up imports before its first /next."""

import io
import os
import shlex
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


# Run as ``python3 -I -S -B PROBE <repo> <out file>``: the layer's bootstrap from the repository, as
# the layer's launcher runs it, except that the first /next writes the names of the modules
# imported so far and exits (the import hook that installs this removes itself once it has).
PROBE = """\
import builtins, os, sys
repo, out = sys.argv[1], sys.argv[2]
real_import = builtins.__import__


def first_next(self, on_sent=None):
    with open(out + ".part", "w") as fh:
        fh.write("\\n".join(sorted(sys.modules)))
    os.rename(out + ".part", out)
    os._exit(0)


def probe_import(*args, **kwargs):
    module = real_import(*args, **kwargs)
    api = sys.modules.get("lambda_otel.extensions_api")
    if api is not None and hasattr(api, "ExtensionsApiClient"):
        builtins.__import__ = real_import
        api.ExtensionsApiClient.next_event = first_next
    return module


builtins.__import__ = probe_import
path = os.path.join(repo, "lambda_otel", "layer_bootstrap.py")
sys.argv = [path, "", "lambda-otel"]
exec(compile(open(path).read(), path, "exec"), {"__name__": "__main__", "__file__": path})
"""

# Modules the first /next must not wait for: the pipeline and its dependencies, logging (its lines
# are kept until the startup thread sets it up), typing (annotations are for the checker only),
# threading (imported when the startup thread is started, once the first /next is on the wire; the
# self-export check's name lookup needs it only for an endpoint named by a host name on the
# receiver's port), runpy, the idna codec (getaddrinfo gets the Runtime API host as bytes).
NOT_BEFORE_FIRST_NEXT = ("typing", "logging", "threading", "runpy", "pkgutil", "encodings.idna", "http.client",
                         "http.server", "email", "ssl", "requests", "google.protobuf", "readerwriterlock",
                         "lambda_otel.pipeline", "lambda_otel.aggregator", "lambda_otel.telemetry_api",
                         "lambda_otel.receiver")


class ImportsBeforeFirstNextTest(unittest.TestCase):
    """What start-up imports before its first /next (which ends our part of the billed init)."""

    def test_the_first_next_waits_for_no_pipeline_logging_or_typing_import(self):
        from lambda_otel.local.simulator import Simulator
        from lambda_otel.local.tools import free_port

        root = Path(tempfile.mkdtemp(prefix="lambda-otel-imports-"))
        self.addCleanup(shutil.rmtree, root, True)
        probe, out, ext_dir = root / "probe.py", root / "modules.txt", root / "extensions"
        probe.write_text(PROBE)
        ext_dir.mkdir()
        launcher = ext_dir / "lambda-otel"
        launcher.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -I -S -B {shlex.quote(str(probe))} "
                            f"{shlex.quote(str(REPO))} {shlex.quote(str(out))}\n")
        launcher.chmod(0o755)
        receiver_port = free_port()
        env = {"LAMBDA_OTEL_RECEIVER_PORT": str(receiver_port), "LAMBDA_OTEL_TELEMETRY_PORT": str(free_port()),
               "LAMBDA_OTEL_EXPORTER_ENDPOINT": "http://127.0.0.1:9",
               # the function's SDK pointed at our receiver: the self-export check runs too
               "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver_port}"}
        sim = Simulator(extensions_dir=str(ext_dir), env=env, init_timeout_s=30.0)
        self.addCleanup(sim.stop)
        sim.start(wait=False)
        deadline = time.monotonic() + 30.0
        while not out.is_file() and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertTrue(out.is_file(), "the extension never reached its first /next")
        modules = set(out.read_text().split())
        # It did register, read the config and subscribe (through the real client and simulator).
        for needed in ("lambda_otel.app", "lambda_otel.config", "lambda_otel.subscription", "json", "socket"):
            self.assertIn(needed, modules)
        self.assertEqual([m for m in NOT_BEFORE_FIRST_NEXT if m in modules], [])


if __name__ == "__main__":
    unittest.main()
