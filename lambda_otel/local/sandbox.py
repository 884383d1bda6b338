"""State of one simulated execution environment (shared by the simulator's modules).

`_Env` is one generation (initStart to the end of its shutdown), `_Ext` one registered extension,
`_Inv` one invocation in flight. All of it is guarded by the simulator's `_cv` condition.
"""

from __future__ import annotations

import enum
import json
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Optional

from .processes import ManagedProcess, WorkerLogSocket
from .results import ExtensionInfo, FreezeRecord, Instant, InvocationResult
from .telemetry_delivery import Subscriber, Subscription

class Mode(enum.Enum):
    """The kind of execution environment the simulator is (`AWS_LAMBDA_INITIALIZATION_TYPE` follows it)."""

    ON_DEMAND = "on-demand"
    PROVISIONED = "provisioned-concurrency"  # init ahead of any invocation: no init duration in a report
    MANAGED_INSTANCES = "managed-instances"  # overlapping invocations, no INVOKE event, no freeze
    SNAPSTART = "snapstart"  # init once at snapshot time, then restores of that snapshot

    @property
    def initialization_type(self) -> str:
        return _INITIALIZATION_TYPES[self]


_INITIALIZATION_TYPES = {
    Mode.ON_DEMAND: "on-demand",
    Mode.PROVISIONED: "provisioned-concurrency",
    Mode.MANAGED_INSTANCES: "lambda-managed-instances",
    Mode.SNAPSTART: "snap-start",
}

SHUTDOWN_REASONS = ("spindown", "timeout", "failure")
MAX_REGISTERED_EXTENSIONS = 10
RUNTIME_SHUTDOWN_SHARE_S = 0.3
FREEZE_INFLIGHT_WAIT_S = 1.0
LOG_DRAIN_S = 0.2
LMI_LOG_DRAIN_S = 0.05  # shorter: other workers keep printing, so the pipe is seldom idle there
FREEZE_STATE_WAIT_S = 0.5
_ERROR_TYPE_RE = re.compile(r"(Runtime|Function)\.[A-Z][a-zA-Z]+")


def normalise_error_type(value: Optional[str]) -> str:
    """Lambda keeps `Runtime.Xxx`/`Function.Xxx` (capitalised, letters only), anything else becomes *.Unknown."""
    value = (value or "").strip()
    if _ERROR_TYPE_RE.fullmatch(value):
        return value
    return "Function.Unknown" if value.startswith("Function.") else "Runtime.Unknown"


def new_trace_header(sampled: bool = True) -> str:
    return (
        f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)};Parent={secrets.token_hex(8)};"
        f"Sampled={1 if sampled else 0}"
    )


def status_for(error_type: Optional[str]) -> str:
    """Lambda's status for an error type: none -> success, Sandbox.Timedout -> timeout, other Sandbox.* -> failure
    (the platform's fault), anything else (Runtime.*, Function.*, Extension.*) -> error (the customer's)."""
    if not error_type:
        return "success"
    if error_type == "Sandbox.Timedout":
        return "timeout"
    if error_type.startswith("Sandbox."):
        return "failure"
    return "error"


@dataclass
class _Restore:
    """A SnapStart restore in progress (or done) in one environment."""

    number: int
    started_at: Instant
    runtime_ready_at: Optional[Instant] = None  # the runtime's /invocation/next after its after-restore hooks
    failure: Optional[tuple[str, str, str]] = None  # (status, errorType, message)


@dataclass
class _Snapshot:
    """What a SnapStart snapshot holds for its restores: the registrations, subscriptions and init events."""

    init_events: list
    exts: list  # _Ext of the snapshot environment (templates: name, id, events, subscription)
    servers: dict  # extension name -> its fork server (ManagedProcess), for extensions that fork copies
    copies: dict  # extension name -> pid of its latest copy
    restores: int = 0


@dataclass(eq=False)
class _Ext:
    info: ExtensionInfo
    env: "_Env"
    process: Optional[ManagedProcess]
    queue: deque = field(default_factory=deque)  # (event id, event dict) waiting for /next
    next_calls: list = field(default_factory=list)
    consumed_invoke: Optional[str] = None  # request id of the last INVOKE handed out
    gone: bool = False
    subscriber: Optional[Subscriber] = None
    subscription: Optional[Subscription] = None  # what it subscribed with (SnapStart restores re-create it)
    received_shutdown: bool = False


class _Inv:
    def __init__(self, result: InvocationResult, span_id: Optional[str], headers: dict[str, str], content_type: str):
        self.r = result
        self.span_id = span_id
        self.extra_headers = headers
        self.content_type = content_type
        self.deadline_mono = 0.0
        self.delivered: dict[str, str] = {}  # extension id -> name
        self.outcome_set = False  # /response or /error accepted
        self.failure: Optional[tuple[str, str, str]] = None  # (status, errorType, message)
        self.finished = False
        self.restore_metrics: Optional[dict] = None  # SnapStart: restore durations for the first report after it

    @property
    def tracing(self) -> Optional[dict]:
        if not self.r.trace_header:
            return None
        return {"spanId": self.span_id, "type": "X-Amzn-Trace-Id", "value": self.r.trace_header}


class _Env:
    """One execution environment generation: from initStart to the end of its shutdown."""

    def __init__(self, gen: int, init_phase: str):
        self.gen = gen
        self.init_phase = init_phase
        self.phase = "init"  # init | restoring | ready | invoking | shutting_down | down
        self.started_at = Instant.now()
        self.exts: dict[str, _Ext] = {}  # by id, in registration order
        self.launched: dict[str, ManagedProcess] = {}
        self.runtime: Optional[ManagedProcess] = None
        self.runtime_ready_at: Optional[Instant] = None
        self.registration_open = True
        self.subscription_open = True
        self.init_events: list[dict] = []
        self.init_failure: Optional[tuple[str, str, str]] = None  # (status, errorType, message)
        self.fatal: Optional[tuple[str, str]] = None  # crash while idle: reset before the next invoke
        self.runtime_queue: deque = deque()
        self.current: Optional[_Inv] = None  # on-demand and SnapStart: the one invocation in flight
        self.active: dict[str, _Inv] = {}  # Managed Instances: every invocation in flight, by request id
        self.restore: Optional[_Restore] = None  # SnapStart: None until this environment is restored
        self.restore_duration_ms: Optional[float] = None  # SnapStart: for the first report after the restore
        self.runtime_in_next = False  # the runtime is waiting in /invocation/next
        self.worker_logs: Optional[WorkerLogSocket] = None  # Managed Instances: the workers' output socket
        self.runtime_next_calls = 0  # runtime /next calls during init (Managed Instances: one per worker)
        self.frozen: Optional[FreezeRecord] = None
        self.init_duration_ms: Optional[float] = None
        self.report_init_duration = False

    def processes(self) -> list[ManagedProcess]:
        procs = list(self.launched.values())
        if self.runtime is not None:
            procs.append(self.runtime)
        return procs

    def ext_by_name(self, name: str) -> Optional[_Ext]:
        for ext in self.exts.values():
            if ext.info.name == name:
                return ext
        return None

    def subscribers(self) -> list[Subscriber]:
        return [e.subscriber for e in self.exts.values() if e.subscriber is not None]


def _error_message(data: bytes) -> str:
    try:
        doc = json.loads(data)
        if isinstance(doc, dict):
            return f"{doc.get('errorType', '')}: {doc.get('errorMessage', '')}"
    except (ValueError, UnicodeDecodeError):
        pass
    return data[:200].decode("utf-8", "replace")
