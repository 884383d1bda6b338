"""Memory: peak RSS (VmHWM) of the extension under the standard load, against its bare dependencies.

lambda-otel: the layer's extension under the simulator, default flush strategy, exporting to an
``OtlpSink``; after the standard load (1000 invocations, each with 10 function log lines of ~200
bytes, one span from the function's OTel SDK through the receiver, and the platform events) the
extension's VmHWM is read from /proc while it is frozen.
Baseline: a process that only imports the four dependencies (``requests``, the three OTLP
collector service ``pb2`` modules with ``protobuf``, ``readerwriterlock.rwlock``) from the same
layer, run the way the launcher runs Python (``-I -S -B``), then reads its own VmHWM.

Goals: ≤ 1.15× the baseline and ≤ 40 MiB.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import List

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import NAME, Environment, Row, Workspace, interleaved, main_for, vm_hwm_kib

GOAL_RATIO = 1.15  # issue 17 goal 6
GOAL_MIB = 40.0

DEPS_ONLY = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "import requests; "
    "from google.protobuf import message; "
    "from opentelemetry.proto.collector.trace.v1 import trace_service_pb2; "
    "from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2; "
    "from opentelemetry.proto.collector.logs.v1 import logs_service_pb2; "
    "from readerwriterlock import rwlock; "
    "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0])"
)


def deps_only_mib(ws: Workspace) -> float:
    out = subprocess.run([ws.layer.python3, "-I", "-S", "-B", "-c", DEPS_ONLY, str(ws.layer.code_dir)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return int(out.strip()) / 1024.0


def loaded_extension_mib(ws: Workspace, invocations: int) -> float:
    from lambda_otel.local.sink import OtlpSink

    with OtlpSink() as sink:
        env = Environment(ws, NAME, sink, LAMBDA_OTEL_LOG_LEVEL="warning")
        try:
            for _ in range(invocations):
                env.invoke(lines=10)
            peak = vm_hwm_kib(env.pid) / 1024.0
            # The load must have gone through: the function's spans reached the sink.
            env.sim.shutdown("spindown", timeout=30)
            sink.wait_for(lambda: sum(1 for s in sink.spans() if s.name == "work") >= invocations, timeout=10)
            got = sum(1 for s in sink.spans() if s.name == "work")
            if got < invocations:
                raise RuntimeError(f"only {got} of {invocations} function spans reached the sink; "
                                   f"{env.final_flush_line()}")
        finally:
            env.close()
    return peak


def run(ws: Workspace, quick: bool = False) -> List[Row]:
    rounds, invocations = (1, 10) if quick else (3, 1000)
    stats = interleaved({"ours": lambda: loaded_extension_mib(ws, invocations),
                         "base": lambda: deps_only_mib(ws)}, rounds)
    ours, base = stats["ours"], stats["base"]
    ratio_row = Row("memory", f"peak RSS after {invocations} invocations", ours, base, "MiB",
                    f"≤ {GOAL_RATIO:g}×", met=None, base_label="deps imported",
                    note=f"{rounds} interleaved rounds (a fresh environment each)")
    ratio_row.met = ratio_row.ratio is not None and ratio_row.ratio <= GOAL_RATIO
    abs_row = Row("memory", "peak RSS, absolute", ours, None, "MiB", f"≤ {GOAL_MIB:g} MiB",
                  met=ours.max <= GOAL_MIB, note="judged on the largest round")
    return [ratio_row, abs_row]


def main(argv=None) -> int:
    return main_for(run, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
