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
import threading
import zlib
from typing import Any, Dict, List, Optional, Tuple

from lambda_otel import otlp
from lambda_otel.aggregator import Aggregator
from lambda_otel.config import ReceiverConfig
from lambda_otel.http_server import BadRequest as HttpBadRequest
from lambda_otel.http_server import BoundedHandler, BoundedHTTPServer, Request, ServerLimits
from lambda_otel.loss import INVALID_RECORD, LOGS, METRICS, QUEUE_FULL, SHUTDOWN_DEADLINE, TRACES, LossCounter
from lambda_otel.log_once import LogOnce
from lambda_otel.otlp import JSON, PATHS, PROTOBUF, count_records, encode_message

log = logging.getLogger(__name__)

HEALTH_PATH = "/health"

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


# --- bounding what a request can make us build -----------------------------------------------


def _message_paths(signal: str) -> Tuple[Tuple[int, ...], ...]:
    """Field numbers, level by level, of the nested messages of one signal's export request.

    Read from the descriptors (not written down twice): request -> Resource* -> Scope* ->
    records, and for metrics one level more (metric -> gauge/sum/... -> data points).
    """
    cls = otlp.spec(signal).request_class
    items = cls.DESCRIPTOR.fields_by_name[otlp.spec(signal).items_field]
    scope = [f for f in items.message_type.fields if f.name.startswith("scope_")][0]
    records = [f for f in scope.message_type.fields if f.message_type is not None and f.name != "scope"][0]
    paths = [(items.number,), (scope.number,), (records.number,)]
    if signal == METRICS:
        kinds = [f for f in records.message_type.fields if f.containing_oneof is not None and f.message_type]
        paths.append(tuple(f.number for f in kinds))
        paths.append((kinds[0].message_type.fields_by_name["data_points"].number,))
    return tuple(paths)


_PATHS_CACHE: Dict[str, Tuple[Tuple[int, ...], ...]] = {}


def _varint(data: bytes, pos: int) -> Tuple[int, int]:
    byte = data[pos]
    if byte < 0x80:
        return byte, pos + 1
    result, shift = byte & 0x7F, 7
    while True:
        pos += 1
        byte = data[pos]
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos + 1
        shift += 7
        if shift > 63:
            raise BadRequest("invalid protobuf: varint too long")


def count_messages(signal: str, data: bytes, limit: int) -> int:
    """How many nested messages (resources, scopes, records, data points) a protobuf export
    request holds, read from the wire without building any; stops counting past ``limit``.

    What the protobuf runtime builds costs memory per message (~100 bytes even for an empty
    record), so 15 KiB of gzip can inflate to millions of them; this walk is what lets the
    receiver refuse such a request before building it. Raises BadRequest on malformed framing.
    """
    paths = _PATHS_CACHE.get(signal)
    if paths is None:
        paths = _PATHS_CACHE[signal] = _message_paths(signal)
    count = 0
    stack = [(0, len(data), 0)]  # (start, end, level)
    try:
        while stack:
            pos, end, level = stack.pop()
            wanted = paths[level] if level < len(paths) else ()
            while pos < end:
                key, pos = _varint(data, pos)
                wire = key & 7
                if wire == 2:
                    size, pos = _varint(data, pos)
                    if pos + size > end:
                        raise BadRequest("invalid protobuf: length past the end of its message")
                    if (key >> 3) in wanted:
                        count += 1
                        if count > limit:
                            return count
                        if level + 1 < len(paths):
                            stack.append((pos, pos + size, level + 1))
                    pos += size
                elif wire == 0:
                    _, pos = _varint(data, pos)
                elif wire == 1:
                    pos += 8
                elif wire == 5:
                    pos += 4
                else:
                    raise BadRequest(f"invalid protobuf: wire type {wire}")
            if pos != end:
                raise BadRequest("invalid protobuf: truncated field")
    except IndexError:
        raise BadRequest("invalid protobuf: truncated message") from None
    return count


