"""The lifecycle engine: init, invoke, freeze/thaw and shutdown, with Lambda's ordering rules.

A mixin of `Simulator`. Every phase runs under the simulator's work lock (one at a time, like one
sandbox); HTTP handler threads move the state forward and notify `self._cv`, and the phase waits on it
with bounded waits. Overlapping invocations (Managed Instances) are in `managed_instances`, the
snapshot and its restores (SnapStart) in `snapstart`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import tempfile
import time
import uuid
from typing import Any, Callable, Optional

from .processes import ManagedProcess, WorkerLogSocket, discover_extensions
from .results import FreezeRecord, InitResult, Instant, InvocationResult, ProcessExit, ShutdownResult, ms_between
from .sandbox import (
    FREEZE_INFLIGHT_WAIT_S,
    FREEZE_STATE_WAIT_S,
    LOG_DRAIN_S,
    RUNTIME_SHUTDOWN_SHARE_S,
    Mode,
    _Env,
    _Inv,
    status_for,
)
from .telemetry_delivery import format_time

log = logging.getLogger("lambda_otel.local.simulator")


class Lifecycle:
    """Init / invoke / freeze / shutdown (mixin; see simulator.Simulator for the state)."""

    def _fatal(self, env: _Env, error_type: str, message: str) -> None:
        """A fatal error (crash, exit error) at whatever point of the lifecycle it happens. Holds _cv."""
        if env.phase == "init":
            if env.init_failure is None:
                env.init_failure = (status_for(error_type), error_type, message)
        elif env.phase == "restoring" and env.restore is not None:
            if env.restore.failure is None:
                env.restore.failure = (status_for(error_type), error_type, message)
        elif env.phase == "invoking" and env.current is not None and not env.current.finished:
            if env.current.failure is None:
                env.current.failure = (status_for(error_type), error_type, message)
        elif env.phase == "ready" and env.fatal is None:
            env.fatal = (error_type, message)
            for inv in [*env.active.values(), *env.runtime_queue]:  # Managed Instances: all in flight fail
                if inv.failure is None:
                    inv.failure = (status_for(error_type), error_type, message)
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

    def _spawn(self, env: _Env, name: str, role: str, argv: list[str], cwd: Optional[str],
               extra_env: Optional[dict[str, str]] = None) -> ManagedProcess:
        environ = self._env_vars(role)
        environ.update(extra_env or {})
        proc = ManagedProcess(name, role, argv, environ, cwd, self._on_line, self._on_exit)
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
            if self._gen > 1:  # every execution environment has its own instance id and log stream
                self.instance_id = self.log_stream = self._new_instance_id()
            self._emit(env, "platform.initStart", {
                "initializationType": self.mode.initialization_type,
                "phase": phase,
                "runtimeVersion": self._runtime_version(),
                "runtimeVersionArn": self._runtime_version_arn(),
                "functionName": self.function_name,
                "functionVersion": self.function_version,
                "instanceId": self.instance_id,
                # In bytes (subscribers of the older schemas get MB): the instance's memory on
                # Managed Instances, the function's memory setting elsewhere.
                "instanceMaxMemory": self._instance_max_memory_bytes(),
            })
        deadline = time.monotonic() + self.init_timeout_s
        for path in discover_extensions(self.extensions_dir):
            name = os.path.basename(path)
            # Spawned and recorded under the lock: a fast extension registers before the spawn
            # returns, and the register handler (which takes the lock) must find it launched,
            # or it would take it for an internal extension (no SHUTDOWN allowed).
            with self._cv:
                try:
                    proc = self._spawn(env, name, "extension", [path], os.path.dirname(path))
                except OSError as exc:
                    self._fatal(env, "Extension.LaunchError", f"cannot launch extension {name}: {exc}")
                    break
                env.launched[name] = proc
        with self._cv:  # Lambda starts the runtime only once every launched extension has registered
            self._wait_env(env, deadline, lambda: all(env.ext_by_name(n) for n in env.launched),
                           "extension(s) did not register")
        argv = self._runtime_argv()
        if env.init_failure is None and argv is not None and not self._stopping:
            try:
                extra = {}
                if self.mode is Mode.MANAGED_INSTANCES:
                    env.worker_logs = WorkerLogSocket(os.path.join(tempfile.mkdtemp(prefix="lambda-sim-"), "logs.sock"))
                    extra["_LAMBDA_TELEMETRY_LOG_FD_PROVIDER_SOCKET"] = env.worker_logs.path
                proc = self._spawn(env, "runtime", "runtime", argv, self.handler_dir, extra)
                if env.worker_logs is not None:
                    env.worker_logs.attach(proc)
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
            if self.mode is Mode.SNAPSTART:
                self._take_snapshot(env)
            self._freeze(env, "after-init")
        else:
            self._teardown(env, "failure")
        with self._rec_cv:
            self._rec_cv.notify_all()
        return result

    def _runtime_version(self) -> str:
        return f"python:{sys.version_info.major}.{sys.version_info.minor}.sim"

    def _runtime_version_arn(self) -> str:
        return f"arn:aws:lambda:{self.region}::runtime:lambda-otel-simulator"

    def _instance_max_memory_bytes(self) -> int:
        mb = self.instance_memory_mb if self.mode is Mode.MANAGED_INSTANCES else self.memory_mb
        return mb * 1024 * 1024

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
        runtime_rec: dict[str, Any] = {"initializationType": self.mode.initialization_type,
                                         "phase": env.init_phase}
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
        report: dict[str, Any] = {"initializationType": self.mode.initialization_type, "phase": env.init_phase,
                                  "status": status}
        if error_type:
            report["errorType"] = error_type
        report["metrics"] = {"durationMs": duration}
        self._emit(env, "platform.initReport", report)
        env.init_duration_ms = duration
        # Only an on-demand cold start bills its init in the first report; provisioned concurrency and
        # SnapStart initialise ahead of any invocation.
        env.report_init_duration = failure is None and env.init_phase == "init" and self.mode is Mode.ON_DEMAND
        if failure is None:
            env.phase = "ready"
        elif not self._stopping:  # info: the caller reads it from InitResult (often a failure on purpose)
            log.info("simulator: init failed: %s %s: %s", status, error_type, message)
        return InitResult(
            status=status,
            error_type=error_type,
            phase=env.init_phase,
            initialization_type=self.mode.initialization_type,
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

    def _ready_env(self, inv: _Inv) -> Optional[_Env]:
        """The environment to run `inv` in (work lock held): reset a crashed one, init a missing one.

        None when there is none to run it in (init failed, or the simulator stops); `inv` then has
        its final status.
        """
        env = self._env
        if env is not None and env.phase == "ready" and env.fatal is not None:
            self._teardown(env, "failure")  # something crashed while idle: reset first
        snapstart = self.mode is Mode.SNAPSTART
        if (env is None or env.phase == "down") and not (snapstart and self._snapshot is not None):
            failed_before = bool(self.init_results) and not self.init_results[-1].ok
            init = self._run_init("invoke" if failed_before else "init")
            inv.r.init = init
            if not init.ok:
                inv.r.status, inv.r.error_type = init.status if init.status != "success" else "error", init.error_type
                return None
            env = self._env
        if snapstart and (env is None or env.phase == "down" or env.restore is None):
            restore = self._restore_snapshot()  # SnapStart: no invocation before a restore
            inv.r.restore = restore
            if not restore.ok:
                inv.r.status, inv.r.error_type = restore.status, restore.error_type
                return None
            env = self._env
        if self._stopping:
            inv.r.status = "aborted"
            return None
        return env

    def _invoke_locked(self, inv: _Inv) -> None:
        env = self._ready_env(inv)
        if env is None:
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
        if env.restore_duration_ms is not None:  # the first report after a SnapStart restore
            metrics["restoreDurationMs"] = env.restore_duration_ms
            metrics["billedRestoreDurationMs"] = int(math.ceil(env.restore_duration_ms))
            env.restore_duration_ms = None
        self._emit_report(env, inv, r, metrics)
        env.phase = "ready"
        return reset

    def _emit_report(self, env: _Env, inv: _Inv, r: InvocationResult, metrics: dict,
                     spans: Optional[list] = None) -> None:
        """``platform.report`` of one invocation (none for an aborted one), kept on its result."""
        report: dict[str, Any] = {"requestId": r.request_id, "status": r.status}
        if r.error_type:
            report["errorType"] = r.error_type
        report["metrics"] = metrics
        if spans:
            report["spans"] = spans
        if inv.tracing:
            report["tracing"] = inv.tracing
        if r.status != "aborted":
            self._emit(env, "platform.report", report)
        r.report = report

    def _emit_runtime_done(self, env: _Env, inv: _Inv, status: str, error_type: Optional[str]) -> None:
        r = inv.r
        rec: dict[str, Any] = {"requestId": r.request_id, "status": status}
        if error_type:
            rec["errorType"] = error_type
        metrics: dict[str, Any] = {"durationMs": ms_between(r.started_at, r.runtime_done_at)}
        if r.response is not None:
            metrics["producedBytes"] = r.response_bytes
        rec["metrics"] = metrics
        spans = response_spans(r)
        if r.response_started_at is not None:
            if r.runtime_done_at.mono >= r.response_ended_at.mono and self.mode is not Mode.MANAGED_INSTANCES:
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
        if env.worker_logs is not None:
            env.worker_logs.close()
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
        undelivered_types: dict[str, int] = {}
        for sub in subs:
            for kind, n in sub.undelivered_types.items():
                undelivered_types[kind] = undelivered_types.get(kind, 0) + n
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
            undelivered_types=undelivered_types,
        )
        self.shutdowns.append(result)
        with self._rec_cv:
            self._rec_cv.notify_all()
        return result


def response_spans(r) -> list[dict]:
    """responseLatency (invocation handed out -> response starts) and responseDuration (its transfer)."""
    if r.response_started_at is None:
        return []
    return [
        {"name": "responseLatency", "start": format_time(r.started_at.wall),
         "durationMs": ms_between(r.started_at, r.response_started_at)},
        {"name": "responseDuration", "start": format_time(r.response_started_at.wall),
         "durationMs": ms_between(r.response_started_at, r.response_ended_at)},
    ]


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
