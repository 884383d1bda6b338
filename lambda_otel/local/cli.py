"""``lambda-otel-local``: see lambda-otel work end to end on your machine, with zero configuration.

It starts the Lambda simulator, the lambda-otel extension (from this checkout, through a launcher in
a temporary extensions folder, as the layer would), a demo function and an OTLP sink; runs a few
invocations (one of them fails) and a SHUTDOWN; then prints what the backend received (metrics with
values, spans as trees, log lines with their trace ids) and a short summary (invocations, extension
overhead per invocation as the simulator measured it, what lambda-otel dropped, shutdown result).
docs/local.md says how to read it; ``lambda-otel-local --help`` lists the options with examples.
"""

from __future__ import annotations

import argparse
import ast
import logging
import os
import re
import shlex
import sys
import tempfile
from collections import defaultdict
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Sequence, TextIO, Tuple

from .. import loss
from .sink import MetricPoint, OtlpSink, SpanItem, attrs_to_dict, describe
from .tools import free_port

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_HANDLER = "lambda_otel.local.demo_function.handler"
EXTENSION_NAME = "lambda-otel"
STATUS_CODES = {0: "", 1: "OK", 2: "ERROR"}
EXAMPLES = """examples:
  lambda-otel-local                                   the demo function, 5 invocations (the middle one fails)
  lambda-otel-local --handler app.handler --handler-dir ./src --env LOG_LEVEL=debug
  lambda-otel-local --endpoint https://collector.example:4318      a real backend; the summary only
  lambda-otel-local --mode managed-instances --concurrency 8 -n 40
  lambda-otel-local --mode snapstart --restores 2 -n 6
  lambda-otel-local --extensions-dir ./my-extensions  other extensions instead of lambda-otel
"""
SPAN_KINDS = {2: "server", 3: "client", 4: "producer", 5: "consumer"}  # internal (1) and unset are not shown
MODES = ("on-demand", "provisioned-concurrency", "managed-instances", "snapstart")
MIB = 1024 * 1024
DELTA = 1  # AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lambda-otel-local",
        description="Run lambda-otel in a local Lambda simulator and show what a backend receives.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--invocations", "-n", type=int, default=5, help="number of invocations (default 5; "
                        "when there are 2 or more, the middle one is asked to fail)")
    parser.add_argument("--handler", help=f"module.function of the function to run (default: the demo, {DEMO_HANDLER})")
    parser.add_argument("--handler-dir", help="folder holding the handler's module (default: current directory)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment variable for the extension and the function (repeatable)")
    parser.add_argument("--endpoint", help="export to this OTLP/HTTP endpoint (base URL) instead of the local "
                        "sink; only the summary is printed")
    parser.add_argument("--extensions-dir", help="run the executables in this folder instead of lambda-otel")
    parser.add_argument("--timeout", type=float, default=3.0, help="function timeout in seconds (default 3)")
    parser.add_argument("--mode", choices=MODES, default="on-demand",
                        help="the kind of Lambda environment: on-demand (default); provisioned-concurrency (init "
                        "ahead of the invocations); managed-instances (invocations "
                        "overlap in several runtime worker processes, no INVOKE event, no freeze); snapstart (init "
                        "once at snapshot time, then --restores restores of that snapshot, each a fork of the "
                        "extension)")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="managed-instances: concurrent requests (runtime worker processes), default 4")
    parser.add_argument("--restores", type=int, default=2,
                        help="snapstart: restores of the snapshot, the invocations shared among them (default 2)")
    parser.add_argument("--max-lines", type=int, default=40, metavar="N",
                        help="print at most N span lines and N log lines (default 40; 0 = all)")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="also print every request the sink gets and the processes' output")
    args = parser.parse_args(argv)
    if args.invocations < 1 or args.invocations > 1000:
        parser.error("--invocations must be between 1 and 1000")
    if args.handler_dir and not args.handler:
        parser.error("--handler-dir needs --handler")
    if args.handler and "." not in args.handler:
        parser.error("--handler must look like module.function")
    if args.extensions_dir and not os.path.isdir(args.extensions_dir):
        parser.error(f"--extensions-dir {args.extensions_dir!r} is not a folder")
    if args.extensions_dir:
        args.extensions_dir = os.path.abspath(args.extensions_dir)
    if args.handler_dir:
        args.handler_dir = os.path.abspath(args.handler_dir)
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    if not 1 <= args.concurrency <= 64:
        parser.error("--concurrency must be between 1 and 64")
    if not 1 <= args.restores <= 20:
        parser.error("--restores must be between 1 and 20")
    if args.max_lines < 0:
        parser.error("--max-lines must be 0 (all) or more")
    env: Dict[str, str] = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            parser.error(f"--env {item!r}: expected KEY=VALUE")
        env[key.strip()] = value
    args.env = env
    return args


