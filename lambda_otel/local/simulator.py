"""Lambda in a box: one simulated Lambda execution environment, for tests and `lambda-otel-local`.

Serves the Runtime API (/2018-06-01), Extensions API (/2020-01-01) and Telemetry API (/2022-07-01) on
one 127.0.0.1 port, launches real processes (every executable of an /opt/extensions-like folder, then
the function runtime — by default the real AWS Runtime Interface Client `awslambdaric`), generates
platform telemetry (schema 2022-12-13) with Lambda's timing rules, freezes the processes with SIGSTOP
between invocations, and shuts down like Lambda (SIGTERM runtime, SHUTDOWN event, SIGKILL at the
deadline). The spec is /work/shared/reference/lambda-apis.md; every rule there marked as a Lambda
behaviour is implemented unless listed under "Known gaps" below.

Python API (stable; `lambda-otel-local` builds on it)::

    from lambda_otel.local.simulator import Simulator

    with Simulator(extensions_dir="/tmp/opt/extensions", handler="app.handler", handler_dir="/tmp/task",
                   env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, timeout_s=3.0) as sim:
        init = sim.start(timeout=15)              # InitResult (raises SimulatorError if init failed, check=False to get it)
        res = sim.invoke({"hello": 1})            # InvocationResult, after report + freeze (or reset)
        res.status, res.error_type, res.json(), res.report, res.extension_overhead_ms
        pending = sim.invoke_async(b"{}")         # InvocationResult; pending.wait(timeout) / pending.wait_response(timeout)
        down = sim.shutdown("spindown")           # ShutdownResult: per-extension exit code / time / exited_in_time
        sim.telemetry_events("platform.report")   # every event generated, in order (dicts {time,type,record})
        sim.batches                               # every POST to a subscriber (BatchRecord), incl. retries
        sim.wait_for(lambda: ..., timeout=5)      # True, or SimulatorError on timeout
    # leaving the block calls stop(): kills every process, stops every thread and the server (idempotent)

Constructor: ``Simulator(extensions_dir=None, handler=None, handler_dir=None, runtime_cmd=None, env=None,
function_name="test-function", function_version="$LATEST", memory_mb=128, timeout_s=3.0,
shutdown_budget_ms=2000, init_timeout_s=10.0, freeze=True, port=0, region="us-east-1",
account_id="123456789012", lenient=False, inherit_env=False, subscriber_buffer_items=10000,
telemetry_post_timeout_s=2.0, telemetry_max_attempts=5)``.

- Runtime: ``handler="module.func"`` runs ``[sys.executable, "-m", "awslambdaric", handler]`` with
  ``handler_dir`` as cwd, LAMBDA_TASK_ROOT and on PYTHONPATH; ``runtime_cmd=[...]`` runs any other runtime
  (``_HANDLER`` still set from ``handler``). With neither, no runtime process is started: the test is the
  runtime and drives the Runtime API itself (use ``start(wait=False)`` then ``wait_init``).
- ``env``: extra variables for the runtime *and* the extensions. Runtime-only variables (``_HANDLER``,
  ``LAMBDA_TASK_ROOT``, ``AWS_EXECUTION_ENV``, log group/stream, X-Ray daemon) are not given to extensions.
  The base environment is minimal (PATH, LANG, TZ) unless ``inherit_env=True``.
- ``lenient=True`` allows subscribing after init, listener hosts 127.0.0.1/localhost/0.0.0.0, and buffering
  values below the documented minimums. Off by default (strict = Lambda's rules).
- ``freeze=False`` disables SIGSTOP/SIGCONT (telemetry is then never paused either).

Other members: ``runtime_api`` ("127.0.0.1:PORT"), ``port``, ``start(timeout=None, check=True, wait=True)``,
``wait_init(timeout)``, ``invoke(payload=b"{}", timeout=None, trace_header="auto", client_context=None,
cognito_identity=None)``, ``invocations``, ``init_result`` / ``init_results``, ``shutdown_result`` /
``shutdowns``, ``freezes`` (FreezeRecord: frozen_at / thawed_at, monotonic + wall), ``extensions``
(ExtensionInfo of the current environment), ``runtime_pid``, ``extension_pids``, ``is_frozen``,
``process_output(name)`` (captured lines of a process, for failure messages), ``stop()``.
``trace_header``: "auto" = a fresh ``Root=1-<8hex>-<24hex>;Parent=<16hex>;Sampled=1``, None = untraced,
or an explicit X-Amzn-Trace-Id value.

Lifecycle rules implemented (reference §3): extensions register before the runtime is spawned; init ends
after the runtime's first /next and every extension's first /next; initStart is generated before any
subscription and replayed to each subscriber; initRuntimeDone -> platform.extension -> initReport;
platform.runtimeDone when the runtime calls /next again; platform.report after every INVOKE subscriber's
/next, then freeze; timeout -> status timeout (Sandbox.Timedout) and a reset (SHUTDOWN timeout, processes
end, the next invoke re-runs init); runtime exit / extension crash / exit error during an invoke ->
status error and a reset with reason failure; /error -> status error, no reset.

Known gaps: TCP telemetry destinations (400), the Logs API (403), response streaming (400
InvalidFunctionResponseMode), SnapStart/restore, provisioned concurrency, memory limits (maxMemoryUsedMB
is the processes' peak RSS, not enforced), init retried as a "suppressed init" only after a failed init.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import secrets
import signal
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from .processes import (
    ManagedProcess,
    base_environment,
    default_runtime_argv,
    discover_extensions,
    python_execution_env,
)
from .results import (
    BatchRecord,
    ExtensionInfo,
    FreezeRecord,
    InitResult,
    Instant,
    InvocationResult,
    ProcessExit,
    ShutdownResult,
    SimulatorError,
    ms_between,
)
from .runtime_api import ACCEPTED, ApiServer, Body, Reply, error
from .telemetry_delivery import Subscriber, ValidationError, format_time, parse_subscription

log = logging.getLogger(__name__)

__all__ = [
    "Simulator",
    "SimulatorError",
    "InvocationResult",
    "InitResult",
    "ShutdownResult",
    "BatchRecord",
    "FreezeRecord",
    "ProcessExit",
    "ExtensionInfo",
    "Instant",
    "normalise_error_type",
    "new_trace_header",
]

SHUTDOWN_REASONS = ("spindown", "timeout", "failure")
MAX_REGISTERED_EXTENSIONS = 10
RUNTIME_SHUTDOWN_SHARE_S = 0.3
FREEZE_INFLIGHT_WAIT_S = 1.0
LOG_DRAIN_S = 0.2
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
    """Reference §2.1 status mapping."""
    if not error_type:
        return "success"
    if error_type == "Sandbox.Timedout":
        return "timeout"
    if error_type.startswith("Sandbox."):
        return "failure"
    return "error"


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
        self.phase = "init"  # init | ready | invoking | shutting_down | down
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
        self.current: Optional[_Inv] = None
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


class Simulator:
    """One Lambda execution environment (see the module docstring for the API)."""

    def __init__(
        self,
        extensions_dir: Optional[str] = None,
        handler: Optional[str] = None,
        handler_dir: Optional[str] = None,
        runtime_cmd: Optional[list[str]] = None,
        env: Optional[dict[str, str]] = None,
        function_name: str = "test-function",
        function_version: str = "$LATEST",
        memory_mb: int = 128,
        timeout_s: float = 3.0,
        shutdown_budget_ms: int = 2000,
        init_timeout_s: float = 10.0,
        freeze: bool = True,
        port: int = 0,
        region: str = "us-east-1",
        account_id: str = "123456789012",
        lenient: bool = False,
        inherit_env: bool = False,
        subscriber_buffer_items: int = 10000,
        telemetry_post_timeout_s: float = 2.0,
        telemetry_max_attempts: int = 5,
    ):
        self.extensions_dir = extensions_dir
        self.handler = handler
        self.handler_dir = os.path.abspath(handler_dir) if handler_dir else (os.getcwd() if handler else None)
        self.runtime_cmd = list(runtime_cmd) if runtime_cmd else None
        self.extra_env = dict(env or {})
        self.function_name = function_name
        self.function_version = function_version
        self.memory_mb = memory_mb
        self.timeout_s = timeout_s
        self.shutdown_budget_ms = shutdown_budget_ms
        self.init_timeout_s = init_timeout_s
        self.freeze_enabled = freeze
        self.region = region
        self.account_id = account_id
        self.lenient = lenient
        self.inherit_env = inherit_env
        self.subscriber_buffer_items = subscriber_buffer_items
        self.telemetry_post_timeout_s = telemetry_post_timeout_s
        self.telemetry_max_attempts = telemetry_max_attempts
        self.function_arn = f"arn:aws:lambda:{region}:{account_id}:function:{function_name}"
        self.log_group = f"/aws/lambda/{function_name}"
        self.instance_id = f"{time.strftime('%Y/%m/%d')}/[{function_version}]{uuid.uuid4().hex}"
        self.log_stream = self.instance_id

        self._port_wanted = port
        self._server: Optional[ApiServer] = None
        self._cv = threading.Condition()  # guards the lifecycle state below
        self._rec_cv = threading.Condition()  # guards the records (events, batches); taken after _cv, never before
        self._work = threading.Lock()  # one init / invoke / shutdown at a time, like one sandbox
        self._pending_work = 0
        self._epoch = 0
        self._gen = 0
        self._env: Optional[_Env] = None
        self._stopping = False
        self._stopped = False
        self._events: list[dict] = []
        self._batches: list[BatchRecord] = []
        self.invocations: list[InvocationResult] = []
        self.init_results: list[InitResult] = []
        self.shutdowns: list[ShutdownResult] = []
        self.freezes: list[FreezeRecord] = []
        self._threads: list[threading.Thread] = []
        self._all_processes: list[ManagedProcess] = []

    # --- public API ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._ensure_server().port

    @property
    def runtime_api(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> "Simulator":
        self._ensure_server()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: Optional[float] = None, check: bool = True, wait: bool = True) -> Optional[InitResult]:
        """Cold start: launch extensions, wait for their registration, launch the runtime, wait for init.

        With wait=False the init runs in the background (for tests that act as the runtime themselves);
        collect it with wait_init(). With check=True a failed init raises SimulatorError.
        """
        self._ensure_server()
        if timeout is not None:
            self.init_timeout_s = timeout
        if not wait:
            self._spawn_thread(self._start_locked, "sim-init")
            return None
        result = self._start_locked()
        if check and (result is None or not result.ok):
            raise SimulatorError(self._init_failure_message(result))
        return result

    def wait_init(self, timeout: float) -> InitResult:
        self.wait_for(lambda: bool(self.init_results), timeout, "init result")
        return self.init_results[-1]

    def invoke_async(
        self,
        payload: Union[bytes, str, dict, list, None] = b"{}",
        trace_header: Optional[str] = "auto",
        client_context: Union[dict, str, None] = None,
        cognito_identity: Optional[dict] = None,
        content_type: str = "application/json",
    ) -> InvocationResult:
        """Queue one invocation and return its (pending) result; use result.wait(timeout)."""
        self._ensure_server()
        if self._stopping:
            raise SimulatorError("simulator is stopped")
        if isinstance(payload, (dict, list)):
            body = json.dumps(payload).encode()
        elif isinstance(payload, str):
            body = payload.encode()
        else:
            body = payload or b""
        header = new_trace_header() if trace_header == "auto" else trace_header
        extra: dict[str, str] = {}
        if client_context is not None:
            extra["Lambda-Runtime-Client-Context"] = (
                client_context if isinstance(client_context, str) else json.dumps(client_context)
            )
        if cognito_identity is not None:
            extra["Lambda-Runtime-Cognito-Identity"] = json.dumps(cognito_identity)
        result = InvocationResult(request_id=str(uuid.uuid4()), payload=body, deadline_ms=0, trace_header=header)
        inv = _Inv(result, secrets.token_hex(8) if header else None, extra, content_type)
        with self._cv:
            self._pending_work += 1
            self.invocations.append(result)
        self._spawn_thread(lambda: self._drive(inv), f"sim-invoke-{result.request_id[:8]}")
        return result

    def invoke(self, payload: Union[bytes, str, dict, list, None] = b"{}", timeout: Optional[float] = None,
               **kwargs: Any) -> InvocationResult:
        """Invoke and block until complete (report generated and frozen, or reset done)."""
        result = self.invoke_async(payload, **kwargs)
        return result.wait(timeout if timeout is not None else self._default_wait())

    def shutdown(self, reason: str = "spindown", timeout: Optional[float] = None,
                 budget_ms: Optional[int] = None) -> Optional[ShutdownResult]:
        """Shut the environment down like Lambda; None if no environment was running."""
        reason = reason.lower()
        if reason not in SHUTDOWN_REASONS:
            raise ValueError(f"reason must be one of {SHUTDOWN_REASONS}")
        wait = timeout if timeout is not None else self._default_wait()
        with self._cv:
            self._pending_work += 1
        try:
            if not self._work.acquire(timeout=wait):
                raise SimulatorError(f"shutdown: the simulator stayed busy for {wait:.1f}s (test wait)")
        finally:
            with self._cv:
                self._pending_work -= 1
        try:
            env = self._env
            if env is None or env.phase == "down":
                return None
            return self._teardown(env, reason, budget_ms)
        finally:
            self._work.release()

    def stop(self) -> None:
        """Kill everything and release every resource; safe to call many times."""
        with self._cv:
            if self._stopped:
                return
            self._stopped = True
            self._stopping = True
            env = self._env
            self._cv.notify_all()
        procs = list(self._all_processes)
        for proc in procs:
            proc.expected_exit = True
        for proc in procs:
            proc.kill(wait=2.0)
        if env is not None:
            for sub in env.subscribers():
                sub.stop(timeout=1.0)
            with self._cv:
                env.phase = "down"
                for ext in env.exts.values():
                    ext.gone = True
                self._cv.notify_all()
        for t in list(self._threads):
            t.join(2.0)
        if self._server is not None:
            self._server.stop()
        for proc in procs:
            proc.signal_group(signal.SIGKILL)  # stray children that outlived their leader

    def telemetry_events(self, type: Optional[str] = None) -> list[dict]:  # noqa: A002 - matches the field
        with self._rec_cv:
            return [e for e in self._events if type is None or e["type"] == type]

    @property
    def batches(self) -> list[BatchRecord]:
        with self._rec_cv:
            return list(self._batches)

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str = "condition") -> Any:
        """Wait until predicate() is truthy (re-checked on every record and at least every 50 ms)."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                raise SimulatorError(f"timed out after {timeout:.1f}s waiting for {what}")
            with self._rec_cv:
                self._rec_cv.wait(min(left, 0.05))

    @property
    def init_result(self) -> Optional[InitResult]:
        return self.init_results[-1] if self.init_results else None

    @property
    def shutdown_result(self) -> Optional[ShutdownResult]:
        return self.shutdowns[-1] if self.shutdowns else None

    @property
    def extensions(self) -> list[ExtensionInfo]:
        env = self._env
        return [e.info for e in env.exts.values()] if env else []

    @property
    def runtime_pid(self) -> Optional[int]:
        env = self._env
        return env.runtime.pid if env and env.runtime else None

    @property
    def extension_pids(self) -> dict[str, int]:
        env = self._env
        return {name: p.pid for name, p in env.launched.items()} if env else {}

    @property
    def is_frozen(self) -> bool:
        env = self._env
        return bool(env and env.frozen)

    def process_output(self, name: str) -> list[tuple[str, str]]:
        """Lines captured from the named process (`runtime` or an extension file name), newest generation."""
        for proc in reversed(self._all_processes):
            if proc.name == name:
                return list(proc.output)
        return []

    # --- internals: plumbing ---------------------------------------------------------------------

    def _default_wait(self) -> float:
        return self.timeout_s + self.init_timeout_s + self.shutdown_budget_ms / 1000.0 + 10.0

    def _ensure_server(self) -> ApiServer:
        if self._server is None:
            if self._stopped:
                raise SimulatorError("simulator is stopped")
            self._server = ApiServer(self, self._port_wanted)
            self._server.start()
        return self._server

    def _spawn_thread(self, target: Callable[[], Any], name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        self._threads = [x for x in self._threads if x.is_alive()]
        self._threads.append(t)
        t.start()

    def _record_event(self, event: dict) -> None:
        with self._rec_cv:
            self._events.append(event)
            self._rec_cv.notify_all()

    def _record_batch(self, batch: BatchRecord) -> None:
        with self._rec_cv:
            self._batches.append(batch)
            self._rec_cv.notify_all()

    def _emit(self, env: Optional[_Env], event_type: str, record: Any) -> dict:
        """Generate one telemetry event (call with _cv held): record it and hand it to subscribers."""
        event = {"time": format_time(time.time()), "type": event_type, "record": record}
        self._record_event(event)
        if env is not None:
            if env.phase == "init":
                env.init_events.append(event)
            for ext in env.exts.values():
                if ext.subscriber is not None and ext.subscriber.wants(event_type):
                    ext.subscriber.offer(event)
        return event

    def _env_vars(self, role: str) -> dict[str, str]:
        env = base_environment(self.inherit_env)
        env.update(
            {
                "AWS_LAMBDA_RUNTIME_API": self.runtime_api,
                "AWS_REGION": self.region,
                "AWS_DEFAULT_REGION": self.region,
                "AWS_LAMBDA_FUNCTION_NAME": self.function_name,
                "AWS_LAMBDA_FUNCTION_VERSION": self.function_version,
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_mb),
                "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            }
        )
        if role == "runtime":
            task_root = self.handler_dir or os.getcwd()
            env.update(
                {
                    "_HANDLER": self.handler or "",
                    "AWS_EXECUTION_ENV": python_execution_env(),
                    "AWS_LAMBDA_LOG_GROUP_NAME": self.log_group,
                    "AWS_LAMBDA_LOG_STREAM_NAME": self.log_stream,
                    "LAMBDA_TASK_ROOT": task_root,
                    "LAMBDA_RUNTIME_DIR": os.path.dirname(sys.executable),
                    "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
                    "AWS_XRAY_DAEMON_ADDRESS": "169.254.79.129:2000",
                    "_AWS_XRAY_DAEMON_ADDRESS": "169.254.79.129",
                    "_AWS_XRAY_DAEMON_PORT": "2000",
                }
            )
        env.update(self.extra_env)
        if role == "runtime" and self.runtime_cmd is None and self.handler_dir:
            extra = self.extra_env.get("PYTHONPATH")
            env["PYTHONPATH"] = self.handler_dir + (os.pathsep + extra if extra else "")
        return env

    def _runtime_argv(self) -> Optional[list[str]]:
        if self.runtime_cmd:
            return self.runtime_cmd
        if self.handler:
            return default_runtime_argv(self.handler)
        return None

    def _init_failure_message(self, result: Optional[InitResult]) -> str:
        if result is None:
            return "init did not complete"
        lines = [f"init failed: status={result.status} errorType={result.error_type}: {result.message}"]
        for proc in self._all_processes[-12:]:
            tail = proc.stderr_tail(10)
            if tail:
                lines.append(tail)
        return "\n".join(lines)

    # --- internals: HTTP callbacks (SandboxCore) ---------------------------------------------------

    def _lookup_ext(self, headers) -> tuple[Optional[_Ext], Optional[Reply]]:
        ext_id = headers.get("Lambda-Extension-Identifier")
        if not ext_id:
            return None, error(403, "Extension.MissingExtensionIdentifier", "Missing Lambda-Extension-Identifier header")
        try:
            uuid.UUID(ext_id)
        except ValueError:
            return None, error(403, "Extension.InvalidExtensionIdentifier", f"Invalid extension identifier {ext_id}")
        env = self._env
        ext = env.exts.get(ext_id) if env is not None else None
        if ext is None:
            return None, error(403, "Extension.UnknownExtensionIdentifier", f"Unknown extension {ext_id}")
        return ext, None

    def runtime_next(self, headers) -> Optional[Reply]:
        env = self._env
        if env is not None and env.runtime is not None and env.current is not None:
            env.runtime.drain(LOG_DRAIN_S)  # lines printed before /next precede platform.runtimeDone
        with self._cv:
            env = self._env
            if env is None or env.phase == "down":
                return error(403, "InvalidStateTransition", "no execution environment is running")
            if env.runtime_ready_at is None:
                if env.init_failure is not None and env.init_failure[1].startswith("Runtime."):
                    return error(403, "InvalidStateTransition", "init already failed")
                env.runtime_ready_at = Instant.now()
                env.registration_open = False
                self._cv.notify_all()
            else:
                inv = env.current
                if inv is not None and inv.r.runtime_received_at is not None and inv.r.runtime_done_at is None:
                    if not inv.outcome_set and not inv.finished:
                        return error(403, "InvalidStateTransition", "/next before /response or /error")
                    if not inv.finished:
                        inv.r.runtime_done_at = Instant.now()
                        self._emit_runtime_done(env, inv, inv.r.status, inv.r.error_type)
                        self._cv.notify_all()
            gen = env.gen
            while True:
                if env.runtime_queue and env.phase == "invoking":
                    inv = env.runtime_queue.popleft()
                    inv.r.runtime_received_at = Instant.now()
                    hdrs = {
                        "Lambda-Runtime-Aws-Request-Id": inv.r.request_id,
                        "Lambda-Runtime-Deadline-Ms": str(inv.r.deadline_ms),
                        "Lambda-Runtime-Invoked-Function-Arn": self.function_arn,
                    }
                    if inv.r.trace_header:
                        hdrs["Lambda-Runtime-Trace-Id"] = inv.r.trace_header
                    hdrs.update(inv.extra_headers)
                    return Reply(200, inv.r.payload, hdrs, content_type=inv.content_type)
                if self._stopping or env.phase == "down" or self._gen != gen:
                    return None
                if env.runtime is not None and not env.runtime.alive:
                    return None
                self._cv.wait(0.5)

    def runtime_result(self, request_id: str, kind: str, headers, body: Body, started: Instant) -> Reply:
        with self._cv:
            env = self._env
            inv = env.current if env is not None else None
            if inv is None or inv.r.request_id != request_id or inv.r.runtime_received_at is None:
                return error(400, "InvalidRequestID", "Invalid request ID")
            if inv.outcome_set or inv.finished or inv.r.runtime_done_at is not None:
                return error(403, "InvalidStateTransition", f"invocation {request_id} already has a result")
            if body.truncated:
                return error(400, "TruncatedHTTPRequest", "the request body is shorter than declared")
            mode = headers.get("Lambda-Runtime-Function-Response-Mode")
            if kind == "response" and mode and mode.lower() != "buffered":
                return error(400, "InvalidFunctionResponseMode", f"response mode {mode!r} is not supported")
            inv.outcome_set = True
            inv.r.response_started_at = started
            inv.r.response_ended_at = Instant.now()
            reply = ACCEPTED
            if kind == "response" and body.too_large:
                inv.r.status, inv.r.error_type = "error", "Function.ResponseSizeTooLarge"
                inv.r.response_bytes = body.declared
                reply = error(413, "RequestEntityTooLarge", f"response of {body.declared} bytes exceeds 6291456")
            elif kind == "response":
                inv.r.status, inv.r.response, inv.r.response_bytes = "success", body.data, len(body.data)
            else:
                inv.r.error_type = normalise_error_type(headers.get("Lambda-Runtime-Function-Error-Type"))
                inv.r.status = status_for(inv.r.error_type)
                inv.r.error_body = body.data
            inv.r._responded.set()
            self._cv.notify_all()
            return reply

    def runtime_init_error(self, headers, body: Body) -> Reply:
        with self._cv:
            env = self._env
            if env is None or env.phase != "init" or env.runtime_ready_at is not None:
                return error(403, "InvalidStateTransition", "init error is only accepted during init, before /next")
            if env.init_failure is not None and env.init_failure[1].startswith("Runtime."):
                return error(403, "InvalidStateTransition", "init error already reported")
            error_type = normalise_error_type(headers.get("Lambda-Runtime-Function-Error-Type"))
            message = _error_message(body.data)
            env.init_failure = (status_for(error_type), error_type, f"runtime init error: {message}")
            self._cv.notify_all()
            return ACCEPTED

    def extension_register(self, headers, body: Body) -> Reply:
        name = (headers.get("Lambda-Extension-Name") or "").strip()
        if not name:
            return error(403, "Extension.InvalidExtensionName", "Empty extension name")
        try:
            doc = json.loads(body.data or b"{}")
        except (ValueError, UnicodeDecodeError):
            return error(403, "InvalidRequestFormat", "register body is not valid JSON")
        if not isinstance(doc, dict) or "configurationKeys" in doc:
            return error(403, "InvalidRequestFormat", "register body must be {\"events\": [...]}")
        events = doc.get("events", [])
        if not isinstance(events, list) or any(e not in ("INVOKE", "SHUTDOWN") for e in events):
            return error(403, "Extension.InvalidEventType", f"unknown event type in {events!r}")
        features = [f.strip() for f in (headers.get("Lambda-Extension-Accept-Feature") or "").split(",")]
        with self._cv:
            env = self._env
            if env is None or not env.registration_open:
                return error(403, "Extension.RegistrationClosed", "Extension registration is closed")
            if env.ext_by_name(name) is not None:
                return error(403, "Extension.InvalidExtensionState", f"extension {name} is already registered")
            if len(env.exts) >= MAX_REGISTERED_EXTENSIONS:
                return error(403, "Extension.TooManyExtensions", "at most 10 extensions can register")
            process = env.launched.get(name)
            if process is None and "SHUTDOWN" in events:
                return error(403, "Extension.InvalidEventType", "internal extensions cannot register for SHUTDOWN")
            ext_id = str(uuid.uuid4())
            info = ExtensionInfo(
                name=name,
                id=ext_id,
                events=list(dict.fromkeys(events)),
                external=process is not None,
                registered_at=Instant.now(),
                pid=process.pid if process else None,
                spawned_at=process.started_at if process else None,
            )
            env.exts[ext_id] = _Ext(info=info, env=env, process=process)
            self._cv.notify_all()
        reply_body = {"functionName": self.function_name, "functionVersion": self.function_version,
                      "handler": self.handler or ""}
        if "accountId" in features:
            reply_body["accountId"] = self.account_id
        return Reply(200, reply_body, {"Lambda-Extension-Identifier": ext_id})

    def extension_next(self, headers) -> Optional[Reply]:
        with self._cv:
            ext, err = self._lookup_ext(headers)
            if err is not None:
                return err
            if ext.info.state in ("InitError", "ExitError"):
                return error(403, "Extension.InvalidExtensionState", f"extension {ext.info.name} reported an error")
            now = Instant.now()
            ext.next_calls.append(now)
            if ext.info.first_next_at is None:
                ext.info.first_next_at = now
                ext.info.state = "Ready"
            inv = ext.env.current
            if (inv is not None and not inv.finished and ext.consumed_invoke == inv.r.request_id
                    and ext.info.name not in inv.r.extension_next_at):
                inv.r.extension_next_at[ext.info.name] = now
            self._cv.notify_all()
            while True:
                if ext.queue:
                    event_id, event = ext.queue.popleft()
                    if event["eventType"] == "INVOKE":
                        ext.consumed_invoke = event["requestId"]
                    else:
                        ext.received_shutdown = True
                    return Reply(200, event, {"Lambda-Extension-Event-Identifier": event_id})
                if ext.gone or self._stopping:
                    return None
                self._cv.wait(0.5)

    def extension_error(self, kind: str, headers, body: Body) -> Reply:
        with self._cv:
            ext, err = self._lookup_ext(headers)
            if err is not None:
                return err
            error_type = headers.get("Lambda-Extension-Function-Error-Type")
            if not error_type:
                return error(403, "Extension.MissingHeader", "Missing Lambda-Extension-Function-Error-Type header")
            if ext.info.state in ("InitError", "ExitError"):
                return error(403, "Extension.InvalidExtensionState", f"extension {ext.info.name} already reported")
            env = ext.env
            if kind == "init":
                if env.phase != "init":
                    return error(403, "Extension.InvalidExtensionState", "init error after init")
                ext.info.state, ext.info.error_type = "InitError", error_type
                self._fatal(env, "Extension.InitError", f"extension {ext.info.name} init error {error_type}")
            else:
                ext.info.state, ext.info.error_type = "ExitError", error_type
                self._fatal(env, "Extension.ExitError", f"extension {ext.info.name} exit error {error_type}")
            self._cv.notify_all()
            return ACCEPTED

    def telemetry_subscribe(self, headers, body: Body) -> Reply:
        try:
            sub_cfg = parse_subscription(body.data, self.lenient)
        except ValidationError as exc:
            bad = exc
        else:
            bad = None
        replaced = None
        with self._cv:
            ext, err = self._lookup_ext(headers)
            if err is not None:
                return err
            if bad is not None:
                return error(400, "ValidationError", str(bad))
            env = ext.env
            if not (env.subscription_open or (self.lenient and env.phase not in ("shutting_down", "down"))):
                return error(403, "Telemetry.SubscriptionClosed", "Telemetry API subscription is closed")
            replaced = ext.subscriber
            sub = Subscriber(
                ext.info.name,
                ext.info.id,
                sub_cfg,
                on_batch=self._record_batch,
                on_generated=self._record_event,
                capacity_items=self.subscriber_buffer_items,
                post_timeout=self.telemetry_post_timeout_s,
                max_attempts=self.telemetry_max_attempts,
            )
            ext.subscriber = sub
            for event in env.init_events:  # the platform replays what it buffered during init
                if sub.wants(event["type"]):
                    sub.offer(event)
            if env.frozen:
                sub.set_paused(True)
            sub.start()
            self._emit(env, "platform.telemetrySubscription",
                       {"name": ext.info.name, "state": "Subscribed", "types": list(sub_cfg.types)})
        if replaced is not None:
            replaced.stop()
        return Reply(200, "OK")

    # --- internals: lifecycle ---------------------------------------------------------------------

    def _fatal(self, env: _Env, error_type: str, message: str) -> None:
        """A fatal error (crash, exit error) at whatever point of the lifecycle it happens. Holds _cv."""
        if env.phase == "init":
            if env.init_failure is None:
                env.init_failure = (status_for(error_type), error_type, message)
        elif env.phase == "invoking" and env.current is not None and not env.current.finished:
            if env.current.failure is None:
                env.current.failure = (status_for(error_type), error_type, message)
        elif env.phase == "ready" and env.fatal is None:
            env.fatal = (error_type, message)
        self._cv.notify_all()

    def _on_line(self, proc: ManagedProcess, stream: str, line: str) -> None:
        record: Any = line
        if line.startswith("{") and line.endswith("}"):
            try:
                parsed = json.loads(line)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                record = parsed  # Lambda JSON log format
        with self._cv:
            self._emit(proc.env, "function" if proc.role == "runtime" else "extension", record)

    def _on_exit(self, proc: ManagedProcess) -> None:
        with self._cv:
            env: _Env = proc.env
            if proc.expected_exit or env.phase in ("shutting_down", "down") or env is not self._env:
                self._cv.notify_all()
                return
            code = proc.exit_code
            if proc.role == "runtime":
                self._fatal(env, "Runtime.ExitError", f"runtime exited with {code}")
            else:
                ext = env.ext_by_name(proc.name)
                if ext is None:
                    self._fatal(env, "Extension.LaunchError", f"extension {proc.name} exited ({code}) unregistered")
                else:
                    ext.gone = True
                    if ext.info.state not in ("InitError", "ExitError"):
                        ext.info.state, ext.info.error_type = "Crashed", "Extension.Crash"
                        self._fatal(env, "Extension.Crash", f"extension {proc.name} exited with {code}")
            self._cv.notify_all()

    def _spawn(self, env: _Env, name: str, role: str, argv: list[str], cwd: Optional[str]) -> ManagedProcess:
        proc = ManagedProcess(name, role, argv, self._env_vars(role), cwd, self._on_line, self._on_exit)
        proc.env = env
        self._all_processes.append(proc)
        proc.start()
        return proc

    def _acquire_work(self, what: str) -> bool:
        deadline = time.monotonic() + max(600.0, self._default_wait())
        while time.monotonic() < deadline:
            if self._stopping:
                return False
            if self._work.acquire(timeout=0.2):
                return True
        log.error("simulator: %s gave up waiting for the previous work", what)
        return False

    def _start_locked(self) -> Optional[InitResult]:
        with self._cv:
            self._pending_work += 1
        acquired = self._acquire_work("init")
        with self._cv:
            self._pending_work -= 1
        if not acquired:
            return None
        try:
            env = self._env
            if env is not None and env.phase != "down":
                return self.init_result
            return self._run_init("init")
        finally:
            self._work.release()

    def _run_init(self, phase: str) -> InitResult:
        """Init of a fresh environment (work lock held). On failure the environment is torn down."""
        with self._cv:
            self._gen += 1
            env = _Env(self._gen, phase)
            self._env = env
            self._emit(env, "platform.initStart", {
                "initializationType": "on-demand",
                "phase": phase,
                "runtimeVersion": f"python:{sys.version_info.major}.{sys.version_info.minor}.sim",
                "runtimeVersionArn": f"arn:aws:lambda:{self.region}::runtime:lambda-otel-simulator",
                "functionName": self.function_name,
                "functionVersion": self.function_version,
                "instanceId": self.instance_id,
                "instanceMaxMemory": self.memory_mb,
            })
        deadline = time.monotonic() + self.init_timeout_s
        for path in discover_extensions(self.extensions_dir):
            name = os.path.basename(path)
            try:
                proc = self._spawn(env, name, "extension", [path], os.path.dirname(path))
            except OSError as exc:
                with self._cv:
                    self._fatal(env, "Extension.LaunchError", f"cannot launch extension {name}: {exc}")
                break
            with self._cv:
                env.launched[name] = proc
        with self._cv:  # Lambda starts the runtime only once every launched extension has registered
            self._wait_env(env, deadline, lambda: all(env.ext_by_name(n) for n in env.launched),
                           "extension(s) did not register")
        argv = self._runtime_argv()
        if env.init_failure is None and argv is not None and not self._stopping:
            try:
                proc = self._spawn(env, "runtime", "runtime", argv, self.handler_dir)
                with self._cv:
                    env.runtime = proc
            except OSError as exc:
                with self._cv:
                    self._fatal(env, "Runtime.InvalidEntrypoint", f"cannot start the runtime: {exc}")
        with self._cv:
            self._wait_env(
                env, deadline,
                lambda: env.runtime_ready_at is not None and all(e.info.first_next_at for e in env.exts.values()),
                "runtime or extensions not ready",
            )
            env.registration_open = False
            env.subscription_open = False
            result = self._finish_init(env)
        self.init_results.append(result)
        if result.ok:
            self._freeze(env, "after-init")
        else:
            self._teardown(env, "failure")
        with self._rec_cv:
            self._rec_cv.notify_all()
        return result

    def _wait_env(self, env: _Env, deadline: float, ready: Callable[[], bool], what: str) -> None:
        """Wait (holding _cv) until ready() or an init failure; on the deadline record an init timeout."""
        while env.init_failure is None and not ready():
            if self._stopping:
                env.init_failure = ("failure", "Sandbox.Failure", "simulator stopped during init")
                return
            left = deadline - time.monotonic()
            if left <= 0:
                env.init_failure = ("timeout", "Sandbox.Timedout", f"init timed out: {what}")
                return
            self._cv.wait(min(left, 0.5))

    def _finish_init(self, env: _Env) -> InitResult:
        end = Instant.now()
        duration = ms_between(env.started_at, end)
        failure = env.init_failure
        status, error_type, message = failure if failure else ("success", None, "")
        runtime_rec: dict[str, Any] = {"initializationType": "on-demand", "phase": env.init_phase}
        if failure and (error_type.startswith("Runtime.") or env.runtime_ready_at is None):
            runtime_rec.update({"status": status, "errorType": error_type})
        else:
            runtime_rec["status"] = "success"
        self._emit(env, "platform.initRuntimeDone", runtime_rec)
        for ext in env.exts.values():
            rec = {"name": ext.info.name, "state": ext.info.state, "events": sorted(ext.info.events)}
            if ext.info.error_type:
                rec["errorType"] = ext.info.error_type
            self._emit(env, "platform.extension", rec)
        report: dict[str, Any] = {"initializationType": "on-demand", "phase": env.init_phase, "status": status}
        if error_type:
            report["errorType"] = error_type
        report["metrics"] = {"durationMs": duration}
        self._emit(env, "platform.initReport", report)
        env.init_duration_ms = duration
        env.report_init_duration = failure is None and env.init_phase == "init"
        if failure is None:
            env.phase = "ready"
        elif not self._stopping:
            log.warning("simulator: init failed: %s %s: %s", status, error_type, message)
        return InitResult(
            status=status,
            error_type=error_type,
            phase=env.init_phase,
            initialization_type="on-demand",
            started_at=env.started_at,
            ended_at=end,
            duration_ms=duration,
            runtime_ready_at=env.runtime_ready_at,
            extensions=[e.info for e in env.exts.values()],
            runtime_pid=env.runtime.pid if env.runtime else None,
            extension_pids={n: p.pid for n, p in env.launched.items()},
            message=message,
        )

    def _drive(self, inv: _Inv) -> None:
        acquired = self._acquire_work("invoke")
        with self._cv:
            self._pending_work -= 1
        try:
            if acquired:
                self._invoke_locked(inv)
            else:
                inv.r.status = "aborted"
        except Exception:  # noqa: BLE001 - report, never hang the caller
            log.exception("simulator: invocation %s failed inside the simulator", inv.r.request_id)
            inv.r.status = "aborted"
        finally:
            if acquired:
                self._work.release()
            inv.r._responded.set()
            inv.r._done.set()
            with self._rec_cv:
                self._rec_cv.notify_all()

    def _invoke_locked(self, inv: _Inv) -> None:
        env = self._env
        if env is not None and env.phase == "ready" and env.fatal is not None:
            self._teardown(env, "failure")  # something crashed while idle: reset first
        if env is None or env.phase == "down":
            failed_before = bool(self.init_results) and not self.init_results[-1].ok
            init = self._run_init("invoke" if failed_before else "init")
            inv.r.init = init
            if not init.ok:
                inv.r.status, inv.r.error_type = init.status if init.status != "success" else "error", init.error_type
                return
            env = self._env
        if self._stopping:
            inv.r.status = "aborted"
            return
        self._thaw(env)
        with self._cv:
            env.phase = "invoking"
            env.current = inv
            now = Instant.now()
            r = inv.r
            r.started_at = now
            inv.deadline_mono = now.mono + self.timeout_s
            r.deadline_ms = int(now.wall * 1000 + self.timeout_s * 1000)
            start_rec: dict[str, Any] = {"requestId": r.request_id, "version": self.function_version}
            if inv.tracing:
                start_rec["tracing"] = inv.tracing
            self._emit(env, "platform.start", start_rec)
            invoke_event: dict[str, Any] = {
                "eventType": "INVOKE",
                "deadlineMs": r.deadline_ms,
                "requestId": r.request_id,
                "invokedFunctionArn": self.function_arn,
            }
            if r.trace_header:
                invoke_event["tracing"] = {"type": "X-Amzn-Trace-Id", "value": r.trace_header}
            for ext in env.exts.values():  # rapid releases the extensions first, then the runtime
                if "INVOKE" in ext.info.events and not ext.gone and ext.info.state not in ("InitError", "ExitError"):
                    ext.queue.append((str(uuid.uuid4()), invoke_event))
                    inv.delivered[ext.info.id] = ext.info.name
            env.runtime_queue.append(inv)
            self._cv.notify_all()
            timed_out = False
            while True:
                if inv.failure is not None or self._stopping:
                    break
                if r.runtime_done_at is not None and all(n in r.extension_next_at for n in inv.delivered.values()):
                    break
                left = inv.deadline_mono - time.monotonic()
                if left <= 0:
                    timed_out = True
                    break
                self._cv.wait(min(left, 0.5))
            reset = self._finish_invoke(env, inv, timed_out)
        if reset is not None:
            inv.r.reset = self._teardown(env, reset)
        else:
            inv.r.frozen_after = self._freeze(env, "after-invoke")

    def _finish_invoke(self, env: _Env, inv: _Inv, timed_out: bool) -> Optional[str]:
        """Status, runtimeDone (if the runtime never finished) and platform.report. Holds _cv."""
        r = inv.r
        end = Instant.now()
        reset: Optional[str] = None
        if self._stopping:
            r.status, r.error_type = "aborted", None
        elif timed_out or inv.failure is not None:
            status, error_type, _msg = inv.failure or ("timeout", "Sandbox.Timedout", "")
            reset = "timeout" if timed_out else "failure"
            if r.runtime_done_at is None:
                r.runtime_done_at = end
                self._emit_runtime_done(env, inv, status, error_type)
            r.status, r.error_type = status, error_type
        if r.extension_next_at:
            r.extensions_done_at = max(r.extension_next_at.values(), key=lambda i: i.mono)
            if r.runtime_done_at is not None and r.extensions_done_at.mono < r.runtime_done_at.mono:
                r.extensions_done_at = r.runtime_done_at
        else:
            r.extensions_done_at = r.runtime_done_at
        r.extension_overhead_ms = max(0.0, ms_between(r.runtime_done_at, r.extensions_done_at) or 0.0)
        inv.finished = True
        env.current = None
        r.ended_at = end if (timed_out or inv.failure or self._stopping) else (r.extensions_done_at or end)
        duration = ms_between(r.started_at, r.ended_at) or 0.0
        used_kb = sum(p.max_memory_kb() for p in env.processes() if p.alive)
        metrics: dict[str, Any] = {
            "durationMs": duration,
            "billedDurationMs": int(math.ceil(duration)),
            "memorySizeMB": self.memory_mb,
            "maxMemoryUsedMB": min(self.memory_mb, int(math.ceil(used_kb / 1024.0))),
        }
        if env.report_init_duration:
            metrics["initDurationMs"] = env.init_duration_ms
            env.report_init_duration = False
        report: dict[str, Any] = {"requestId": r.request_id, "status": r.status}
        if r.error_type:
            report["errorType"] = r.error_type
        report["metrics"] = metrics
        if inv.tracing:
            report["tracing"] = inv.tracing
        if r.status != "aborted":
            self._emit(env, "platform.report", report)
        r.report = report
        env.phase = "ready"
        return reset

    def _emit_runtime_done(self, env: _Env, inv: _Inv, status: str, error_type: Optional[str]) -> None:
        r = inv.r
        rec: dict[str, Any] = {"requestId": r.request_id, "status": status}
        if error_type:
            rec["errorType"] = error_type
        metrics: dict[str, Any] = {"durationMs": ms_between(r.started_at, r.runtime_done_at)}
        if r.response is not None:
            metrics["producedBytes"] = r.response_bytes
        rec["metrics"] = metrics
        spans = []
        if r.response_started_at is not None:
            spans.append({"name": "responseLatency", "start": format_time(r.started_at.wall),
                          "durationMs": ms_between(r.started_at, r.response_started_at)})
            spans.append({"name": "responseDuration", "start": format_time(r.response_started_at.wall),
                          "durationMs": ms_between(r.response_started_at, r.response_ended_at)})
            if r.runtime_done_at.mono >= r.response_ended_at.mono:
                spans.append({"name": "runtimeOverhead", "start": format_time(r.response_ended_at.wall),
                              "durationMs": ms_between(r.response_ended_at, r.runtime_done_at)})
        rec["spans"] = spans
        if inv.tracing:
            rec["tracing"] = inv.tracing
        r.runtime_done = rec
        self._emit(env, "platform.runtimeDone", rec)

    def _freeze(self, env: _Env, why: str) -> bool:
        """SIGSTOP every process after pausing the telemetry senders (skipped if new work is waiting)."""
        if not self.freeze_enabled:
            return False
        with self._cv:
            if self._pending_work or env.phase != "ready" or env.frozen or self._stopping:
                return False
            epoch = self._epoch
            subs = env.subscribers()
            procs = [p for p in env.processes() if p.alive]
        for proc in procs:  # what was printed before the freeze is emitted before it
            proc.drain(LOG_DRAIN_S)
        for sub in subs:
            sub.set_paused(True)
        for sub in subs:
            if not sub.set_paused(True, wait=FREEZE_INFLIGHT_WAIT_S):
                log.warning("simulator: a telemetry POST to %s was still in flight at freeze", sub.name)
        with self._cv:
            if epoch != self._epoch or self._pending_work or self._stopping or env.phase != "ready":
                for sub in subs:  # new work arrived meanwhile: a stale freeze must not happen
                    sub.set_paused(False)
                return False
            procs = [p for p in env.processes() if p.alive]
            for proc in procs:
                proc.signal_group(signal.SIGSTOP)
            for proc in procs:
                if not proc.wait_stopped(FREEZE_STATE_WAIT_S):
                    log.warning("simulator: %s (pid %s) not stopped after SIGSTOP", proc.name, proc.pid)
            record = FreezeRecord(frozen_at=Instant.now(), pids=[p.pid for p in procs], reason=why)
            env.frozen = record
            self.freezes.append(record)
        return True

    def _thaw(self, env: _Env) -> None:
        with self._cv:
            self._epoch += 1
            record = env.frozen
            if record is None:
                return
            for proc in env.processes():
                proc.signal_group(signal.SIGCONT)
            record.thawed_at = Instant.now()
            env.frozen = None
            subs = env.subscribers()
        for sub in subs:
            sub.set_paused(False)

    def _teardown(self, env: _Env, reason: str, budget_ms: Optional[int] = None) -> ShutdownResult:
        """Lambda's shutdown sequence (work lock held): thaw, SIGTERM runtime, SHUTDOWN, wait, SIGKILL."""
        budget = self.shutdown_budget_ms if budget_ms is None else budget_ms
        self._thaw(env)
        with self._cv:
            env.phase = "shutting_down"
            env.registration_open = env.subscription_open = False
            started = Instant.now()
            deadline_mono = started.mono + budget / 1000.0
            deadline_ms = int(started.wall * 1000 + budget)
            runtime = env.runtime
            self._cv.notify_all()
        runtime_exit, sigterm_at = None, None
        if runtime is not None:
            runtime.expected_exit = True
            if runtime.alive:
                sigterm_at = Instant.now()
                runtime.signal_group(signal.SIGTERM)
                if not runtime.exited.wait(min(RUNTIME_SHUTDOWN_SHARE_S, budget / 1000.0)):
                    runtime.kill(wait=2.0)
            runtime.signal_group(signal.SIGKILL)  # anything the runtime left behind in its group
            runtime_exit = _process_exit(runtime, deadline_mono)
        waiting: list[ManagedProcess] = []
        kill_now: list[ManagedProcess] = []
        with self._cv:
            event = {"eventType": "SHUTDOWN", "shutdownReason": reason, "deadlineMs": deadline_ms}
            for ext in env.exts.values():
                if ("SHUTDOWN" in ext.info.events and not ext.gone
                        and ext.info.state not in ("InitError", "ExitError")):
                    ext.queue.append((str(uuid.uuid4()), event))
            events_sent_at = Instant.now()
            for name, proc in env.launched.items():
                proc.expected_exit = True
                ext = env.ext_by_name(name)
                if ext is not None and "SHUTDOWN" in ext.info.events and proc.alive:
                    waiting.append(proc)
                else:
                    kill_now.append(proc)
            self._cv.notify_all()
        for proc in kill_now:
            proc.kill(wait=2.0)
            ext = env.ext_by_name(proc.name)
            if ext is not None and ext.subscriber is not None:
                ext.subscriber.stop(timeout=1.0)  # its listener died with it: no point retrying into it
        subs = env.subscribers()
        for sub in subs:
            sub.start_flush()
        for proc in waiting:
            proc.exited.wait(max(0.0, deadline_mono - time.monotonic()))
        for proc in waiting:
            if proc.alive:
                proc.kill(wait=2.0)
        results = {}
        for name, proc in env.launched.items():
            proc.signal_group(signal.SIGKILL)
            results[name] = _process_exit(proc, deadline_mono)
            ext = env.ext_by_name(name)
            if ext is not None:
                results[name].received_shutdown = ext.received_shutdown
                if ext.info.state not in ("InitError", "ExitError", "Crashed"):
                    ext.info.state = "Exited" if results[name].exited_in_time and proc.exit_code == 0 \
                        else "ShutdownFailed"
        undelivered = sum(sub.stop(timeout=1.0) for sub in subs)
        with self._cv:
            env.phase = "down"
            for ext in env.exts.values():
                ext.gone = True
            self._cv.notify_all()
        result = ShutdownResult(
            reason=reason,
            started_at=started,
            deadline_ms=deadline_ms,
            ended_at=Instant.now(),
            runtime=runtime_exit,
            runtime_sigterm_at=sigterm_at,
            extensions=results,
            shutdown_events_sent_at=events_sent_at,
            undelivered_events=undelivered,
        )
        self.shutdowns.append(result)
        with self._rec_cv:
            self._rec_cv.notify_all()
        return result


def _process_exit(proc: ManagedProcess, deadline_mono: float) -> ProcessExit:
    in_time = proc.exited_at is not None and not proc.killed and proc.exited_at.mono <= deadline_mono
    return ProcessExit(
        name=proc.name,
        pid=proc.pid or 0,
        exit_code=proc.exit_code,
        exited_at=proc.exited_at,
        exited_in_time=in_time,
        killed=proc.killed,
    )


def _error_message(data: bytes) -> str:
    try:
        doc = json.loads(data)
        if isinstance(doc, dict):
            return f"{doc.get('errorType', '')}: {doc.get('errorMessage', '')}"
    except (ValueError, UnicodeDecodeError):
        pass
    return data[:200].decode("utf-8", "replace")


def main(argv: Optional[list[str]] = None) -> int:
    """Run the simulator alone: init, N invokes, shutdown; print a JSON summary."""
    parser = argparse.ArgumentParser(prog="python -m lambda_otel.local.simulator", description=main.__doc__)
    parser.add_argument("--handler", help="module.function (run with awslambdaric)")
    parser.add_argument("--handler-dir", help="directory of the handler module (task root)")
    parser.add_argument("--extensions-dir", help="folder laid out like /opt/extensions")
    parser.add_argument("--invokes", type=int, default=1)
    parser.add_argument("--payload", default="{}")
    parser.add_argument("--timeout", type=float, default=3.0, help="function timeout in seconds")
    parser.add_argument("--no-freeze", action="store_true")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    extra = dict(item.split("=", 1) for item in args.env)
    with Simulator(extensions_dir=args.extensions_dir, handler=args.handler, handler_dir=args.handler_dir,
                   env=extra, timeout_s=args.timeout, freeze=not args.no_freeze) as sim:
        init = sim.start(check=False)
        summary: dict[str, Any] = {"init": {"status": init.status, "errorType": init.error_type,
                                            "durationMs": init.duration_ms}, "invocations": []}
        for _ in range(args.invokes):
            res = sim.invoke(args.payload.encode())
            summary["invocations"].append({"requestId": res.request_id, "status": res.status,
                                           "errorType": res.error_type,
                                           "response": (res.response or b"").decode("utf-8", "replace"),
                                           "report": res.report})
        down = sim.shutdown()
        if down is not None:
            summary["shutdown"] = {n: {"exitCode": e.exit_code, "exitedInTime": e.exited_in_time}
                                   for n, e in down.extensions.items()}
        summary["batches"] = len(sim.batches)
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
