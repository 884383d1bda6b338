"""The Telemetry API listener that Lambda POSTs event batches to (subscribing: ``subscription``).

Lambda delivers each batch as one POST of a JSON array and retries on a non-2xx
answer, so the listener answers 200 only once the batch is safely in the
aggregator, and answers 4xx (never crashes) on input it cannot use. Each batch is
processed under the RWLock's read lock: the SHUTDOWN path takes the write lock
before the final flush, so a batch that is mid-processing when SHUTDOWN arrives
is never lost.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, List, Optional

from .config import TelemetryConfig

log = logging.getLogger("lambda_otel.telemetry_api")

# Lambda may send up to 2 × maxBytes plus metadata in one POST (reference §1.3).
METADATA_ALLOWANCE = 64 * 1024


# --- the listener --------------------------------------------------------------------------------


@dataclass
class ListenerStats:
    batches: int = 0
    events: int = 0
    rejected_batches: int = 0


class _TelemetryHandler(BaseHTTPRequestHandler):
    """One Telemetry API POST: read, parse, process, answer. Nothing else."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else every keep-alive answer stalls ~40 ms (delayed ACK)
    server: "TelemetryListener"

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        length_text = self.headers.get("Content-Length")
        if length_text is None or not length_text.strip().isdigit():
            self._answer(411, "Content-Length required")
            return
        length = int(length_text)
        if length > self.server.max_body_bytes:
            self.server.count_rejected()
            self._answer(413, "batch larger than 2 x maxBytes", close=True)
            return
        body = self.rfile.read(length)
        if len(body) != length:
            self._answer(400, "truncated body", close=True)
            return
        try:
            events = json.loads(body)
        except (ValueError, RecursionError):
            self.server.count_rejected()
            self._answer(400, "body is not JSON")
            return
        if not isinstance(events, list):
            self.server.count_rejected()
            self._answer(400, "body is not a JSON array of events")
            return
        try:
            self.server.on_batch(events)
        except Exception:  # never let one bad batch kill the listener thread
            log.exception("telemetry batch processing failed")
            self._answer(500, "processing failed")
            return
        self.server.count_batch(len(events))
        self._answer(200, "")

    def do_GET(self) -> None:  # noqa: N802
        self._answer(405, "use POST")

    do_PUT = do_DELETE = do_PATCH = do_GET

    def _answer(self, status: int, message: str, close: bool = False) -> None:
        body = message.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # never log per request: our own logs come back to us as telemetry


class TelemetryListener(ThreadingHTTPServer):
    """The HTTP server Lambda pushes telemetry to. Serves on its own daemon thread."""

    daemon_threads = True

    def __init__(self, sock: socket.socket, on_batch: Callable[[List[Any]], None], config: TelemetryConfig) -> None:
        super().__init__(sock.getsockname()[:2], _TelemetryHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.on_batch = on_batch
        self.max_body_bytes = 2 * config.max_bytes + METADATA_ALLOWANCE
        self.stats = ListenerStats()
        self._stats_lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    @property
    def port(self) -> int:
        return self.socket.getsockname()[1]

    def count_batch(self, events: int) -> None:
        with self._stats_lock:
            self.stats.batches += 1
            self.stats.events += events

    def count_rejected(self) -> None:
        with self._stats_lock:
            self.stats.rejected_batches += 1

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.5}, name="telemetry-listener", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
