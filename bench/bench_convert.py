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

``--floor`` adds a third variant to the rounds: ``_floor_process``, the least a Python converter
of these batches can do with this protobuf (the same spans, log records and metric values for
this one batch shape, with no validation, rollback, sampling, init phases or log deduplication):
what is left between it and ``process`` is the price of those.

``--running N`` times something else: ``print`` lines (no request id) into N invocations running at
once (Managed Instances), where which invocation a line belongs to must be looked up.

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


def _floor_converter(resource, metrics):
    """A converter for bench_throughput's batches only, as lean as Python and protobuf allow (see
    the module docstring); it trusts its input entirely and is no model for real code."""
    from opentelemetry.proto.logs.v1 import logs_pb2
    from opentelemetry.proto.trace.v1 import trace_pb2

    from lambda_otel.convert import SEVERITY, parse_time_ns
    from lambda_otel.xray import parse_xray_header

    levels = {f"[{name}]": (name, number) for name, number in SEVERITY.items()}
    ids = random.Random(1)

    def process(events: list, now: int):
        rl = logs_pb2.ResourceLogs()
        rl.resource.CopyFrom(resource)
        add_log = rl.scope_logs.add().log_records.add
        rs = trace_pb2.ResourceSpans()
        rs.resource.CopyFrom(resource)
        add_span = rs.scope_spans.add().spans.add
        running, current = {}, None
        for event in events:
            kind, record = event["type"], event["record"]
            if kind == "function":
                if record[:1] == "[":  # [LEVEL]\ttime\trequest id\tmessage: held until runtimeDone
                    head, when, rid, message = record[:-1].split("\t", 3)
                    running[rid]["held"].append((parse_time_ns(when), levels[head], message))
                else:
                    lr = add_log()
                    lr.CopyFrom(current["log"])
                    lr.time_unix_nano = parse_time_ns(event["time"])
                    lr.body.string_value = record[:-1]
            elif kind == "platform.start":
                rid = record["requestId"]
                ctx = parse_xray_header(record["tracing"]["value"])
                log = logs_pb2.LogRecord(trace_id=ctx.trace_id, span_id=ctx.parent_id, flags=1, observed_time_unix_nano=now)
                kv = log.attributes.add()
                kv.key, kv.value.string_value = "faas.invocation_id", rid
                child = trace_pb2.Span(trace_id=ctx.trace_id, parent_span_id=ctx.parent_id, flags=0x101, kind=1)
                child.attributes.add().CopyFrom(kv)
                current = running[rid] = {"rid": rid, "ctx": ctx, "start": parse_time_ns(event["time"]), "log": log,
                                          "child": child, "held": []}
            elif kind == "platform.runtimeDone":
                inv = running[record["requestId"]]
                span = add_span(trace_id=inv["ctx"].trace_id, span_id=inv["ctx"].parent_id, flags=0x101,
                                name="bench-function", kind=2, start_time_unix_nano=inv["start"],
                                end_time_unix_nano=parse_time_ns(event["time"]))
                kv = span.attributes.add()
                kv.key, kv.value.string_value = "faas.invocation_id", inv["rid"]
                kv = span.attributes.add()
                kv.key, kv.value.bool_value = "faas.coldstart", False
                for item in record["spans"]:
                    start = parse_time_ns(item["start"])
                    span = add_span()
                    span.CopyFrom(inv["child"])
                    span.span_id = ids.getrandbits(64).to_bytes(8, "big")
                    span.name, span.start_time_unix_nano = item["name"], start
                    span.end_time_unix_nano = start + round(item["durationMs"] * 1e6)
                for when, (level, number), message in inv["held"]:
                    lr = add_log()
                    lr.CopyFrom(inv["log"])
                    lr.time_unix_nano, lr.severity_text, lr.severity_number = when, level, number
                    lr.body.string_value = message
                inv["runtime_ms"] = record["metrics"]["durationMs"]
            elif kind == "platform.report":
                inv, m = running.pop(record["requestId"]), record["metrics"]
                metrics.add("faas.invocations", 1)
                metrics.record("faas.invoke_duration", m["durationMs"] / 1000.0)
                metrics.record("aws.lambda.billed_duration", m["billedDurationMs"] / 1000.0)
                metrics.record("faas.mem_usage", m["maxMemoryUsedMB"] * 1024 * 1024)
                overhead = m["durationMs"] - inv["runtime_ms"]
                metrics.record("aws.lambda.extension_overhead", overhead / 1000.0)
                start = inv["start"] + round(inv["runtime_ms"] * 1e6)
                span = add_span()
                span.CopyFrom(inv["child"])
                span.span_id = ids.getrandbits(64).to_bytes(8, "big")
                span.name, span.start_time_unix_nano = "extensionOverhead", start
                span.end_time_unix_nano = start + round(overhead * 1e6)
        return rs, rl

    return process