def write_launcher(folder: str, fork_restores: bool = False) -> str:
    """An /opt/extensions-like folder with one executable, ``lambda-otel``, that runs this checkout.

    With fork_restores the extension runs under the restore-by-fork launcher (SnapStart emulation).
    """
    path = os.path.join(folder, EXTENSION_NAME)
    module = "lambda_otel.local.restore_fork \"$0\"" if fork_restores else "lambda_otel"
    script = (
        "#!/bin/sh\n"
        "# Written by lambda-otel-local: runs the extension from this checkout with this interpreter.\n"
        f"PYTHONPATH={shlex.quote(PACKAGE_PARENT)}${{PYTHONPATH:+:$PYTHONPATH}}\n"
        "export PYTHONPATH\n"
        f"exec {shlex.quote(sys.executable)} -m {module} \"$@\"\n"
    )
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(script)
    os.chmod(path, 0o755)
    return path


def build_env(args: argparse.Namespace, exporter_endpoint: Optional[str], own_extension: bool) -> Dict[str, str]:
    """Variables for the extension and the function; the user's --env wins over ours."""
    env: Dict[str, str] = {}
    if exporter_endpoint:
        env["LAMBDA_OTEL_EXPORTER_ENDPOINT"] = exporter_endpoint
    if own_extension:
        # Free ports, so that several runs (or a local collector on 4318) do not collide.
        receiver = free_port()
        env["LAMBDA_OTEL_RECEIVER_PORT"] = str(receiver)
        env["LAMBDA_OTEL_TELEMETRY_PORT"] = str(free_port())
        # The function's own OpenTelemetry SDK sends to the extension's receiver.
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{receiver}"
        env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf"
    env.update(args.env)
    return env


def payloads(n: int) -> List[Dict[str, Any]]:
    """One event per invocation; with two or more, the middle one asks the function to fail."""
    failing = n // 2 if n >= 2 else -1
    return [{"n": i + 1, "error": True} if i == failing else {"n": i + 1} for i in range(n)]


# --- printing what the backend received -------------------------------------------------------------


def _value(kind: str, total: Dict[str, float], unit: str) -> str:
    """A combined data point as text; byte values in MiB."""
    scale, shown_unit = (MIB, "MiB") if unit == "By" else (1, "")

    def num(value: float) -> str:
        return f"{value / scale:.1f}" if scale != 1 else f"{value:.6g}" if isinstance(value, float) else str(value)

    if kind in ("histogram", "exponential_histogram"):
        if not total.get("count"):
            return "count=0"
        text = f"count={total['count']} sum={total['sum'] / scale:.3f}"
        if "min" in total:
            text += f" min={total['min'] / scale:.3f} max={total['max'] / scale:.3f}"
        return text + (f" {shown_unit}" if shown_unit else "")
    if "value" not in total:
        return "?"
    return num(total["value"]) + (f" {shown_unit}" if shown_unit else "")


def _point_values(kind: str, point: Any) -> Dict[str, float]:
    if kind in ("histogram", "exponential_histogram"):
        values = {"count": point.count, "sum": point.sum}
        if point.HasField("min") and point.HasField("max"):
            values.update(min=point.min, max=point.max)
        return values
    which = point.WhichOneof("value") if hasattr(point, "WhichOneof") else None
    if which == "as_int":
        return {"value": point.as_int}
    if which == "as_double":
        return {"value": point.as_double}
    return {}


def _accumulate(into: Dict[str, float], values: Dict[str, float]) -> None:
    for key, value in values.items():
        if key == "min":
            into[key] = min(into.get(key, value), value)
        elif key == "max":
            into[key] = max(into.get(key, value), value)
        else:
            into[key] = into.get(key, 0) + value


