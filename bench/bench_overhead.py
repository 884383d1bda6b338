"""Per-invocation overhead: runtime done → the extension's next ``/event/next``.

That is the simulator's ``InvocationResult.extension_overhead_ms``: the time Lambda waits for the
extension after the function has finished (billed, and the next invocation cannot start).
Three environments run side by side, each with the standard load's function (10 log lines of
~200 bytes and one span through the receiver per invocation) and a sink that answers at once:
lambda-otel with the ``default`` strategy, lambda-otel with the ``end`` strategy (flush at the end
of every invocation, holding ``/next``), and the no-op baseline extension (register, loop on
``/next``), which shows what the simulator itself adds. Invocations run back to back in blocks,
the environments in a shuffled order each round. The sink's round trip (a keep-alive
``http.client`` POST of a gzip'd 10-record OTLP logs request) is timed in the same rounds.
With ``--before-layer DIR`` (another unzipped build, e.g. of the commit before a change), a fourth
environment runs that build with ``end`` in the same rounds, for a before/after of the ``end`` rows.
With ``--sink-process`` the sink runs in a process of its own instead of sharing this one (and its
interpreter lock) with the simulator, to tell how much of the ``end`` rows is the harness's.
With ``--sink-delay-ms N`` the sink waits N ms before each answer (the probe's too), as a backend
that is not on the same machine does: then the round trips, not our CPU, make most of ``end``.

    .venv/bin/python -m bench.bench_overhead [--quick] [--layer DIR] [--before-layer DIR] [--sink-process]
                                             [--sink-delay-ms N]

Goals: default median ≤ 2 ms and p99 ≤ 10 ms; end median ≤ sink round trip + 2 ms; end, from the
POST that delivers platform.runtimeDone to our ``/next``, ≤ 3 × the sink round trip + 2 ms (the
three requests of one flush: traces, metrics, logs).
"""

from __future__ import annotations

import gzip
import http.client
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional
from urllib.parse import urlsplit

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_startup import proc_cpu_ns
from bench.common import NAME, Environment, Layer, Row, Stats, Workspace, existing_layer, interleaved, print_rows

GOAL_DEFAULT_MEDIAN_MS = 2.0
GOAL_DEFAULT_P99_MS = 10.0
GOAL_END_EXTRA_MS = 2.0
GOAL_AFTER_DONE_RTTS = 3  # one request per signal


def sample_logs_request() -> bytes:
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

    req = logs_service_pb2.ExportLogsServiceRequest()
    scope_logs = req.resource_logs.add().scope_logs.add()
    for i in range(10):
        scope_logs.log_records.add().body.string_value = "bench line %06d level=INFO msg=%s" % (i, "x" * 170)
    return gzip.compress(req.SerializeToString(), 1)


class SinkProbe:
    """Keep-alive POSTs to the sink, like an exporter's pooled connection."""

    def __init__(self, sink) -> None:
        url = urlsplit(sink.url("logs"))
        self.path = url.path
        self.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        self.body = sample_logs_request()

    def round_trip_ms(self) -> float:
        started = time.perf_counter()
        self.conn.request("POST", self.path, body=self.body, headers={
            "Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"})
        resp = self.conn.getresponse()
        resp.read()
        elapsed = (time.perf_counter() - started) * 1000.0
        if resp.status != 200:
            raise RuntimeError(f"sink answered {resp.status}")
        return elapsed


class SinkProcess:
    """An ``OtlpSink`` in a child process (the attributes the environments use: endpoint, url)."""

    def __init__(self) -> None:
        import subprocess

        code = ("import sys\nfrom lambda_otel.local.sink import OtlpSink\ns = OtlpSink().start()\n"
                "print(s.endpoint, flush=True)\nsys.stdin.read()\ns.stop()\n")
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     cwd=str(Path(__file__).resolve().parent.parent), text=True)
        self.endpoint = self.proc.stdout.readline().strip()
        if not self.endpoint.startswith("http://"):
            self.close()
            raise RuntimeError("the sink process printed no endpoint")

    def url(self, signal: str) -> str:
        return f"{self.endpoint}/v1/{signal}"

    def __enter__(self) -> "SinkProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.proc.stdin.close()  # the child stops its sink and exits
            self.proc.wait(10)
        except Exception:  # noqa: BLE001 - a stuck child is killed
            self.proc.kill()
            self.proc.wait(10)


def after_runtime_done_ms(sim, res):
    """ms from the POST that carried this invocation's platform.runtimeDone to the extension's /next."""
    next_at = res.extension_next_at.get(NAME)
    if next_at is None:
        return None
    for batch in reversed(sim.batches[-20:]):
        if batch.ok and any(e["type"] == "platform.runtimeDone" and e["record"].get("requestId") == res.request_id
                            for e in batch.events):
            return max(0.0, (next_at.mono - batch.sent_at.mono) * 1000.0)
    return None