def measure(rounds: int, floor: bool = False) -> dict:
    """Medians of the timings (ms) in this process's checkout."""
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

    variants = {"convert": convert, "json": base}
    if floor:
        floor_process = _floor_converter(resource, MetricsState(resource, "cumulative", loss))
        floor_decoded = iter([json.loads(b) for b in bodies[1:]])

        def lean() -> float:
            events = next(floor_decoded)
            started = time.thread_time()
            floor_process(events, now)
            return (time.thread_time() - started) * 1000.0

        variants["floor"] = lean
    stats = interleaved(variants, rounds)
    out = {"convert": stats["convert"].median, "json": stats["json"].median,
           "ratio": stats["convert"].median / stats["json"].median}
    if floor:
        out["floor"] = stats["floor"].median
        out["floor_ratio"] = stats["floor"].median / stats["json"].median
    return out


def run(ws=None, quick: bool = False):
    from bench.common import Row, Stats

    rounds = 5 if quick else 200
    result = measure(rounds)
    ours, base = Stats([result["convert"]]), Stats([result["json"]])
    row = Row("convert", "1000-event batch → OTLP messages (converter only)", ours, base, "ms",
              f"≤ {GOAL_RATIO:g}×", met=result["ratio"] <= GOAL_RATIO, base_label="json.loads",
              note=f"medians of {rounds} interleaved rounds")
    return [row]


def measure_running(running: int, rounds: int) -> float:
    """µs per ``print`` line (median of ``rounds`` batches of 770) with ``running`` invocations in flight."""
    from bench.bench_throughput import _iso
    from lambda_otel.convert import TelemetryConverter
    from lambda_otel.loss import LossCounter
    from lambda_otel.metrics import MetricsState
    from lambda_otel.resource import to_proto

    resource = to_proto({"service.name": "bench-function", "faas.name": "bench-function"})
    loss = LossCounter()
    converter = TelemetryConverter(resource, MetricsState(resource, "cumulative", loss), loss)
    now = time.time_ns()
    converter.process([{"time": _iso(now + i * 1000), "type": "platform.start", "record": {
        "requestId": f"00000000-0000-4000-8000-{i:012d}",
        "tracing": {"value": f"Root=1-5759e988-{i:024x};Parent={i + 1:016x};Sampled=1"}}} for i in range(running)])
    samples = []
    for r in range(rounds):
        start = now + 10**7 + r * 10**8
        lines = [{"time": _iso(start + i * 50_000), "type": "function", "record": f"line {i:06d} {PAD}\n"}
                 for i in range(770)]
        started = time.thread_time()
        converter.process(lines)
        samples.append((time.thread_time() - started) / len(lines) * 1e6)
    return statistics.median(samples)


PAD = "x" * 150


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
    parser.add_argument("--floor", action="store_true", help="also time the leanest converter of these batches")
    parser.add_argument("--running", type=int, nargs="+", metavar="N",
                        help="instead: print lines into N invocations running at once (several N: one run each)")
    args = parser.parse_args(argv)
    if args.running:
        for n in args.running:
            print(f"{n} running: {measure_running(n, args.rounds):.2f} us per print line")
        return 0
    if not args.against:
        r = measure(args.rounds, floor=args.floor)
        print(f"convert {r['convert']:.2f} ms, json.loads {r['json']:.2f} ms: {r['ratio']:.2f}x (goal <= {GOAL_RATIO:g}x)")
        if args.floor:
            print(f"floor {r['floor']:.2f} ms: {r['floor_ratio']:.2f}x json.loads")
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