def combine_series(points: List[MetricPoint]) -> Dict[Tuple[str, str], Tuple[MetricPoint, Dict[str, float], int, int]]:
    """Each (metric, attributes) series as a backend sums it: {key: (latest point, total, points, sandboxes)}.

    Every sandbox (execution environment) reports its own cumulative series, told apart by
    `faas.instance`: their latest points add up. Delta points all add up; a gauge is its latest point.
    """
    groups: Dict[Tuple[str, str], List[MetricPoint]] = defaultdict(list)
    for mp in points:
        groups[(mp.name, _attrs(attrs_to_dict(mp.point.attributes)))].append(mp)
    out = {}
    for key, group in groups.items():
        group.sort(key=lambda mp: mp.point.time_unix_nano)
        kind = group[-1].metric.WhichOneof("data") or "?"
        data = getattr(group[-1].metric, kind, None)
        instances = {mp.resource.get("faas.instance") for mp in group}
        if kind == "gauge":
            counted = group[-1:]
        elif getattr(data, "aggregation_temporality", 0) == DELTA:
            counted = group
        else:
            latest: Dict[Any, MetricPoint] = {}
            for mp in group:
                latest[mp.resource.get("faas.instance")] = mp
            counted = list(latest.values())
        total: Dict[str, float] = {}
        for mp in counted:
            _accumulate(total, _point_values(kind, mp.point))
        out[key] = (group[-1], total, len(group), len(instances))
    return out


def _attrs(attrs: Dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in sorted(attrs.items())) + "}" if attrs else ""


def print_metrics(points: List[MetricPoint], out: TextIO) -> None:
    """Every (metric, attributes) series with its value summed over the sandboxes that reported it."""
    series = combine_series(points)
    print(f"Metrics ({len(points)} data points, {len(series)} series; each series summed over sandboxes):", file=out)
    if not series:
        print("  (none)", file=out)
    for (name, attrs), (mp, total, count, sandboxes) in sorted(series.items()):
        kind = mp.metric.WhichOneof("data") or "?"
        unit = mp.metric.unit
        value = _value(kind, total, unit)
        if unit and unit not in ("1", "By"):
            value += f" {unit}"
        where = f", {sandboxes} sandboxes" if sandboxes > 1 else ""
        print(f"  {name}{attrs} = {value}  [{kind}, {count} point{'s' if count != 1 else ''}{where}]", file=out)


# What each loss reason means, for a reader of the summary.
REASON_HINTS = {
    loss.QUEUE_FULL: "over the extension's buffer budget",
    loss.EXPORT_REJECTED: "the backend refused them",
    loss.RETRIES_EXHAUSTED: "the backend kept failing",
    loss.EXPORT_FAILED: "the backend could not be reached",
    loss.SHUTDOWN_DEADLINE: "not sent before the SHUTDOWN deadline",
    loss.PLATFORM_LOGS_DROPPED: "Lambda's buffer for the extension overflowed",
    loss.NO_ENDPOINT: "no endpoint configured",
    loss.INVALID_RECORD: "invalid, refused at intake",
}
# The extension's last log line (flush.py's "final flush: ..."): its lifetime drops by reason, including
# what the final flush itself gave up, which no later export can report.
FINAL_FLUSH_DROPS = re.compile(r"final flush: .*dropped over lifetime (\{[^}]*\})")


def final_flush_drops(lines: List[Tuple[str, str]]) -> Dict[str, int]:
    """Lifetime drops by reason summed over every 'final flush' line (one per extension process or copy)."""
    totals: Dict[str, int] = defaultdict(int)
    for _, line in lines:
        match = FINAL_FLUSH_DROPS.search(line)
        if not match:
            continue
        try:
            counts = ast.literal_eval(match.group(1))
        except (ValueError, SyntaxError):
            continue
        if isinstance(counts, dict):
            for reason, n in counts.items():
                if isinstance(n, int):
                    totals[str(reason)] += n
    return dict(totals)


def _reason(reason: str) -> str:
    hint = REASON_HINTS.get(reason)
    return f"{reason}: {hint}" if hint else reason


