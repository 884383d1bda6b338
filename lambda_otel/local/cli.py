"""``lambda-otel-local``: see lambda-otel work end to end on your machine, with zero configuration.

It starts the Lambda simulator, the lambda-otel extension (from this checkout, through a launcher in
a temporary extensions folder, as the layer would), a demo function and an OTLP sink; runs a few
invocations (one of them fails) and a SHUTDOWN; then prints what the backend received (metrics with
values, spans as trees, log lines with their trace ids) and a short summary (invocations, extension
overhead per invocation as the simulator measured it, shutdown result).

    lambda-otel-local                                  # demo function, 5 invocations
    lambda-otel-local --handler app.handler --handler-dir ./src --env LOG_LEVEL=debug
    lambda-otel-local --endpoint https://collector.example:4318   # real backend; summary only
    lambda-otel-local --extensions-dir ./my-extensions # run other extensions instead of lambda-otel
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import sys
import tempfile
from collections import defaultdict
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Sequence, TextIO, Tuple

from .sink import MetricPoint, OtlpSink, SpanItem, attrs_to_dict, describe

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_HANDLER = "lambda_otel.local.demo_function.handler"
EXTENSION_NAME = "lambda-otel"
STATUS_CODES = {0: "", 1: "OK", 2: "ERROR"}


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lambda-otel-local",
        description="Run lambda-otel in a local Lambda simulator and show what a backend receives.",
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
    env: Dict[str, str] = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            parser.error(f"--env {item!r}: expected KEY=VALUE")
        env[key.strip()] = value
    args.env = env
    return args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_launcher(folder: str) -> str:
    """An /opt/extensions-like folder with one executable, ``lambda-otel``, that runs this checkout."""
    path = os.path.join(folder, EXTENSION_NAME)
    script = (
        "#!/bin/sh\n"
        "# Written by lambda-otel-local: runs the extension from this checkout with this interpreter.\n"
        f"PYTHONPATH={shlex.quote(PACKAGE_PARENT)}${{PYTHONPATH:+:$PYTHONPATH}}\n"
        "export PYTHONPATH\n"
        f"exec {shlex.quote(sys.executable)} -m lambda_otel \"$@\"\n"
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


def _value(point: Any) -> str:
    if hasattr(point, "bucket_counts"):  # histogram
        if point.count == 0:
            return "count=0"
        text = f"count={point.count} sum={point.sum:.3f}"
        if point.HasField("min") and point.HasField("max"):
            text += f" min={point.min:.3f} max={point.max:.3f}"
        return text
    kind = point.WhichOneof("value") if hasattr(point, "WhichOneof") else None
    if kind == "as_int":
        return str(point.as_int)
    if kind == "as_double":
        return f"{point.as_double:.6g}"
    return "?"


def _attrs(attrs: Dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in sorted(attrs.items())) + "}" if attrs else ""


def print_metrics(points: List[MetricPoint], out: TextIO) -> None:
    """The latest value of every (metric, attributes) series, with how many points arrived."""
    latest: Dict[Tuple[str, str], Tuple[MetricPoint, int]] = {}
    for mp in points:
        key = (mp.name, _attrs(attrs_to_dict(mp.point.attributes)))
        prev = latest.get(key)
        count = prev[1] + 1 if prev else 1
        if prev is None or mp.point.time_unix_nano >= prev[0].point.time_unix_nano:
            latest[key] = (mp, count)
        else:
            latest[key] = (prev[0], count)
    print(f"Metrics ({len(points)} data points, {len(latest)} series; latest value of each):", file=out)
    if not latest:
        print("  (none)", file=out)
    for (name, attrs), (mp, count) in sorted(latest.items()):
        unit = f" {mp.metric.unit}" if mp.metric.unit and mp.metric.unit != "1" else ""
        kind = mp.metric.WhichOneof("data") or "?"
        print(f"  {name}{attrs} = {_value(mp.point)}{unit}  [{kind}, {count} point{'s' if count != 1 else ''}]",
              file=out)


def _duration_ms(span: Any) -> float:
    return max(0, span.end_time_unix_nano - span.start_time_unix_nano) / 1e6


def print_spans(items: List[SpanItem], out: TextIO) -> None:
    """Spans grouped by trace, each trace as a parent/child tree (by span ids)."""
    print(f"Spans ({len(items)}):", file=out)
    if not items:
        print("  (none)", file=out)
        return
    traces: Dict[bytes, List[SpanItem]] = defaultdict(list)
    for item in items:
        traces[item.span.trace_id].append(item)
    for trace_id, spans in sorted(traces.items(), key=lambda kv: min(s.span.start_time_unix_nano for s in kv[1])):
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
            print(f"    {'  ' * depth}- {span.name} {_duration_ms(span):.1f} ms{extra}  "
                  f"[{service}{', ' if service else ''}span {span.span_id.hex()}]{remote}", file=out)
            for child in sorted(children.get(span.span_id, []), key=lambda c: c.span.start_time_unix_nano):
                walk(child, depth + 1)

        for root in sorted(roots, key=lambda r: r.span.start_time_unix_nano):
            walk(root, 0)
        for s in spans:  # only spans whose parent links form a cycle are left: show them anyway
            if s.span.span_id not in seen:
                print("    (parent links form a cycle:)", file=out)
                walk(s, 0)


def print_logs(sink: OtlpSink, out: TextIO) -> None:
    items = sink.log_items()
    print(f"Logs ({len(items)}):", file=out)
    if not items:
        print("  (none)", file=out)
    for item in sorted(items, key=lambda i: i.record.time_unix_nano or i.record.observed_time_unix_nano):
        rec = item.record
        ts = rec.time_unix_nano or rec.observed_time_unix_nano
        when = datetime.fromtimestamp(ts / 1e9, timezone.utc).strftime("%H:%M:%S.%f")[:-3] if ts else "-"
        body = rec.body.string_value if rec.body.WhichOneof("value") == "string_value" else str(rec.body).strip()
        body = " ".join(body.split())[:140]
        severity = rec.severity_text or (str(rec.severity_number) if rec.severity_number else "-")
        trace = rec.trace_id.hex() if rec.trace_id else "-"
        print(f"  {when} {severity:<5} trace={trace} {body}", file=out)


# --- the run ------------------------------------------------------------------------------------------


def print_summary(sim: Any, results: List[Any], down: Any, sink: Optional[OtlpSink], out: TextIO) -> None:
    print("Summary:", file=out)
    init = sim.init_result
    if init is not None:
        print(f"  init: {init.status} in {init.duration_ms:.1f} ms"
              f"{' (' + init.message + ')' if init.message else ''}", file=out)
    statuses: Dict[str, int] = defaultdict(int)
    for r in results:
        statuses[r.status] += 1
    print(f"  invocations: {len(results)} ({', '.join(f'{n} {s}' for s, n in sorted(statuses.items()))})", file=out)
    for i, r in enumerate(results, 1):
        duration = (r.report or {}).get("metrics", {}).get("durationMs")
        dur = f"{duration:.1f} ms" if isinstance(duration, (int, float)) else "-"
        overhead = f"{r.extension_overhead_ms:.1f} ms" if r.extension_overhead_ms is not None else "-"
        err = f" {r.error_type}" if r.error_type else ""
        print(f"    #{i} {r.request_id} {r.status}{err}: duration {dur}, extension overhead {overhead}", file=out)
    overheads = sorted(r.extension_overhead_ms for r in results if r.extension_overhead_ms is not None)
    if overheads:
        print(f"  extension overhead per invocation: median {overheads[len(overheads) // 2]:.1f} ms, "
              f"max {overheads[-1]:.1f} ms", file=out)
    if down is None:
        print("  shutdown: no environment was running", file=out)
    else:
        took = (down.ended_at.mono - down.started_at.mono) * 1000
        print(f"  shutdown ({down.reason}): {took:.1f} ms", file=out)
        for name, ext in sorted(down.extensions.items()):
            state = "exited in time" if ext.exited_in_time else ("KILLED at the deadline" if ext.killed else "did not exit in time")
            print(f"    extension {name}: exit code {ext.exit_code}, {state}", file=out)
        if down.undelivered_events:
            print(f"    telemetry events never delivered: {down.undelivered_events}", file=out)
    if sink is not None:
        by_path: Dict[Tuple[str, Any], int] = defaultdict(int)
        for rec in sink.requests:
            by_path[(rec.path, rec.status if rec.status is not None else rec.outcome)] += 1
        text = ", ".join(f"{path} {status} x{n}" for (path, status), n in sorted(by_path.items(), key=str)) or "none"
        print(f"  backend requests: {text}", file=out)


def run(args: argparse.Namespace, out: TextIO) -> int:
    from .simulator import Simulator  # the simulator pulls in more; import when running

    own_extension = not args.extensions_dir
    handler = args.handler or DEMO_HANDLER
    handler_dir = (args.handler_dir or os.getcwd()) if args.handler else PACKAGE_PARENT
    with tempfile.TemporaryDirectory(prefix="lambda-otel-local-") as tmp:
        extensions_dir = args.extensions_dir or os.path.join(tmp, "extensions")
        if own_extension:
            os.makedirs(extensions_dir)
            write_launcher(extensions_dir)
        sink = None
        if not args.endpoint:
            sink = OtlpSink(on_request=(lambda r: print("  sink:", describe(r), file=out, flush=True))
                            if args.verbose else None)
            sink.start()
        try:
            env = build_env(args, args.endpoint or (sink.endpoint if sink else None), own_extension)
            with Simulator(extensions_dir=extensions_dir, handler=handler, handler_dir=handler_dir, env=env,
                           timeout_s=args.timeout) as sim:
                init = sim.start(check=False)
                init_ok = init is not None and init.ok
                if not init_ok:
                    # Keep going, like Lambda (the next invoke retries init): the telemetry of a
                    # failed init is worth seeing too.
                    print(f"lambda-otel-local: init failed: {init.status if init else 'no result'} "
                          f"{(init.error_type or '') if init else ''} {(init.message or '') if init else ''}",
                          file=sys.stderr)
                results = []
                for payload in payloads(args.invocations):
                    results.append(sim.invoke(payload))
                down = sim.shutdown("spindown")
                if sink is not None:
                    # The extension exits after its final flush, so this is normally already true.
                    sink.wait_for(lambda: not sink.open_requests(), timeout=5)
                if args.verbose:
                    _print_process_output(sim, out)
                if sink is not None:
                    print_metrics(sink.metrics(), out)
                    print(file=out)
                    print_spans(sink.span_items(), out)
                    print(file=out)
                    print_logs(sink, out)
                    print(file=out)
                print_summary(sim, results, down, sink, out)
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
