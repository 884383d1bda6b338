"""Run every benchmark side by side with its baseline and print one results table.

    .venv/bin/python -m bench.run_all            # the full run (about 10-15 minutes)
    .venv/bin/python -m bench.run_all --quick    # tiny sizes, a smoke run (< 60 s), not a measurement
    .venv/bin/python -m bench.run_all --only ready,throughput --layer /tmp/root

The layer is built once with ./build_layer.sh into a temporary folder (or taken from --layer, an
unzipped layer) and shared by every benchmark. Figures and method: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path
from typing import List

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import (bench_convert, bench_layer, bench_listener, bench_memory, bench_overhead, bench_ready, bench_shutdown,
                   bench_startup, bench_throughput)
from bench.common import Row, Workspace, rst_table

BENCHES = {
    "ready": bench_ready,
    "startup": bench_startup,
    "memory": bench_memory,
    "throughput": bench_throughput,
    "convert": bench_convert,
    "listener": bench_listener,
    "overhead": bench_overhead,
    "shutdown": bench_shutdown,
    "layer": bench_layer,
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="lambda-otel benchmarks, each against its baseline")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run, not a measurement)")
    parser.add_argument("--only", help="comma-separated subset of: " + ",".join(BENCHES))
    parser.add_argument("--layer", help="an already unzipped layer folder (skips ./build_layer.sh)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",")] if args.only else list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHES)}")

    rows: List[Row] = []
    failed = []
    started = time.monotonic()
    with Workspace(args.layer, keep=args.keep) as ws:
        for name in names:
            t0 = time.monotonic()
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            try:
                got = BENCHES[name].run(ws, quick=args.quick)
            except Exception:  # one broken bench must not hide the others' results
                traceback.print_exc()
                failed.append(name)
                continue
            rows.extend(got)
            print(f"[bench] {name} done in {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
    print(rst_table(rows))
    print(f"\n{'quick' if args.quick else 'full'} run, {time.monotonic() - started:.0f} s; "
          f"Python {sys.version.split()[0]}")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