def dropped_counts(points: List[MetricPoint]) -> Dict[Tuple[str, str], int]:
    """lambda-otel's own count of what it dropped ({(signal, reason): records}), from lambda_otel.dropped."""
    counts: Dict[Tuple[str, str], int] = {}
    for (name, _), (mp, total, _, _) in combine_series(points).items():
        if name == "lambda_otel.dropped" and total.get("value"):
            attrs = attrs_to_dict(mp.point.attributes)
            counts[(str(attrs.get("signal", "?")), str(attrs.get("reason", "?")))] = int(total["value"])
    return counts


def _duration_ms(span: Any) -> float:
    return max(0, span.end_time_unix_nano - span.start_time_unix_nano) / 1e6


def print_spans(items: List[SpanItem], out: TextIO, max_lines: int = 0) -> None:
    """Spans grouped by trace, each trace as a parent/child tree (by span ids); whole traces while
    fewer than max_lines spans were printed (0 = all)."""
    print(f"Spans ({len(items)}):", file=out)
    if not items:
        print("  (none)", file=out)
        return
    traces: Dict[bytes, List[SpanItem]] = defaultdict(list)
    for item in items:
        traces[item.span.trace_id].append(item)
    ordered = sorted(traces.items(), key=lambda kv: min(s.span.start_time_unix_nano for s in kv[1]))
    printed = 0
    for n, (trace_id, spans) in enumerate(ordered):
        if max_lines and printed >= max_lines:
            rest = ordered[n:]
            print(f"  ... {len(rest)} more trace(s), {sum(len(t[1]) for t in rest)} spans "
                  "(--max-lines 0 prints all)", file=out)
            break
        printed += len(spans)
        ids = {s.span.span_id for s in spans}
        children: Dict[bytes, List[SpanItem]] = defaultdict(list)
        roots = []
        for s in spans:
            if s.span.parent_span_id and s.span.parent_span_id in ids:
                children[s.span.parent_span_id].append(s)
            else:
                roots.append(s)
        print(f"  trace {trace_id.hex() or '-'}", file=out)
        seen: set = set()

        def walk(item: SpanItem, depth: int) -> None:
            if item.span.span_id in seen or depth > 50:  # a cycle in bad data must not loop forever
                return
            seen.add(item.span.span_id)
            span = item.span
            status = STATUS_CODES.get(span.status.code, str(span.status.code))
            extra = f" {status}" if status else ""
            if span.status.message:
                extra += f" ({span.status.message[:80]})"
            remote = " (parent not received)" if depth == 0 and span.parent_span_id else ""
            service = item.resource.get("service.name", "")
            kind = SPAN_KINDS.get(span.kind, "")
            print(f"    {'  ' * depth}- {span.name} {_duration_ms(span):.1f} ms{extra}  "
                  f"[{service}{', ' if service else ''}{kind}{', ' if kind else ''}span {span.span_id.hex()}]{remote}",
                  file=out)
            for child in sorted(children.get(span.span_id, []), key=lambda c: c.span.start_time_unix_nano):
                walk(child, depth + 1)

        for root in sorted(roots, key=lambda r: r.span.start_time_unix_nano):
            walk(root, 0)
        for s in spans:  # only spans whose parent links form a cycle are left: show them anyway
            if s.span.span_id not in seen:
                print("    (parent links form a cycle:)", file=out)
                walk(s, 0)


def print_logs(sink: OtlpSink, out: TextIO, max_lines: int = 0) -> None:
    items = sink.log_items()
    print(f"Logs ({len(items)}):", file=out)
    if not items:
        print("  (none)", file=out)
    ordered = sorted(items, key=lambda i: i.record.time_unix_nano or i.record.observed_time_unix_nano)
    for n, item in enumerate(ordered):
        if max_lines and n >= max_lines:
            print(f"  ... {len(ordered) - n} more (--max-lines 0 prints all)", file=out)
            break
        rec = item.record
        ts = rec.time_unix_nano or rec.observed_time_unix_nano
        when = datetime.fromtimestamp(ts / 1e9, timezone.utc).strftime("%H:%M:%S.%f")[:-3] if ts else "-"
        body = rec.body.string_value if rec.body.WhichOneof("value") == "string_value" else str(rec.body).strip()
        body = " ".join(body.split())[:140]
        severity = rec.severity_text or (str(rec.severity_number) if rec.severity_number else "-")
        trace = rec.trace_id.hex() if rec.trace_id else "-"
        print(f"  {when} {severity:<5} trace={trace} {body}", file=out)


