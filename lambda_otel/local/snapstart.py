"""SnapStart in the simulator: the snapshot taken after init, and its restores (2+ by fork).

A mixin of `Simulator`, beside `Lifecycle`. The snapshot keeps the registrations, subscriptions and
init events; each restore is an environment of its own that starts from them: `platform.restoreStart`,
then the snapshot's init events (recorded at snapshot time, delivered after the restore), then
`restoreRuntimeDone` and `restoreReport` once the runtime and every extension are ready. A process
cannot be copied from outside, so restores after the first need the extension's cooperation: a fork
server (the protocol is in the simulator's module docstring) forks one copy per restore.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

from .processes import ForkedCopy, children_of, proc_state
from .results import ExtensionInfo, Instant, RestoreResult, SimulatorError, ms_between
from .sandbox import _Env, _Ext, _Restore, _Snapshot

log = logging.getLogger("lambda_otel.local.simulator")


class Restores:
    """Snapshot and restores (mixin; see simulator.Simulator for the state, lifecycle.Lifecycle for the rest)."""

    def _take_snapshot(self, env: _Env) -> None:
        """After a successful SnapStart init: keep what restores need; find the extensions that fork copies.

        An extension that forked exactly one child by the end of init is a fork server: that child (copy 1)
        made the first /next and serves restore 1; later restores ask the server for more copies.
        """
        servers, copies = {}, {}
        for name, proc in list(env.launched.items()):
            kids = children_of(proc.pid) if proc.alive else []
            if len(kids) != 1:
                continue
            copy = ForkedCopy(proc, kids[0], self._on_exit)
            copy.env = env
            servers[name], copies[name] = proc, copy.pid
            with self._cv:
                env.launched[name] = copy
                ext = env.ext_by_name(name)
                if ext is not None:
                    ext.process, ext.info.pid = copy, copy.pid
        with self._cv:
            subs = env.subscribers()
            for ext in env.exts.values():
                ext.subscriber = None  # each restore delivers afresh, in its own order
            self._snapshot = _Snapshot(init_events=list(env.init_events), exts=list(env.exts.values()),
                                       servers=servers, copies=copies)
        for sub in subs:
            sub.stop(timeout=1.0)

    def _restore_snapshot(self) -> RestoreResult:
        """Restore the snapshot (work lock held): the snapshot's own environment first, then fresh copies."""
        snap = self._snapshot
        snap.restores += 1
        env = self._env
        if env is not None and env.phase == "ready" and env.restore is None:
            return self._restore(env, snap.restores)
        missing = sorted(e.info.name for e in snap.exts if e.info.external and e.info.name not in snap.servers)
        if missing:
            raise SimulatorError(
                f"restore {snap.restores}: extension(s) {', '.join(missing)} did not fork a copy at the snapshot, so "
                "only restore 1 can run; launch them through a fork server (python -m lambda_otel.local.restore_fork)")
        with self._cv:
            self._gen += 1
            env = _Env(self._gen, "init")
            env.phase = "restoring"
            env.registration_open = env.subscription_open = False
            for template in snap.exts:
                info = template.info
                ext = _Ext(info=ExtensionInfo(name=info.name, id=info.id, events=list(info.events),
                                              external=info.external, registered_at=info.registered_at),
                           env=env, process=None)
                ext.subscription = template.subscription
                env.exts[info.id] = ext
            self._env = env
        deadline = time.monotonic() + self.init_timeout_s
        for name, server in snap.servers.items():
            server.env = env  # its line readers (shared by its copies) now feed this environment
            previous = snap.copies[name]
            os.kill(server.pid, signal.SIGUSR1)  # "fork the next copy" (and reap the previous one)
            pid = None
            while pid is None and time.monotonic() < deadline and server.alive:
                fresh = [k for k in children_of(server.pid) if k != previous and proc_state(k) not in ("Z", "X")]
                pid = fresh[0] if fresh else None
                if pid is None:
                    time.sleep(0.005)
            if pid is None:
                with self._cv:
                    env.restore = _Restore(snap.restores, Instant.now(),
                                           failure=("failure", "Extension.LaunchError", f"{name} forked no copy"))
                break
            copy = ForkedCopy(server, pid, self._on_exit)
            copy.env = env
            snap.copies[name] = pid
            with self._cv:
                env.launched[name] = copy
                ext = env.ext_by_name(name)
                ext.process, ext.info.pid, ext.info.spawned_at = copy, pid, copy.started_at
        argv = self._runtime_argv()
        if env.restore is None and argv is not None:
            # The runtime cannot be forked from outside: restores after the first get a fresh process,
            # whose own init is invisible to the platform events (only its output shows it).
            proc = self._spawn(env, "runtime", "runtime", argv, self.handler_dir)
            with self._cv:
                env.runtime = proc
        return self._restore(env, snap.restores)

    def _restore(self, env: _Env, number: int) -> RestoreResult:
        """restoreStart, the snapshot's init events, then restoreRuntimeDone and restoreReport when ready."""
        self._thaw(env)
        with self._cv:
            started = Instant.now()
            if env.restore is None:
                env.restore = _Restore(number, started)
            restore = env.restore
            env.phase = "restoring"
            self.instance_id = self.log_stream = self._new_instance_id()  # every restore is an environment of its own
            if env.runtime_in_next:  # a runtime without restore hooks: it is ready as it is
                restore.runtime_ready_at = started
            for ext in env.exts.values():
                if ext.subscription is not None and not ext.gone:
                    self._new_subscriber(ext, ext.subscription)
            self._emit(env, "platform.restoreStart", {
                "runtimeVersion": self._runtime_version(),
                "runtimeVersionArn": self._runtime_version_arn(),
                "functionName": self.function_name,
                "functionVersion": self.function_version,
                "instanceId": self.instance_id,
                "instanceMaxMemory": self._instance_max_memory_bytes(),
            })
            subs = env.subscribers()
            for event in self._snapshot.init_events:  # recorded at snapshot time, delivered after the restore
                for sub in subs:
                    if sub.wants(event["type"]):
                        sub.offer(event)
            for sub in subs:
                sub.start()
            self._cv.notify_all()  # releases the runtime's restore/next
            deadline = time.monotonic() + self.init_timeout_s
            while restore.failure is None and not (
                    restore.runtime_ready_at is not None
                    and all(e.info.first_next_at for e in env.exts.values() if not e.gone)):
                left = deadline - time.monotonic()
                if self._stopping:
                    restore.failure = ("failure", "Sandbox.Failure", "simulator stopped during a restore")
                elif left <= 0:
                    restore.failure = ("timeout", "Sandbox.Timedout", "restore timed out: runtime or extensions not ready")
                else:
                    self._cv.wait(min(left, 0.5))
            end = Instant.now()
            duration = ms_between(started, end) or 0.0
            status, error_type, message = restore.failure or ("success", None, "")
            done: dict[str, Any] = {"status": status}
            if error_type:
                done["errorType"] = error_type
            done["spans"] = []
            self._emit(env, "platform.restoreRuntimeDone", done)
            report: dict[str, Any] = {"status": status}
            if error_type:
                report["errorType"] = error_type
            else:
                report["metrics"] = {"durationMs": duration}
            self._emit(env, "platform.restoreReport", report)
            if restore.failure is None:
                env.phase = "ready"
                env.restore_duration_ms = duration
            result = RestoreResult(
                number=number, status=status, error_type=error_type, started_at=started, ended_at=end,
                duration_ms=duration, runtime_ready_at=restore.runtime_ready_at,
                runtime_pid=env.runtime.pid if env.runtime else None,
                extension_pids={n: p.pid for n, p in env.launched.items()}, message=message)
        self.restores.append(result)
        if not result.ok:
            log.info("simulator: restore %d failed: %s %s: %s", number, status, error_type, message)
            self._teardown(env, "failure")
        with self._rec_cv:
            self._rec_cv.notify_all()
        return result
