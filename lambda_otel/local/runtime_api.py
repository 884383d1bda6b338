"""HTTP front of the simulator: one 127.0.0.1 listener routing the Runtime, Extensions and Telemetry APIs.

This module only parses requests and writes replies; every decision is made by the simulator core
(`SandboxCore` protocol below), so the HTTP details (status codes, error bodies, body limits) live here
and the lifecycle rules live in `simulator.py`.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional, Protocol

from .results import Instant

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 6 * 1024 * 1024  # synchronous invoke payload limit
MAX_REQUEST_BYTES = 8 * 1024 * 1024  # anything else larger is refused without being buffered

_INVOCATION_RE = re.compile(r"^/2018-06-01/runtime/invocation/([^/]+)/(response|error)$")


@dataclass
class Reply:
    status: int
    body: Any = None  # bytes are sent as-is, anything else as JSON
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


def error(status: int, error_type: str, message: str) -> Reply:
    return Reply(status, {"errorMessage": message, "errorType": error_type})


ACCEPTED = Reply(202, {"status": "OK"})


@dataclass
class Body:
    data: bytes
    declared: int  # Content-Length (or decoded chunked size)
    truncated: bool = False
    too_large: bool = False


class SandboxCore(Protocol):  # what the handler needs from the simulator
    def runtime_next(self, headers) -> Optional[Reply]: ...
    def runtime_result(self, request_id: str, kind: str, headers, body: Body, started: Instant) -> Reply: ...
    def runtime_init_error(self, headers, body: Body) -> Reply: ...
    def runtime_restore_next(self, headers) -> Optional[Reply]: ...
    def runtime_restore_error(self, headers, body: Body) -> Reply: ...
    def extension_register(self, headers, body: Body) -> Reply: ...
    def extension_next(self, headers) -> Optional[Reply]: ...
    def extension_error(self, kind: str, headers, body: Body) -> Reply: ...
    def telemetry_subscribe(self, headers, body: Body) -> Reply: ...


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: "ApiServer"

    def log_message(self, fmt: str, *args) -> None:  # access log only at debug level
        log.debug("sim api: " + fmt, *args)

    def _read_body(self, limit: int) -> Body:
        """Read the request body; beyond `limit` it is drained (kept off the heap) and flagged."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked(limit)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        if length > limit:
            left = length
            while left > 0:
                chunk = self.rfile.read(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)
            return Body(b"", length, truncated=left > 0, too_large=True)
        data = self.rfile.read(length) if length else b""
        if len(data) < length:
            self.close_connection = True
            return Body(data, length, truncated=True)
        return Body(data, length)

    def _read_chunked(self, limit: int) -> Body:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            if not line:
                self.close_connection = True
                return Body(b"".join(parts), total, truncated=True)
            try:
                size = int(line.split(b";")[0].strip() or b"0", 16)
            except ValueError:
                self.close_connection = True
                return Body(b"", total, truncated=True)
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers are ignored
                break
            chunk = self.rfile.read(size)
            self.rfile.readline(8)
            total += len(chunk)
            if total <= limit:
                parts.append(chunk)
            if len(chunk) < size:
                self.close_connection = True
                return Body(b"".join(parts), total, truncated=True)
        if total > limit:
            return Body(b"", total, too_large=True)
        return Body(b"".join(parts), total)

    def _send(self, reply: Optional[Reply]) -> None:
        if reply is None:  # the caller is gone (killed process): just drop the connection
            self.close_connection = True
            return
        if isinstance(reply.body, bytes):
            data = reply.body
        elif reply.body is None:
            data = b""
        else:
            data = json.dumps(reply.body).encode()
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            for key, value in reply.headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _path(self) -> str:
        return self.path.split("?", 1)[0]

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._read_body(MAX_REQUEST_BYTES)
        core = self.server.core
        path = self._path()
        if path == "/2018-06-01/runtime/invocation/next":
            self._send(core.runtime_next(self.headers))
        elif path == "/2020-01-01/extension/event/next":
            self._send(core.extension_next(self.headers))
        elif path == "/2018-06-01/runtime/restore/next":
            self._send(core.runtime_restore_next(self.headers))
        else:
            self._not_found()

    def do_POST(self) -> None:  # noqa: N802
        started = Instant.now()
        core = self.server.core
        path = self._path()
        match = _INVOCATION_RE.match(path)
        if match:
            body = self._read_body(MAX_RESPONSE_BYTES)
            self._send(core.runtime_result(match.group(1), match.group(2), self.headers, body, started))
            return
        body = self._read_body(MAX_REQUEST_BYTES)
        if body.truncated:
            self._send(error(400, "TruncatedHTTPRequest", "the request body is shorter than declared"))
        elif path == "/2018-06-01/runtime/init/error":
            self._send(core.runtime_init_error(self.headers, body))
        elif path == "/2018-06-01/runtime/restore/error":
            self._send(core.runtime_restore_error(self.headers, body))
        elif path == "/2020-01-01/extension/register":
            self._send(core.extension_register(self.headers, body))
        elif path == "/2020-01-01/extension/init/error":
            self._send(core.extension_error("init", self.headers, body))
        elif path == "/2020-01-01/extension/exit/error":
            self._send(core.extension_error("exit", self.headers, body))
        else:
            self._not_found()

    def do_PUT(self) -> None:  # noqa: N802
        body = self._read_body(MAX_REQUEST_BYTES)
        path = self._path()
        if path in ("/2022-07-01/telemetry", "/2022-07-01/telemetry/"):
            self._send(self.server.core.telemetry_subscribe(self.headers, body))
        elif path in ("/2020-08-15/logs", "/2020-08-15/logs/"):
            self._send(error(403, "Logs.NotSupported", "the Logs API is not simulated; use the Telemetry API"))
        else:
            self._not_found()

    def do_DELETE(self) -> None:  # noqa: N802
        self._read_body(MAX_REQUEST_BYTES)
        self._not_found()

    def _not_found(self) -> None:
        self._send(error(404, "NotFound", f"unknown path {self.command} {self.path}"))


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, core: SandboxCore, port: int = 0):
        self.core = core
        super().__init__(("127.0.0.1", port), _Handler)
        self._thread: Optional[threading.Thread] = None

    @property
    def port(self) -> int:
        return self.server_address[1]

    def handle_error(self, request, client_address) -> None:
        """A client that vanished mid-request (a process killed at a reset or shutdown) is normal here."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            log.debug("sim api: client %s went away: %s", client_address, exc)
            return
        super().handle_error(request, client_address)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.1}, name="sim-api", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(2.0)
            self._thread = None
        self.server_close()