def run(ws: Workspace, quick: bool = False, before: Optional[Layer] = None, sink_process: bool = False,
        sink_delay_ms: float = 0.0) -> List[Row]:
    from lambda_otel.local.sink import OtlpSink, Reply

    if sink_process and sink_delay_ms:
        raise ValueError("--sink-delay-ms needs the sink in this process (no --sink-process)")

    total, block = (20, 10) if quick else (1000, 50)
    rounds = total // block
    samples = {"default": [], "end": [], "noop": [], "sink": []}
    if before is not None:
        samples["end-before"] = []
    # end: runtimeDone batch handed to the extension -> its /next (this build, and the --before-layer one)
    after_done: Dict[str, List[float]] = {"end": [], "end-before": []}
    with (SinkProcess() if sink_process else OtlpSink()) as sink:
        if sink_delay_ms:
            sink.set_reply(Reply(delay=sink_delay_ms / 1000.0))
        envs = {}
        try:
            envs["default"] = Environment(ws, NAME, sink, LAMBDA_OTEL_FLUSH_STRATEGY="default", LAMBDA_OTEL_LOG_LEVEL="warning")
            envs["end"] = Environment(ws, NAME, sink, LAMBDA_OTEL_FLUSH_STRATEGY="end", LAMBDA_OTEL_LOG_LEVEL="warning")
            envs["noop"] = Environment(ws, "noop", sink)
            if before is not None:
                envs["end-before"] = Environment(ws, NAME, sink, layer=before, LAMBDA_OTEL_FLUSH_STRATEGY="end",
                                                 LAMBDA_OTEL_LOG_LEVEL="warning")
            probe = SinkProbe(sink)
            for env in envs.values():  # warm-up: first-invocation costs (lazy imports, connections)
                for _ in range(3):
                    env.invoke()
            probe.round_trip_ms()

            def block_of(name: str):
                def go() -> float:
                    for _ in range(block):
                        if name == "sink":
                            samples[name].append(probe.round_trip_ms())
                        else:
                            res = envs[name].invoke()
                            samples[name].append(res.extension_overhead_ms)
                            if name in after_done:
                                part = after_runtime_done_ms(envs[name].sim, res)
                                if part is not None:
                                    after_done[name].append(part)
                    return 0.0
                return go

            measured = [n for n in ("default", "end", "end-before") if n in envs]
            cpu_at_start = {n: proc_cpu_ns(envs[n].pid) for n in measured}
            interleaved({name: block_of(name) for name in samples}, rounds)
            cpu_ms = {n: (proc_cpu_ns(envs[n].pid) - cpu_at_start[n]) / 1e6 / total for n in measured}
            probe.conn.close()
        finally:
            for env in envs.values():
                env.close()
    default, end, noop, rtt = (Stats(samples[k]) for k in ("default", "end", "noop", "sink"))
    done = Stats(after_done["end"] or [float("nan")])
    note = f"{total} invocations per environment in blocks of {block}, {rounds} interleaved rounds"
    if sink_process:
        note += "; the sink in a process of its own"
    if sink_delay_ms:
        note += f"; the sink answers after {sink_delay_ms:g} ms"
    rows = [
        Row("overhead", "default: median", default, noop, "ms", f"≤ {GOAL_DEFAULT_MEDIAN_MS:g} ms",
            met=default.median <= GOAL_DEFAULT_MEDIAN_MS, base_label="no-op extension", note=note),
        Row("overhead", "default: p99", Stats([default.percentile(99)]), Stats([noop.percentile(99)]), "ms",
            f"≤ {GOAL_DEFAULT_P99_MS:g} ms", met=default.percentile(99) <= GOAL_DEFAULT_P99_MS,
            base_label="no-op extension"),
        Row("overhead", "end: median", end, rtt, "ms", f"≤ sink RTT + {GOAL_END_EXTRA_MS:g} ms",
            met=end.median <= rtt.median + GOAL_END_EXTRA_MS, base_label="sink round trip",
            note=f"end minus sink round trip: {end.median - rtt.median:.2f} ms at the median"),
        Row("overhead", "end: runtimeDone POST → /next", done, rtt, "ms",
            f"≤ {GOAL_AFTER_DONE_RTTS} × sink RTT + {GOAL_END_EXTRA_MS:g} ms",
            met=bool(after_done["end"]) and done.median <= GOAL_AFTER_DONE_RTTS * rtt.median + GOAL_END_EXTRA_MS,
            base_label="sink round trip",
            note=("the part of the end overhead after Lambda delivers platform.runtimeDone; before it, the "
                  "extension waits for the Telemetry API's buffering (timeoutMs, at least 25 ms from the "
                  "batch's first event)")),
        Row("overhead", "end: p99", Stats([end.percentile(99)]), Stats([noop.percentile(99)]), "ms", "–",
            met=None, base_label="no-op extension"),
    ]
    cpu_note = "the extension process's CPU (utime + stime, all threads) over the measured invocations / their count"
    rows.append(Row("overhead", "end: extension CPU per invocation", Stats([cpu_ms["end"]]),
                    Stats([cpu_ms["default"]]), "ms", "–", met=None, base_label="default", note=cpu_note))
    if before is not None:
        rows.append(Row("overhead", "end: extension CPU per invocation, this build vs before", Stats([cpu_ms["end"]]),
                        Stats([cpu_ms["end-before"]]), "ms", "–", met=None, base_label="before layer"))
        before_end = Stats(samples["end-before"])
        rows += [
            Row("overhead", "end: median, this build vs before", end, before_end, "ms", "–", met=None,
                base_label="before layer"),
            Row("overhead", "end: runtimeDone POST → /next, this build vs before", done,
                Stats(after_done["end-before"] or [float("nan")]), "ms", "–", met=None, base_label="before layer"),
        ]
    return rows


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run, not a measurement)")
    parser.add_argument("--layer", help="an already unzipped layer folder (skips ./build_layer.sh)")
    parser.add_argument("--before-layer", help="another unzipped layer, run with end in the same rounds")
    parser.add_argument("--sink-process", action="store_true", help="run the sink in a process of its own")
    parser.add_argument("--sink-delay-ms", type=float, default=0.0,
                        help="the sink waits this long before each answer (a backend off this machine)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    with Workspace(args.layer, keep=args.keep) as ws:
        before = existing_layer(Path(args.before_layer).resolve(), ws.tmp) if args.before_layer else None
        print_rows(run(ws, quick=args.quick, before=before, sink_process=args.sink_process,
                       sink_delay_ms=args.sink_delay_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
