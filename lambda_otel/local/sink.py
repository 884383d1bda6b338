"""OtlpSink: a controllable OTLP/HTTP backend on 127.0.0.1, for tests, the CLI and benchmarks.

Why it exists: the extension's hardest behaviours (retries, Retry-After, deadlines, stale
connections, "no request open at freeze") can only be checked against a backend that records
*when* each request was open and that can be told to misbehave on purpose.

What it does:
- accepts ``POST /v1/traces``, ``/v1/metrics``, ``/v1/logs`` with protobuf or JSON bodies,
  gzip-compressed or not, decodes them with opentelemetry-proto and answers a real
  ``Export*ServiceResponse`` (protobuf, or JSON when the request was JSON);
- records every request (:class:`SinkRequest`): path, headers, monotonic start (first byte of the
  request) and end (response written, or connection dropped), body size, decoded message, status;
- misbehaves on demand (:class:`Reply`), globally or per path, either as a standing behaviour
  (:meth:`OtlpSink.set_reply`) or as a queue of one-shot replies (:meth:`OtlpSink.script`).

Usage::

    with OtlpSink() as sink:
        sink.script([Reply(status=503), Reply(status=503)], path="/v1/traces")  # then 200s
        ...export to sink.endpoint + "/v1/traces"...
        sink.wait_for(lambda: len(sink.spans()) >= 3, timeout=5)

A client can read the answer a moment before the sink records the request's ``end`` (the end is
taken after the write, which errs on the side of "still open"); the status and decoded message
are recorded before the write. Use :meth:`OtlpSink.wait_for_requests` before looking at ends.

``python -m lambda_otel.local.sink --port 4318`` runs one in the foreground and prints one line
per request.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import select
import socket
import ssl
import struct
import sys
import threading
import time
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from google.protobuf.message import Message
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from lambda_otel import otlp
from lambda_otel.otlp import PATHS, count_records

# Bodies larger than this (after decompression) are refused: the sink is a test tool, not a sponge.
MAX_BODY_BYTES = 64 * 1024 * 1024

NON_OTLP_BODY = b"<html><body>502 Bad Gateway (not an OTLP response)</body></html>"


@dataclass(frozen=True)
class Reply:
    """How the sink answers one request. The default is a plain, successful OTLP answer.

    Faults are checked in this order: ``stale_keepalive``, ``reset``, ``close``, ``hang``;
    otherwise the sink waits ``delay`` seconds and answers ``status``.
    """

    status: int = 200
    retry_after: Optional[str] = None  # sent verbatim as the Retry-After header ("2" or an HTTP date)
    body: Optional[bytes] = None  # raw body to send instead of the OTLP response
    content_type: Optional[str] = None  # with ``body``; defaults to text/plain
    delay: float = 0.0  # seconds to wait before answering (interrupted by stop())
    hang: bool = False  # never answer; the request stays open until stop()
    reset: bool = False  # read half the body, then reset the connection (RST)
    close: bool = False  # read the whole request, then close the connection without answering
    non_otlp: bool = False  # answer ``status`` with an HTML body instead of an OTLP message
    partial_rejected: int = 0  # answer with partial_success.rejected_* = N
    partial_message: str = ""
    # A request that arrives on a connection which already served one is reset without an
    # answer, as if the kept-alive connection had died while idle (e.g. across a Lambda freeze).
    stale_keepalive: bool = False
    close_after: bool = False  # answer, then close the connection (without "Connection: close")
    drip: float = 0.0  # send the answer one byte at a time, this many seconds apart (status line included)


OK = Reply()


@dataclass
class SinkRequest:
    """One request as the sink saw it. ``end`` is None while the request is still open."""

    seq: int
    path: str
    method: str
    headers: Dict[str, str]  # header names lower-cased
    start: float  # time.monotonic() when the first byte of the request arrived
    connection_id: int
    nth_on_connection: int  # 0 for the first request on a connection
    end: Optional[float] = None
    body_size: int = 0  # bytes received on the wire (possibly compressed)
    body_sha256: str = ""  # of those bytes, exactly as received (e.g. to check a signature)
    http_version: str = ""  # e.g. "HTTP/1.1", from the request line
    decoded: Optional[Message] = None
    decode_error: Optional[str] = None
    status: Optional[int] = None  # None when no answer was sent
    outcome: str = "open"  # open | answered | reset | closed | hung | error
    auth_error: Optional[str] = None  # why the sink's ``verify`` refused the request (answered 403)

    @property
    def signal(self) -> Optional[str]:
        return PATHS.get(self.path)

    def open_at(self, t: float) -> bool:
        return self.start <= t and (self.end is None or t < self.end)


class MetricPoint(NamedTuple):
    name: str
    point: Any  # NumberDataPoint, HistogramDataPoint, ...
    resource: Dict[str, Any]
    metric: Any  # the Metric message (unit, description, kind)


class SpanItem(NamedTuple):
    span: trace_pb2.Span
    resource: Dict[str, Any]
    scope: str


class LogItem(NamedTuple):
    record: logs_pb2.LogRecord
    resource: Dict[str, Any]
    scope: str


def any_value(value: common_pb2.AnyValue) -> Any:
    """An OTLP AnyValue as a plain Python value."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attrs_to_dict(value.kvlist_value.values)
    return getattr(value, kind)


