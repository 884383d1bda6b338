"""A small client for the Lambda Extensions API (/2020-01-01), over a plain socket.

Its calls (register, the Telemetry API subscription, the first ``/event/next``) are the whole of
our init, which is billed and shares the sandbox's CPU with the function. ``http.client`` (with
``email`` and ``ssl``) costs more to import than these few requests cost to send, so this module
speaks the little HTTP/1.1 the Runtime API needs itself: one keep-alive connection, a request
with a ``Content-Length`` body, a response with a ``Content-Length`` or chunked body (or one that
ends when the connection closes). ``/event/next`` is a long-poll with no client timeout, because
the process may be frozen for hours in the middle of it; every other call has one.
"""

from __future__ import annotations

import _thread
import json
import socket
from dataclasses import dataclass

# typing.TYPE_CHECKING without importing typing (~3 ms before the first /next): annotations only.
TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover - typing only
    from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

API_VERSION = "2020-01-01"
# register, subscribe and the error reports: bounded as a whole (the Runtime API is local).
REQUEST_TIMEOUT_S = 10.0
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 6 * 1024 * 1024  # an event is small; this only bounds a broken peer
_RECV_CHUNK = 64 * 1024


class ExtensionsApiError(RuntimeError):
    """The Extensions API refused a call or could not be reached."""

    def __init__(self, message: str, status: Optional[int] = None, error_type: Optional[str] = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type


class Registration:
    """What ``register`` answered. The body is parsed when first read (after the first ``/next``:
    nothing before it needs more than the extension id)."""

    __slots__ = ("extension_id", "_body", "_info")

    def __init__(self, extension_id: str, function_name: Optional[str] = None, function_version: Optional[str] = None,
                 handler: Optional[str] = None, account_id: Optional[str] = None, body: Optional[bytes] = None) -> None:
        self.extension_id = extension_id
        self._body = body
        self._info: Optional[Dict[str, Optional[str]]] = None if body is not None else {
            "functionName": function_name, "functionVersion": function_version, "handler": handler,
            "accountId": account_id}

    def _get(self, key: str) -> Optional[str]:
        if self._info is None:
            try:
                info = json.loads(self._body) if self._body else {}
            except ValueError:
                info = {}
            self._info = info if isinstance(info, dict) else {}
        value = self._info.get(key)
        return value if isinstance(value, str) else None

    @property
    def function_name(self) -> Optional[str]:
        return self._get("functionName")

    @property
    def function_version(self) -> Optional[str]:
        return self._get("functionVersion")

    @property
    def handler(self) -> Optional[str]:
        return self._get("handler")

    @property
    def account_id(self) -> Optional[str]:
        return self._get("accountId")


@dataclass(frozen=True)
class InvokeEvent:
    """An invocation starts: its id, its deadline (epoch ms), the ARN it was invoked by, its X-Ray header."""

    request_id: str
    deadline_ms: int
    invoked_function_arn: Optional[str]
    tracing_value: Optional[str]


@dataclass(frozen=True)
class ShutdownEvent:
    """The environment ends: why (lower-case), and the deadline (epoch ms) for everything we still do."""

    reason: str
    deadline_ms: int


Event = InvokeEvent | ShutdownEvent  # a runtime union (3.10+) needs no typing import


def parse_event(body: bytes) -> Event:
    """INVOKE or SHUTDOWN from a ``/event/next`` body; raise ExtensionsApiError otherwise."""
    try:
        data = json.loads(body)
        kind = data["eventType"]
        deadline_ms = int(data["deadlineMs"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ExtensionsApiError(f"malformed event from /event/next: {exc}") from None
    if kind == "INVOKE":
        tracing = data.get("tracing")
        tracing_value = tracing.get("value") if isinstance(tracing, dict) else None
        return InvokeEvent(
            request_id=str(data.get("requestId", "")),
            deadline_ms=deadline_ms,
            invoked_function_arn=data.get("invokedFunctionArn"),
            tracing_value=tracing_value if isinstance(tracing_value, str) else None,
        )
    if kind == "SHUTDOWN":
        # The docs spell reasons upper-case, the platform sends lower-case: normalise.
        return ShutdownEvent(reason=str(data.get("shutdownReason", "unknown")).lower(), deadline_ms=deadline_ms)
    raise ExtensionsApiError(f"unknown eventType {kind!r} from /event/next")


# --- HTTP/1.1, as much as the Runtime API needs --------------------------------------------------


class Response:
    """Status, headers (names lower-case) and the whole body of one answer."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: Dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class _ProtocolError(Exception):
    pass


class _Connection:
    """One keep-alive connection: send a request, read its whole response."""

    def __init__(self, address: Tuple[str, int]) -> None:
        host, port = address
        # getaddrinfo encodes a str host with the idna codec, whose import (with unicodedata and
        # stringprep) costs ~1.5 ms before the first /next; an ASCII host can go as bytes.
        self._sock = socket.create_connection((host.encode("ascii") if host.isascii() else host, port),
                                              timeout=REQUEST_TIMEOUT_S)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""
        self.reusable = True

    def close(self) -> None:
        self._sock.close()

    def exchange(self, request: bytes, timeout: Optional[float],
                 on_sent: Optional[Callable[[], None]] = None) -> Response:
        self._sock.settimeout(timeout)
        self._sock.sendall(request)
        if on_sent is not None:
            on_sent()
        head = self._read_head()
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise _ProtocolError(f"bad status line {lines[0][:80]!r}")
        status = int(parts[1])
        headers: Dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if headers.get("connection", "").lower() == "close" or parts[0] == "HTTP/1.0":
            self.reusable = False
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = self._read_chunked()
        elif "content-length" in headers:
            length = headers["content-length"]
            if not length.isdigit() or int(length) > MAX_BODY_BYTES:
                raise _ProtocolError(f"bad Content-Length {length[:20]!r}")
            body = self._read_exactly(int(length))
        elif status in (204, 304) or 100 <= status < 200:
            body = b""
        else:
            self.reusable = False
            body = self._read_to_end()
        return Response(status, headers, body)

    def _fill(self) -> None:
        data = self._sock.recv(_RECV_CHUNK)
        if not data:
            raise ConnectionError("connection closed by the Runtime API")
        self._buffer += data

    def _read_head(self) -> bytes:
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end >= 0:
                head, self._buffer = self._buffer[:end], self._buffer[end + 4:]
                return head
            if len(self._buffer) > MAX_HEADER_BYTES:
                raise _ProtocolError("response headers too long")
            self._fill()

    def _read_exactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            self._fill()
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def _read_line(self) -> bytes:
        while True:
            end = self._buffer.find(b"\r\n")
            if end >= 0:
                line, self._buffer = self._buffer[:end], self._buffer[end + 2:]
                return line
            if len(self._buffer) > MAX_HEADER_BYTES:
                raise _ProtocolError("chunk header too long")
            self._fill()

    def _read_chunked(self) -> bytes:
        chunks = []
        total = 0
        while True:
            size_text = self._read_line().split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _ProtocolError(f"bad chunk size {size_text[:20]!r}") from None
            if size == 0:
                while self._read_line():  # trailers, up to the empty line
                    pass
                return b"".join(chunks)
            total += size
            if total > MAX_BODY_BYTES:
                raise _ProtocolError("chunked body too large")
            chunks.append(self._read_exactly(size))
            self._read_line()

    def _read_to_end(self) -> bytes:
        chunks = [self._buffer]
        self._buffer = b""
        total = len(chunks[0])
        while True:
            data = self._sock.recv(_RECV_CHUNK)
            if not data:
                return b"".join(chunks)
            total += len(data)
            if total > MAX_BODY_BYTES:
                raise _ProtocolError("body too large")
            chunks.append(data)


def _encode_request(method: str, host: str, path: str, headers: Mapping[str, str], body: Optional[bytes]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines.extend(f"{name}: {value}" for name, value in headers.items())
    if body is not None or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body or b'')}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + body if body else head


def _once(fn: Callable[[], None]) -> Callable[[], None]:
    done = []

    def call_once() -> None:
        if not done:
            done.append(True)
            fn()
    return call_once


def _json_array(items: Iterable[str]) -> str:
    return json.dumps(list(items))


class ExtensionsApiClient:
    """One keep-alive connection for the events thread; error reports use their own connection."""

    def __init__(self, runtime_api: str) -> None:
        if not runtime_api:
            raise ExtensionsApiError("AWS_LAMBDA_RUNTIME_API is not set: not running inside Lambda?")
        host, _, port = runtime_api.rpartition(":")
        if not host or not port.isdigit():
            host, port = runtime_api, "80"
        self.runtime_api = runtime_api
        self._address = (host.strip("[]"), int(port))
        self.extension_id: Optional[str] = None
        self._conn: Optional[_Connection] = None
        # threading.Lock is this lock; importing threading is left to the startup thread's creation.
        self._lock = _thread.allocate_lock()

    # -- plumbing -----------------------------------------------------------------------------

    def call(self, method: str, path: str, body: Optional[bytes] = None, headers: Optional[Mapping[str, str]] = None,
             timeout: Optional[float] = REQUEST_TIMEOUT_S, fresh: bool = False,
             on_sent: Optional[Callable[[], None]] = None) -> Response:
        """One request to any Runtime API path (e.g. ``/2022-07-01/telemetry``); a dropped
        keep-alive connection is reopened once. ``timeout`` None: wait for ever (``/next`` only).
        ``fresh``: on a connection of its own (another thread may be blocked in ``/next``).
        ``on_sent``: called once the request is on the wire, before waiting for the answer."""
        request = _encode_request(method, self.runtime_api, path, headers or {}, body)
        if on_sent is not None:
            on_sent = _once(on_sent)  # a stale keep-alive connection may make us send twice
        if fresh:
            return self._exchange_fresh(method, path, request, timeout, on_sent)
        with self._lock:
            for attempt in (1, 2):
                reused = self._conn is not None
                try:
                    conn = self._conn or _Connection(self._address)
                    self._conn = conn
                    response = conn.exchange(request, timeout, on_sent)
                except (OSError, _ProtocolError) as exc:
                    self._drop()
                    if attempt == 1 and reused and not isinstance(exc, (socket.timeout, _ProtocolError)):
                        continue  # a keep-alive connection the peer had closed: once more, fresh
                    raise ExtensionsApiError(f"{method} {path} failed: {exc}") from None
                if not conn.reusable:
                    self._drop()
                return response
        raise AssertionError("unreachable")

    def _exchange_fresh(self, method: str, path: str, request: bytes, timeout: Optional[float],
                        on_sent: Optional[Callable[[], None]]) -> Response:
        conn = None
        try:
            conn = _Connection(self._address)
            return conn.exchange(request, timeout, on_sent)
        except (OSError, _ProtocolError) as exc:
            raise ExtensionsApiError(f"{method} {path} failed: {exc}") from None
        finally:
            if conn is not None:
                conn.close()

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @staticmethod
    def _error(what: str, response: Response) -> ExtensionsApiError:
        error_type = message = None
        try:
            parsed = json.loads(response.body)
            error_type, message = parsed.get("errorType"), parsed.get("errorMessage")
        except (ValueError, AttributeError):
            pass
        detail = f"{error_type}: {message}" if error_type else response.body[:200].decode("utf-8", "replace")
        return ExtensionsApiError(f"{what} refused with HTTP {response.status} ({detail})", response.status, error_type)

    # -- the API ------------------------------------------------------------------------------

    def register(self, name: str, events: Sequence[str] = ("INVOKE", "SHUTDOWN"), accept_account_id: bool = True) -> Registration:
        headers = {"Lambda-Extension-Name": name, "Content-Type": "application/json"}
        if accept_account_id:
            headers["Lambda-Extension-Accept-Feature"] = "accountId"
        body = ('{"events": %s}' % _json_array(events)).encode()
        response = self.call("POST", f"/{API_VERSION}/extension/register", body, headers)
        if response.status != 200:
            raise self._error("register", response)
        extension_id = response.headers.get("lambda-extension-identifier")
        if not extension_id:
            raise ExtensionsApiError("register answered without a Lambda-Extension-Identifier header")
        self.extension_id = extension_id
        return Registration(extension_id, body=response.body)

    def next_event(self, on_sent: Optional[Callable[[], None]] = None) -> Event:
        """Block until the next INVOKE or SHUTDOWN (no timeout: we may be frozen meanwhile).
        ``on_sent`` runs once the request is sent (the first ``/next`` starts the startup thread there)."""
        response = self.call("GET", f"/{API_VERSION}/extension/event/next", None,
                             {"Lambda-Extension-Identifier": self._require_id()}, timeout=None, on_sent=on_sent)
        if response.status != 200:
            raise self._error("event/next", response)
        return parse_event(response.body)

    def init_error(self, error_type: str, message: str) -> None:
        self._report("/extension/init/error", error_type, message)

    def exit_error(self, error_type: str, message: str) -> None:
        self._report("/extension/exit/error", error_type, message)

    def _report(self, path: str, error_type: str, message: str) -> None:
        body = json.dumps({"errorMessage": message, "errorType": error_type, "stackTrace": []}).encode()
        headers = {
            "Lambda-Extension-Identifier": self._require_id(),
            "Lambda-Extension-Function-Error-Type": error_type,
            "Content-Type": "application/json",
        }
        response = self.call("POST", f"/{API_VERSION}{path}", body, headers, fresh=True)
        if response.status != 202:
            raise self._error(path.strip("/"), response)

    def _require_id(self) -> str:
        if not self.extension_id:
            raise ExtensionsApiError("not registered yet")
        return self.extension_id

    def close(self) -> None:
        """Close the keep-alive connection (the next call opens a new one)."""
        with self._lock:
            self._drop()