# --- the run ------------------------------------------------------------------------------------------


def print_summary(sim: Any, results: List[Any], downs: List[Any], sink: Optional[OtlpSink], out: TextIO) -> None:
    print("Summary:", file=out)
    init = sim.init_results[0] if sim.init_results else None
    if init is not None:
        kind = f" ({init.initialization_type})" if init.initialization_type != "on-demand" else ""
        print(f"  init{kind}: {init.status} in {init.duration_ms:.1f} ms"
              f"{' (' + init.message + ')' if init.message else ''}", file=out)
    for restore in getattr(sim, "restores", []):
        pids = ", ".join(f"{n} pid {p}" for n, p in sorted(restore.extension_pids.items()))
        print(f"  restore {restore.number}: {restore.status} in {restore.duration_ms:.1f} ms ({pids})"
              f"{' (' + restore.message + ')' if restore.message else ''}", file=out)
    statuses: Dict[str, int] = defaultdict(int)
    for r in results:
        statuses[r.status] += 1
    print(f"  invocations: {len(results)} ({', '.join(f'{n} {s}' for s, n in sorted(statuses.items()))})", file=out)
    for i, r in enumerate(results, 1):
        duration = (r.report or {}).get("metrics", {}).get("durationMs")
        dur = f"{duration:.1f} ms" if isinstance(duration, (int, float)) else "-"
        overhead = f"{r.extension_overhead_ms:.1f} ms" if r.extension_overhead_ms is not None else "-"
        err = f" {r.error_type}" if r.error_type else ""
        if r.init is not None and not r.init.ok:
            err += " (init failed again)"  # start() ran the first init; each invoke retries it, like Lambda
        print(f"    #{i} {r.request_id} {r.status}{err}: duration {dur}, extension overhead {overhead}", file=out)
    if getattr(sim, "concurrency", 1) > 1:
        print(f"  overlap: at most {max_overlap(results)} invocations at once "
              f"(concurrency {sim.concurrency}: as many runtime worker processes)", file=out)
    overheads = sorted(r.extension_overhead_ms for r in results if r.extension_overhead_ms is not None)
    if overheads:
        print(f"  extension overhead per invocation: median {overheads[len(overheads) // 2]:.1f} ms, "
              f"max {overheads[-1]:.1f} ms", file=out)
    if not downs:
        print("  shutdown: no environment was running", file=out)
    for down in downs:
        took = (down.ended_at.mono - down.started_at.mono) * 1000
        print(f"  shutdown ({down.reason}): {took:.1f} ms", file=out)
        for name, ext in sorted(down.extensions.items()):
            state = "exited in time" if ext.exited_in_time else ("KILLED at the deadline" if ext.killed else "did not exit in time")
            print(f"    extension {name}: exit code {ext.exit_code}, {state}", file=out)
        if down.undelivered_events:
            kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(down.undelivered_types.items()))
            print(f"    telemetry the extensions could not receive any more: {down.undelivered_events} ({kinds}); "
                  "normally their own last log lines, printed after their final flush (Lambda drops those too)",
                  file=out)
    final = final_flush_drops(sim.process_output(EXTENSION_NAME, every_generation=True))
    if final:
        text = ", ".join(f"{n} ({_reason(reason)})" for reason, n in sorted(final.items()))
        print(f"  dropped by the extension (its final flush line): {text}", file=out)
    if sink is not None:
        points = sink.metrics()
        dropped = dropped_counts(points)
        if not points:
            print("  drops reported to the backend: unknown (no metrics reached it)", file=out)
        elif dropped:
            text = ", ".join(f"{n} {signal} ({_reason(reason)})" for (signal, reason), n in sorted(dropped.items()))
            print(f"  drops reported to the backend (lambda_otel.dropped, as of its last export): {text}", file=out)
        else:
            print("  drops reported to the backend (lambda_otel.dropped, as of its last export): none", file=out)
        by_path: Dict[Tuple[str, Any], int] = defaultdict(int)
        for rec in sink.requests:
            by_path[(rec.path, rec.status if rec.status is not None else rec.outcome)] += 1
        text = ", ".join(f"{path} {status} x{n}" for (path, status), n in sorted(by_path.items(), key=str)) or "none"
        print(f"  backend requests: {text}", file=out)


