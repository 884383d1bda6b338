"""Conversion: ``TelemetryConverter.process`` of a 1000-event batch, against ``json.loads`` of it.

The batches are bench_throughput's (platform.start / runtimeDone / report of ~77 invocations and
~770 function lines, half in the Python runtime's text format, half plain ``print`` output),
decoded once; each round times ``json.loads`` of one body and ``process`` of the decoded events
of another copy, in a shuffled order, in CPU time of the thread (``time.thread_time``: the machine
is shared, and waiting for a core is not conversion cost). The converter is built as the pipeline builds it (with the
function-SDK view, so log lines take the deduplication path).

``--against DIR`` measures another checkout of the repository (e.g. an older commit unpacked with
``git archive``) the same way, alternating one process of each for ``--repeat`` times: a
before/after comparison on one loaded machine.

Goal (issue 17): ≤ 4× ``json.loads``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GOAL_RATIO = 4.0
REPO = Path(__file__).resolve().parent.parent


def measure(rounds: int) -> dict:
    """Medians of both timings (ms) in this process's checkout."""
    from bench.bench_throughput import make_batch
    from bench.common import interleaved
    from lambda_otel.convert import TelemetryConverter
    from lambda_otel.loss import LossCounter
    from lambda_otel.metrics import MetricsState
    from lambda_otel.resource import to_proto

    resource = to_proto({"service.name": "bench-function", "faas.name": "bench-function"})
    loss = LossCounter()
    kwargs = {}
    if "sdk_view" in inspect.signature(TelemetryConverter).parameters:
        from lambda_otel.sdk_view import FunctionSdkView

        kwargs["sdk_view"] = FunctionSdkView()
    converter = TelemetryConverter(resource, MetricsState(resource, "cumulative", loss), loss, **kwargs)
    rng = random.Random(8)
    now = time.time_ns()
    bodies = [make_batch(rng, now + i * 10**9) for i in range(rounds + 1)]
    decoded = iter([json.loads(b) for b in bodies[1:]])
    raw = iter(bodies[1:])
    converter.process(json.loads(bodies[0]))  # warm-up

    def convert() -> float:
        events = next(decoded)
        started = time.thread_time()
        converter.process(events)
        return (time.thread_time() - started) * 1000.0

    def base() -> float:
        body = next(raw)
        started = time.thread_time()
        json.loads(body)
        return (time.thread_time() - started) * 1000.0

    stats = interleaved({"convert": convert, "json": base}, rounds)
    return {"convert": stats["convert"].median, "json": stats["json"].median,
            "ratio": stats["convert"].median / stats["json"].median}


def run(ws=None, quick: bool = False):
    from bench.common import Row, Stats

    rounds = 5 if quick else 200
    result = measure(rounds)
    ours, base = Stats([result["convert"]]), Stats([result["json"]])
    row = Row("convert", "1000-event batch → OTLP messages (converter only)", ours, base, "ms",
              f"≤ {GOAL_RATIO:g}×", met=result["ratio"] <= GOAL_RATIO, base_label="json.loads",
              note=f"medians of {rounds} interleaved rounds")
    return [row]


def _child(checkout: Path, rounds: int) -> dict:
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from bench.bench_convert import measure; "
            "print(json.dumps(measure(int(sys.argv[2]))))")
    out = subprocess.run([sys.executable, "-c", code, str(checkout), str(rounds)], capture_output=True, text=True,
                         timeout=600, cwd=str(checkout))
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--against", help="another checkout to compare with, alternating processes")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    if not args.against:
        r = measure(args.rounds)
        print(f"convert {r['convert']:.2f} ms, json.loads {r['json']:.2f} ms: {r['ratio']:.2f}x (goal <= {GOAL_RATIO:g}x)")
        return 0
    other = Path(args.against).resolve()
    ratios = {"this": [], "other": []}
    for _ in range(args.repeat):
        for name, checkout in (("other", other), ("this", REPO)):
            r = _child(checkout, args.rounds)
            ratios[name].append(r["ratio"])
            print(f"{name:5} {checkout}: convert {r['convert']:.2f} ms, json.loads {r['json']:.2f} ms, {r['ratio']:.2f}x",
                  flush=True)
    for name, values in ratios.items():
        print(f"{name}: median ratio {statistics.median(values):.2f}x over {len(values)} processes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
