"""The converter's output, this checkout against another: what a change meant to be "faster, same
output" must show.

The same deterministic scenarios (bench_throughput's batches through four converter settings, and
mixed streams: overlapping invocations, INVOKE hints, the runtime's text and JSON lines, uncaught
exceptions, extension lines, lone surrogates, malformed events, logsDropped, a SHUTDOWN on timeout,
a small open/finished bound) are replayed through each checkout's ``TelemetryConverter`` in its own
process, with ids from a fixed seed and a fixed clock. Every call's ``Converted`` (spans and logs as
serialised bytes, counts, request id lists) and the final metrics and loss counts must be
byte-identical.

    git archive <commit> | tar -x -C /tmp/before
    .venv/bin/python -m bench.convert_diff --against /tmp/before

Ids come from ``IdGenerator``, whose seed is fixed here through ``os.urandom``: a change that draws
random ids in another order shows as a difference too (read the first one it reports).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import List, Optional

REPO = Path(__file__).resolve().parent.parent
T0 = 1_764_000_000_000_000_000  # 2025-11-24T16:00:00Z: every scenario's clock starts here


def _iso(t_ns: int) -> str:
    secs, ns = divmod(t_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + ".%03dZ" % (ns // 1_000_000)


def _scenario(calls: list, xray: str = "join", view: bool = True, sampler=None, max_open: int = 64,
              max_finished: int = 128) -> dict:
    return {"xray_mode": xray, "view": view, "sampler": sampler, "max_open": max_open,
            "max_finished": max_finished, "calls": calls}


def _bench_calls() -> list:
    from bench.bench_throughput import make_batch

    rng = random.Random(3)
    return [["process", T0 + i * 10**9, json.loads(make_batch(rng, T0 + i * 10**9))] for i in range(30)]


def _mixed_calls(seed: int, overlap: bool) -> list:
    """A stream of 400 steps: invocations start and end (overlapping or one at a time), log all
    kinds of lines in between, and some events are malformed; batches cut at random."""
    r = random.Random(seed)
    calls: list = []
    events: list = []
    t = T0
    running: list = []

    def flush() -> None:
        nonlocal events
        if events:
            calls.append(["process", t + 5_000_000, events])
            events = []

    init = {"initializationType": "on-demand", "phase": "init"}
    events += [{"time": _iso(t), "type": "platform.initStart", "record": dict(init)},
               {"time": _iso(t + 10**8), "type": "platform.initRuntimeDone", "record": dict(init, status="success")},
               {"time": _iso(t + 10**8), "type": "platform.initReport",
                "record": dict(init, status="success", metrics={"durationMs": 100.5})}]
    t += 2 * 10**8
    for n in range(400):
        t += r.randrange(1, 3_000_000)
        k = r.random()
        if k < 0.08 or not running:
            rid = str(uuid.UUID(int=r.getrandbits(128), version=4))
            header = "Root=1-%08x-%024x;Parent=%016x;Sampled=%d" % (t // 10**9, r.getrandbits(96), r.getrandbits(64),
                                                                   r.random() < 0.8)
            tracing = {"type": "X-Amzn-Trace-Id", "value": header, "spanId": "%016x" % r.getrandbits(64)}
            if r.random() < 0.5:
                flush()
                calls.append(["on_invoke", t, [rid, 1000, "arn:aws:lambda:us-east-1:123456789012:function:f:prod",
                                               header if r.random() < 0.5 else None]])
            events.append({"time": _iso(t), "type": "platform.start",
                           "record": {"requestId": rid, "version": "$LATEST", "tracing": tracing}})
            running.append((rid, t, tracing))
        elif k < 0.16:
            rid, t0, tracing = running.pop(0 if overlap else -1)
            status = r.choice(["success", "success", "error", "timeout"])
            done = {"requestId": rid, "status": status, "tracing": tracing, "metrics": {"durationMs": (t - t0) / 1e6},
                    "spans": [{"name": "responseLatency", "start": _iso(t0), "durationMs": (t - t0) / 1e6}]}
            if status == "error":
                done["errorType"] = "Runtime.Unknown"
            events.append({"time": _iso(t), "type": "platform.runtimeDone", "record": done})
            events.append({"time": _iso(t + 10**5), "type": "platform.report", "record": {
                "requestId": rid, "status": status, "metrics": {"durationMs": (t - t0) / 1e6 + 0.3,
                                                                "billedDurationMs": 3, "memorySizeMB": 128,
                                                                "maxMemoryUsedMB": 70}}})
        else:
            events.append(_line(r, n, t, r.choice(running)[0]))
        if r.random() < 0.15:
            flush()
    flush()
    calls.append(["on_shutdown", t + 10**9, ["timeout"]])
    return calls


def _line(r: random.Random, n: int, t: int, rid: str):
    """One function/extension line of a random kind, or a malformed event."""
    kind = r.randrange(12)
    records = {
        0: f"plain print {n}\n",
        1: f"[INFO]\t{_iso(t)}\t{rid}\tlogged {n}\n",
        2: f"[WARNING]\t{_iso(t)}\t{rid}\twarned {n}\nsecond line\n",
        3: json.dumps({"timestamp": _iso(t), "level": "INFO", "message": f"structured {n}", "requestId": rid,
                       "x": {"a": [1, 2.5, None, True]}}),
        4: {"timestamp": _iso(t), "level": "ERROR", "message": f"obj {n}", "requestId": rid, "errorType": "ValueError",
            "stackTrace": ["a\n", "b\n"]},
        5: f"[ERROR] ValueError: boom {n}\rTraceback (most recent call last):\r  File \"x\", line 1\r",
        6: f"{_iso(t)}\t{rid}\tINFO\tnode style {n}\n",
        7: f"surrogate \ud800 {n}",
        8: f"[INFO]\t{_iso(t)}\t\tno request id {n}\n",
        9: json.dumps({"timestamp": _iso(t), "level": "INFO", "message": f"powertools {n}", "service": "svc",
                       "location": "h:f:12", "cold_start": True, "xray_trace_id": "1-5759e988-bd862e3fe1be46a994272793"}),
    }
    if kind in records:
        return {"time": _iso(t), "type": "function", "record": records[kind]}
    if kind == 10:
        return {"time": _iso(t), "type": "extension", "record": f"[lambda-otel] WARNING something {n}"}
    return r.choice([{"time": "bad", "type": "function", "record": "x"}, {"type": "function"}, 5,
                     {"time": _iso(t), "type": "platform.nope", "record": {}},
                     {"time": _iso(t), "type": "platform.logsDropped",
                      "record": {"droppedRecords": 3, "droppedBytes": 10, "reason": "slow"}},
                     {"time": _iso(t), "type": "function", "record": 7},
                     {"time": _iso(t), "type": "platform.start", "record": {"requestId": 12}}])


def scenarios() -> List[dict]:
    bench = _bench_calls()
    out = [_scenario(bench), _scenario(bench, view=False), _scenario(bench, xray="link"),
           _scenario(bench, xray="parent", sampler=("traceidratio", 0.5))]
    for seed in range(6):
        out.append(_scenario(_mixed_calls(seed, overlap=seed % 2 == 0)))
        out.append(_scenario(_mixed_calls(seed, overlap=seed % 2 == 1), xray="link", view=False, max_open=4,
                             max_finished=8))
    return out


def replay(scenario: dict) -> list:
    """Every call's output in this process's checkout, as JSON-able values."""
    from lambda_otel.convert import TelemetryConverter
    from lambda_otel.loss import LossCounter
    from lambda_otel.metrics import MetricsState
    from lambda_otel.resource import to_proto
    from lambda_otel.sampling import TraceSampler
    from lambda_otel.sdk_view import FunctionSdkView

    now = [T0]
    resource = to_proto({"service.name": "bench-function", "faas.name": "bench-function",
                         "cloud.region": "us-east-1", "cloud.account.id": "123456789012"})
    loss = LossCounter()
    metrics = MetricsState(resource, "cumulative", loss, clock_ns=lambda: T0)
    sampler = TraceSampler(*scenario["sampler"]) if scenario["sampler"] else None
    conv = TelemetryConverter(resource, metrics, loss, scenario["xray_mode"], lambda: now[0], scenario["max_open"],
                              scenario["max_finished"], sampler, FunctionSdkView() if scenario["view"] else None)
    results: list = []
    for name, at, args in scenario["calls"]:
        now[0] = at
        if name == "process":
            out = conv.process(args)
        elif name == "on_shutdown":
            out = conv.on_shutdown(*args)
        else:
            getattr(conv, name)(*args)
            out = None
        results.append([name, None if out is None else [
            out.resource_spans.SerializeToString().hex() if out.resource_spans is not None else None, out.span_count,
            out.resource_logs.SerializeToString().hex() if out.resource_logs is not None else None, out.log_count,
            out.runtime_done, out.reports, out.started, out.instance_max_memory, out.deduplicated, out.ignored]])
    collected = metrics.collect(T0 + 3600 * 10**9)
    results.append(["metrics", collected.SerializeToString().hex() if collected is not None else None])
    results.append(["loss", sorted([list(k), v] for k, v in loss.snapshot().items())])
    return results


def _replay_in(checkout: Path, path: Path) -> list:
    """``replay`` of every scenario in ``path``, in a fresh process importing ``checkout``'s
    ``lambda_otel`` (this module is loaded from its own file: the other checkout may lack it)."""
    code = ("import importlib.util, json, os, sys; os.urandom = lambda n: b'\\x07' * n; sys.path.insert(0, sys.argv[1]); "
            "spec = importlib.util.spec_from_file_location('convert_diff', sys.argv[3]); "
            "tool = importlib.util.module_from_spec(spec); spec.loader.exec_module(tool); "
            "print(json.dumps([tool.replay(s) for s in json.load(open(sys.argv[2]))]))")
    out = subprocess.run([sys.executable, "-c", code, str(checkout), str(path), str(Path(__file__).resolve())],
                         capture_output=True, text=True, timeout=600, cwd=str(checkout),
                         env=dict(os.environ, PYTHONHASHSEED="0"))
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="another checkout of the repository")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scenarios.json"
        path.write_text(json.dumps(scenarios()))
        ours = _replay_in(REPO, path)
        theirs = _replay_in(Path(args.against).resolve(), path)
    calls = 0
    for i, (a, b) in enumerate(zip(ours, theirs)):
        for j, (x, y) in enumerate(zip(a, b)):
            calls += 1
            if x != y:
                print(f"scenario {i}, call {j} ({x[0]}): outputs differ")
                return 1
    if len(ours) != len(theirs) or any(len(a) != len(b) for a, b in zip(ours, theirs)):
        print("a different number of calls")
        return 1
    print(f"same output: {len(ours)} scenarios, {calls} calls")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
