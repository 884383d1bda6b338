"""A small client for the Lambda Extensions API (/2020-01-01).

It uses ``http.client`` rather than ``requests``: these calls sit on the cold-start
path, and ``requests`` costs ~150 ms to import. ``/event/next`` is a long-poll with
no client timeout, because the process may be frozen for hours in the middle of it.
"""

from __future__ import annotations

import http.client
import json
import threading
from dataclasses import dataclass
from typing import Optional, Sequence, Union

API_VERSION = "2020-01-01"


class ExtensionsApiError(RuntimeError):
    """The Extensions API refused a call or could not be reached."""

    def __init__(self, message: str, status: Optional[int] = None, error_type: Optional[str] = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type


@dataclass(frozen=True)
class Registration:
    extension_id: str
    function_name: Optional[str]
    function_version: Optional[str]
    handler: Optional[str]
    account_id: Optional[str]


@dataclass(frozen=True)
class InvokeEvent:
    request_id: str
    deadline_ms: int
    invoked_function_arn: Optional[str]
    tracing_value: Optional[str]


@dataclass(frozen=True)
class ShutdownEvent:
    reason: str
    deadline_ms: int


Event = Union[InvokeEvent, ShutdownEvent]


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


class ExtensionsApiClient:
    """One keep-alive connection for the events thread; error reports use their own connection."""

    def __init__(self, runtime_api: str) -> None:
        if not runtime_api:
            raise ExtensionsApiError("AWS_LAMBDA_RUNTIME_API is not set: not running inside Lambda?")
        self.runtime_api = runtime_api
        self.extension_id: Optional[str] = None
        self._conn: Optional[http.client.HTTPConnection] = None
        self._lock = threading.Lock()

    # -- plumbing -----------------------------------------------------------------------------

    def _new_connection(self) -> http.client.HTTPConnection:
        host, _, port = self.runtime_api.rpartition(":")
        return http.client.HTTPConnection(host or self.runtime_api, int(port) if port.isdigit() else 80, timeout=None)

    def _request(self, method: str, path: str, body: Optional[bytes], headers: dict, fresh: bool = False):
        """Send one request; a dropped keep-alive connection is reopened once."""
        url = f"/{API_VERSION}{path}"
        for attempt in (1, 2):
            conn = self._new_connection() if fresh else (self._conn or self._new_connection())
            try:
                conn.request(method, url, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                conn.close()
                if not fresh:
                    self._conn = None
                if attempt == 2:
                    raise ExtensionsApiError(f"{method} {url} failed: {exc}") from None
                continue
            if fresh:
                conn.close()
            else:
                self._conn = conn
            return response, data
        raise AssertionError("unreachable")

    @staticmethod
    def _error(what: str, response, data: bytes) -> ExtensionsApiError:
        error_type = message = None
        try:
            parsed = json.loads(data)
            error_type, message = parsed.get("errorType"), parsed.get("errorMessage")
        except (ValueError, AttributeError):
            pass
        detail = f"{error_type}: {message}" if error_type else data[:200].decode("utf-8", "replace")
        return ExtensionsApiError(f"{what} refused with HTTP {response.status} ({detail})", response.status, error_type)

    # -- the API ------------------------------------------------------------------------------

    def register(self, name: str, events: Sequence[str] = ("INVOKE", "SHUTDOWN"), accept_account_id: bool = True) -> Registration:
        headers = {"Lambda-Extension-Name": name, "Content-Type": "application/json"}
        if accept_account_id:
            headers["Lambda-Extension-Accept-Feature"] = "accountId"
        body = json.dumps({"events": list(events)}).encode()
        with self._lock:
            response, data = self._request("POST", "/extension/register", body, headers)
        if response.status != 200:
            raise self._error("register", response, data)
        extension_id = response.getheader("Lambda-Extension-Identifier")
        if not extension_id:
            raise ExtensionsApiError("register answered without a Lambda-Extension-Identifier header")
        self.extension_id = extension_id
        try:
            info = json.loads(data) if data else {}
        except ValueError:
            info = {}
        if not isinstance(info, dict):
            info = {}
        return Registration(
            extension_id=extension_id,
            function_name=info.get("functionName"),
            function_version=info.get("functionVersion"),
            handler=info.get("handler"),
            account_id=info.get("accountId"),
        )

    def next_event(self) -> Event:
        """Block until the next INVOKE or SHUTDOWN (no timeout: we may be frozen meanwhile)."""
        with self._lock:
            response, data = self._request(
                "GET", "/extension/event/next", None, {"Lambda-Extension-Identifier": self._require_id()}
            )
        if response.status != 200:
            raise self._error("event/next", response, data)
        return parse_event(data)

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
        # A fresh connection: the events thread may be blocked in /next on the shared one.
        response, data = self._request("POST", path, body, headers, fresh=True)
        if response.status != 202:
            raise self._error(path.strip("/"), response, data)

    def _require_id(self) -> str:
        if not self.extension_id:
            raise ExtensionsApiError("not registered yet")
        return self.extension_id

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
