"""Throughput: Telemetry API batches → encoded OTLP bytes ready to send, against ``json.loads``.

lambda-otel: each batch of 1000 mixed events (platform.start / runtimeDone / report of ~77
invocations and ~770 function log lines of ~200 bytes) is POSTed over a keep-alive connection to
the real ``TelemetryListener`` (which parses it and runs ``Pipeline.process_batch``: convert →
aggregator, read-locked, answering 200 once queued); then, as the export worker would, every
queued item is taken with ``Aggregator.take_batch``, serialised with ``otlp.encode_request`` and
compressed with gzip level 1 (what ``OtlpExporter.export`` sends). The time is from the POST to
the last compressed byte. Everything runs in this process on 127.0.0.1, with the production
classes built by ``lambda_otel.pipeline.Pipeline``, as in the extension.
Baseline: ``json.loads`` of the same body.

Goal: ≤ 4× the baseline (median time per batch).
"""

from __future__ import annotations

import gzip
import http.client
import json
import random
import sys
import time
import uuid
from pathlib import Path
from typing import List, Optional

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Row, Workspace, interleaved, main_for

GOAL_RATIO = 4.0
EVENTS_PER_BATCH = 1000
LOG_LINES_PER_INVOCATION = 10
GZIP_LEVEL = 1  # lambda_otel.exporter.GZIP_LEVEL
PAD = "x" * 150


def _iso(t_ns: int) -> str:
    secs, ns = divmod(t_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + ".%03dZ" % (ns // 1_000_000)


def make_batch(rng: random.Random, start_ns: int, n_events: int = EVENTS_PER_BATCH) -> bytes:
    """One Telemetry API body (schema 2022-12-13) of n_events, invocation after invocation."""
    events: List[dict] = []
    t = start_ns
    while len(events) < n_events:
        rid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        trace = {"type": "X-Amzn-Trace-Id",
                 "value": "Root=1-%08x-%024x;Parent=%016x;Sampled=1" % (t // 10**9, rng.getrandbits(96), rng.getrandbits(64)),
                 "spanId": "%016x" % rng.getrandbits(64)}
        events.append({"time": _iso(t), "type": "platform.start",
                       "record": {"requestId": rid, "version": "$LATEST", "tracing": trace}})
        for i in range(LOG_LINES_PER_INVOCATION):
            t += 50_000
            if i % 2:  # the Python runtime's text format: level, time, request id, message
                line = "[INFO]\t%s\t%s\tbench line %06d msg=%s\n" % (_iso(t), rid, i, PAD[:110])
            else:  # a plain print()
                line = "bench line %06d level=INFO msg=%s\n" % (i, PAD)
            events.append({"time": _iso(t), "type": "function", "record": line})
        t += 1_000_000
        events.append({"time": _iso(t), "type": "platform.runtimeDone", "record": {
            "requestId": rid, "status": "success", "tracing": trace,
            "spans": [{"name": "responseLatency", "start": _iso(t - 900_000), "durationMs": 0.8},
                      {"name": "responseDuration", "start": _iso(t - 100_000), "durationMs": 0.1}],
            "metrics": {"durationMs": 1.2, "producedBytes": 20}}})
        t += 200_000
        events.append({"time": _iso(t), "type": "platform.report", "record": {
            "requestId": rid, "status": "success", "tracing": trace,
            "metrics": {"durationMs": 1.4, "billedDurationMs": 2, "memorySizeMB": 128, "maxMemoryUsedMB": 60}}})
        t += 5_000_000
    return json.dumps(events[:n_events]).encode()


class Pipeline:
    """The production listener → converter → aggregator (``lambda_otel.pipeline.Pipeline``), with
    the export worker left out: ``carry`` drains the aggregator into the wire bytes itself."""

    def __init__(self) -> None:
        from lambda_otel.config import load_config
        from lambda_otel.pipeline import Pipeline as ProductionPipeline
        from lambda_otel.subscription import bind_socket

        config = load_config({"LAMBDA_OTEL_QUEUE_MAX_BYTES": str(256 * 1024 * 1024),
                              "LAMBDA_OTEL_QUEUE_MAX_RECORDS": "10000000"})
        self.pipeline = ProductionPipeline(config, {"service.name": "bench-function", "faas.name": "bench-function"})
        self.aggregator = self.pipeline.aggregator
        self.flush = config.flush
        self.pipeline.start(bind_socket("127.0.0.1", 0), None, worker=False)
        self.listener = self.pipeline.listener
        self.conn = http.client.HTTPConnection("127.0.0.1", self.listener.port, timeout=30)
        self.encoded_bytes = 0
        self.records = 0

    def carry(self, body: bytes) -> float:
        """POST one batch, drain the aggregator into gzip'd OTLP requests; ms taken."""
        from lambda_otel import otlp

        started = time.perf_counter()
        self.conn.request("POST", "/", body=body, headers={"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"listener answered {resp.status}")
        for signal in ("traces", "logs"):
            for _ in range(10_000):  # bounded: a batch of 1000 events is a handful of requests
                batch = self.aggregator.take_batch(signal, self.flush.max_batch_bytes, self.flush.max_batch_records)
                if batch is None:
                    break
                payload = gzip.compress(otlp.encode_request(signal, batch.items), GZIP_LEVEL)
                self.encoded_bytes += len(payload)
                self.records += batch.records
        return (time.perf_counter() - started) * 1000.0

    def close(self) -> None:
        self.conn.close()
        self.pipeline.stop()


def run(ws: Optional[Workspace] = None, quick: bool = False) -> List[Row]:
    rounds = 5 if quick else 200
    rng = random.Random(8)
    now = time.time_ns()
    bodies = [make_batch(rng, now + i * 10**9) for i in range(rounds + 1)]
    pipe = Pipeline()
    try:
        pipe.carry(bodies[0])  # warm-up (first-use costs: protobuf classes, the connection)
        pipe.records = pipe.encoded_bytes = 0
        it_ours = iter(bodies[1:])
        it_base = iter(bodies[1:])

        def base() -> float:
            body = next(it_base)
            started = time.perf_counter()
            json.loads(body)
            return (time.perf_counter() - started) * 1000.0

        stats = interleaved({"ours": lambda: pipe.carry(next(it_ours)), "base": base}, rounds)
        expected = rounds * EVENTS_PER_BATCH
        if pipe.listener.stats.events != expected + EVENTS_PER_BATCH:
            raise RuntimeError(f"listener took {pipe.listener.stats.events} events, expected {expected + EVENTS_PER_BATCH}")
        if pipe.records == 0:
            raise RuntimeError("nothing reached the encoded OTLP output")
    finally:
        pipe.close()
    ours, base_stats = stats["ours"], stats["base"]
    body_kb = sum(len(b) for b in bodies[1:]) / rounds / 1024
    rate = EVENTS_PER_BATCH / (ours.median / 1000.0)
    row = Row("throughput", f"1000-event batch ({body_kb:.0f} KiB) → gzip'd OTLP", ours, base_stats, "ms",
              f"≤ {GOAL_RATIO:g}×", met=None, base_label="json.loads",
              note=(f"{rounds} interleaved rounds; {rate:,.0f} events/s at the median; "
                    f"{pipe.records / rounds:.0f} OTLP records and {pipe.encoded_bytes / rounds / 1024:.0f} KiB gzip'd per batch"))
    row.met = row.ratio is not None and row.ratio <= GOAL_RATIO
    return [row]


def main(argv=None) -> int:
    return main_for(run, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