def _json_objects(data: bytes) -> int:
    """An upper bound of the JSON objects in a body (C speed: one count of ``{``)."""
    return data.count(b"{")


# Valid id lengths: (trace id, span id, parent span id) in bytes; 0 = absent, where allowed.
_SPAN_IDS = ((16,), (8,), (0, 8))
_LOG_IDS = ((0, 16), (0, 8))


def drop_invalid_ids(signal: str, request) -> int:
    """Remove spans (and span links), log records and metric data points (their exemplars) whose
    trace or span id has the wrong length (a strict backend refuses the whole batch for one of
    them); returns the records removed."""
    if signal == METRICS:
        return _drop_invalid_exemplar_points(request)
    removed = 0
    for item in getattr(request, otlp.spec(signal).items_field):
        for scope in (item.scope_spans if signal == TRACES else item.scope_logs):
            if signal == TRACES:
                removed += _keep_valid(scope.spans, _valid_span)
            else:
                removed += _keep_valid(scope.log_records, _valid_log)
    return removed


def _keep_valid(records, valid) -> int:
    """Remove, in place, the entries of a repeated protobuf field that ``valid`` refuses; returns how many."""
    if all(valid(r) for r in records):
        return 0
    keep = [r for r in records if valid(r)]
    removed = len(records) - len(keep)
    del records[:]
    records.extend(keep)
    return removed


def _valid_span(span) -> bool:
    return (len(span.trace_id) == 16 and len(span.span_id) == 8 and len(span.parent_span_id) in (0, 8)
            and all(len(link.trace_id) == 16 and len(link.span_id) == 8 for link in span.links))


def _valid_log(record) -> bool:
    return len(record.trace_id) in (0, 16) and len(record.span_id) in (0, 8)


def _valid_point(point) -> bool:
    return all(len(e.trace_id) in (0, 16) and len(e.span_id) in (0, 8) for e in point.exemplars)


def _drop_invalid_exemplar_points(request) -> int:
    removed = 0
    for item in request.resource_metrics:
        for scope in item.scope_metrics:
            for metric in scope.metrics:
                kind = metric.WhichOneof("data")
                if kind not in ("sum", "gauge", "histogram", "exponential_histogram"):
                    continue  # a summary has no exemplars
                removed += _keep_valid(getattr(metric, kind).data_points, _valid_point)
    return removed


# --- limits from the function's memory -------------------------------------------------------


