"""Running the real lambda-otel extension under the simulator, exporting to a real OTLP sink.

Nothing here is a stand-in for our own code: the extension runs as its own process
(``python -m lambda_otel``) from an /opt/extensions-like folder, the function runs in the real
AWS Runtime Interface Client, and the sink decodes what was exported with opentelemetry-proto.
"""

from __future__ import annotations

import shlex
import shutil
import stat
import sys
import tempfile
import unittest
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from lambda_otel.app import STARTED_LINE
from lambda_otel.local.simulator import Simulator
from lambda_otel.local.sink import OtlpSink, any_value
from lambda_otel.local.tools import free_port  # noqa: F401  (one definition, shared)

REPO = Path(__file__).resolve().parent.parent
FUNCTIONS = Path(__file__).resolve().parent / "fixtures" / "functions"
EXTENSION_NAME = "lambda-otel"


def empty_log_records_request(count: int) -> bytes:
    """An ExportLogsServiceRequest of ``count`` empty log records, written straight on the wire:
    millions of them cost the test nothing to build (the receiver's bounds are what is tested)."""
    records = b"\x12\x00" * count  # ScopeLogs.log_records (field 2), each empty
    scope = b"\x12" + _varint(len(records)) + records  # ResourceLogs.scope_logs
    return b"\x0a" + _varint(len(scope)) + scope  # ExportLogsServiceRequest.resource_logs


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def write_launcher(ext_dir: Path, name: str = EXTENSION_NAME, extra_path: Optional[Path] = None) -> Path:
    """An executable like the layer's: Lambda starts it, it execs Python on lambda-otel.

    ``extra_path`` goes first on the extension's PYTHONPATH (a sitecustomize for fault injection).
    """
    paths = ([str(extra_path)] if extra_path else []) + [str(REPO)]
    launcher = ext_dir / name
    cmd = f"exec {shlex.quote(sys.executable)} -m lambda_otel"
    launcher.write_text(f"#!/bin/sh\nexport PYTHONPATH={shlex.quote(':'.join(paths))}\n{cmd}\n")
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return launcher


class ExtensionTestCase(unittest.TestCase):
    """Builds (simulator, sink) pairs with lambda-otel installed as the only extension.

    Each test gets its own ports for the receiver and the telemetry listener, so tests
    never depend on 4318 being free.
    """

    def make_env(self, sink: Optional[OtlpSink], **extra: str) -> Dict[str, str]:
        env = {
            "LAMBDA_OTEL_RECEIVER_PORT": str(free_port()),
            "LAMBDA_OTEL_TELEMETRY_PORT": str(free_port()),
            "LAMBDA_OTEL_LOG_LEVEL": "info",
        }
        if sink is not None:
            env["LAMBDA_OTEL_EXPORTER_ENDPOINT"] = sink.endpoint
        env.update(extra)
        return env

    def make_sink(self, **kwargs) -> OtlpSink:
        sink = OtlpSink(**kwargs)
        sink.start()
        self.addCleanup(sink.stop)
        return sink

    def make_sim(self, env: Dict[str, str], handler: str = "e2e_handlers.handler", **kwargs) -> Simulator:
        root = Path(tempfile.mkdtemp(prefix="lambda-otel-e2e-"))
        self.addCleanup(shutil.rmtree, root, True)
        ext_dir = root / "extensions"
        ext_dir.mkdir()
        write_launcher(ext_dir)
        kwargs.setdefault("timeout_s", 3.0)
        kwargs.setdefault("handler_dir", str(FUNCTIONS))
        sim = Simulator(extensions_dir=str(ext_dir), handler=handler, env=env, **kwargs)
        self.addCleanup(sim.stop)
        return sim

    def extension_output(self, sim: Simulator) -> str:
        return "\n".join(f"{stream}: {line}" for stream, line in sim.process_output(EXTENSION_NAME))

    def invoke_until_started(self, sim: Simulator, limit: int = 30) -> list:
        """Invoke (printing nothing) until the extension says its start-up is over, at most
        ``limit`` times; the results. No hold waits for the export client's import (app.py), and
        the import runs only while the environment is thawed: a test that needs the next
        invocation's data to be exported in its own hold calls this first. Needs log level info."""
        results = []
        for _ in range(limit):
            if STARTED_LINE in self.extension_output(sim):
                return results
            results.append(sim.invoke({"logs": 0}, timeout=30))
        self.fail(f"start-up not done after {limit} invocations\n{self.extension_output(sim)}")


# --- reading metrics the way a backend would -----------------------------------------------------


def final_cumulative(points: Iterable, name: str) -> Dict[Tuple[str, tuple], object]:
    """Latest data point per (extension instance, attributes) for one cumulative metric.

    Each extension process (one per execution environment) reports its own cumulative
    series, told apart by ``faas.instance``; a backend sums the latest point of each.
    """
    latest: Dict[Tuple[str, tuple], object] = {}
    for p in points:
        if p.name != name:
            continue
        attrs = tuple(sorted((kv.key, any_value(kv.value)) for kv in p.point.attributes))
        key = (p.resource.get("faas.instance"), attrs)
        if key not in latest or p.point.time_unix_nano >= latest[key].time_unix_nano:
            latest[key] = p.point
    return latest


def counter_total(points: Iterable, name: str, **attrs: str) -> int:
    total = 0
    for (_, key_attrs), point in final_cumulative(points, name).items():
        as_dict = dict(key_attrs)
        if all(as_dict.get(k) == v for k, v in attrs.items()):
            total += point.as_int
    return total


def histogram_totals(points: Iterable, name: str) -> Tuple[int, float]:
    """(count, sum) over every instance's latest cumulative point."""
    count, total = 0, 0.0
    for point in final_cumulative(points, name).values():
        count += point.count
        total += point.sum
    return count, total


def spans_by_name(spans: Iterable) -> Dict[str, List]:
    out: Dict[str, List] = defaultdict(list)
    for s in spans:
        out[s.name].append(s)
    return out
