"""Listener CPU per Telemetry API POST: the server side of one POST, in CPU time of its process.

Each variant is a server in its own process on 127.0.0.1, taking the same keep-alive POSTs of a
typical per-invocation Telemetry API batch (platform.start, two function lines, runtimeDone,
report: ~1.3 KB); ``on_batch`` does nothing, so what is measured is the listener itself (HTTP
parsing, reading, ``json.loads``, answering). CPU is the sum of the server's threads' on-CPU time
(``/proc/<pid>/task/*/schedstat``, nanoseconds) over a round of POSTs; rounds alternate between
the variants in a shuffled order (the machine is shared and noisy).

Variants:
- ``ours``: this checkout's ``telemetry_api.TelemetryListener``;
- ``stdlib``: the same work written on ``http.server.BaseHTTPRequestHandler`` (headers parsed
  through the ``email`` package, ``send_response``/``send_header``), as the listener was;
- ``against``: with ``--against DIR``, the ``TelemetryListener`` of another checkout (e.g. an older
  commit unpacked with ``git archive``): the before/after figure.

    .venv/bin/python bench/bench_listener.py [--against DIR] [--rounds 15] [--posts 400]

Goal (issue 17): listener CPU per POST halved (``ours`` ≤ 0.5 × ``stdlib``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, Row, Stats, interleaved, print_rows  # noqa: E402

GOAL_RATIO = 0.5

# A server: prints its port, serves until its stdin closes. argv[1] = "ours" or "stdlib".
SERVER = r'''
import json, socket, sys, threading
from lambda_otel.config import TelemetryConfig

sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", 0))
sock.listen(64)

def on_batch(events):
    pass

if sys.argv[1] == "stdlib":
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_POST(self):
            text = self.headers.get("Content-Length")
            body = self.rfile.read(int(text))
            events = json.loads(body)
            on_batch(events)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(sock.getsockname(), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
else:
    from lambda_otel.telemetry_api import TelemetryListener

    server = TelemetryListener(sock, on_batch, TelemetryConfig())
    server.start()
print(sock.getsockname()[1], flush=True)
sys.stdin.read()
'''


def batch_body() -> bytes:
    rid = "8f7e2a1c-0b5e-4c4e-9a1d-2f6b3c4d5e6f"
    trace = {"type": "X-Amzn-Trace-Id", "value": "Root=1-6b0f5130-3e69282431116158e805a81e;Parent=4598fa3f1d885bfa;Sampled=1"}
    return json.dumps([
        {"time": "2026-12-01T10:00:00.000Z", "type": "platform.start", "record": {"requestId": rid, "version": "$LATEST", "tracing": trace}},
        {"time": "2026-12-01T10:00:00.010Z", "type": "function", "record": f"[INFO]\t2026-12-01T10:00:00.010Z\t{rid}\thandling order 1234\n"},
        {"time": "2026-12-01T10:00:00.020Z", "type": "function", "record": f"[INFO]\t2026-12-01T10:00:00.020Z\t{rid}\torder 1234 done\n"},
        {"time": "2026-12-01T10:00:00.030Z", "type": "platform.runtimeDone", "record": {
            "requestId": rid, "status": "success", "tracing": trace,
            "spans": [{"name": "responseLatency", "start": "2026-12-01T10:00:00.001Z", "durationMs": 28.0},
                      {"name": "responseDuration", "start": "2026-12-01T10:00:00.029Z", "durationMs": 0.1}],
            "metrics": {"durationMs": 30.2, "producedBytes": 20}}},
        {"time": "2026-12-01T10:00:00.032Z", "type": "platform.report", "record": {
            "requestId": rid, "status": "success", "tracing": trace,
            "metrics": {"durationMs": 31.4, "billedDurationMs": 32, "memorySizeMB": 128, "maxMemoryUsedMB": 60}}},
    ]).encode()


class Server:
    """One variant's server process and a keep-alive client connection to it."""

    def __init__(self, kind: str, checkout: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(checkout))
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, kind], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, cwd=str(checkout))
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{kind} server ({checkout}) did not start")
        self.conn = http.client.HTTPConnection("127.0.0.1", int(line), timeout=30)

    def cpu_ns(self) -> int:
        total = 0
        task_dir = f"/proc/{self.proc.pid}/task"
        for tid in os.listdir(task_dir):
            try:
                with open(f"{task_dir}/{tid}/schedstat", encoding="ascii") as fh:
                    total += int(fh.read().split()[0])
            except OSError:  # a thread that just ended
                pass
        return total

    def post(self, body: bytes) -> None:
        self.conn.request("POST", "/", body=body, headers={"Content-Type": "application/json"})
        response = self.conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"listener answered {response.status}")

    def round(self, body: bytes, posts: int) -> float:
        """Server CPU microseconds per POST over ``posts`` POSTs."""
        before = self.cpu_ns()
        for _ in range(posts):
            self.post(body)
        return (self.cpu_ns() - before) / posts / 1000.0

    def close(self) -> None:
        self.conn.close()
        self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def run(ws=None, quick: bool = False, rounds: int = 15, posts: int = 400, against: Optional[Path] = None) -> List[Row]:
    """``ws`` is unused (run_all's signature): the listener runs from this checkout, not the layer."""
    if quick:
        rounds, posts = 3, 50
    body = batch_body()
    servers: Dict[str, Server] = {"ours": Server("ours", REPO), "stdlib": Server("stdlib", REPO)}
    if against is not None:
        servers["against"] = Server("ours", against)
    try:
        for server in servers.values():  # warm-up: imports, first connection, first thread
            for _ in range(50):
                server.post(body)
        stats: Dict[str, Stats] = interleaved({k: (lambda s=s: s.round(body, posts)) for k, s in servers.items()}, rounds)
    finally:
        for server in servers.values():
            server.close()
    ours, stdlib = stats["ours"], stats["stdlib"]
    rows = [Row("listener", f"CPU per Telemetry API POST ({len(body)} B batch)", ours, stdlib, "µs",
                f"≤ {GOAL_RATIO}× stdlib handler", ours.median <= GOAL_RATIO * stdlib.median,
                base_label="stdlib http.server handler")]
    if against is not None:
        rows.append(Row("listener", "CPU per POST, this checkout vs --against", ours, stats["against"], "µs",
                        f"≤ {GOAL_RATIO}× before", ours.median <= GOAL_RATIO * stats["against"].median,
                        base_label=f"{against.name}"))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--posts", type=int, default=400, help="POSTs per round and variant")
    parser.add_argument("--against", type=Path, help="another checkout of the repository (before/after)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run, not a measurement)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    print_rows(run(quick=args.quick, rounds=args.rounds, posts=args.posts, against=args.against))
    print(f"({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
