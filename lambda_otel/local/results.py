"""What the simulator measured: plain dataclasses handed to tests (and to `lambda-otel-local`).

Every instant is recorded twice (`Instant.mono` for ordering/durations, `Instant.wall` for
matching against wall-clock timestamps such as telemetry `time` fields or `deadlineMs`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional


class SimulatorError(Exception):
    """A test-side wait timed out, or the simulator was used wrongly (never raised for Lambda-level failures)."""


@dataclass(frozen=True)
class Instant:
    mono: float  # time.monotonic()
    wall: float  # time.time()

    @staticmethod
    def now() -> "Instant":
        return Instant(time.monotonic(), time.time())

    @property
    def epoch_ms(self) -> int:
        return int(self.wall * 1000)


def ms_between(a: Optional[Instant], b: Optional[Instant]) -> Optional[float]:
    """Milliseconds from a to b (monotonic), rounded to µs like Lambda does; None if either is missing."""
    if a is None or b is None:
        return None
    return round((b.mono - a.mono) * 1000.0, 3)


@dataclass
class ExtensionInfo:
    """One registered extension (external = launched from the extensions folder; otherwise internal)."""

    name: str
    id: str
    events: list[str]
    external: bool
    registered_at: Instant
    pid: Optional[int] = None
    spawned_at: Optional[Instant] = None  # external: the simulator started its process (just before the fork)
    first_next_at: Optional[Instant] = None
    state: str = "Registered"  # Registered | Ready | InitError | ExitError | Crashed | Exited | ShutdownFailed
    error_type: Optional[str] = None
    error_message: str = ""  # the errorMessage of its init/exit error, if it reported one


@dataclass
class InitResult:
    status: str  # success | error | failure | timeout
    error_type: Optional[str]
    phase: str  # init | invoke (suppressed init after a failed one)
    initialization_type: str
    started_at: Instant
    ended_at: Instant
    duration_ms: float
    runtime_ready_at: Optional[Instant]
    extensions: list[ExtensionInfo]
    runtime_pid: Optional[int]
    extension_pids: dict[str, int]
    message: str = ""  # human-readable cause when not successful

    @property
    def ok(self) -> bool:
        return self.status == "success"


@dataclass
class RestoreResult:
    """One SnapStart restore of the snapshot (`number` 1, 2, ...), from restoreStart to restoreReport."""

    number: int
    status: str  # success | error | failure | timeout
    error_type: Optional[str]
    started_at: Instant
    ended_at: Instant
    duration_ms: float
    runtime_ready_at: Optional[Instant]
    runtime_pid: Optional[int]
    extension_pids: dict[str, int]  # the copies that serve this restore
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "success"


@dataclass
class ProcessExit:
    name: str
    pid: int
    exit_code: Optional[int]  # negative = killed by that signal (subprocess convention); None = never seen exiting
    exited_at: Optional[Instant]
    exited_in_time: bool  # exited by itself before the deadline
    killed: bool  # the simulator sent SIGKILL
    received_shutdown: bool = False  # a SHUTDOWN event was handed to its /next


@dataclass
class ShutdownResult:
    reason: str  # spindown | timeout | failure
    started_at: Instant
    deadline_ms: int  # epoch ms, as sent in the SHUTDOWN event
    ended_at: Instant
    runtime: Optional[ProcessExit]
    runtime_sigterm_at: Optional[Instant]
    extensions: dict[str, ProcessExit]
    shutdown_events_sent_at: Optional[Instant]
    undelivered_events: int  # telemetry still buffered when the subscribers were gone
    # ...by event type: normally only what an extension printed after its last /next (its exit lines),
    # which it can no longer receive (Lambda drops those too)
    undelivered_types: dict[str, int] = field(default_factory=dict)


@dataclass
class InvocationResult:
    request_id: str
    payload: bytes
    deadline_ms: int
    trace_header: Optional[str]
    status: str = "pending"  # success | error | timeout | failure | aborted
    error_type: Optional[str] = None
    response: Optional[bytes] = None  # body of /response
    error_body: Optional[bytes] = None  # body of /error
    response_bytes: int = 0
    started_at: Optional[Instant] = None  # INVOKE handed out (platform.start)
    runtime_received_at: Optional[Instant] = None  # runtime's /next returned this invoke
    response_started_at: Optional[Instant] = None
    response_ended_at: Optional[Instant] = None
    runtime_done_at: Optional[Instant] = None  # runtime's next /next (or the timeout/failure instant)
    extension_next_at: dict[str, Instant] = field(default_factory=dict)  # INVOKE subscribers' /next (done)
    extensions_done_at: Optional[Instant] = None
    extension_overhead_ms: Optional[float] = None  # runtime done -> last extension /next
    ended_at: Optional[Instant] = None  # platform.report generated
    runtime_done: Optional[dict[str, Any]] = None  # the platform.runtimeDone record
    report: Optional[dict[str, Any]] = None  # the platform.report record
    init: Optional[InitResult] = None  # set when this invoke had to (re-)run init first
    restore: Optional[RestoreResult] = None  # SnapStart: set when this invoke had to restore first
    reset: Optional[ShutdownResult] = None  # set when this invoke ended in a reset (timeout/failure)
    frozen_after: bool = False
    _done: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)
    _responded: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float) -> "InvocationResult":
        """Block until the invocation fully completed (report generated, frozen or reset)."""
        if not self._done.wait(timeout):
            raise SimulatorError(f"invocation {self.request_id} not complete after {timeout:.1f}s (test wait)")
        return self

    def wait_response(self, timeout: float) -> Optional[bytes]:
        """Block until the runtime posted /response or /error (what a caller of Invoke would see)."""
        if not self._responded.wait(timeout):
            raise SimulatorError(f"no response for invocation {self.request_id} after {timeout:.1f}s (test wait)")
        return self.response

    def json(self) -> Any:
        import json

        return json.loads(self.response) if self.response else None


@dataclass
class FreezeRecord:
    frozen_at: Instant
    pids: list[int]
    thawed_at: Optional[Instant] = None
    reason: str = ""  # after-init | after-invoke


@dataclass
class BatchRecord:
    """One POST to a subscriber (every attempt is recorded; retries have attempt > 1)."""

    subscriber: str  # extension name
    extension_id: str
    uri: str
    sent_at: Instant
    ended_at: Instant
    events: list[dict]
    nbytes: int
    status: Optional[int]  # HTTP status, None on connection error/timeout
    error: Optional[str]
    attempt: int

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300
