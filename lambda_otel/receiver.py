"""The function's own OTLP/HTTP endpoint (127.0.0.1:4318), feeding the aggregator.

The function's SDK exports here instead of to the backend, so its telemetry leaves with ours,
on our freeze-safe schedule. A 200 is a promise: the data is in the aggregator (from there it
is exported or counted as dropped with a reason), never a 200 followed by a silent drop.
Nothing we answer makes the SDK wait or retry inside an invocation (it would, with backoff, for
its whole export timeout): a full queue makes room by its own policy (the oldest records are
dropped and counted as ``queue_full``), and what we cannot keep at all (a resource batch larger
than the whole budget, anything after the final flush started) is refused in a 200 with an OTLP
``partial_success``, which clients must not retry, and counted.

Everything a misbehaving client can make us spend is bounded: the body (Content-Length checked
before reading), the decompressed size (inflated in bounded steps), the time a slow client may
take (per-recv socket timeout plus a whole-body deadline) and the number of connections served
at once. Bad input costs a status code and a counter (see /health), never a log line per request.

Spec: OTLP/HTTP in opentelemetry-proto docs/specification.md (protobuf and JSON encodings, hex
trace/span ids in JSON, 200 + Export*ServiceResponse, 4xx/5xx + google.rpc.Status).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import socketserver
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple

from lambda_otel import otlp
from lambda_otel.aggregator import Aggregator
from lambda_otel.config import ReceiverConfig
from lambda_otel.loss import LOGS, METRICS, QUEUE_FULL, SHUTDOWN_DEADLINE, TRACES, LossCounter
from lambda_otel.otlp import JSON, PATHS, PROTOBUF, count_records, encode_message

log = logging.getLogger(__name__)

HEALTH_PATH = "/health"

DEFAULT_SOCKET_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 30.0
DEFAULT_MAX_CONNECTIONS = 32
_READ_CHUNK = 64 * 1024
_INFLATE_STEP = 64 * 1024

# google.rpc.Code values for the Status body (the spec says clients must not depend on them).
_RPC_CODES = {400: 3, 404: 5, 405: 12, 408: 4, 411: 3, 413: 8, 415: 3, 503: 14}


class BadRequest(Exception):
    """The body cannot be decoded: answered with 400 and the message."""


_status_cls = None


def build_status_class():
    """A google.rpc.Status class (code, message; no details) from a private descriptor pool.

    googleapis-common-protos is not a runtime dependency, so when ``google.rpc.status_pb2`` is
    missing we describe the two fields we use ourselves; the wire format is identical.
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(name="lambda_otel/rpc_status.proto", package="google.rpc", syntax="proto3")
    msg = fdp.message_type.add(name="Status")
    FD = descriptor_pb2.FieldDescriptorProto
    msg.field.add(name="code", number=1, type=FD.TYPE_INT32, label=FD.LABEL_OPTIONAL, json_name="code")
    msg.field.add(name="message", number=2, type=FD.TYPE_STRING, label=FD.LABEL_OPTIONAL, json_name="message")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("google.rpc.Status"))


def _status_class():
    global _status_cls
    if _status_cls is None:
        try:
            from google.rpc.status_pb2 import Status
        except ImportError:
            Status = build_status_class()
        _status_cls = Status
    return _status_cls


# --- decoding --------------------------------------------------------------------------------


def inflate_bounded(data: bytes, limit: int) -> Optional[bytes]:
    """gunzip ``data`` producing at most ``limit`` bytes; None if the output would exceed it.

    Inflates in small steps (``max_length``), so a gzip bomb costs at most ``limit`` plus one
    step of memory. Raises BadRequest for data that is not gzip.
    """
    out: List[bytes] = []
    total = 0
    pending = data
    try:
        while pending:  # one iteration per gzip member (concatenated members are legal)
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            chunk = inflater.decompress(pending, _INFLATE_STEP)
            while True:
                total += len(chunk)
                if total > limit:
                    return None
                out.append(chunk)
                if inflater.eof or not (inflater.unconsumed_tail or chunk):
                    break
                chunk = inflater.decompress(inflater.unconsumed_tail, _INFLATE_STEP)
            if not inflater.eof:
                raise BadRequest("truncated gzip body")
            pending = inflater.unused_data
    except zlib.error as exc:
        raise BadRequest(f"invalid gzip body: {exc}") from None
    return b"".join(out)


