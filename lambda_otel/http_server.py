"""The small HTTP/1.1 server both listeners share: the Telemetry API listener and the OTLP receiver.

The stdlib ``ThreadingHTTPServer`` (one thread per connection), with what a server inside a
function's sandbox needs and ``http.server`` lacks:

* a cap on connections. At the cap, the longest-idle keep-alive connection (or one still dripping
  its request head) is closed to make room: an HTTP client checks a pooled connection before it
  reuses it and reconnects, so idle connections of many worker processes never lock a newcomer
  out. Only when every connection is busy with a request does a newcomer get a bodiless 503;
* deadlines for the whole request head and the whole body (a client sending a byte at a time
  cannot hold a thread), and an idle timeout between requests;
* a minimal header parser: ``http.server`` parses headers through the ``email`` package, the
  largest block of CPU per request, for headers we only look up by name;
* every response written with one ``sendall``;
* errors: a connection the client broke or let time out is counted, never logged; anything else
  is our bug and logged once with its traceback. Never a log line per request.

Subclasses of ``BoundedHandler`` implement ``handle_request(request)`` and answer with ``send``.
"""

from __future__ import annotations

import logging
import select
import socket
import socketserver
import struct
import sys
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from typing import Dict, Iterable, Optional, Tuple

from lambda_otel.log_once import LogOnce

log = logging.getLogger(__name__)

_RECV = 64 * 1024
_REASONS = {s.value: s.phrase for s in HTTPStatus}

# Connection states, for choosing which connection to close when the cap is reached.
_IDLE = 0  # between requests (or before the first): nothing of a request has arrived
_HEAD = 1  # part of a request head has arrived
_BUSY = 2  # reading a body, processing, answering


@dataclass(frozen=True)
class ServerLimits:
    """What one client may make a server spend."""

    max_connections: int = 32
    idle_timeout_s: float = 10.0  # between requests on a keep-alive connection
    header_timeout_s: float = 5.0  # the whole request line and headers, from their first byte
    body_timeout_s: float = 30.0  # the whole body, at most ...
    body_min_rate: float = 1024 * 1024  # ... and 1 s + length / this rate (bytes per second)
    max_header_bytes: int = 32 * 1024

    def body_deadline_s(self, length: int) -> float:
        return min(self.body_timeout_s, 1.0 + length / self.body_min_rate)