def max_overlap(results: List[Any]) -> int:
    """The most invocations that ran at one instant (each from its start to its end)."""
    edges = sorted([(r.started_at.mono, 1) for r in results if r.started_at and r.ended_at]
                   + [(r.ended_at.mono, -1) for r in results if r.started_at and r.ended_at])
    best = running = 0
    for _, step in edges:
        running += step
        best = max(best, running)
    return best


def run_invocations(sim: Any, args: argparse.Namespace) -> Tuple[List[Any], List[Any]]:
    """The invocations as the mode runs them; returns (results, shutdowns)."""
    events = payloads(args.invocations)
    downs: List[Any] = []
    if args.mode == "managed-instances":  # all at once: they overlap up to the concurrency
        pending = [sim.invoke_async(payload) for payload in events]
        results = [p.wait(args.timeout + 60) for p in pending]
    elif args.mode == "snapstart":  # the invocations shared among the restores, a shutdown after each
        results = []
        groups = min(args.restores, len(events))
        for k in range(groups):
            for payload in events[k * len(events) // groups:(k + 1) * len(events) // groups]:
                results.append(sim.invoke(payload))
            if k < groups - 1:
                down = sim.shutdown("spindown")
                if down is not None:
                    downs.append(down)
    else:
        results = [sim.invoke(payload) for payload in events]
    down = sim.shutdown("spindown")
    if down is not None:
        downs.append(down)
    return results, downs


def run(args: argparse.Namespace, out: TextIO) -> int:
    from .simulator import Simulator  # the simulator pulls in more; import when running

    if not args.verbose:  # what the simulator would warn about is in the summary
        logging.getLogger("lambda_otel.local").setLevel(logging.ERROR)
    own_extension = not args.extensions_dir
    handler = args.handler or DEMO_HANDLER
    handler_dir = (args.handler_dir or os.getcwd()) if args.handler else PACKAGE_PARENT
    with tempfile.TemporaryDirectory(prefix="lambda-otel-local-") as tmp:
        extensions_dir = args.extensions_dir or os.path.join(tmp, "extensions")
        if own_extension:
            os.makedirs(extensions_dir)
            write_launcher(extensions_dir, fork_restores=args.mode == "snapstart")
        sink = None
        if not args.endpoint:
            sink = OtlpSink(on_request=(lambda r: print("  sink:", describe(r), file=out, flush=True))
                            if args.verbose else None)
            sink.start()
        try:
            env = build_env(args, args.endpoint or (sink.endpoint if sink else None), own_extension)
            with Simulator(extensions_dir=extensions_dir, handler=handler, handler_dir=handler_dir, env=env,
                           timeout_s=args.timeout, mode=args.mode, concurrency=args.concurrency) as sim:
                init = sim.start(check=False)
                init_ok = init is not None and init.ok
                if not init_ok:
                    # Keep going, like Lambda (the next invoke retries init): the telemetry of a
                    # failed init is worth seeing too. The cause is said once, here.
                    print(f"lambda-otel-local: init failed: {init.status if init else 'no result'} "
                          f"{(init.error_type or '') if init else ''}: {(init.message or '') if init else ''}",
                          file=sys.stderr)
                results, downs = run_invocations(sim, args)
                if sink is not None:
                    # The extension exits after its final flush, so this is normally already true.
                    sink.wait_for(lambda: not sink.open_requests(), timeout=5)
                if args.verbose:
                    _print_process_output(sim, out)
                if sink is not None:
                    print_metrics(sink.metrics(), out)
                    print(file=out)
                    print_spans(sink.span_items(), out, args.max_lines)
                    print(file=out)
                    print_logs(sink, out, args.max_lines)
                    print(file=out)
                print_summary(sim, results, downs, sink, out)
        finally:
            if sink is not None:
                sink.stop()
    return 0 if init_ok else 1


def _print_process_output(sim: Any, out: TextIO) -> None:
    names = ["runtime"] + sorted({os.path.basename(n) for n in getattr(sim, "extension_pids", {})})
    for name in names:
        lines = sim.process_output(name)
        if lines:
            print(f"Output of {name} ({len(lines)} lines):", file=out)
            for stream, line in lines[-200:]:
                print(f"  [{stream}] {line}", file=out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        return run(args, sys.stdout)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