def decode_request(signal: str, body: bytes, content_type: str):
    """Body (already inflated) -> Export*ServiceRequest. Raises BadRequest."""
    try:
        return otlp.decode_request(signal, body, content_type)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


# --- the HTTP server -----------------------------------------------------------------------


class _Stats:
    """Counters for /health: how many requests were accepted and why others were not."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests_accepted = 0
        self.records_accepted = {TRACES: 0, METRICS: 0, LOGS: 0}
        self.records_rejected = 0
        self.responses: Dict[str, int] = {}
        self._warned: set = set()

    def response(self, status: int) -> bool:
        """Count a response; True the first time this status is seen (log it once, not per request)."""
        with self._lock:
            key = str(status)
            self.responses[key] = self.responses.get(key, 0) + 1
            first = status >= 400 and status not in self._warned
            self._warned.add(status)
            return first

    def accepted(self, signal: str, records: int, rejected: int) -> None:
        with self._lock:
            self.requests_accepted += 1
            self.records_accepted[signal] += records
            self.records_rejected += rejected

    def snapshot(self) -> Dict[str, Any]:
        with self._lock:
            return {
                "signals_received": self.requests_accepted,
                "records_received": dict(self.records_accepted),
                "records_rejected": self.records_rejected,
                "responses": dict(self.responses),
            }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address, receiver: "OtlpReceiver", family: int, sock: Optional[socket.socket]) -> None:
        self.address_family = family
        self.receiver = receiver
        self._slots = threading.BoundedSemaphore(receiver.max_connections)
        super().__init__(address, _Handler, bind_and_activate=sock is None)
        if sock is not None:  # already bound and listening (bound early by the app)
            self.socket.close()
            self.socket = sock
            self.server_address = sock.getsockname()
            self.server_name, self.server_port = self.server_address[:2]

    def server_bind(self) -> None:
        # HTTPServer.server_bind would call socket.getfqdn(), a DNS lookup at cold start we don't need.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request, client_address):
        # Bounded concurrency: past the limit a connection gets a bodiless 503 and is closed
        # rather than a thread of its own.
        if not self._slots.acquire(blocking=False):
            try:
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: %d\r\n"
                    b"Content-Length: 0\r\nConnection: close\r\n\r\n" % self.receiver.retry_after_s
                )
            except OSError:
                pass
            self.receiver._stats.response(503)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    _bug_logged = False

    def handle_error(self, request, client_address):
        # A broken connection is the client's business; anything else is our bug: logged once.
        if isinstance(sys.exc_info()[1], OSError) or self._bug_logged:
            log.debug("OTLP receiver: error while serving a connection", exc_info=True)
        else:
            self._bug_logged = True
            log.exception("OTLP receiver: unexpected error while serving a request (logged once)")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else every keep-alive response waits ~40 ms on delayed ACK
    server_version = "lambda-otel"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        self.timeout = self.server.receiver.socket_timeout_s  # per recv: idle keep-alive, slow headers
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # never one log line per request

    # -- routing --------------------------------------------------------------------------------

    def do_POST(self) -> None:
        receiver = self.server.receiver
        path = self.path.split("?", 1)[0]
        signal = PATHS.get(path)
        if signal is None:
            allow = "GET" if path == HEALTH_PATH else None
            self._error(405 if allow else 404, f"no OTLP endpoint at {path}", PROTOBUF, allow=allow, close=True)
            return
        receiver._handle_export(self, signal)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == HEALTH_PATH:
            receiver = self.server.receiver
            health = {"status": "ready", **receiver._stats.snapshot(),
                      "queued_records": receiver.aggregator.pending_records(),
                      "queued_bytes": receiver.aggregator.pending_bytes()}
            body = json.dumps(health).encode()
            self._send(200, body, JSON)
        elif path in PATHS:
            self._error(405, f"{path} accepts POST only", PROTOBUF, allow="POST")
        else:
            self._error(404, f"nothing at {path}", PROTOBUF)

    def _other_method(self) -> None:
        path = self.path.split("?", 1)[0]
        allow = "POST" if path in PATHS else "GET" if path == HEALTH_PATH else None
        if allow:
            self._error(405, f"{path} does not accept {self.command}", PROTOBUF, allow=allow, close=True)
        else:
            self._error(404, f"nothing at {path}", PROTOBUF, close=True)

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _other_method

    # -- responses ------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str, headers: Optional[Dict[str, str]] = None,
              close: bool = False, note: str = "") -> None:
        if self.server.receiver._stats.response(status):
            log.warning("OTLP receiver: first HTTP %d answer (%s); later ones are only counted in /health",
                        status, note)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str, content_type: str, allow: Optional[str] = None,
               close: bool = False, headers: Optional[Dict[str, str]] = None) -> None:
        status_msg = _status_class()(code=_RPC_CODES.get(status, 2), message=message)
        extra = dict(headers or {})
        if allow:
            extra["Allow"] = allow
        self._send(status, encode_message(status_msg, content_type), content_type, extra, close, note=message)

    # -- body ---------------------------------------------------------------------------------

    def read_body(self, length: int, deadline: float) -> Optional[bytes]:
        """Exactly ``length`` bytes before ``deadline`` (monotonic), or None (then close)."""
        parts: List[bytes] = []
        remaining = length
        try:
            while remaining > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.connection.settimeout(min(self.timeout, left))
                chunk = self.rfile.read1(min(remaining, _READ_CHUNK))
                if not chunk:
                    return None
                parts.append(chunk)
                remaining -= len(chunk)
        except (socket.timeout, OSError):
            return None
        finally:
            try:
                self.connection.settimeout(self.timeout)
            except OSError:
                pass
        return b"".join(parts)


class OtlpReceiver:
    """OTLP/HTTP receiver on loopback. ``start()`` binds and serves on a daemon thread."""

    def __init__(
        self,
        aggregator: Aggregator,
        loss: LossCounter,
        host: str = "127.0.0.1",
        port: int = 4318,
        max_body_bytes: int = ReceiverConfig.max_body_bytes,
        max_decompressed_bytes: int = ReceiverConfig.max_decompressed_bytes,
        retry_after_s: int = 1,
        socket_timeout_s: float = DEFAULT_SOCKET_TIMEOUT_S,
        body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        poll_interval_s: float = 0.5,
        sock: Optional[socket.socket] = None,
        observer=None,
    ) -> None:
        """``sock``: an already bound, listening socket to serve on (host/port then come from it).
        ``observer``: ``observe(signal, items)`` is called with what was accepted (the converter's
        ``sdk_view.FunctionSdkView``: it joins the function's spans to ours and deduplicates logs)."""
        if sock is not None:
            host, port = sock.getsockname()[:2]
        if host == "localhost":
            host = "127.0.0.1"
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"OTLP receiver host {host!r} is not a loopback address") from None
        if not ip.is_loopback:
            raise ValueError(f"OTLP receiver host {host!r} is not a loopback address (only the function may send)")
        self._family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        self.host = host
        self._requested_port = port
        self.aggregator = aggregator
        self.loss = loss
        self.max_body_bytes = max_body_bytes
        self.max_decompressed_bytes = max_decompressed_bytes
        self.retry_after_s = max(1, int(retry_after_s))
        self.socket_timeout_s = socket_timeout_s
        self.body_timeout_s = body_timeout_s
        self.max_connections = max_connections
        self.poll_interval_s = poll_interval_s  # how long stop() may wait for the serve loop
        self._stats = _Stats()
        self._sock = sock
        self._observer = observer
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        # Guards "accepted into the aggregator" against close_intake(), so that every 200 we
        # answer is for data that is in the queue before the final flush starts.
        self._intake_lock = threading.Lock()
        self._intake_closed = False

    @classmethod
    def from_config(cls, config, aggregator: Aggregator, loss: LossCounter,
                    sock: Optional[socket.socket] = None, observer=None) -> "OtlpReceiver":
        """From ``config.ReceiverConfig`` (port, max_body_bytes, max_decompressed_bytes)."""
        return cls(aggregator, loss, port=config.port, max_body_bytes=config.max_body_bytes,
                   max_decompressed_bytes=config.max_decompressed_bytes, sock=sock, observer=observer)

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked for); the requested one before start()."""
        return self._server.server_address[1] if self._server else self._requested_port

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if self._family == socket.AF_INET6 else self.host
        return f"http://{host}:{self.port}"

    def stats(self) -> Dict[str, Any]:
        return self._stats.snapshot()

    def start(self) -> None:
        if self._server is not None:
            return
        self._server = _Server((self.host, self._requested_port), self, self._family, self._sock)
        self._sock = None  # the server owns it now (closed by stop())
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": self.poll_interval_s},
                                        name="otlp-receiver", daemon=True)
        self._thread.start()
        # debug: the extension starts us after its first /next (app.py), i.e. possibly inside an
        # invocation, where it prints nothing at info; app.py logs the address during init.
        log.debug("OTLP receiver serving on %s", self.address)

    def close_intake(self) -> None:
        """SHUTDOWN, before the final flush: from now on keep nothing (refused with a
        ``partial_success`` and counted as ``shutdown_deadline``).

        When this returns, every request we answered (or will answer) 200 is already in the
        aggregator, so the final flush sends it or counts it; a 200 after the final flush
        would be a silent loss (the process exits right after it).
        """
        with self._intake_lock:
            self._intake_closed = True

    def stop(self, timeout: float = 2.0) -> None:
        """Stop accepting; connections being served finish on their own (daemon threads)."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout)
        self._server = None
        self._thread = None

    # -- one export request -------------------------------------------------------------------------

    def _handle_export(self, h: _Handler, signal: str) -> None:
        raw_type = h.headers.get("Content-Type", "")
        content_type = raw_type.split(";", 1)[0].strip().lower()
        encoding = h.headers.get("Content-Encoding", "identity").strip().lower()
        length_header = h.headers.get("Content-Length")

        # Everything decidable from the headers alone, before reading a byte of body.
        if h.headers.get("Transfer-Encoding") is not None:
            h._error(411, "Content-Length is required (chunked bodies are not accepted)",
                     content_type if content_type in (PROTOBUF, JSON) else PROTOBUF, close=True)
            return
        try:
            length = int(length_header) if length_header is not None else 0
            if length < 0:
                raise ValueError
        except ValueError:
            h._error(400, f"invalid Content-Length {length_header!r}", PROTOBUF, close=True)
            return
        if content_type not in (PROTOBUF, JSON):
            h._error(415, f"unsupported Content-Type {raw_type!r} (use {PROTOBUF} or {JSON})", PROTOBUF,
                     close=length > 0)
            return
        if encoding not in ("identity", "gzip", "x-gzip", ""):
            h._error(415, f"unsupported Content-Encoding {encoding!r} (use gzip or none)", content_type, close=True)
            return
        if length > self.max_body_bytes:
            h._error(413, f"body of {length} bytes is over the {self.max_body_bytes}-byte limit", content_type,
                     close=True)
            return

        body = h.read_body(length, time.monotonic() + self.body_timeout_s)
        if body is None:  # client too slow or gone: nothing sensible to answer on this connection
            h.close_connection = True
            self._stats.response(408)
            return
        # From here the body is consumed: errors keep the connection alive.
        if encoding in ("gzip", "x-gzip"):
            try:
                body = inflate_bounded(body, self.max_decompressed_bytes)
            except BadRequest as exc:
                h._error(400, str(exc), content_type)
                return
            if body is None:
                h._error(413, f"decompressed body is over the {self.max_decompressed_bytes}-byte limit",
                         content_type)
                return
        try:
            request = decode_request(signal, body, content_type)
        except BadRequest as exc:
            h._error(400, str(exc), content_type)
            return
        del body

        fits, too_big = [], 0
        for item in getattr(request, otlp.spec(signal).items_field):
            records = count_records(signal, item)
            if records == 0:
                continue  # an empty envelope: nothing to keep (the spec allows ignoring it)
            nbytes = item.ByteSize()
            if self.aggregator.fits_budget(nbytes, records):
                fits.append((item, records, nbytes))
            else:
                too_big += records
        with self._intake_lock:
            closed = self._intake_closed
            if not closed:
                # A full queue makes room by the queue's own policy (the oldest records go,
                # counted as queue_full): never an answer that makes the SDK wait and retry.
                self.aggregator.add_many(signal, fits, evict=True)
        accepted = 0 if closed else sum(r for _, r, _ in fits)
        if closed:
            rejected = too_big + sum(r for _, r, _ in fits)
            self.loss.add(signal, SHUTDOWN_DEADLINE, rejected)
            message = "lambda-otel is shutting down: its final flush has started"
        else:
            rejected = too_big
            self.loss.add(signal, QUEUE_FULL, rejected)
            message = "resource batch larger than lambda-otel's whole queue budget; send smaller batches"
        # What was refused goes back in a 200 with partial_success: the spec forbids clients to retry it.
        response = otlp.build_response(signal, rejected, message) if rejected else otlp.build_response(signal)
        self._stats.accepted(signal, accepted, rejected)
        if self._observer is not None and accepted:
            self._observer.observe(signal, [item for item, _, _ in fits])  # never raises
        h._send(200, encode_message(response, content_type), content_type)