class BadRequest(Exception):
    """A request we cannot serve: answered ``status`` with ``message``, then the connection closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Request:
    """One parsed request head. ``headers`` has lower-case names (a repeated one joined by ', ')."""

    __slots__ = ("method", "target", "path", "version", "headers", "keep_alive")

    def __init__(self, method: str, target: str, version: str, headers: Dict[str, str]) -> None:
        self.method = method
        self.target = target
        self.path = target.split("?", 1)[0]
        self.version = version
        self.headers = headers
        connection = headers.get("connection")
        if connection is None:
            self.keep_alive = version == "HTTP/1.1"
        else:
            tokens = {t.strip().lower() for t in connection.split(",")}
            self.keep_alive = "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens

    def content_length(self) -> int:
        """The declared body length (0 if none); BadRequest for chunked or a malformed value."""
        if "transfer-encoding" in self.headers:
            raise BadRequest(411, "Content-Length is required (chunked bodies are not accepted)")
        text = self.headers.get("content-length")
        if text is None:
            return 0
        text = text.strip()
        # isascii: str.isdigit() also accepts digits such as '²' that int() refuses.
        if not (text.isascii() and text.isdigit()):
            raise BadRequest(400, f"invalid Content-Length {text[:40]!r}")
        if len(text.lstrip("0")) > 18:  # int() refuses over 4,300 digits; no body is this long anyway
            raise BadRequest(413, f"Content-Length of {len(text)} digits is over any limit")
        return int(text)


def parse_head(head: bytes) -> Request:
    """Request line and headers (without the blank line) -> Request; BadRequest if malformed."""
    lines = head.decode("latin-1").split("\r\n")  # latin-1 maps every byte: never fails
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequest(505 if version.startswith("HTTP/") else 400, f"unsupported version {version[:20]!r}")
    headers: Dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name[-1] in " \t" or name[0] in " \t":
            raise BadRequest(400, "malformed header line")  # no obsolete line folding either
        key = name.lower()
        value = value.strip()
        if key in headers:
            if key == "content-length" and headers[key] != value:
                raise BadRequest(400, "conflicting Content-Length headers")
            if key != "content-length":
                headers[key] = headers[key] + ", " + value
        else:
            headers[key] = value
    return Request(method, target, version, headers)


class ServerStats:
    """What the server refused or gave up on, by kind (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Dict[str, int] = {}

    def add(self, kind: str) -> None:
        with self._lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1

    def snapshot(self) -> Dict[str, int]:
        with self._lock:
            return dict(self.counts)


class BoundedHTTPServer(ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` on an already bound, listening socket, with ``ServerLimits``."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, sock: socket.socket, handler_class, limits: ServerLimits, name: str) -> None:
        super().__init__(sock.getsockname()[:2], handler_class, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.server_address = sock.getsockname()
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]
        self.limits = limits
        self.name = name
        self.http_stats = ServerStats()
        self._conns_lock = threading.Lock()
        self._conns: Dict[socket.socket, list] = {}  # connection -> [state, since, closing]
        self._once = LogOnce()
        self._thread: Optional[threading.Thread] = None

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start(self, poll_interval: float = 0.5) -> None:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": poll_interval},
                                        name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop accepting; connections being served end on their own (daemon threads)."""
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the connection cap ------------------------------------------------------------------

    def process_request(self, request, client_address):
        if not self._admit(request):
            self.http_stats.add("refused_at_connection_cap")
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._forget(request)
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._forget(request)

    def _admit(self, request: socket.socket) -> bool:
        """Register a new connection, closing an idle one at the cap; False if all are busy."""
        with self._conns_lock:
            live = [(c, e) for c, e in self._conns.items() if not e[2]]
            if len(live) >= self.limits.max_connections:
                victim = self._pick_victim(live)
                if victim is None:
                    return False
                self._conns[victim][2] = True
                try:
                    victim.shutdown(socket.SHUT_RDWR)  # its thread sees EOF and ends
                except OSError:
                    pass
                self.http_stats.add("idle_closed_at_connection_cap")
            self._conns[request] = [_IDLE, time.monotonic(), False]
            return True

    @staticmethod
    def _pick_victim(live: Iterable[Tuple[socket.socket, list]]) -> Optional[socket.socket]:
        """The connection idle the longest, else the one dripping its head the longest; never one
        whose client has just sent something we have not read yet (it is starting a request)."""
        for state in (_IDLE, _HEAD):
            for conn, _ in sorted((ce for ce in live if ce[1][0] == state), key=lambda ce: ce[1][1]):
                if state == _IDLE:
                    try:
                        readable, _, _ = select.select([conn], [], [], 0)
                    except (OSError, ValueError):
                        readable = [conn]
                    if readable:
                        continue
                return conn
        return None

    def entry(self, conn: socket.socket) -> list:
        """The ``[state, since, closing]`` record of a connection, for its handler to update.

        The handler writes its idle/head states without the lock (single assignments); only the
        step to busy (``claim``) takes it, against ``_admit`` choosing the same connection.
        """
        with self._conns_lock:
            return self._conns.get(conn) or [_BUSY, time.monotonic(), False]

    def claim(self, entry: list) -> bool:
        """Mark a connection busy with a request, unless it was already chosen to make room.

        Under the lock, so a connection is never closed for room once its request is being served
        (that would lose the answer to a request we may have queued, and the client would send it
        twice)."""
        with self._conns_lock:
            if entry[2]:
                return False
            entry[0], entry[1] = _BUSY, time.monotonic()
            return True

    def _forget(self, conn: socket.socket) -> None:
        with self._conns_lock:
            self._conns.pop(conn, None)

    def connection_count(self) -> int:
        with self._conns_lock:
            return len(self._conns)

    # -- errors ------------------------------------------------------------------------------

    def handle_error(self, request, client_address):
        # A broken connection is the client's business; anything else is our bug: logged once.
        if isinstance(sys.exc_info()[1], OSError):
            self.http_stats.add("connection_errors")
        elif self._once.first("handler_bug"):
            log.exception("%s: unexpected error while serving a request (logged once)", self.name)
        else:
            self.http_stats.add("handler_bugs")


class BoundedHandler(socketserver.BaseRequestHandler):
    """One connection: read a request head within its deadline, ``handle_request``, repeat while
    the connection is kept alive. Subclasses implement ``handle_request(request)``, read the body
    with ``read_body`` and answer with ``send`` (exactly once per request)."""

    server: BoundedHTTPServer

    def setup(self) -> None:
        self.connection: socket.socket = self.request
        self._pending = b""  # bytes received past the request being read
        self.close_connection = True
        self.current: Optional[Request] = None  # the request being served
        self.body_consumed = False  # its body has been read (else answering it closes the connection)
        self._entry = self.server.entry(self.connection)  # [state, since, closing], for the connection cap
        # A blocking socket whose waits are bounded by the kernel (SO_RCVTIMEO/SO_SNDTIMEO) rather
        # than by Python's timeout mode, which polls before every recv and send: two system calls
        # fewer per request.
        self._recv_timeout: Optional[float] = None
        try:
            self.connection.settimeout(None)
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms delayed-ACK stalls
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(self.server.limits.body_timeout_s))
        except OSError:
            pass

    def handle(self) -> None:
        while True:
            request = self._read_request()
            if request is None:
                return
            self.close_connection = not request.keep_alive
            if not self.server.claim(self._entry):
                return  # chosen to make room while its request arrived: unanswered, so the client retries it
            self.current, self.body_consumed = request, False
            self.handle_request(request)
            if self.close_connection:
                return

    def handle_request(self, request: Request) -> None:  # pragma: no cover - subclasses implement
        raise NotImplementedError

    def _set_state(self, state: int) -> None:
        entry = self._entry
        if entry[0] != state:
            entry[1] = time.monotonic()
            entry[0] = state

    # -- reading -------------------------------------------------------------------------------

    def _recv(self, deadline: float, timeout: Optional[float] = None) -> bytes:
        """One recv before ``deadline`` (or within ``timeout``); b"" at EOF; socket.timeout past it."""
        if timeout is None:  # the rest of a request: usually there already (no timeout to set then)
            try:
                return self.connection.recv(_RECV, socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                raise socket.timeout()
        if timeout != self._recv_timeout:  # the idle wait keeps one value: set once per connection
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(timeout))
            self._recv_timeout = timeout
        try:
            return self.connection.recv(_RECV)
        except BlockingIOError:  # EAGAIN: SO_RCVTIMEO passed
            raise socket.timeout() from None

    def _read_request(self) -> Optional[Request]:
        """The next request head, or None when the connection is to be closed (answered if bad)."""
        limits = self.server.limits
        buf = self._pending
        self._pending = b""
        self._set_state(_IDLE)
        try:
            while not buf.lstrip(b"\r\n"):  # idle: wait for the first byte (empty lines before a request are legal)
                data = self._recv(0.0, timeout=limits.idle_timeout_s)
                if not data:
                    return None
                buf += data
            buf = buf.lstrip(b"\r\n")
            self._set_state(_HEAD)
            deadline = time.monotonic() + limits.header_timeout_s
            end = buf.find(b"\r\n\r\n")
            while end < 0:
                if len(buf) > limits.max_header_bytes:
                    raise BadRequest(431, f"request head larger than {limits.max_header_bytes} bytes")
                data = self._recv(deadline)
                if not data:
                    return None
                buf += data
                end = buf.find(b"\r\n\r\n", max(0, len(buf) - len(data) - 3))
            if end > limits.max_header_bytes:
                raise BadRequest(431, f"request head larger than {limits.max_header_bytes} bytes")
            self._pending = buf[end + 4:]
            return parse_head(buf[:end])
        except socket.timeout:
            if buf:
                self.server.http_stats.add("slow_request_head")
            return None
        except BadRequest as exc:
            self.server.http_stats.add(f"http_{exc.status}")
            self.send(exc.status, str(exc).encode(), "text/plain", close=True)
            return None
        except OSError:
            return None

    def read_body(self, length: int) -> Optional[bytes]:
        """Exactly ``length`` bytes of body before its deadline, or None (then the connection closes)."""
        buf = self._pending
        if len(buf) >= length:
            self._pending = buf[length:]
            self.body_consumed = True
            return buf[:length]
        parts = [buf]
        have = len(buf)
        self._pending = b""
        deadline = time.monotonic() + self.server.limits.body_deadline_s(length)
        try:
            while have < length:
                data = self._recv(deadline)
                if not data:
                    self.close_connection = True
                    return None
                parts.append(data)
                have += len(data)
        except socket.timeout:
            self.server.http_stats.add("slow_body")
            self.close_connection = True
            return None
        except OSError:
            self.close_connection = True
            return None
        body = b"".join(parts)
        if have > length:
            self._pending = body[length:]
            body = body[:length]
        self.body_consumed = True
        return body

    # -- answering -----------------------------------------------------------------------------

    def send(self, status: int, body: bytes = b"", content_type: Optional[str] = None,
             headers: Optional[Dict[str, str]] = None, close: bool = False, head_only: bool = False) -> None:
        """The whole response in one ``sendall``; ``close`` ends the connection after it."""
        if status == 200 and not body and not headers and not close and self.body_consumed and not self.close_connection:
            data = _EMPTY_200.get(content_type)
            if data is not None:  # the usual answer to a Telemetry API batch, prebuilt
                try:
                    self.connection.sendall(data)
                except OSError:
                    self.close_connection = True
                return
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\nContent-Length: {len(body)}\r\n"]
        if content_type:
            lines.append(f"Content-Type: {content_type}\r\n")
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}\r\n")
        if close or (not self.body_consumed and self.current is not None and _declares_body(self.current)):
            self.close_connection = True  # an unread body would be taken for the next request
        if self.close_connection:
            lines.append("Connection: close\r\n")
        lines.append("\r\n")
        data = "".join(lines).encode("latin-1")
        try:
            self.connection.sendall(data if head_only else data + body)
        except OSError:
            self.close_connection = True


_EMPTY_200 = {None: b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"}


def _timeval(seconds: float) -> bytes:
    """A ``struct timeval`` for SO_RCVTIMEO/SO_SNDTIMEO (at least 1 ms: 0 would mean "no timeout")."""
    whole = int(seconds)
    micros = max(0, int((seconds - whole) * 1_000_000))
    if whole <= 0 and micros < 1000:
        micros = 1000
    return struct.pack("@ll", whole, micros)


def _declares_body(request: Request) -> bool:
    return "transfer-encoding" in request.headers or request.headers.get("content-length", "0").strip() not in ("", "0")
