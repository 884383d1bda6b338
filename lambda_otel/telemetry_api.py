"""The Telemetry API listener that Lambda POSTs event batches to (subscribing: ``subscription``).

Lambda delivers each batch as one POST of a JSON array and retries on a non-2xx answer, so
the listener answers 200 only once ``on_batch`` returned (the pipeline has the batch in its
queue), 4xx on input it cannot use (never a crash), and 503 when ``on_batch`` refuses the batch
(``BatchRefused``: the extension is shutting down, so acknowledging it would lose it silently).

It is a ``BoundedHTTPServer`` like the OTLP receiver: a connection cap that closes idle
connections to make room, deadlines for a request's head and body, one ``sendall`` per answer,
no log line per request (our own logs come back to us as telemetry).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from dataclasses import dataclass
from typing import Any, Callable, List

from .config import TelemetryConfig
from .http_server import BadRequest, BoundedHandler, BoundedHTTPServer, Request, ServerLimits
from .log_once import LogOnce

log = logging.getLogger("lambda_otel.telemetry_api")

# Lambda may send up to 2 x maxBytes plus metadata in one POST.
METADATA_ALLOWANCE = 64 * 1024

# Lambda keeps one or a few connections; the cap only matters against a misbehaving client.
# Idle connections may wait long (a freeze stops our clock's consumer, not the clock).
LISTENER_LIMITS = ServerLimits(max_connections=16, idle_timeout_s=300.0, header_timeout_s=5.0, body_timeout_s=10.0)


_DECODER = json.JSONDecoder()


class BatchRefused(Exception):
    """Raised by ``on_batch`` for a batch it will not keep: answered 503 (Lambda may redeliver)."""


@dataclass
class ListenerStats:
    batches: int = 0
    events: int = 0
    rejected_batches: int = 0  # 4xx: unusable input
    refused_batches: int = 0  # 503: BatchRefused
    failed_batches: int = 0  # 500: a bug of ours in on_batch


class _TelemetryHandler(BoundedHandler):
    """One Telemetry API POST: read, parse, hand to ``on_batch``, answer. Nothing else."""

    server: "TelemetryListener"

    def handle_request(self, request: Request) -> None:
        server = self.server
        if request.method != "POST":
            self.send(405, b"use POST", "text/plain", headers={"Allow": "POST"})
            return
        try:
            length = request.content_length()
        except BadRequest as exc:
            server.count("rejected_batches")
            self.send(exc.status, str(exc).encode(), "text/plain", close=True)
            return
        if "content-length" not in request.headers:
            server.count("rejected_batches")
            self.send(411, b"Content-Length required", "text/plain", close=True)
            return
        if length > server.max_body_bytes:
            server.count("rejected_batches")
            self.send(413, b"batch larger than 2 x maxBytes", "text/plain", close=True)
            return
        body = self.read_body(length)
        if body is None:  # too slow or gone: the connection is closed
            return
        try:
            # UTF-8 only (as Lambda sends): json.loads(bytes) would first guess among UTF-8/16/32.
            events = _DECODER.decode(body.decode("utf-8"))
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            server.count("rejected_batches")
            self.send(400, b"body is not JSON", "text/plain")
            return
        if not isinstance(events, list):
            server.count("rejected_batches")
            self.send(400, b"body is not a JSON array of events", "text/plain")
            return
        try:
            server.on_batch(events)
        except BatchRefused as exc:
            server.count("refused_batches")
            self.send(503, str(exc).encode(), "text/plain")
            return
        except Exception:  # never let one bad batch kill the listener thread
            server.batch_failed()
            self.send(500, b"processing failed", "text/plain")
            return
        server.count_batch(len(events))
        self.send(200)


class TelemetryListener(BoundedHTTPServer):
    """The HTTP server Lambda pushes telemetry to, on an already bound socket. ``start()`` serves
    on its own daemon thread; ``on_batch(events)`` is called once per usable POST."""

    def __init__(self, sock: socket.socket, on_batch: Callable[[List[Any]], None], config: TelemetryConfig,
                 limits: ServerLimits = LISTENER_LIMITS) -> None:
        super().__init__(sock, _TelemetryHandler, limits, "telemetry-listener")
        self.on_batch = on_batch
        self.max_body_bytes = 2 * config.max_bytes + METADATA_ALLOWANCE
        self.stats = ListenerStats()
        self._stats_lock = threading.Lock()
        self._once = LogOnce()

    def count_batch(self, events: int) -> None:
        with self._stats_lock:
            self.stats.batches += 1
            self.stats.events += events

    def count(self, field: str) -> None:
        with self._stats_lock:
            setattr(self.stats, field, getattr(self.stats, field) + 1)

    def batch_failed(self) -> None:
        """A bug of ours in on_batch: the first one is logged with its traceback, later ones counted."""
        with self._stats_lock:
            self.stats.failed_batches += 1
        if self._once.first("batch_failed"):
            log.exception("telemetry batch processing failed (logged once; later failures are only counted)")