def limits_for_memory(memory_mb: int) -> Dict[str, Any]:
    """The receiver's limits for a function of ``memory_mb`` MB (it lives in that memory).

    * connections: ``clamp(memory_mb / 4, 16, 256)`` (a thread each; 32 at 128 MB, 256 from
      1 GB: Managed Instances run up to 16 worker processes per vCPU, each with its exporters);
    * decompressed body: ``clamp(memory_mb x 32 KiB, 4 MiB, 16 MiB)``;
    * concurrent decodes (body, inflate, parse): ``clamp(memory_mb / 256, 2, 8)``.
    """
    if not memory_mb or memory_mb < 1:  # not told (None): as for 128 MB
        memory_mb = 128
    return {
        "max_connections": max(16, min(256, memory_mb // 4)),
        "max_decompressed_bytes": max(4 * MiB, min(16 * MiB, memory_mb * 32 * 1024)),
        "decode_slots": max(2, min(8, memory_mb // 256)),
    }


MiB = 1024 * 1024
# A body up to this size is read before waiting for a decode slot (it costs little to hold).
_SMALL_BODY = 256 * 1024
DECODE_WAIT_S = 5.0  # a request waits this long for a decode slot before a 503 (real overload only)


# --- the HTTP server -----------------------------------------------------------------------


class _Stats:
    """Counters for /health: how many requests were accepted and why others were not."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests_accepted = 0
        self.records_accepted = {TRACES: 0, METRICS: 0, LOGS: 0}
        self.records_rejected = 0
        self.responses: Dict[str, int] = {}
        self._once = LogOnce()

    def response(self, status: int) -> bool:
        """Count a response; True the first time this status is seen (log it once, not per request)."""
        with self._lock:
            key = str(status)
            self.responses[key] = self.responses.get(key, 0) + 1
            return status >= 400 and self._once.first(status)

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


class _Server(BoundedHTTPServer):
    def __init__(self, sock: socket.socket, receiver: "OtlpReceiver") -> None:
        self.receiver = receiver
        super().__init__(sock, _Handler, receiver.limits, "otlp-receiver")


class _Handler(BoundedHandler):
    """One connection to the receiver: routes each request; the export itself is the receiver's."""

    server: _Server

    def handle_request(self, request: Request) -> None:
        receiver = self.server.receiver
        path = request.path
        signal = PATHS.get(path)
        if request.method == "POST" and signal is not None:
            receiver._handle_export(self, request, signal)
        elif request.method == "GET" and path == HEALTH_PATH:
            health = {"status": "ready", **receiver._stats.snapshot(),
                      "queued_records": receiver.aggregator.pending_records(),
                      "queued_bytes": receiver.aggregator.pending_bytes(),
                      "connections": self.server.http_stats.snapshot()}
            self.answer(request, 200, json.dumps(health).encode(), JSON)
        else:
            allow = "POST" if signal is not None else "GET" if path == HEALTH_PATH else None
            if allow:
                self.error(request, 405, f"{path} does not accept {request.method[:16]}", PROTOBUF, allow=allow)
            else:
                self.error(request, 404, f"nothing at {path[:200]}", PROTOBUF)

    def answer(self, request: Request, status: int, body: bytes, content_type: str,
               headers: Optional[Dict[str, str]] = None, close: bool = False, note: str = "") -> None:
        if self.server.receiver._stats.response(status):
            log.warning("OTLP receiver: first HTTP %d answer (%s); later ones are only counted in /health",
                        status, note)
        self.send(status, body, content_type, headers, close=close, head_only=request.method == "HEAD")

    def error(self, request: Request, status: int, message: str, content_type: str, allow: Optional[str] = None,
              close: bool = False, headers: Optional[Dict[str, str]] = None) -> None:
        status_msg = _status_class()(code=_RPC_CODES.get(status, 2), message=message)
        extra = dict(headers or {})
        if allow:
            extra["Allow"] = allow
        self.answer(request, status, encode_message(status_msg, content_type), content_type, extra, close,
                    note=message)


class OtlpReceiver:
    """OTLP/HTTP receiver on loopback. ``start()`` serves on a daemon thread.

    ``limits`` bound connections and their timing (``http_server.ServerLimits``);
    ``max_body_bytes`` / ``max_decompressed_bytes`` bound one body; ``decode_slots`` bounds how many
    requests are read, inflated and parsed at once (each holds up to both sizes in memory); a
    request with more messages than the queue could ever hold is refused before it is built.
    ``from_config`` derives all of them from the function's memory (``limits_for_memory``).
    """

    def __init__(
        self,
        aggregator: Aggregator,
        loss: LossCounter,
        host: str = "127.0.0.1",
        port: int = ReceiverConfig.port,
        max_body_bytes: int = ReceiverConfig.max_body_bytes,
        max_decompressed_bytes: int = ReceiverConfig.max_decompressed_bytes,
        limits: Optional[ServerLimits] = None,
        decode_slots: int = 4,
        poll_interval_s: float = 0.5,
        sock: Optional[socket.socket] = None,
        observer=None,
    ) -> None:
        """``sock``: an already bound, listening socket to serve on (host/port then come from it).
        ``observer``: ``observe(signal, items)`` is called with each decoded request before it is
        queued (the converter's ``sdk_view.FunctionSdkView``: it joins the function's spans to ours
        and deduplicates logs, dropping a record the Telemetry API already delivered)."""
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
        self.limits = limits or ServerLimits()
        self._decode_slots = threading.BoundedSemaphore(max(1, decode_slots))
        # Messages (resources, scopes, records) one request may hold: what the queue could ever
        # keep, plus their envelopes. Past it the request is refused before it is built.
        self.max_request_messages = 2 * aggregator.max_records + 64
        self.poll_interval_s = poll_interval_s  # how long stop() may wait for the serve loop
        self._stats = _Stats()
        self._sock = sock
        self._observer = observer
        self._server: Optional[_Server] = None
        # Guards "accepted into the aggregator" against close_intake(), so that every 200 we
        # answer is for data that is in the queue before the final flush starts.
        self._intake_lock = threading.Lock()
        self._intake_closed = False

    @classmethod
    def from_config(cls, config: ReceiverConfig, aggregator: Aggregator, loss: LossCounter,
                    sock: Optional[socket.socket] = None, memory_mb: Optional[int] = 128, observer=None) -> "OtlpReceiver":
        """From ``config.ReceiverConfig`` and the function's memory (the smaller size limit wins)."""
        derived = limits_for_memory(memory_mb)
        return cls(aggregator, loss, port=config.port, sock=sock, observer=observer,
                   max_body_bytes=min(config.max_body_bytes, derived["max_decompressed_bytes"]),
                   max_decompressed_bytes=min(config.max_decompressed_bytes, derived["max_decompressed_bytes"]),
                   limits=ServerLimits(max_connections=derived["max_connections"]),
                   decode_slots=derived["decode_slots"])

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked for); the requested one before start()."""
        return self._server.port if self._server else self._requested_port

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if self._family == socket.AF_INET6 else self.host
        return f"http://{host}:{self.port}"

    def stats(self) -> Dict[str, Any]:
        return self._stats.snapshot()

    def connection_stats(self) -> Dict[str, int]:
        """What the HTTP layer refused or gave up on (connection cap, slow clients), by kind."""
        return self._server.http_stats.snapshot() if self._server else {}

    def start(self) -> None:
        if self._server is not None:
            return
        sock = self._sock
        if sock is None:
            sock = socket.socket(self._family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((self.host, self._requested_port))
                sock.listen(64)
            except OSError:
                sock.close()
                raise
        self._sock = None  # the server owns it now (closed by stop())
        self._server = _Server(sock, self)
        self._server.start(self.poll_interval_s)
        # debug: the extension starts us after its first /next (app.py), i.e. possibly inside an
        # invocation, where it prints nothing at info; app.py logs the address during init.
        log.debug("OTLP receiver serving on %s", self.address)

    def close_intake(self) -> None:
        """SHUTDOWN, before the final flush: from now on keep nothing (refused with a
        ``partial_success`` and counted as ``shutdown_deadline``).

        When this returns, every request we answered (or will answer) with a plain 200 is
        already in the aggregator, so the final flush sends it or counts it; a 200 after the
        final flush would be a silent loss (the process exits right after it).
        """
        with self._intake_lock:
            self._intake_closed = True

    def stop(self, timeout: float = 2.0) -> None:
        """Stop accepting; connections being served finish on their own (daemon threads)."""
        server = self._server
        if server is None:
            return
        server.stop(timeout)
        self._server = None

    # -- one export request -------------------------------------------------------------------------

    def _handle_export(self, h: _Handler, req: Request, signal: str) -> None:
        raw_type = req.headers.get("content-type", "")
        content_type = raw_type.split(";", 1)[0].strip().lower()
        encoding = req.headers.get("content-encoding", "identity").strip().lower()
        answer_type = content_type if content_type in (PROTOBUF, JSON) else PROTOBUF

        # Everything decidable from the headers alone, before reading a byte of body.
        try:
            length = req.content_length()
        except HttpBadRequest as exc:
            h.error(req, exc.status, str(exc), answer_type, close=True)
            return
        if content_type not in (PROTOBUF, JSON):
            h.error(req, 415, f"unsupported Content-Type {raw_type[:100]!r} (use {PROTOBUF} or {JSON})", PROTOBUF)
            return
        if encoding not in ("identity", "gzip", "x-gzip", ""):
            h.error(req, 415, f"unsupported Content-Encoding {encoding[:40]!r} (use gzip or none)", content_type)
            return
        if length > self.max_body_bytes:
            h.error(req, 413, f"body of {length} bytes is over the {self.max_body_bytes}-byte limit", content_type)
            return

        # Reading, inflating and parsing hold memory: only ``decode_slots`` requests at a time (a
        # small body is read first: it costs little to hold while waiting).
        body = None
        if length <= _SMALL_BODY:
            body = h.read_body(length)
            if body is None:  # client too slow or gone: nothing sensible to answer on this connection
                self._stats.response(408)
                return
        if not self._decode_slots.acquire(timeout=DECODE_WAIT_S):
            h.error(req, 503, "too many concurrent requests", content_type, headers={"Retry-After": "1"})
            return
        try:
            if body is None:
                body = h.read_body(length)
                if body is None:
                    self._stats.response(408)
                    return
            request = self._decode(h, req, signal, body, content_type, encoding)
        finally:
            self._decode_slots.release()
        if request is not None:
            self._accept(h, req, signal, request, content_type)

    def _decode(self, h: _Handler, req: Request, signal: str, body: bytes, content_type: str, encoding: str):
        """Inflate and parse within the limits; None once an error has been answered."""
        if encoding in ("gzip", "x-gzip"):
            try:
                body = inflate_bounded(body, self.max_decompressed_bytes)
            except BadRequest as exc:
                h.error(req, 400, str(exc), content_type)
                return None
            if body is None:
                h.error(req, 413, f"decompressed body is over the {self.max_decompressed_bytes}-byte limit",
                        content_type)
                return None
        try:
            messages = (_json_objects(body) if content_type == JSON
                        else count_messages(signal, body, self.max_request_messages))
            if messages > self.max_request_messages:
                h.error(req, 413, f"request holds more than the {self.aggregator.max_records} records lambda-otel's "
                        "whole queue can hold; send smaller batches", content_type)
                return None
            return decode_request(signal, body, content_type)
        except BadRequest as exc:
            h.error(req, 400, str(exc), content_type)
            return None

    def _accept(self, h: _Handler, req: Request, signal: str, request, content_type: str) -> None:
        invalid = drop_invalid_ids(signal, request)
        items = getattr(request, otlp.spec(signal).items_field)
        if self._observer is not None:
            # What the converter needs to know of the function's data; it may drop log records
            # the extension already exported from the Telemetry API (never raises).
            self._observer.observe(signal, items)
        fits, too_big = [], 0
        for item in items:
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
        messages = []
        self.loss.add(signal, INVALID_RECORD, invalid)
        if invalid:
            messages.append(f"{invalid} records with a trace id that is not 16 bytes or a span id that is not 8")
        if closed:
            self.loss.add(signal, SHUTDOWN_DEADLINE, too_big + sum(r for _, r, _ in fits))
            messages.append("lambda-otel is shutting down: its final flush has started")
            rejected = invalid + too_big + sum(r for _, r, _ in fits)
        else:
            self.loss.add(signal, QUEUE_FULL, too_big)
            if too_big:
                messages.append("resource batch larger than lambda-otel's whole queue budget; send smaller batches")
            rejected = invalid + too_big
        # What was refused goes back in a 200 with partial_success: the spec forbids clients to retry it.
        response = otlp.build_response(signal, rejected, "; ".join(messages)) if rejected else otlp.build_response(signal)
        self._stats.accepted(signal, accepted, rejected)
        h.answer(req, 200, encode_message(response, content_type), content_type)
