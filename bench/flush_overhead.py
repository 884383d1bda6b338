"""Extension overhead per invocation and shutdown time, per flush strategy (source checkout).

Runs the real extension from this checkout (not the built layer: see ``bench_overhead.py`` for
that) under the simulator, with ``tests/fixtures/functions/e2e_handlers.handler`` printing one
log line per invocation and an ``OtlpSink`` on 127.0.0.1 that answers at once. For each strategy:
a few warm-up invocations, then ``--invocations`` back to back (each followed by the simulator's
real freeze), then SHUTDOWN. Reported:

* overhead: ``InvocationResult.extension_overhead_ms`` (runtime done -> the extension's next
  ``/next``), what Lambda bills and waits for after the function returned;
* shutdown: SHUTDOWN event handed out -> extension process exit.

    .venv/bin/python -m bench.flush_overhead [--invocations 200] [--strategies default,end]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lambda_otel.local.simulator import Simulator
from lambda_otel.local.sink import OtlpSink
from tests.support import FUNCTIONS, free_port, write_launcher

WARMUP = 5


def percentile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run(strategy: str, invocations: int) -> Dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="lambda-otel-bench-"))
    sink = OtlpSink().start()
    sim = None
    try:
        ext_dir = root / "extensions"
        ext_dir.mkdir()
        write_launcher(ext_dir)
        env = {
            "LAMBDA_OTEL_EXPORTER_ENDPOINT": sink.endpoint,
            "LAMBDA_OTEL_RECEIVER_PORT": str(free_port()),
            "LAMBDA_OTEL_TELEMETRY_PORT": str(free_port()),
            "LAMBDA_OTEL_FLUSH_STRATEGY": strategy,
            "LAMBDA_OTEL_LOG_LEVEL": "warning",
        }
        sim = Simulator(extensions_dir=str(ext_dir), handler="e2e_handlers.handler", handler_dir=str(FUNCTIONS),
                        env=env, timeout_s=3.0)
        sim.start(timeout=30)
        for _ in range(WARMUP):
            sim.invoke({"logs": 1}, timeout=30)
        overheads = []
        for _ in range(invocations):
            res = sim.invoke({"logs": 1}, timeout=30)
            if res.status != "success" or res.extension_overhead_ms is None:
                raise SystemExit(f"{strategy}: invocation {res.request_id} ended {res.status}")
            overheads.append(res.extension_overhead_ms)
        down = sim.shutdown("spindown", timeout=30)
        ext = down.extensions["lambda-otel"]
        if not ext.exited_in_time or ext.exit_code != 0:
            raise SystemExit(f"{strategy}: extension did not exit cleanly in time: {ext}")
        spans = {s.name for s in sink.spans()}
        return {
            "n": len(overheads),
            "median": percentile(overheads, 0.5),
            "p99": percentile(overheads, 0.99),
            "max": max(overheads),
            "shutdown_ms": (ext.exited_at.mono - down.shutdown_events_sent_at.mono) * 1000,
            "requests": len(sink.requests),
            "exported": int("test-function" in spans),
        }
    finally:
        if sim is not None:
            sim.stop()
        sink.stop()
        shutil.rmtree(root, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invocations", type=int, default=200, choices=range(1, 10001), metavar="N")
    parser.add_argument("--strategies", default="default,end")
    args = parser.parse_args(argv)
    rows = [(s.strip(), run(s.strip(), args.invocations)) for s in args.strategies.split(",") if s.strip()]
    print(f"{'strategy':<10} {'n':>5} {'overhead median ms':>18} {'p99 ms':>7} {'max ms':>7} "
          f"{'SHUTDOWN->exit ms':>17} {'requests':>8}")
    for name, r in rows:
        print(f"{name:<10} {r['n']:>5} {r['median']:>18.2f} {r['p99']:>7.2f} {r['max']:>7.2f} "
              f"{r['shutdown_ms']:>17.1f} {r['requests']:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
