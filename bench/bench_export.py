"""What the three exports of an end-of-invocation flush cost the exporter thread, side by side.

One "flush" = three OTLP/HTTP requests (traces, metrics, logs) of a typical invocation's data
(3 spans, one metrics item of 14 data points, 10 log lines), each encoded, gzipped (level 1) and
POSTed over a kept-alive connection to an ``OtlpSink`` on 127.0.0.1 that answers at once. Three
clients send exactly the same bytes, interleaved (each round runs all three in a shuffled order):

* ``http.client``: a raw keep-alive ``http.client.HTTPConnection`` (the floor);
* ``requests.post``: ``requests.Session.post`` as the exporter called it before (per call: request
  preparation, environment merging, hooks, cookies, redirect handling);
* ``OtlpExporter``: the exporter as it is (``export_http.Transport``: hand-built prepared requests
  through the session's adapter, a whole-request deadline watchdog, bounded DNS).

Measured per flush: CPU of the sending thread (``time.thread_time``) and wall time.

    .venv/bin/python -m bench.bench_export [--rounds 300]
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Stats, interleaved  # noqa: E402

WARMUP_ROUNDS = 20


def flush_items() -> Dict[str, list]:
    """A typical invocation's telemetry, as the aggregator holds it."""
    from opentelemetry.proto.logs.v1 import logs_pb2
    from opentelemetry.proto.metrics.v1 import metrics_pb2
    from opentelemetry.proto.trace.v1 import trace_pb2

    from lambda_otel.otlp import set_attributes

    resource = {"service.name": "bench", "faas.name": "bench", "cloud.provider": "aws", "cloud.region": "eu-west-1"}
    rs = trace_pb2.ResourceSpans()
    set_attributes(rs.resource.attributes, resource)
    ss = rs.scope_spans.add()
    for i in range(3):
        span = ss.spans.add(name=f"span-{i}", trace_id=bytes(range(16)), span_id=bytes([i + 1]) * 8,
                            start_time_unix_nano=1_700_000_000_000_000_000, end_time_unix_nano=1_700_000_000_100_000_000)
        set_attributes(span.attributes, {"faas.invocation_id": "0" * 36, "faas.coldstart": False})
    rm = metrics_pb2.ResourceMetrics()
    set_attributes(rm.resource.attributes, resource)
    sm = rm.scope_metrics.add()
    for i in range(14):
        metric = sm.metrics.add(name=f"metric.{i}")
        metric.sum.is_monotonic = True
        metric.sum.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
        metric.sum.data_points.add(as_int=i, start_time_unix_nano=1, time_unix_nano=2)
    rl = logs_pb2.ResourceLogs()
    set_attributes(rl.resource.attributes, resource)
    sl = rl.scope_logs.add()
    for i in range(10):
        sl.log_records.add(time_unix_nano=1_700_000_000_000_000_000).body.string_value = f"line {i} " + "x" * 100
    return {"traces": [rs], "metrics": [rm], "logs": [rl]}


def payload(signal: str, items: list) -> bytes:
    from lambda_otel import otlp

    return gzip.compress(otlp.encode_request(signal, items), 1)


HEADERS = {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip", "User-Agent": "bench"}


def timed(flush: Callable[[], None]) -> Tuple[Callable[[], float], List[float]]:
    """A sampler that runs ``flush`` once per call and returns its CPU ms; wall ms kept in the list."""
    walls: List[float] = []

    def sample() -> float:
        c0, w0 = time.thread_time(), time.perf_counter()
        flush()
        c1, w1 = time.thread_time(), time.perf_counter()
        walls.append((w1 - w0) * 1000.0)
        return (c1 - c0) * 1000.0

    return sample, walls


def run(rounds: int) -> Dict[str, Dict[str, Stats]]:
    import requests

    from lambda_otel.config import ExporterConfig
    from lambda_otel.exporter import SUCCESS, OtlpExporter
    from lambda_otel.local.sink import OtlpSink
    from lambda_otel.loss import LossCounter

    items = flush_items()
    results: Dict[str, Dict[str, Stats]] = {}
    with OtlpSink() as sink:
        urls = {s: sink.url(s) for s in items}

        conn = http.client.HTTPConnection("127.0.0.1", sink.port, timeout=10)

        def raw_flush() -> None:
            for signal, its in items.items():
                conn.request("POST", f"/v1/{signal}", body=payload(signal, its), headers=HEADERS)
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"sink answered {resp.status}")

        session = requests.Session()
        session.trust_env = False
        proxies = {url: requests.utils.get_environ_proxies(url) for url in urls.values()}

        def requests_flush() -> None:
            for signal, its in items.items():
                url = urls[signal]
                resp = session.post(url, data=payload(signal, its), headers=HEADERS, timeout=10, verify=True,
                                    proxies=proxies[url], allow_redirects=False, stream=True)
                try:
                    b"".join(resp.iter_content(16384))
                finally:
                    resp.close()
                if resp.status_code != 200:
                    raise RuntimeError(f"sink answered {resp.status_code}")

        exporter = OtlpExporter(ExporterConfig(traces_endpoint=urls["traces"], metrics_endpoint=urls["metrics"],
                                               logs_endpoint=urls["logs"]), LossCounter())
        exporter.warm_up()

        def exporter_flush() -> None:
            for signal, its in items.items():
                outcome = exporter.export(signal, its, time.monotonic() + 10)
                if outcome.kind is not SUCCESS:
                    raise RuntimeError(f"export failed: {outcome}")

        flushes = {"http.client": raw_flush, "requests.post": requests_flush, "OtlpExporter": exporter_flush}
        samplers = {name: timed(f) for name, f in flushes.items()}
        for _ in range(WARMUP_ROUNDS):
            for f in flushes.values():
                f()
        cpu = interleaved({name: s[0] for name, s in samplers.items()}, rounds)
        for name, (_, walls) in samplers.items():
            results[name] = {"cpu": cpu[name], "wall": Stats(walls)}
        conn.close()
        session.close()
        exporter.close()
    return results


def report(results: Dict[str, Dict[str, Stats]]) -> str:
    base = results["http.client"]
    lines = ["client          CPU ms per flush (median, min)   wall ms per flush (median, min)   CPU vs http.client"]
    for name, r in results.items():
        ratio = r["cpu"].median / base["cpu"].median if base["cpu"].median else float("nan")
        lines.append(f"{name:<15} {r['cpu'].median:7.2f} ({r['cpu'].min:.2f})"
                     f"{'':18}{r['wall'].median:7.2f} ({r['wall'].min:.2f}){'':17}{ratio:.2f}x")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=300, help="interleaved rounds (each: one flush per client)")
    args = parser.parse_args(argv)
    print(report(run(max(1, args.rounds))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