def attrs_to_dict(attributes: Sequence[common_pb2.KeyValue]) -> Dict[str, Any]:
    """OTLP attributes as a dict (later duplicates win)."""
    return {kv.key: any_value(kv.value) for kv in attributes}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for hung handlers
    allow_reuse_address = True

    def __init__(self, addr: Tuple[str, int], sink: "OtlpSink", tls: Optional[ssl.SSLContext]) -> None:
        self.sink = sink
        self.tls = tls
        super().__init__(addr, _Handler)

    def get_request(self):  # type: ignore[override]
        sock, addr = super().get_request()
        if self.tls is not None:
            # Handshake later, in the handler thread, so a slow client cannot block accept().
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request, client_address) -> None:  # noqa: D401 - quiet on client aborts
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.served = 0
        self.conn_id = self.server.sink._track(self.connection)
        self._start = 0.0

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        self.server.sink._untrack(self.conn_id)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def handle_one_request(self) -> None:
        # Wait for the first byte so that "start" is when the request began, not when the
        # previous one on this kept-alive connection ended.
        try:
            if isinstance(self.connection, ssl.SSLSocket) and self.served == 0:
                self.connection.do_handshake()
            first = self.rfile.peek(1)
        except (OSError, ValueError):
            self.close_connection = True
            return
        if not first:
            self.close_connection = True
            return
        self._start = time.monotonic()
        super().handle_one_request()

    def do_GET(self) -> None:
        self._plain(405, b"use POST\n")

    do_PUT = do_DELETE = do_HEAD = do_GET

    def _plain(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_POST(self) -> None:
        sink = self.server.sink
        path = self.path.split("?", 1)[0]
        rec = sink._open_request(
            path=path,
            method=self.command,
            headers={k.lower(): v for k, v in self.headers.items()},
            start=self._start,
            connection_id=self.conn_id,
            nth=self.served,
        )
        rec.http_version = self.request_version
        try:
            self._serve(sink, rec, path)
        except OSError:
            # A connection cut by stop() is a request the sink never answered ("hung", as stop()
            # records it), even when stop() came before the handler reached its hang.
            outcome = "hung" if sink._stopping.is_set() else "error"
            sink._close_request(rec, outcome=outcome, status=rec.status)
            self.close_connection = True
        finally:
            self.served += 1

    def _serve(self, sink: "OtlpSink", rec: SinkRequest, path: str) -> None:
        reply = sink._next_reply(path)
        length = int(self.headers.get("Content-Length") or 0)
        chunked = "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()

        if reply.stale_keepalive and self.served > 0:
            self._abort()
            sink._close_request(rec, outcome="reset")
            return
        if reply.reset:
            if not chunked and length > 1:
                self.rfile.read(length // 2)
            self._abort()
            sink._close_request(rec, outcome="reset")
            return

        raw = self._read_chunked() if chunked else self.rfile.read(length)
        rec.body_size = len(raw)
        rec.body_sha256 = hashlib.sha256(raw).hexdigest()
        if reply.close:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sink._close_request(rec, outcome="closed")
            return

        if sink._verify is not None:
            # As an AWS endpoint would: check the request's authentication before reading it.
            rec.auth_error = sink._verify(self.command, self.path, rec.headers, raw)
            if rec.auth_error is not None:
                body = json.dumps({"__type": "InvalidSignatureException", "message": rec.auth_error}).encode()
                self._send(rec, 403, body, "application/json", None)
                sink._close_request(rec, outcome="answered", status=403)
                return

        signal = PATHS.get(path)
        if signal is None:
            self._send(rec, 404, b"unknown path; use /v1/traces, /v1/metrics or /v1/logs\n", "text/plain", None)
            sink._close_request(rec, outcome="answered", status=404)
            return

        content_type = otlp.JSON if "json" in (self.headers.get("Content-Type") or "") else otlp.PROTOBUF
        try:
            rec.decoded = _decode(raw, self.headers.get("Content-Encoding"), content_type, signal)
        except ValueError as exc:
            rec.decode_error = str(exc)
            self._send(rec, 400, f"bad request: {exc}\n".encode(), "text/plain", None)
            sink._close_request(rec, outcome="answered", status=400)
            return

        if reply.hang:
            sink._stopping.wait()  # until stop(); the request stays open the whole time
            self.close_connection = True
            sink._close_request(rec, outcome="hung")
            return
        if reply.delay > 0 and sink._stopping.wait(reply.delay):
            self.close_connection = True
            sink._close_request(rec, outcome="hung")
            return

        if reply.body is not None:
            body, ctype = reply.body, reply.content_type or "text/plain"
        elif reply.non_otlp:
            body, ctype = NON_OTLP_BODY, "text/html"
        else:
            resp = otlp.build_response(signal, reply.partial_rejected, reply.partial_message)
            body, ctype = otlp.encode_message(resp, content_type), content_type
        self._send(rec, reply.status, body, ctype, reply.retry_after, reply.drip)
        if reply.close_after:
            self.close_connection = True
        sink._close_request(rec, outcome="answered", status=reply.status)

    def _send(self, rec: SinkRequest, status: int, body: bytes, ctype: str, retry_after: Optional[str],
              drip: float = 0.0) -> None:
        # Status first: a client that has read the answer must already see it recorded (spans()).
        self.server.sink._set_status(rec, status)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        if drip > 0:
            self._headers_buffer.append(b"\r\n")
            answer = b"".join(self._headers_buffer) + body
            self._headers_buffer = []
            for i in range(len(answer)):  # bounded: one byte per step; stop() interrupts the pause
                self._pause_unless_client_left(drip)
                self.wfile.write(answer[i:i + 1])
            return
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _pause_unless_client_left(self, seconds: float) -> None:
        """Wait ``seconds``; raise OSError at once if the client closes (so ``end`` is when it did)."""
        deadline = time.monotonic() + seconds
        while True:
            if self.server.sink._stopping.is_set():
                raise OSError("sink stopped while dripping an answer")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if isinstance(self.connection, ssl.SSLSocket):  # no MSG_PEEK on TLS: just wait
                self.server.sink._stopping.wait(remaining)
                continue
            readable, _, _ = select.select([self.connection], [], [], min(remaining, 0.05))
            if readable and not self.connection.recv(1, socket.MSG_PEEK):
                raise OSError("client closed the connection while the answer was dripping")

    def _read_chunked(self) -> bytes:
        parts: List[bytes] = []
        total = 0
        while True:
            size = int(self.rfile.readline(1024).split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                self.rfile.readline(1024)  # trailing CRLF (no trailers expected)
                return b"".join(parts)
            total += size
            if total > MAX_BODY_BYTES:
                raise OSError("chunked body too large")
            parts.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _abort(self) -> None:
        """Reset the connection (RST, not FIN): what a dead peer or middlebox looks like."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass


def _decode(raw: bytes, encoding: Optional[str], content_type: str, signal: str) -> Message:
    encoding = (encoding or "identity").strip().lower()
    try:
        if encoding == "gzip":
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            data = d.decompress(raw, MAX_BODY_BYTES)
            if d.unconsumed_tail:
                raise ValueError("decompressed body too large")
        elif encoding in ("identity", ""):
            data = raw
        else:
            raise ValueError(f"unsupported Content-Encoding {encoding!r}")
    except (zlib.error, EOFError, gzip.BadGzipFile) as exc:
        raise ValueError(f"bad gzip body: {exc}") from None
    try:
        return otlp.decode_request(signal, data, content_type)
    except ValueError as exc:
        raise ValueError(f"cannot decode {otlp.spec(signal).request_name}: {exc}") from None


class OtlpSink:
    """A controllable OTLP/HTTP backend on 127.0.0.1. See the module docstring.

    ``tls=(certfile, keyfile)`` serves HTTPS instead (for certificate tests).
    ``on_request`` is called (from the handler thread) with each finished :class:`SinkRequest`.
    ``verify(method, path, headers, body) -> None | reason`` checks each request's authentication
    (e.g. its SigV4 signature) over the bytes received; a reason is answered 403 and recorded in
    ``SinkRequest.auth_error``.
    """

    def __init__(
        self,
        port: int = 0,
        tls: Optional[Tuple[str, str]] = None,
        on_request: Optional[Callable[[SinkRequest], None]] = None,
        verify: Optional[Callable[[str, str, Dict[str, str], bytes], Optional[str]]] = None,
    ) -> None:
        self._port = port
        self._tls = tls
        self._on_request = on_request
        self._verify = verify
        self._cond = threading.Condition()
        self._requests: List[SinkRequest] = []
        self._default = OK
        self._replies: Dict[Optional[str], Reply] = {}
        self._scripts: Dict[Optional[str], List[Reply]] = {}
        self._conns: Dict[int, socket.socket] = {}
        self._conn_seq = 0
        self._stopping = threading.Event()
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> "OtlpSink":
        if self._server is not None:
            return self
        ctx = None
        if self._tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*self._tls)
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", self._port), self, ctx)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="otlp-sink", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving. Never hangs: hung handlers are released and open sockets shut down."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # releases hang/delay replies
        server.shutdown()
        server.server_close()
        with self._cond:
            conns = list(self._conns.values())
        for conn in conns:  # wakes handlers blocked reading a kept-alive connection
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        now = time.monotonic()
        with self._cond:
            for rec in self._requests:
                if rec.end is None:
                    rec.end, rec.outcome = now, "hung"
            self._cond.notify_all()

    def __enter__(self) -> "OtlpSink":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("OtlpSink is not started")
        return self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        scheme = "https" if self._tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def url(self, signal: str) -> str:
        """Full URL for a signal, e.g. ``sink.url("traces")``."""
        return f"{self.endpoint}/v1/{signal}"

    # --- behaviour ---------------------------------------------------------------------

    def set_reply(self, reply: Reply, path: Optional[str] = None) -> None:
        """Standing behaviour for every request (or for one path, e.g. "/v1/traces")."""
        with self._cond:
            if path is None:
                self._default = reply
            else:
                self._replies[path] = reply

    def script(self, replies: Sequence[Reply], path: Optional[str] = None) -> None:
        """One-shot replies used in order before the standing behaviour ("503 twice then 200")."""
        with self._cond:
            self._scripts.setdefault(path, []).extend(replies)

    def reset_behaviour(self) -> None:
        """Back to plain 200 answers; pending scripts are dropped."""
        with self._cond:
            self._default = OK
            self._replies.clear()
            self._scripts.clear()

    def _next_reply(self, path: str) -> Reply:
        with self._cond:
            for key in (path, None):
                queue = self._scripts.get(key)
                if queue:
                    return queue.pop(0)
            return self._replies.get(path, self._default)

    # --- recording ---------------------------------------------------------------------

    def _track(self, conn: socket.socket) -> int:
        with self._cond:
            self._conn_seq += 1
            self._conns[self._conn_seq] = conn
            return self._conn_seq

    def _untrack(self, conn_id: int) -> None:
        with self._cond:
            self._conns.pop(conn_id, None)

    def _open_request(self, path: str, method: str, headers: Dict[str, str], start: float,
                      connection_id: int, nth: int) -> SinkRequest:
        with self._cond:
            rec = SinkRequest(
                seq=len(self._requests), path=path, method=method, headers=headers, start=start,
                connection_id=connection_id, nth_on_connection=nth,
            )
            self._requests.append(rec)
            self._cond.notify_all()
            return rec

    def _set_status(self, rec: SinkRequest, status: int) -> None:
        with self._cond:
            rec.status = status
            self._cond.notify_all()

    def _close_request(self, rec: SinkRequest, outcome: str, status: Optional[int] = None) -> None:
        with self._cond:
            if rec.end is None:
                rec.end = time.monotonic()
            rec.outcome = outcome
            if status is not None:
                rec.status = status
            self._cond.notify_all()
        if self._on_request is not None:
            self._on_request(rec)

    @property
    def requests(self) -> List[SinkRequest]:
        """Every request so far, in arrival order (a copy of the list; the records are live)."""
        with self._cond:
            return list(self._requests)

    def requests_to(self, path: str) -> List[SinkRequest]:
        return [r for r in self.requests if r.path == path]

    def open_requests(self) -> List[SinkRequest]:
        """Requests that have started and not finished yet."""
        return [r for r in self.requests if r.end is None]

    def open_at(self, t: float) -> List[SinkRequest]:
        """Requests that were open at monotonic instant ``t`` (the freeze-safety question)."""
        return [r for r in self.requests if r.open_at(t)]

    def clear(self) -> None:
        """Forget recorded requests (behaviour is kept)."""
        with self._cond:
            self._requests = []

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` is true (re-checked on every request event). Returns its last value."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if predicate():
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return bool(predicate())
                self._cond.wait(min(remaining, 0.5))

    def wait_for_requests(self, n: int, timeout: float, path: Optional[str] = None) -> bool:
        """Wait until ``n`` requests (to ``path`` if given) have finished."""
        return self.wait_for(
            lambda: sum(1 for r in self._requests if r.end is not None and (path is None or r.path == path)) >= n,
            timeout,
        )

    # --- decoded telemetry (successfully answered requests only) ---------------------------

    def _accepted(self, path: str) -> List[Message]:
        return [
            r.decoded for r in self.requests
            if r.path == path and r.decoded is not None and r.status is not None and 200 <= r.status < 300
        ]

    def span_items(self) -> List[SpanItem]:
        out = []
        for req in self._accepted(otlp.spec("traces").path):
            for rs in req.resource_spans:
                res = attrs_to_dict(rs.resource.attributes)
                for ss in rs.scope_spans:
                    out.extend(SpanItem(s, res, ss.scope.name) for s in ss.spans)
        return out

    def spans(self) -> List[trace_pb2.Span]:
        return [item.span for item in self.span_items()]

    def metrics(self) -> List[MetricPoint]:
        """Every data point received, flattened: (name, point, resource attributes, metric)."""
        out = []
        for req in self._accepted(otlp.spec("metrics").path):
            for rm in req.resource_metrics:
                res = attrs_to_dict(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        kind = metric.WhichOneof("data")
                        if kind is None:
                            continue
                        for point in getattr(metric, kind).data_points:
                            out.append(MetricPoint(metric.name, point, res, metric))
        return out

    def log_items(self) -> List[LogItem]:
        out = []
        for req in self._accepted(otlp.spec("logs").path):
            for rl in req.resource_logs:
                res = attrs_to_dict(rl.resource.attributes)
                for sl in rl.scope_logs:
                    out.extend(LogItem(rec, res, sl.scope.name) for rec in sl.log_records)
        return out

    def log_records(self) -> List[logs_pb2.LogRecord]:
        return [item.record for item in self.log_items()]


def describe(rec: SinkRequest) -> str:
    """One line about a request, for the sink's foreground mode and verbose CLI output."""
    what = ""
    msg = rec.decoded
    signal = rec.signal
    if msg is not None and signal is not None:
        unit = {"traces": "spans", "metrics": "points", "logs": "logs"}[signal]
        what = f"{sum(count_records(signal, item) for item in getattr(msg, otlp.spec(signal).items_field))} {unit}"
    elif rec.decode_error:
        what = f"decode error: {rec.decode_error}"
    enc = rec.headers.get("content-encoding", "identity")
    took = f"{((rec.end or rec.start) - rec.start) * 1000:.1f} ms"
    return f"{rec.method} {rec.path} -> {rec.status if rec.status is not None else rec.outcome} {what} ({rec.body_size} B {enc}, {took})"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lambda_otel.local.sink", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=4318, help="port on 127.0.0.1 (0 = any free port)")
    args = parser.parse_args(argv)
    sink = OtlpSink(port=args.port, on_request=lambda r: print(describe(r), flush=True))
    sink.start()
    print(f"OTLP sink listening on {sink.endpoint} (Ctrl-C to stop)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        sink.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
