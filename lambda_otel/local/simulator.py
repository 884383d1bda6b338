"""Lambda in a box: one simulated Lambda execution environment, for tests and `lambda-otel-local`.

Serves the Runtime API (/2018-06-01), Extensions API (/2020-01-01) and Telemetry API (/2022-07-01) on
one 127.0.0.1 port, launches real processes (every executable of an /opt/extensions-like folder, then
the function runtime — by default the real AWS Runtime Interface Client `awslambdaric`), generates
platform telemetry with Lambda's timing rules, freezes the processes with SIGSTOP between invocations,
and shuts down like Lambda (SIGTERM runtime, SHUTDOWN event, SIGKILL at the deadline). Every rule of
Lambda's that a telemetry extension can observe is implemented unless listed under "Known gaps" below.

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
telemetry_post_timeout_s=2.0, telemetry_max_attempts=5, mode="on-demand", telemetry_schemas=None,
concurrency=4, runtime_workers=None, instance_memory_mb=4096, lmi_runtime_done=True)``.

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
- ``telemetry_schemas``: the ``schemaVersion`` values a subscription may use (all on the one path
  ``PUT /2022-07-01/telemetry``); default all three, only ``2025-01-29`` on Managed Instances. Pass
  ``("2022-07-01", "2022-12-13")`` for a runtime that answers 400 to ``2025-01-29``. Each subscriber gets
  events in its schema's shape (``telemetry_delivery.shape_event``).

Modes (``mode=``; ``AWS_LAMBDA_INITIALIZATION_TYPE`` follows it, for every process):

- ``"on-demand"``: one invocation at a time, frozen between them.
- ``"provisioned-concurrency"``: the same, initialised ahead of any invocation, so no report carries
  ``initDurationMs``.
- ``"managed-instances"``: registering for INVOKE is refused (403 Extension.InvalidEventType; SHUTDOWN-only
  is accepted), schema 2025-01-29 only, no freeze. Invocations overlap up to ``concurrency``, each with its
  own timeout (a timeout does not reset the environment). The real runtime client, given
  ``AWS_LAMBDA_MAX_CONCURRENCY``, forks one worker process per concurrent request, each with its own init;
  each worker's output reaches the Telemetry API through its own socket (``_LAMBDA_TELEMETRY_LOG_FD_PROVIDER_SOCKET``),
  interleaved with the others'. ``platform.start`` when a worker takes the invocation; ``platform.runtimeDone``
  at its /response or /error (``lmi_runtime_done=False`` omits it); ``platform.report`` with ``durationMs`` and
  the response spans only. ``initStart.instanceMaxMemory`` is ``instance_memory_mb`` in bytes. Init ends
  when ``runtime_workers`` (default: ``concurrency``) runtime /next calls came. SHUTDOWN waits for the
  invocations in flight. Every Telemetry API POST carries ``Sequence-Id: base64(sha256(body))`` (the
  same on a retry).
- ``"snapstart"``: ``start()`` is the snapshot's init (nothing is delivered to an extension then; the
  runtime client calls ``GET /2018-06-01/runtime/restore/next`` and runs the function's before-snapshot
  hooks). The next ``invoke()`` (or ``restore()``) restores: ``platform.restoreStart`` (a new instanceId),
  then the snapshot's init events (their own timestamps: they arrive after the restore, as on Lambda),
  ``restoreRuntimeDone`` and ``restoreReport`` once the runtime (after its after-restore hooks) and every
  extension are ready; the first report after it has ``restoreDurationMs``/``billedRestoreDurationMs``.
  After a ``shutdown()`` the next restore is restore 2, ... of the same snapshot, emulated by fork: an
  extension that forked one child by the end of init is a fork server (copy 1 at once; one more copy
  per SIGUSR1, each left a zombie until then so its exit status can be read; SIGTERM at ``stop()``: reap
  and exit 0 iff every copy exited 0, in ``fork_server_exits``); every copy keeps the snapshot's
  extension id, subscription and ports. ``lambda_otel.local.restore_fork`` runs lambda-otel that way. The
  runtime of restore 2+ is a fresh process (its own init is invisible to the platform events).

Other members: ``runtime_api`` ("127.0.0.1:PORT"), ``port``, ``start(timeout=None, check=True, wait=True)``,
``wait_init(timeout)``, ``invoke(payload=b"{}", timeout=None, trace_header="auto", client_context=None,
cognito_identity=None)``, ``invocations``, ``init_result`` / ``init_results``, ``restore(timeout=None)`` /
``restores`` (RestoreResult), ``shutdown_result`` / ``shutdowns``, ``freezes`` (FreezeRecord: frozen_at /
thawed_at, monotonic + wall), ``extensions`` (ExtensionInfo of the current environment), ``runtime_pid``,
``extension_pids``, ``is_frozen``, ``process_output(name)`` (captured lines of a process, for failure
messages), ``stop()``. ``trace_header``: "auto" = a fresh ``Root=1-<8hex>-<24hex>;Parent=<16hex>;Sampled=1``,
None = untraced, or an explicit X-Amzn-Trace-Id value.

Lifecycle rules implemented: extensions register before the runtime is spawned; init ends after the
runtime's first /next and every extension's first /next; initStart is generated before any subscription
and replayed to each subscriber; initRuntimeDone -> platform.extension -> initReport; platform.runtimeDone
when the runtime calls /next again; platform.report after every INVOKE subscriber's /next, then freeze;
timeout -> status timeout (Sandbox.Timedout) and a reset (SHUTDOWN timeout, processes end, the next invoke
re-runs init); runtime exit / extension crash / exit error during an invoke -> status error and a reset
with reason failure; /error -> status error, no reset; an extension's init/exit error carries its
errorMessage into the init result's message.

Modules: `simulator` (this API), `lifecycle` (init/invoke/freeze/shutdown), `managed_instances` (overlapping
invocations), `snapstart` (snapshot and restores), `api_handlers` (answers to API requests), `runtime_api`
(the HTTP server), `telemetry_delivery` (subscriptions, schemas, buffering, POSTs), `processes` (spawn,
line readers, worker sockets, fork copies, signals), `sandbox` (environment state, `Mode`), `results`
(what tests read).

Known gaps: TCP telemetry destinations (400), the Logs API (403), response streaming (400
InvalidFunctionResponseMode), memory limits (maxMemoryUsedMB is the processes'
peak RSS, not enforced), init retried as a "suppressed init" only after a failed init, SnapStart
credentials (the container credentials endpoint) are not served.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import sys
import threading
import time
import uuid
from typing import Any, Callable, Optional, Sequence, Union

from .api_handlers import ApiHandlers
from .lifecycle import Lifecycle
from .managed_instances import ConcurrentInvocations
from .processes import ManagedProcess, base_environment, default_runtime_argv, python_execution_env
from .results import (
    BatchRecord,
    ExtensionInfo,
    FreezeRecord,
    InitResult,
    Instant,
    InvocationResult,
    ProcessExit,
    RestoreResult,
    ShutdownResult,
    SimulatorError,
)
from .runtime_api import ApiServer
from .snapstart import Restores
from .sandbox import SHUTDOWN_REASONS, Mode, _Env, _Inv, _Snapshot, new_trace_header, normalise_error_type
from .telemetry_delivery import SCHEMA_2025, SCHEMA_VERSIONS, format_time

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
    "Mode",
    "RestoreResult",
    "normalise_error_type",
    "new_trace_header",
]


class Simulator(ApiHandlers, Lifecycle, ConcurrentInvocations, Restores):
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
        mode: Union[str, Mode] = Mode.ON_DEMAND,
        telemetry_schemas: Optional[Sequence[str]] = None,
        concurrency: int = 4,
        runtime_workers: Optional[int] = None,
        instance_memory_mb: int = 4096,
        lmi_runtime_done: bool = True,
    ):
        self.mode = mode if isinstance(mode, Mode) else Mode(mode)
        if telemetry_schemas is None:
            telemetry_schemas = (SCHEMA_2025,) if self.mode is Mode.MANAGED_INSTANCES else SCHEMA_VERSIONS
        unknown = [v for v in telemetry_schemas if v not in SCHEMA_VERSIONS]
        if unknown or not telemetry_schemas:
            raise ValueError(f"telemetry_schemas must be a non-empty subset of {SCHEMA_VERSIONS}, got {telemetry_schemas!r}")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.telemetry_schemas = tuple(telemetry_schemas)
        self.concurrency = concurrency if self.mode is Mode.MANAGED_INSTANCES else 1
        # How many runtime /next calls end init: the real runtime client forks one worker per
        # concurrent request on Managed Instances; a custom runtime_cmd is one process unless told.
        if runtime_workers is None:
            runtime_workers = self.concurrency if (self.mode is Mode.MANAGED_INSTANCES and not runtime_cmd) else 1
        self.runtime_workers = runtime_workers
        self.instance_memory_mb = instance_memory_mb
        self.lmi_runtime_done = lmi_runtime_done
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
        self.freeze_enabled = freeze and self.mode is not Mode.MANAGED_INSTANCES  # Managed Instances never freeze
        self.region = region
        self.account_id = account_id
        self.lenient = lenient
        self.inherit_env = inherit_env
        self.subscriber_buffer_items = subscriber_buffer_items
        self.telemetry_post_timeout_s = telemetry_post_timeout_s
        self.telemetry_max_attempts = telemetry_max_attempts
        self.function_arn = f"arn:aws:lambda:{region}:{account_id}:function:{function_name}"
        self.log_group = f"/aws/lambda/{function_name}"
        self.instance_id = self._new_instance_id()
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
        self._snapshot: Optional[_Snapshot] = None  # SnapStart: what every restore starts from
        self.restores: list[RestoreResult] = []
        self.fork_server_exits: dict[str, Optional[int]] = {}  # SnapStart: each fork server's exit code at stop()

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
        drive = self._drive_concurrent if self.mode is Mode.MANAGED_INSTANCES else self._drive
        self._spawn_thread(lambda: drive(inv), f"sim-invoke-{result.request_id[:8]}")
        return result

    def invoke(self, payload: Union[bytes, str, dict, list, None] = b"{}", timeout: Optional[float] = None,
               **kwargs: Any) -> InvocationResult:
        """Invoke and block until complete (report generated and frozen, or reset done)."""
        result = self.invoke_async(payload, **kwargs)
        return result.wait(timeout if timeout is not None else self._default_wait())

    def restore(self, timeout: Optional[float] = None) -> RestoreResult:
        """SnapStart: restore the snapshot into a new environment (the first one after start(), then a
        fresh copy after each shutdown). An invoke with no restored environment does this itself."""
        if self.mode is not Mode.SNAPSTART:
            raise SimulatorError("restore() needs mode='snapstart'")
        wait = timeout if timeout is not None else self._default_wait()
        if not self._work.acquire(timeout=wait):
            raise SimulatorError(f"restore: the simulator stayed busy for {wait:.1f}s (test wait)")
        try:
            env = self._env
            if self._snapshot is None:
                raise SimulatorError("restore: no snapshot (start() first, and init must succeed)")
            if env is not None and env.phase not in ("down",) and env.restore is not None:
                raise SimulatorError("restore: an environment is already restored (shut it down first)")
            return self._restore_snapshot()
        finally:
            self._work.release()

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
            if self.mode is Mode.MANAGED_INSTANCES:  # Lambda drains an instance before shutting it down
                with self._cv:
                    drained = self._cv.wait_for(lambda: not env.active and not env.runtime_queue,
                                                self.timeout_s + 2.0)
                if not drained:
                    log.warning("simulator: shutting down with %d invocation(s) still in flight", len(env.active))
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
        if self._snapshot is not None:  # fork servers reap their copies and say whether all exited 0
            for name, server in self._snapshot.servers.items():
                if server.alive:
                    server.signal_group(signal.SIGCONT)
                    os.kill(server.pid, signal.SIGTERM)
            for name, server in self._snapshot.servers.items():
                server.exited.wait(2.0)
                self.fork_server_exits[name] = server.exit_code
        for proc in procs:
            proc.kill(wait=2.0)
        if env is not None:
            if env.worker_logs is not None:
                env.worker_logs.close()
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

    def process_output(self, name: str, every_generation: bool = False) -> list[tuple[str, str]]:
        """Lines captured from the named process (`runtime` or an extension file name), newest generation
        (or of every environment, in order, with every_generation=True).

        For a process that has exited, waits (at most a second) for its last lines to be read first.
        """
        lines: list[tuple[str, str]] = []
        for proc in reversed(self._all_processes):
            if proc.name == name:
                if proc.exited.is_set():
                    proc.wait_output(1.0)
                lines[:0] = proc.output
                if not every_generation:
                    break
        return lines

    # --- internals: plumbing ---------------------------------------------------------------------

    def _new_instance_id(self) -> str:
        """Like a log stream name: date, version, a random id."""
        return f"{time.strftime('%Y/%m/%d')}/[{self.function_version}]{uuid.uuid4().hex}"

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
                "AWS_LAMBDA_INITIALIZATION_TYPE": self.mode.initialization_type,
            }
        )
        if role == "runtime" and self.mode is Mode.MANAGED_INSTANCES:
            env["AWS_LAMBDA_MAX_CONCURRENCY"] = str(self.concurrency)
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
    parser.add_argument("--mode", choices=[m.value for m in Mode], default=Mode.ON_DEMAND.value)
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    extra = dict(item.split("=", 1) for item in args.env)
    with Simulator(extensions_dir=args.extensions_dir, handler=args.handler, handler_dir=args.handler_dir,
                   env=extra, timeout_s=args.timeout, freeze=not args.no_freeze, mode=args.mode) as sim:
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
    return 0 if init.ok else 1


if __name__ == "__main__":
    sys.exit(main())
