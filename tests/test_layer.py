"""The Lambda layer that build_layer.sh produces: layout, bytecode, stripping, reproducibility, and the
extension from the unzipped layer running under the simulator.

The layer is built once per class from a frozen copy of the checkout (colleagues edit the working tree
while tests run; two builds of a moving tree could not be compared). pip downloads go to one cache
shared by every build of this module (PIP_CACHE_DIR if set, else .cache/pip-layer in the repository),
so only the first build downloads.

Lambda's Python runtimes (3.12, 3.13, 3.14): for each, the layer is built by that interpreter and
the extension runs from it under the simulator, its modules import with warnings as errors, and the
source's unit tests run on it (interpreters from tests/interpreters.py; a test is skipped, with the
reason, only where no such interpreter can be had on this machine).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
import zipfile

from lambda_otel.local.tools import free_port, unzip_layer
from tests.interpreters import interpreter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD_SCRIPT = os.path.join(ROOT, "build_layer.sh")
NAME = "lambda-otel"
BUILD_TIMEOUT = 600  # a safety bound for a hung pip, not a performance assertion
RUN_TIMEOUT = 60
PYVER = "%d.%d" % sys.version_info[:2]
LOCAL_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}.get(os.uname().machine)
ELF_MACHINE = {"x86_64": 62, "arm64": 183}  # e_machine: EM_X86_64, EM_AARCH64
PIP_CACHE = os.environ.get("PIP_CACHE_DIR") or os.path.join(ROOT, ".cache", "pip-layer")
RUNTIMES = ("3.12", "3.13", "3.14")  # Lambda's current Python runtimes
DEPENDENCY_TOP_LEVEL = [
    "requests", "urllib3", "certifi", "idna", "charset_normalizer", "google/protobuf", "google/_upb",
    "opentelemetry/proto", "readerwriterlock", "typing_extensions.py",
]


def snapshot_checkout(dest: str) -> None:
    """Copy what the checkout holds (tracked + untracked, not ignored files) into dest."""
    try:
        out = subprocess.run(["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             check=True, capture_output=True, timeout=RUN_TIMEOUT).stdout
        files = [f for f in out.decode().split("\0") if f]
    except (OSError, subprocess.SubprocessError):
        files = [os.path.relpath(os.path.join(d, f), ROOT) for d, _, fs in os.walk(ROOT) for f in fs
                 if "/.git" not in d and "/.venv" not in d]
    for rel in files:
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src) and "__pycache__" not in rel.split("/"):
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            shutil.copyfile(src, os.path.join(dest, rel))


def build_layer(source: str, out: str, pip_cache: str, *extra: str, python: str = sys.executable) -> dict:
    """Run build_layer.sh; return its summary (zip path, sha256, sizes) parsed from stdout."""
    proc = subprocess.run(
        ["/bin/sh", BUILD_SCRIPT, "--source", source, "--out", out, "--pip-cache", pip_cache,
         "--python-bin", python, *extra],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    if proc.returncode != 0:
        raise AssertionError("build_layer.sh failed (%d):\n%s\n%s" % (proc.returncode, proc.stdout, proc.stderr))
    summary = {}
    for key in ("layer", "sha256", "size"):
        match = re.search(r"^%s: (.+)$" % key, proc.stdout, re.M)
        if not match:
            raise AssertionError("build_layer.sh printed no '%s:' line:\n%s" % (key, proc.stdout))
        summary[key] = match.group(1).strip()
    return summary


def sha256_of(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def walk_files(top: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), top) for d, _, fs in os.walk(top) for f in fs)


def elf_machine(path: str) -> int:
    with open(path, "rb") as fh:
        head = fh.read(20)
    if head[:4] != b"\x7fELF":
        raise AssertionError("%s is not an ELF file" % path)
    return int.from_bytes(head[18:20], "little")


def python3_bindir(python: str, parent: str) -> str:
    """A PATH folder whose python3 is ``python`` (the function runtime's python3, which the launcher execs)."""
    bindir = tempfile.mkdtemp(prefix="runtime-bin-", dir=parent)
    os.symlink(os.path.realpath(python), os.path.join(bindir, "python3"))
    return bindir


def run_layer_under_simulator(test: unittest.TestCase, root: str, bindir: str, tmp: str) -> None:
    """Register, a few invocations, SHUTDOWN: the layer's extension (on bindir's python3) exports
    metrics and exits in time."""
    from lambda_otel.local.simulator import Simulator
    from lambda_otel.local.sink import OtlpSink

    sink = OtlpSink().start()
    test.addCleanup(sink.stop)
    task = tempfile.mkdtemp(dir=tmp)
    with open(os.path.join(task, "handler.py"), "w") as fh:
        fh.write("def handler(event, context):\n    return {'echo': event}\n")
    env = {
        # The function runtime's python3 (the launcher execs whatever python3 PATH gives).
        "PATH": bindir + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin"),
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
        "LAMBDA_OTEL_TELEMETRY_PORT": str(free_port()),
        "LAMBDA_OTEL_RECEIVER_PORT": str(free_port()),
    }
    sim = Simulator(extensions_dir=os.path.join(root, "extensions"), handler="handler.handler",
                    handler_dir=task, env=env, timeout_s=5.0, shutdown_budget_ms=2000)
    with sim:
        init = sim.start(timeout=30)
        test.assertTrue(init.ok, init.message)
        test.assertEqual([(e.name, e.external) for e in init.extensions], [(NAME, True)])
        # The process Lambda started is the layer's launcher exec'ing python3 on the layer's code.
        pid = init.extension_pids[NAME]
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            cmdline = fh.read().split(b"\0")
        test.assertIn(b"-I", cmdline)
        test.assertTrue(any(arg.startswith(root.encode()) and arg.endswith(b"layer_bootstrap.py")
                            for arg in cmdline), cmdline)

        for i in range(3):
            res = sim.invoke({"i": i}, timeout=20)
            test.assertEqual(res.status, "success", sim.process_output(NAME)[-20:])
            test.assertEqual(res.json(), {"echo": {"i": i}})

        down = sim.shutdown("spindown", timeout=20)
        ext = down.extensions[NAME]
        test.assertTrue(ext.received_shutdown)
        test.assertEqual(ext.exit_code, 0, sim.process_output(NAME)[-20:])
        test.assertTrue(ext.exited_in_time)
        test.assertFalse(ext.killed)
        test.assertLessEqual(ext.exited_at.epoch_ms, down.deadline_ms)

    test.assertTrue(sink.wait_for(lambda: any(m.name == "faas.invocations" for m in sink.metrics()), timeout=5),
                    "sink got %s; extension output: %s"
                    % ([(r.path, r.status) for r in sink.requests], sim.process_output(NAME)[-30:]))
    # Cumulative counts: the newest faas.invocations point covers all three invocations.
    invocations = [m.point.as_int or int(m.point.as_double) for m in sink.metrics() if m.name == "faas.invocations"]
    test.assertEqual(max(invocations), 3, invocations)
    output = "\n".join(line for _, line in sim.process_output(NAME))
    test.assertNotIn("built for Python", output, "the launcher ran another Python than the layer's")


class LayerBuildTest(unittest.TestCase):
    """One build for the local arch and this Python, unzipped into a temporary root."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = tempfile.mkdtemp(prefix="test-layer-")
        try:
            cls.source = os.path.join(cls.tmp, "src")
            snapshot_checkout(cls.source)
            cls.pip_cache = PIP_CACHE
            cls.summary = build_layer(cls.source, os.path.join(cls.tmp, "out1"), cls.pip_cache)
            cls.zip_path = cls.summary["layer"]
            cls.root = os.path.join(cls.tmp, "root")
            unzip_layer(cls.zip_path, cls.root)
            cls.code = os.path.join(cls.root, NAME)
            cls.launcher = os.path.join(cls.root, "extensions", NAME)
        except BaseException:
            shutil.rmtree(cls.tmp, ignore_errors=True)
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        shutil.rmtree(cls.tmp, ignore_errors=True)

    # --- layout ----------------------------------------------------------------------------------

    def test_zip_name_and_summary(self) -> None:
        self.assertEqual(os.path.basename(self.zip_path), "lambda-otel-layer-python%s-%s.zip" % (PYVER, LOCAL_ARCH))
        self.assertEqual(self.summary["sha256"], sha256_of(self.zip_path))
        self.assertIn("%d bytes zipped" % os.path.getsize(self.zip_path), self.summary["size"])

    def test_layout(self) -> None:
        self.assertEqual(sorted(os.listdir(self.root)), ["extensions", NAME])
        self.assertEqual(os.listdir(os.path.join(self.root, "extensions")), [NAME])
        self.assertTrue(os.access(self.launcher, os.X_OK))
        with open(self.launcher, "rb") as fh:
            self.assertTrue(fh.readline().startswith(b"#!/bin/sh"))
        for rel in ("lambda_otel/__init__.py", "lambda_otel/__main__.py", "lambda_otel/app.py",
                    "lambda_otel/layer_bootstrap.py", "lambda_otel-%s.dist-info/METADATA" % self._version()):
            self.assertTrue(os.path.isfile(os.path.join(self.code, rel)), rel)
        for rel in DEPENDENCY_TOP_LEVEL:
            self.assertTrue(os.path.exists(os.path.join(self.code, rel)), rel)

    def _version(self) -> str:
        import lambda_otel
        return lambda_otel.__version__

    def test_zip_entries_are_normalised(self) -> None:
        with zipfile.ZipFile(self.zip_path) as zf:
            infos = zf.infolist()
        names = [i.filename for i in infos]
        self.assertEqual(names, sorted(names))
        self.assertEqual({i.date_time for i in infos}, {infos[0].date_time})
        for info in infos:
            mode = info.external_attr >> 16
            self.assertEqual(info.create_system, 3, info.filename)
            if info.is_dir():
                self.assertEqual(mode, 0o40755, info.filename)
            elif info.filename == "extensions/" + NAME:
                self.assertEqual(mode, 0o100755, info.filename)
            else:
                self.assertEqual(mode, 0o100644, info.filename)
            self.assertEqual(info.extra, b"", info.filename)

    def test_stripped(self) -> None:
        files = walk_files(self.code)
        self.assertFalse(os.path.exists(os.path.join(self.code, "bin")))
        for rel in files:
            parts = rel.split("/")
            self.assertFalse(set(parts) & {"tests", "test", "testdata", "pip", "setuptools"}, rel)
            self.assertFalse(rel.endswith((".pyi", "py.typed")), rel)
            if parts[0].endswith(".dist-info"):
                self.assertNotIn(parts[-1], {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json",
                                             "entry_points.txt"}, rel)

    def test_local_code_left_out(self) -> None:
        self.assertFalse(os.path.exists(os.path.join(self.code, "lambda_otel", "local")))
        for rel in walk_files(self.root):
            self.assertNotIn("lambda_otel/local", rel)
            if rel.endswith(".py") or rel.startswith("extensions/") or rel.endswith(".txt"):
                # No shipped code or entry point refers to the simulator (METADATA's README text may).
                with open(os.path.join(self.root, rel), "rb") as fh:
                    text = fh.read()
                self.assertNotIn(b"lambda-otel-local", text, rel)
                self.assertNotIn(b"lambda_otel.local", text, rel)

    def test_licences_kept(self) -> None:
        licence = re.compile(r"^(LICEN[CS]E|COPYING|NOTICE)", re.I)
        dist_infos = [d for d in os.listdir(self.code) if d.endswith(".dist-info") and not d.startswith("lambda_otel-")]
        self.assertGreaterEqual(len(dist_infos), 9)
        for dist in dist_infos:
            found = [f for f in walk_files(os.path.join(self.code, dist)) if licence.match(os.path.basename(f))]
            self.assertTrue(found, "no licence file kept in %s" % dist)
        requests_dist = next(d for d in dist_infos if d.startswith("requests-"))
        self.assertTrue(os.path.isfile(os.path.join(self.code, requests_dist, "licenses", "NOTICE")))

    def test_compiled_modules_are_for_the_target(self) -> None:
        shared = [f for f in walk_files(self.code) if f.endswith(".so")]
        self.assertIn("google/_upb/_message.abi3.so", shared)
        for rel in shared:
            self.assertEqual(elf_machine(os.path.join(self.code, rel)), ELF_MACHINE[LOCAL_ARCH], rel)

    # --- bytecode --------------------------------------------------------------------------------

    def test_every_py_has_an_unchecked_hash_pyc_for_this_python(self) -> None:
        tag = sys.implementation.cache_tag
        files = walk_files(self.code)
        sources = [f for f in files if f.endswith(".py")]
        self.assertGreater(len(sources), 100)
        for rel in sources:
            folder, base = os.path.split(rel)
            pyc = os.path.join(self.code, folder, "__pycache__", "%s.%s.pyc" % (base[:-3], tag))
            self.assertTrue(os.path.isfile(pyc), "no %s bytecode for %s" % (tag, rel))
            with open(pyc, "rb") as fh:
                header = fh.read(8)
            self.assertEqual(header[:4], importlib.util.MAGIC_NUMBER, rel)
            self.assertEqual(int.from_bytes(header[4:8], "little"), 0b01, "%s: not an unchecked-hash pyc" % rel)
        for rel in files:
            if rel.endswith(".pyc"):
                self.assertIn(".%s.pyc" % tag, rel)

    def test_imports_use_the_shipped_bytecode(self) -> None:
        """Nothing under the layer is compiled from source when the dependencies are imported."""
        probe = (
            "import sys, importlib._bootstrap_external as be\n"
            "root = sys.argv[1]; compiled = []\n"
            "orig = be.SourceLoader.source_to_code\n"
            "def spy(self, data, path, *a, **k):\n"
            "    if str(path).startswith(root): compiled.append(str(path))\n"
            "    return orig(self, data, path, *a, **k)\n"
            "be.SourceLoader.source_to_code = spy\n"
            "sys.path.insert(0, root)\n"
            "import requests, lambda_otel.app\n"
            "from readerwriterlock import rwlock\n"
            "from opentelemetry.proto.collector.trace.v1 import trace_service_pb2\n"
            "from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2\n"
            "from opentelemetry.proto.collector.logs.v1 import logs_service_pb2\n"
            "from google.protobuf.internal import api_implementation\n"
            "assert requests.__file__.startswith(root), requests.__file__\n"
            "print(api_implementation.Type(), len(compiled), compiled[:5])\n"
        )
        proc = subprocess.run([sys.executable, "-I", "-S", "-B", "-c", probe, self.code],
                              capture_output=True, text=True, timeout=RUN_TIMEOUT)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(proc.stdout.split()[:2], ["upb", "0"], proc.stdout)

    # --- launcher --------------------------------------------------------------------------------

    def test_launcher_fails_clearly_without_python3(self) -> None:
        empty = tempfile.mkdtemp(dir=self.tmp)
        proc = subprocess.run(["/bin/sh", self.launcher], env={"PATH": empty},
                              capture_output=True, text=True, timeout=RUN_TIMEOUT)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("no python3 on PATH", proc.stderr)
        self.assertIn("python%s" % PYVER, proc.stderr)

    def test_launcher_ignores_the_functions_pythonpath(self) -> None:
        """A function's PYTHONPATH holding its own 'lambda_otel' (or requests) must not be imported."""
        decoy = tempfile.mkdtemp(dir=self.tmp)
        marker = os.path.join(decoy, "imported")
        os.makedirs(os.path.join(decoy, "lambda_otel"))
        with open(os.path.join(decoy, "lambda_otel", "__init__.py"), "w") as fh:
            fh.write("open(%r, 'w').close()\nraise SystemExit(42)\n" % marker)
        bindir = self._python3_bindir()
        env = {"PATH": bindir, "PYTHONPATH": decoy, "PYTHONHOME": "/nonexistent"}
        proc = subprocess.run([self.launcher], env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
        self.assertFalse(os.path.exists(marker), proc.stderr)
        # Without AWS_LAMBDA_RUNTIME_API the real extension starts, cannot register and says so.
        self.assertEqual(proc.returncode, 1, proc.stderr)
        self.assertIn("AWS_LAMBDA_RUNTIME_API", proc.stderr)

    def test_bootstrap_warns_about_another_python_version(self) -> None:
        bootstrap = os.path.join(self.code, "lambda_otel", "layer_bootstrap.py")
        proc = subprocess.run([sys.executable, "-I", "-S", "-B", bootstrap, "3.99", self.launcher],
                              env={"PATH": self._python3_bindir()}, capture_output=True, text=True,
                              timeout=RUN_TIMEOUT)
        self.assertIn("built for Python 3.99 but python3 is %s" % PYVER, proc.stderr)

    def _python3_bindir(self) -> str:
        """A PATH folder whose python3 is this test's interpreter (the 'function runtime')."""
        if not getattr(self, "_bindir", None):
            type(self)._bindir = python3_bindir(sys.executable, self.tmp)
        return self._bindir

    # --- the built layer under the simulator -----------------------------------------------------

    def test_extension_from_layer_runs_under_simulator(self) -> None:
        """Register, a few invocations, SHUTDOWN: the layer's extension exports metrics and exits in time."""
        run_layer_under_simulator(self, self.root, self._python3_bindir(), self.tmp)

    # --- reproducibility -------------------------------------------------------------------------

    def test_reproducible(self) -> None:
        second = build_layer(self.source, os.path.join(self.tmp, "out2"), self.pip_cache)
        self.assertEqual(second["sha256"], self.summary["sha256"])
        with open(second["layer"], "rb") as a, open(self.zip_path, "rb") as b:
            self.assertTrue(a.read() == b.read())


class LayerBuildOptionsTest(unittest.TestCase):
    def test_missing_interpreter_fails_clearly(self) -> None:
        with tempfile.TemporaryDirectory() as out:
            proc = subprocess.run(["/bin/sh", BUILD_SCRIPT, "--python", "3.99", "--out", out],
                                  capture_output=True, text=True, timeout=RUN_TIMEOUT)
            self.assertNotEqual(proc.returncode, 0)
            self.assertIn("no Python 3.99 interpreter found", proc.stderr)
            self.assertIn("--python-bin", proc.stderr)
            self.assertEqual(os.listdir(out), [])

    def test_python_bin_of_another_version_is_refused(self) -> None:
        with tempfile.TemporaryDirectory() as out:
            proc = subprocess.run(["/bin/sh", BUILD_SCRIPT, "--python", "3.99", "--python-bin", sys.executable,
                                   "--out", out], capture_output=True, text=True, timeout=RUN_TIMEOUT)
            self.assertNotEqual(proc.returncode, 0)
            self.assertIn("is Python %s, but the target is --python 3.99" % PYVER, proc.stderr)

    def test_bad_arch_is_refused(self) -> None:
        proc = subprocess.run(["/bin/sh", BUILD_SCRIPT, "--arch", "sparc"], capture_output=True, text=True,
                              timeout=RUN_TIMEOUT)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("unsupported --arch 'sparc'", proc.stderr)

    def test_other_arch_build(self) -> None:
        """arm64 from x86_64 (or the reverse): the target's wheels, bytecode for this Python."""
        other = "arm64" if LOCAL_ARCH == "x86_64" else "x86_64"
        with tempfile.TemporaryDirectory() as tmp:
            source = os.path.join(tmp, "src")
            snapshot_checkout(source)
            summary = build_layer(source, os.path.join(tmp, "out"), PIP_CACHE, "--arch", other)
            self.assertTrue(summary["layer"].endswith("-%s.zip" % other))
            root = os.path.join(tmp, "root")
            unzip_layer(summary["layer"], root)
            code = os.path.join(root, NAME)
            shared = [f for f in walk_files(code) if f.endswith(".so")]
            self.assertIn("google/_upb/_message.abi3.so", shared)
            for rel in shared:
                self.assertEqual(elf_machine(os.path.join(code, rel)), ELF_MACHINE[other], rel)
            pyc = os.path.join(code, "requests", "__pycache__", "api.%s.pyc" % sys.implementation.cache_tag)
            self.assertTrue(os.path.isfile(pyc))


# Modules removed from the standard library by 3.12-3.14 (PEP 594, distutils, imp, lib2to3), and names
# removed by 3.14 (ast's old node classes, pkgutil's loader finders, ByteString).
REMOVED_MODULES = {"aifc", "asynchat", "asyncore", "audioop", "cgi", "cgitb", "chunk", "crypt", "distutils", "imghdr",
                   "imp", "lib2to3", "mailcap", "msilib", "nis", "nntplib", "ossaudiodev", "pipes", "smtpd", "sndhdr",
                   "spwd", "sunau", "telnetlib", "uu", "xdrlib"}
REMOVED_NAMES = {("ast", "Num"), ("ast", "Str"), ("ast", "Bytes"), ("ast", "NameConstant"), ("ast", "Ellipsis"),
                 ("pkgutil", "find_loader"), ("pkgutil", "get_loader"), ("typing", "ByteString"),
                 ("collections.abc", "ByteString"), ("asyncio", "get_child_watcher"), ("asyncio", "set_child_watcher")}


class NothingRemovedInNewerPythonsTest(unittest.TestCase):
    def test_no_module_or_name_removed_by_3_12_to_3_14(self) -> None:
        import ast

        used = []
        for top in ("lambda_otel", "tests", "bench"):
            for d, _, files in os.walk(os.path.join(ROOT, top)):
                for f in (f for f in files if f.endswith(".py")):
                    path = os.path.join(d, f)
                    with open(path, encoding="utf-8") as fh:
                        tree = ast.parse(fh.read(), path)
                    for node in ast.walk(tree):
                        if isinstance(node, ast.Import):
                            names = [(a.name, None) for a in node.names]
                        elif isinstance(node, ast.ImportFrom) and node.module:
                            names = [(node.module, a.name) for a in node.names]
                        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                            names = [(node.value.id, node.attr)]  # e.g. ast.Num (a local named like a module is fine)
                            if names[0] not in REMOVED_NAMES:
                                continue
                        else:
                            continue
                        for module, name in names:
                            if module.split(".")[0] in REMOVED_MODULES or (module, name) in REMOVED_NAMES:
                                used.append("%s:%d %s" % (os.path.relpath(path, ROOT), node.lineno, module))
        self.assertEqual(used, [])


class RuntimeLayerCase:
    """The layer for one of Lambda's Python runtimes, built and run by that interpreter (a mixin: each
    runtime is a TestCase below)."""

    VERSION = ""

    @classmethod
    def setUpClass(cls) -> None:
        cls.python, how = interpreter(cls.VERSION)
        if cls.python is None:
            raise unittest.SkipTest(how)
        cls.tmp = tempfile.mkdtemp(prefix="test-layer-%s-" % cls.VERSION)
        try:
            cls.source = os.path.join(cls.tmp, "src")
            snapshot_checkout(cls.source)
            cls.summary = build_layer(cls.source, os.path.join(cls.tmp, "out"), PIP_CACHE, python=cls.python)
            cls.root = os.path.join(cls.tmp, "root")
            unzip_layer(cls.summary["layer"], cls.root)
            cls.code = os.path.join(cls.root, NAME)
            probe = "import sys, importlib.util; print(sys.implementation.cache_tag, importlib.util.MAGIC_NUMBER.hex())"
            out = subprocess.run([cls.python, "-c", probe], capture_output=True, text=True, timeout=RUN_TIMEOUT)
            cls.cache_tag, magic = out.stdout.split()
            cls.magic = bytes.fromhex(magic)
        except BaseException:
            shutil.rmtree(cls.tmp, ignore_errors=True)
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_named_and_compiled_for_the_runtime(self) -> None:
        self.assertEqual(os.path.basename(self.summary["layer"]),
                         "lambda-otel-layer-python%s-%s.zip" % (self.VERSION, LOCAL_ARCH))
        self.assertEqual(self.cache_tag, "cpython-%s" % self.VERSION.replace(".", ""))
        sources = [f for f in walk_files(self.code) if f.endswith(".py")]
        self.assertGreater(len(sources), 100)
        for rel in sources:
            folder, base = os.path.split(rel)
            pyc = os.path.join(self.code, folder, "__pycache__", "%s.%s.pyc" % (base[:-3], self.cache_tag))
            with open(pyc, "rb") as fh:
                header = fh.read(8)
            self.assertEqual(header[:4], self.magic, rel)
            self.assertEqual(int.from_bytes(header[4:8], "little"), 0b01, rel)

    def test_every_module_imports_from_its_bytecode_with_warnings_as_errors(self) -> None:
        probe = (
            "import sys, pkgutil, importlib, importlib._bootstrap_external as be\n"
            "root = sys.argv[1]; compiled = []\n"
            "orig = be.SourceLoader.source_to_code\n"
            "def spy(self, data, path, *a, **k):\n"
            "    if str(path).startswith(root): compiled.append(str(path))\n"
            "    return orig(self, data, path, *a, **k)\n"
            "be.SourceLoader.source_to_code = spy\n"
            "sys.path.insert(0, root)\n"
            "import lambda_otel, requests\n"
            "mods = [m.name for m in pkgutil.walk_packages(lambda_otel.__path__, 'lambda_otel.')]\n"
            "for m in mods: importlib.import_module(m)\n"
            "from readerwriterlock import rwlock\n"
            "from opentelemetry.proto.collector.logs.v1 import logs_service_pb2\n"
            "from google.protobuf.internal import api_implementation\n"
            "print(api_implementation.Type(), len(compiled), len(mods))\n"
        )
        proc = subprocess.run([self.python, "-I", "-S", "-B", "-W", "error", "-c", probe, self.code],
                              capture_output=True, text=True, timeout=RUN_TIMEOUT)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        kind, compiled, modules = proc.stdout.split()
        self.assertEqual((kind, compiled), ("upb", "0"), proc.stdout)
        self.assertGreater(int(modules), 15)

    def test_extension_from_layer_runs_under_simulator(self) -> None:
        run_layer_under_simulator(self, self.root, python3_bindir(self.python, self.tmp), self.tmp)

    def test_unit_tests_of_the_source_pass(self) -> None:
        """The checkout's unit tests (those that start no extension process) on this interpreter, with
        the layer's dependencies and deprecation warnings as errors."""
        modules = ["tests.test_metrics", "tests.test_resource", "tests.test_otlp", "tests.test_aggregator",
                   "tests.test_flush", "tests.test_convert"]
        modules += ["tests.test_config." + c for c in ("DefaultsTest", "InitTypeTest", "EndpointTest",
                    "SelfExportTest", "RedactionTest", "HeadersTest", "ProtocolTest", "ValidationTest",
                    "LimitsTest", "TableTest")]
        modules = [m for m in modules if os.path.exists(os.path.join(self.source, *m.split(".")[:2]) + ".py")]
        env = dict(os.environ, PYTHONPATH=self.source + os.pathsep + self.code)
        proc = subprocess.run([self.python, "-W", "error::DeprecationWarning", "-m", "unittest", *modules],
                              cwd=self.source, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        self.assertRegex(proc.stderr, r"Ran [1-9][0-9]+ tests")


class Python312LayerTest(RuntimeLayerCase, unittest.TestCase):
    VERSION = "3.12"


class Python313LayerTest(RuntimeLayerCase, unittest.TestCase):
    VERSION = "3.13"


class Python314LayerTest(RuntimeLayerCase, unittest.TestCase):
    VERSION = "3.14"


class SeveralTargetsTest(unittest.TestCase):
    def test_one_zip_per_python_and_arch(self) -> None:
        found = [(v, interpreter(v)[0]) for v in RUNTIMES]
        found = [(v, p) for v, p in found if p]
        if len(found) < 2:
            self.skipTest("fewer than two of Python %s can be had here" % ", ".join(RUNTIMES))
        with tempfile.TemporaryDirectory() as tmp:
            source = os.path.join(tmp, "src")
            snapshot_checkout(source)
            out = os.path.join(tmp, "out")
            args = ["/bin/sh", BUILD_SCRIPT, "--source", source, "--out", out, "--pip-cache", PIP_CACHE,
                    "--arch", "x86_64,arm64"]
            for _, python in found[:2]:
                args += ["--python-bin", python]
            proc = subprocess.run(args, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
            self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
            self.assertEqual(sorted(os.listdir(out)),
                             sorted("lambda-otel-layer-python%s-%s.zip" % (v, a) for v, _ in found[:2]
                                    for a in ("x86_64", "arm64")))


if __name__ == "__main__":
    unittest.main()
