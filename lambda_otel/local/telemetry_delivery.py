"""Telemetry API side of the simulator: subscription validation and per-subscriber delivery.

One `Subscriber` per subscribed extension: a bounded buffer plus one sender thread that POSTs JSON
arrays to the extension's listener. A batch leaves when it reaches maxItems or maxBytes, or when
timeoutMs has passed since the batch's *first* event (not a free-running interval). At most one batch
is in flight; failures are retried with bounded backoff. While the sandbox is frozen the sender is
paused, so nothing reaches a stopped process.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Optional
from urllib.parse import urlsplit

from .results import BatchRecord, Instant

log = logging.getLogger(__name__)

SCHEMA_2025 = "2025-01-29"
SCHEMA_VERSIONS = ("2022-07-01", "2022-12-13", SCHEMA_2025)  # all on the one path PUT /2022-07-01/telemetry
CATEGORIES = ("platform", "function", "extension")
LIMITS = {  # field: (default, min, max), Lambda's documented buffering bounds
    "maxItems": (1000, 1000, 10000),
    "maxBytes": (262144, 262144, 1048576),
    "timeoutMs": (1000, 25, 30000),
}
SANDBOX_HOSTS = ("sandbox.localdomain", "sandbox")
LENIENT_HOSTS = ("127.0.0.1", "localhost", "0.0.0.0")
DROP_REASON = "Some logs were dropped because the downstream consumer is slower than the logs production rate"


def format_time(wall: float) -> str:
    """Telemetry `time` format: 2022-10-21T14:05:03.165Z."""
    dt = datetime.fromtimestamp(wall, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def category_of(event_type: str) -> str:
    return "platform" if event_type.startswith("platform.") else event_type


_MIB = 1024 * 1024
_INIT_START_2022_07_01 = ("initializationType", "phase")


def shape_event(event: dict, schema: str) -> dict:
    """The event as a subscriber of `schema` receives it (the simulator generates the newest form).

    What we model of the differences: 2025-01-29 gives `instanceMaxMemory` in bytes (what live
    systems send); the older schemas give it in MB, as Lambda's documented example reads; and
    2022-07-01's `platform.initStart` carries only the initialization type and phase, as real
    captures of that schema do. Every other event is the same in all three.
    """
    if schema == SCHEMA_2025 or event["type"] not in ("platform.initStart", "platform.restoreStart"):
        return event
    record = dict(event["record"])
    if isinstance(record.get("instanceMaxMemory"), int):
        record["instanceMaxMemory"] = record["instanceMaxMemory"] // _MIB
    if schema == "2022-07-01" and event["type"] == "platform.initStart":
        record = {k: v for k, v in record.items() if k in _INIT_START_2022_07_01}
    return {**event, "record": record}


class ValidationError(ValueError):
    """A subscription request the Telemetry API answers with 400 ValidationError."""


@dataclass(frozen=True)
class Subscription:
    schema_version: str
    types: tuple[str, ...]
    max_items: int
    max_bytes: int
    timeout_ms: int
    uri: str  # as given by the extension
    host: str  # what we connect to (sandbox.localdomain -> 127.0.0.1)
    port: int
    path: str


def parse_subscription(body: bytes, lenient: bool = False, schemas: tuple[str, ...] = SCHEMA_VERSIONS) -> Subscription:
    """Validate a PUT /telemetry body; raises ValidationError with a readable message.

    `schemas` are the versions this environment accepts: every known one on a standard runtime,
    fewer where Lambda refuses some (Managed Instances take only 2025-01-29, and some on-demand
    runtimes answer 400 to it). A known version that is refused gets its own message.
    """
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValidationError("request body must be a JSON object")
    schema = doc.get("schemaVersion")
    if schema not in SCHEMA_VERSIONS:
        raise ValidationError(f"schemaVersion must be one of {', '.join(SCHEMA_VERSIONS)}")
    if schema not in schemas:
        raise ValidationError(f"schemaVersion {schema} is not supported in this environment; "
                              f"supported: {', '.join(schemas)}")
    types = doc.get("types")
    if not isinstance(types, list) or not types or any(t not in CATEGORIES for t in types):
        raise ValidationError("types must be a non-empty subset of platform, function, extension")
    buffering = doc.get("buffering", {})
    if not isinstance(buffering, dict):
        raise ValidationError("buffering must be an object")
    values = {}
    for key, (default, low, high) in LIMITS.items():
        value = buffering.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValidationError(f"buffering.{key} must be an integer")
        if lenient:
            low = 1
        if not low <= value <= high:
            raise ValidationError(f"buffering.{key} must be between {low} and {high}, got {value}")
        values[key] = value
    dest = doc.get("destination")
    if not isinstance(dest, dict):
        raise ValidationError("destination is required")
    if dest.get("protocol") != "HTTP":
        raise ValidationError("destination.protocol must be HTTP (TCP is not supported by this simulator)")
    uri = dest.get("URI")
    if not isinstance(uri, str) or not uri:
        raise ValidationError("destination.URI is required")
    parts = urlsplit(uri)
    if parts.scheme != "http":
        raise ValidationError("destination.URI must be an http:// URI")
    allowed = SANDBOX_HOSTS + (LENIENT_HOSTS if lenient else ())
    if parts.hostname not in allowed:
        raise ValidationError(f"destination.URI host must be one of {', '.join(allowed)}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not port:
        raise ValidationError("URI port is not provided")
    if port == 9001:
        raise ValidationError("port 9001 is reserved")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Subscription(
        schema_version=schema,
        types=tuple(types),
        max_items=values["maxItems"],
        max_bytes=values["maxBytes"],
        timeout_ms=values["timeoutMs"],
        uri=uri,
        host="127.0.0.1",
        port=port,
        path=path,
    )


class Subscriber:
    """Buffer and sender thread for one subscribed extension."""

    def __init__(
        self,
        name: str,
        extension_id: str,
        sub: Subscription,
        on_batch: Callable[[BatchRecord], None],
        on_generated: Callable[[dict], None],
        capacity_items: int = 10000,
        capacity_bytes: int = 4 * 1048576,
        post_timeout: float = 2.0,
        max_attempts: int = 5,
        sequence_ids: bool = False,
    ):
        self.name = name
        self.extension_id = extension_id
        self.sub = sub
        self._on_batch = on_batch
        self._on_generated = on_generated
        self._cap_items = max(capacity_items, sub.max_items)
        self._cap_bytes = max(capacity_bytes, sub.max_bytes)
        self._post_timeout = post_timeout
        self._max_attempts = max_attempts
        # Lambda Managed Instances label each POST with Sequence-Id = base64(sha256(body)): the same value
        # on a retry, so a listener can tell a redelivered batch from a new one.
        self._sequence_ids = sequence_ids
        self._cv = threading.Condition()
        self._buf: deque[tuple[float, dict, int]] = deque()  # (enqueued mono, event, json size)
        self._bytes = 0
        self._paused = False
        self._flushing = False
        self._stopped = False
        self._in_flight = False
        self._dropped_records = 0
        self._dropped_bytes = 0
        self.undelivered_types: dict[str, int] = {}  # what stop() found still buffered, by event type
        self._conn: Optional[http.client.HTTPConnection] = None
        self._thread = threading.Thread(target=self._run, name=f"sim-telemetry-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wants(self, event_type: str) -> bool:
        return category_of(event_type) in self.sub.types

    def offer(self, event: dict) -> None:
        """Enqueue one event (non-blocking); on overflow the event is dropped and counted."""
        event = shape_event(event, self.sub.schema_version)
        size = len(json.dumps(event, separators=(",", ":")))
        with self._cv:
            if self._stopped:
                return
            if len(self._buf) >= self._cap_items or self._bytes + size > self._cap_bytes:
                self._dropped_records += 1
                self._dropped_bytes += size
                return
            self._buf.append((time.monotonic(), event, size))
            self._bytes += size
            self._cv.notify_all()

    def set_paused(self, paused: bool, wait: float = 0.0) -> bool:
        """Pause/resume sending; when pausing, wait up to `wait` s for the batch in flight. True if idle."""
        deadline = time.monotonic() + wait
        with self._cv:
            self._paused = paused
            self._cv.notify_all()
            while paused and self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
        return True

    def start_flush(self) -> None:
        """Shutdown: send everything buffered now, ignoring timeoutMs."""
        with self._cv:
            self._flushing = True
            self._cv.notify_all()

    def wait_drained(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._buf or self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0 or self._stopped:
                    return False
                self._cv.wait(left)
        return True

    def stop(self, timeout: float = 1.0) -> int:
        """Stop the sender; returns how many buffered events were never delivered."""
        with self._cv:
            self._stopped = True
            left = len(self._buf)
            for _, event, _ in self._buf:
                self.undelivered_types[event["type"]] = self.undelivered_types.get(event["type"], 0) + 1
            self._buf.clear()
            self._cv.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self._conn is not None:
            self._conn.close()
        return left

    # --- sender thread -------------------------------------------------------------------------

    def _ready_to_send(self, now: float) -> tuple[bool, float]:
        """(send now?, seconds to wait otherwise). Called under the lock."""
        if self._paused or not self._buf:
            return False, 0.5
        if self._flushing or len(self._buf) >= self.sub.max_items or self._bytes >= self.sub.max_bytes:
            return True, 0.0
        due = self._buf[0][0] + self.sub.timeout_ms / 1000.0
        return (now >= due), max(0.0, due - now)

    def _take_batch(self) -> list[tuple[float, dict, int]]:
        batch: list[tuple[float, dict, int]] = []
        nbytes = 0
        while self._buf and len(batch) < self.sub.max_items and nbytes < self.sub.max_bytes:
            item = self._buf.popleft()
            batch.append(item)
            nbytes += item[2]
        self._bytes -= nbytes
        return batch

    def _maybe_logs_dropped(self) -> Optional[dict]:
        """Under the lock: once there is room again, tell the subscriber what it lost."""
        if not self._dropped_records:
            return None
        event = {
            "time": format_time(time.time()),
            "type": "platform.logsDropped",
            "record": {
                "droppedBytes": self._dropped_bytes,
                "droppedRecords": self._dropped_records,
                "reason": DROP_REASON,
            },
        }
        if "platform" in self.sub.types and len(self._buf) < self._cap_items:
            size = len(json.dumps(event, separators=(",", ":")))
            self._buf.append((time.monotonic(), event, size))
            self._bytes += size
        self._dropped_records = 0
        self._dropped_bytes = 0
        return event

    def _run(self) -> None:
        while True:
            generated = None
            with self._cv:
                while True:
                    if self._stopped:
                        return
                    send, wait = self._ready_to_send(time.monotonic())
                    if send:
                        break
                    self._cv.wait(min(wait, 0.5) if wait > 0 else 0.01)
                batch = self._take_batch()
                generated = self._maybe_logs_dropped()
                self._in_flight = True
            if generated is not None:
                self._on_generated(generated)
            delivered = self._deliver([item[1] for item in batch])
            with self._cv:
                self._in_flight = False
                generated = None
                if not delivered and not self._stopped:
                    self._dropped_records += len(batch)
                    self._dropped_bytes += sum(item[2] for item in batch)
                    generated = self._maybe_logs_dropped()
                self._cv.notify_all()
            if generated is not None:
                self._on_generated(generated)

    def _deliver(self, events: list[dict]) -> bool:
        body = json.dumps(events, separators=(",", ":")).encode()
        backoff = 0.05
        for attempt in range(1, self._max_attempts + 1):
            sent_at = Instant.now()
            status, error = self._post(body)
            self._on_batch(
                BatchRecord(
                    subscriber=self.name,
                    extension_id=self.extension_id,
                    uri=self.sub.uri,
                    sent_at=sent_at,
                    ended_at=Instant.now(),
                    events=events,
                    nbytes=len(body),
                    status=status,
                    error=error,
                    attempt=attempt,
                )
            )
            if status is not None and 200 <= status < 300:
                return True
            if attempt == self._max_attempts:
                break
            with self._cv:  # back off (not "in flight" meanwhile), and never retry into a frozen sandbox
                self._in_flight = False
                self._cv.notify_all()
                deadline = time.monotonic() + backoff
                while not self._stopped and (self._paused or time.monotonic() < deadline):
                    self._cv.wait(max(0.01, min(0.5, deadline - time.monotonic())))
                if self._stopped:
                    return False
                self._in_flight = True
            backoff = min(backoff * 2, 1.0)
        log.warning("telemetry: dropping a batch of %d events for %s after %d attempts", len(events), self.name,
                    self._max_attempts)
        return False

    def _post(self, body: bytes) -> tuple[Optional[int], Optional[str]]:
        for fresh in (False, True):
            if self._conn is None or fresh:
                if self._conn is not None:
                    self._conn.close()
                self._conn = http.client.HTTPConnection(self.sub.host, self.sub.port, timeout=self._post_timeout)
            try:
                headers = {"Content-Type": "application/json"}
                if self._sequence_ids:
                    headers["Sequence-Id"] = base64.b64encode(hashlib.sha256(body).digest()).decode()
                self._conn.request("POST", self.sub.path, body=body, headers=headers)
                resp = self._conn.getresponse()
                resp.read()
                if resp.will_close:
                    self._conn.close()
                    self._conn = None
                return resp.status, None
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._conn.close()
                self._conn = None
                if fresh:
                    return None, f"{type(exc).__name__}: {exc}"
                continue  # a stale keep-alive connection: retry once on a fresh one
            except OSError as exc:
                self._conn.close()
                self._conn = None
                return None, f"{type(exc).__name__}: {exc}"
        return None, "unreachable"
