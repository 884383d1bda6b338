"""Lambda Managed Instances in the simulator: overlapping invocations in one environment.

A mixin of `Simulator`, beside `Lifecycle`. There is no INVOKE event and no freeze: each invocation
waits in a queue for any free runtime worker (the runtime client forks one worker process per
concurrent request), starts when a worker takes it (`platform.start`, its own timeout from then), and
ends at its /response or /error, a failure or its timeout, with a report of its duration only. A
timeout fails that invocation alone; the environment stays.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .lifecycle import response_spans
from .results import Instant, ms_between
from .sandbox import _Env, _Inv

log = logging.getLogger("lambda_otel.local.simulator")


class ConcurrentInvocations:
    """Invocations that overlap (mixin; see simulator.Simulator for the state, lifecycle.Lifecycle for the rest)."""

    def _drive_concurrent(self, inv: _Inv) -> None:
        """Managed Instances: the work lock only for a (re-)init; then run alongside the others."""
        acquired = self._acquire_work("invoke")
        with self._cv:
            self._pending_work -= 1
        try:
            env = None
            if acquired:
                try:
                    env = self._ready_env(inv)
                finally:
                    self._work.release()
            else:
                inv.r.status = "aborted"
            if env is not None:
                self._run_concurrent(env, inv)
        except Exception:  # noqa: BLE001 - report, never hang the caller
            log.exception("simulator: invocation %s failed inside the simulator", inv.r.request_id)
            inv.r.status = "aborted"
        finally:
            inv.r._responded.set()
            inv.r._done.set()
            with self._rec_cv:
                self._rec_cv.notify_all()

    def _run_concurrent(self, env: _Env, inv: _Inv) -> None:
        """Queue `inv` for any free worker; it ends at its /response or /error, a failure or its own timeout."""
        with self._cv:
            if env.phase != "ready":
                inv.r.status = "aborted"
                return
            env.runtime_queue.append(inv)
            self._cv.notify_all()
            waited_until = time.monotonic() + self._default_wait()
            timed_out = False
            while inv.failure is None and not inv.outcome_set and not self._stopping and env.phase == "ready":
                now = time.monotonic()
                left = (waited_until if inv.r.started_at is None else inv.deadline_mono) - now
                if left <= 0:
                    if inv.r.started_at is None:
                        inv.failure = ("failure", "Sandbox.Failure", "no runtime worker took the invocation")
                    else:
                        timed_out = True
                    break
                self._cv.wait(min(left, 0.5))
            if inv in env.runtime_queue:
                env.runtime_queue.remove(inv)
            self._finish_concurrent(env, inv, timed_out)

    def _start_concurrent(self, env: _Env, inv: _Inv) -> None:
        """A worker took `inv` (holds _cv): its timeout starts now, like its platform.start."""
        r = inv.r
        now = Instant.now()
        r.started_at = r.runtime_received_at = now
        inv.deadline_mono = now.mono + self.timeout_s
        r.deadline_ms = int(now.wall * 1000 + self.timeout_s * 1000)
        env.active[r.request_id] = inv
        start_rec: dict[str, Any] = {"requestId": r.request_id, "version": self.function_version}
        if inv.tracing:
            start_rec["tracing"] = inv.tracing
        self._emit(env, "platform.start", start_rec)

    def _finish_concurrent(self, env: _Env, inv: _Inv, timed_out: bool) -> None:
        """Status, runtimeDone (if the worker never answered) and the Managed Instances report. Holds _cv."""
        r = inv.r
        end = Instant.now()
        inv.finished = True
        env.active.pop(r.request_id, None)
        if r.started_at is None:  # never reached a worker
            r.status, r.error_type = (inv.failure[0], inv.failure[1]) if inv.failure else ("aborted", None)
            r.ended_at = end
            return
        if not inv.outcome_set:
            if timed_out:
                status, error_type = "timeout", "Sandbox.Timedout"
            elif inv.failure is not None:
                status, error_type = inv.failure[0], inv.failure[1]
            else:
                status, error_type = "aborted", None  # the simulator stopped, or the environment went away
            r.status, r.error_type = status, error_type
            r.runtime_done_at = end
            if self.lmi_runtime_done and status != "aborted":
                self._emit_runtime_done(env, inv, status, error_type)
        r.ended_at = r.runtime_done_at or end
        # Managed Instances report the duration (and the response spans) only: no billed duration,
        # no memory, no init duration.
        self._emit_report(env, inv, r, {"durationMs": ms_between(r.started_at, r.ended_at) or 0.0},
                          spans=response_spans(r))
