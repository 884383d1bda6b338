"""When to export, and making sure no export is open when Lambda freezes us.

The pieces, each small enough to test on its own:

* ``decide(now, state) -> Decision``: the one flush decision, a pure function over a
  ``FlushState`` snapshot (strategy, gate, budget, Retry-After, breaker, timer, what is
  pending). The exporter thread asks it what to do next, the events thread asks it at
  INVOKE whether a flush should start while the function runs, and a requested flush
  asks it whether it may run. Tested with a fake clock, no threads.
* ``FlushManager``: what the decision remembers about the past (the invocation
  pattern, consecutive failures, the last flush), and ``effective_strategy``.
* ``CircuitBreaker``: stops exporting inside invocations while the backend is down,
  and probes it again with jittered exponential backoff.
* ``ExportGate``: the freeze-safety gate. The exporter thread may only *start* an
  HTTP request while the gate is open; the events thread closes it right before
  ``/next`` and waits (bounded) for the request in flight.
* ``ExportWorker``: the one exporter thread, woken by its queue (``on_data``), by the
  events thread and by flush requests; it never polls. A flush with several signals
  pending drains them at once: the exporter thread one, a ``SendLane`` thread each of the
  others, so their requests wait for their answers together (one round trip to the
  backend instead of three). ``FlushCoordinator``: what the
  events thread calls (``on_invoke``, ``on_runtime_done``, ``before_next``,
  ``on_shutdown_event``).

Strategies (``FlushConfig.strategy``, ``Strategy``):

==========  ===================================================================
default     Adaptive. *Infrequent* functions (fewer than 2 invocations seen, or
            average interval over the last 20 > 120 s) are flushed at the end of
            every invocation (``end``); *frequent* ones are flushed by the
            ``periodic`` timer, so busy functions do not pay a hold of ``/next`` on
            every invocation.
end         Flush at the end of every invocation: ``before_next`` holds ``/next``
            until this invocation's ``platform.runtimeDone`` is in the aggregator,
            then flushes (bounded). Nothing waits in memory across a freeze, with
            one exception: no hold waits for the export client's import, so when
            an environment's first invocation ends before start-up imported it,
            that data goes at the next INVOKE (while the function runs) or at
            SHUTDOWN, never in flight across the freeze.
periodic    A real timer: every ``interval_s`` (while thawed, gate open) flush
            everything pending. The gate is open only from INVOKE until our next
            ``/next``, so a flush due at INVOKE starts then, while the function runs,
            and ``/next`` waits for it (at most ``flush_budget_s``); there is no wait
            for runtimeDone. Data may sit across a freeze until the next invocation
            or SHUTDOWN.
continuous  As ``periodic`` (the timer still drives metrics-only flushes), and in
            addition pending data is exported as soon as it arrives while the gate
            is open (at most one data-driven flush per ``CONTINUOUS_MIN_GAP_S``).
            Lowest latency, most requests.
==========  ===================================================================

In every strategy: a full batch (``max_batch_records``/``max_batch_bytes``
pending) starts exporting as soon as it is queued while the gate is open; an
invocation that may fill the buffer (what is pending at INVOKE plus the largest
volume one of the last ``VOLUME_HISTORY`` invocations brought reaches
``NEAR_BUDGET_FRACTION`` of the aggregator's budget) is held as in ``end``, so a
chatty function's data drains while it runs instead of being dropped; an
invocation whose deadline is within ``deadline_margin_s`` flushes at INVOKE, and
after ``ESCALATION_FAILURES`` consecutive failed flushes the effective strategy is
``continuous`` (a success resets it). With the breaker (default 3 failures) this
only matters while the breaker is open, i.e. it removes the hold of ``/next``.

Outages (what a dead or slow backend may cost an invocation):

* every request inside an invocation has a deadline of at most
  ``min(flush deadline, now + flush_budget_s, invocation deadline - deadline_margin_s)``;
* once failed requests have used ``flush_budget_s`` in an invocation, nothing more is
  sent in it (and the hold's flush returns at once);
* after ``breaker_failures`` failed flushes the breaker opens: no hold, no export
  inside invocations except one probe (one batch of <= ``PROBE_MAX_RECORDS``, deadline
  <= ``PROBE_TIMEOUT_S``) after a jittered backoff of 1 s, 2 s, 4 s ... capped at
  ``breaker_max_backoff_s``; data keeps buffering within the aggregator's budget
  (drop-oldest, counted); a successful probe closes the breaker;
* a batch that failed ``MAX_BATCH_ATTEMPTS`` times is dropped (``retries_exhausted``);
  ``Retry-After`` longer than a request's deadline holds every request until it passed.

So the flush part of a hold is at most ``flush_budget_s`` (+ ``GATE_CLOSE_GRACE_S``).
Every wait in this module is bounded, and never longer than ``MAX_WAIT_S`` at a time.

Shutdown: everything pending is sent in batches, every request's deadline being
``deadlineMs - shutdown_margin_s`` (even with the breaker open: it is the last
chance; if start-up is still importing the export client, the final flush waits for
that import until then at most, never inside a request); what is left at the end is
counted as ``export_failed`` when the last request failed
(refused, DNS, TLS, an error status: ``final_loss_reason``) or a ``Retry-After`` ends past the
deadline, else as ``shutdown_deadline``.

Lock order (a thread holding one may take only those after it; never the reverse):

1. ``FlushCoordinator._cond`` (never held while calling the worker or the gate)
2. ``ExportWorker._cond`` (held while building a ``FlushState`` snapshot)
3. the leaf locks, each held only for a read or an update and never while calling out:
   ``FlushManager._lock``, ``CircuitBreaker._lock``, ``ExportGate._cond``,
   ``Aggregator._cond``, ``SendLane._cond``.

The aggregator calls its ``on_data`` callback (``ExportWorker.wake``) after releasing its
own lock, so a producer never holds ``Aggregator._cond`` while taking ``ExportWorker._cond``.
No HTTP request is ever made while holding any of these locks. The RWLock of app.py is
outside all of them: telemetry threads hold its read lock while they add to the aggregator.
"""

from __future__ import annotations

import enum
import logging
import random
import threading
import time
from collections import OrderedDict, deque
from functools import partial
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Deque, Dict, List, Optional, Protocol, Sequence, Tuple

from lambda_otel import loss as loss_mod
from lambda_otel.config import STRATEGIES
from lambda_otel.exporter import ExportKind, FailureCause
from lambda_otel.log_once import LogOnce

if TYPE_CHECKING:  # pragma: no cover - typing only
    from opentelemetry.proto.metrics.v1.metrics_pb2 import ResourceMetrics

    from lambda_otel.aggregator import Batch
    from lambda_otel.config import FlushConfig
    from lambda_otel.exporter import ExportOutcome

log = logging.getLogger("lambda_otel.flush")

Clock = Callable[[], float]

HISTORY_SIZE = 20  # invocations remembered for the frequency decision
FREQUENT_THRESHOLD_S = 120.0  # average interval above this = infrequent
ESCALATION_FAILURES = 20  # consecutive failed flushes before forcing continuous
MAX_BATCH_ATTEMPTS = 5  # a batch that failed this often is dropped (retries_exhausted)
CONTINUOUS_MIN_GAP_S = 0.1  # continuous: at most one data-driven flush per this interval
MIN_REQUEST_S = 0.01  # a request is not started with less time than this before its deadline
NOT_READY_RETRY_S = 0.2  # the exporter's headers were not resolved yet: try again after this
FINAL_METRICS_RESERVE_S = 0.1  # the final flush keeps this (at most a quarter of its time) for its last metrics
RUNTIME_DONE_WAIT_FLOOR_S = 0.05  # the adaptive runtimeDone wait never shrinks below this
PROBE_MAX_RECORDS = 100  # a breaker probe is one small batch ...
PROBE_TIMEOUT_S = 0.5  # ... with a short deadline (also capped by flush_budget_s)
BREAKER_INITIAL_BACKOFF_S = 1.0
GATE_CLOSE_GRACE_S = 0.25  # slack on top of the in-flight request's own deadline
MAX_BATCHES_PER_FLUSH = 10_000  # loop bound; never reached with sane budgets
# A flush's signals go out at once when each recent request took at least this long (send_together).
SEND_TOGETHER_MIN_S = 0.002
RECENT_REQUESTS = 9  # requests whose durations send_together looks at
# A function whose invocations bring this share of the buffer budget is held for (any strategy).
NEAR_BUDGET_FRACTION = 0.5
VOLUME_HISTORY = 5  # invocations whose data volume the near-budget decision remembers
# While a hold keeps the gate open, a full queue makes platform telemetry wait this long for room
# (Lambda buffers it meanwhile; one window per hold, not per batch) before the oldest records are dropped.
ADMISSION_WAIT_S = 1.0
# The longest single wait: an idle worker re-decides at least this often, and no computed
# wait (a Retry-After, a far deadline) can reach threading.TIMEOUT_MAX.
MAX_WAIT_S = 5.0


def bounded(seconds: float) -> float:
    """A wait in [0, MAX_WAIT_S]: safe for ``Condition.wait`` whatever it was computed from."""
    if not seconds > 0.0:  # also catches NaN
        return 0.0
    return min(seconds, MAX_WAIT_S)


def wait_for_event(event: threading.Event, end: float, clock: Clock = time.monotonic) -> bool:
    """Wait until ``event`` is set or ``clock()`` reaches ``end``, in ``bounded`` steps that are
    bounded in count too (whatever the clock does); whether it is set."""
    remaining = end - clock()
    steps = int(min(remaining, 3600.0) / MAX_WAIT_S) + 2 if remaining > 0 else 1
    for _ in range(steps):
        remaining = end - clock()
        if event.is_set() or not remaining > 0:
            break
        event.wait(bounded(remaining))
    return event.is_set()


# --- the vocabulary -------------------------------------------------------------------------


class Strategy(enum.Enum):
    """The configured strategy; ``effective_strategy`` resolves DEFAULT and escalation."""

    DEFAULT = "default"
    END = "end"
    PERIODIC = "periodic"
    CONTINUOUS = "continuous"



class Occasion(enum.Enum):
    """Who asks ``decide``, and why."""

    BACKGROUND = "background"  # the exporter thread, looking for work on its own
    INVOKE = "invoke"  # the events thread at INVOKE: should a flush start while the function runs?
    REQUEST = "request"  # a flush someone asked for (end of invocation, deadline near)
    FINAL = "final"  # the SHUTDOWN flush


class Action(enum.Enum):
    WAIT = "wait"  # nothing to do now; look again after ``Decision.wait_s`` or when woken
    FLUSH = "flush"  # drain the queues until ``Decision.until``
    PROBE = "probe"  # breaker open: one small batch to see whether the backend is back
    DEFER = "defer"  # a requested flush may not run now (budget spent, Retry-After, breaker)
    FINAL = "final"  # send everything that fits before ``Decision.until``, count the rest


class DrainStatus(enum.Enum):
    """How draining one signal's queue ended."""

    EMPTY = "empty"  # everything was sent (or dropped and counted)
    FAILED = "failed"  # a retryable failure: the batch is back in the queue
    STOPPED = "stopped"  # gate closed, out of time or budget, Retry-After


# --- collaborators ----------------------------------------------------------------------------


class BatchQueue(Protocol):
    """What the worker and the coordinator need of the aggregator."""

    max_bytes: int
    max_records: int

    def add(self, signal: str, item: object, records: int, nbytes: Optional[int] = None,
            evict: bool = True) -> bool: ...

    def take_batch(self, signal: str, max_bytes: int, max_records: int) -> Optional["Batch"]: ...

    def requeue(self, batch: "Batch") -> None: ...

    def pending_records(self, signal: Optional[str] = None) -> int: ...

    def pending_bytes(self) -> int: ...

    def intake(self) -> Tuple[int, int]: ...

    def set_admission_wait(self, seconds: float) -> None: ...

    def discard_all(self, reason: str, signals: Sequence[str] = ...) -> int: ...

    def set_on_data(self, callback: Optional[Callable[[], None]]) -> None: ...

    def set_on_lost(self, callback: Optional[Callable[[str, list], None]]) -> None: ...


class Exporter(Protocol):
    def export(self, signal: str, items: Sequence[object], deadline: float) -> "ExportOutcome": ...

    def ready(self) -> bool: ...  # False while its HTTP stack is still being imported (start-up)


class MetricsSource(Protocol):
    def collect(self, now_ns: int) -> Optional["ResourceMetrics"]: ...

    def restore(self, items: Sequence["ResourceMetrics"]) -> None: ...  # a metrics batch dropped for good


# --- the one flush decision -------------------------------------------------------------------


def effective_strategy(configured: Strategy, average_interval: Optional[float], failures: int) -> Strategy:
    """``END``, ``PERIODIC`` or ``CONTINUOUS``: ``DEFAULT`` and escalation resolved.

    ``average_interval`` is the mean gap between the last ``HISTORY_SIZE`` invocations
    (None with fewer than 2); ``failures`` the consecutive failed flushes.
    """
    if failures >= ESCALATION_FAILURES:
        return Strategy.CONTINUOUS
    if configured is Strategy.DEFAULT:
        infrequent = average_interval is None or average_interval > FREQUENT_THRESHOLD_S
        return Strategy.END if infrequent else Strategy.PERIODIC
    return configured


@dataclass(frozen=True)
class FlushState:
    """Everything ``decide`` looks at, taken at one instant (all times on the monotonic clock)."""

    occasion: Occasion
    strategy: Strategy  # effective: END, PERIODIC or CONTINUOUS
    config: "FlushConfig"
    gate_open: bool = False
    budget_spent: bool = False  # failed requests used flush_budget_s in this invocation
    cap: Optional[float] = None  # no request of this invocation may end later (None: no invocation cap)
    invocation_deadline: Optional[float] = None  # the invocation's own deadline (INVOKE)
    not_before: float = 0.0  # Retry-After: no request before this instant
    breaker_open: bool = False
    next_probe_at: Optional[float] = None
    timer_due: Optional[float] = None  # when the strategy's timer flushes next (None: no timer)
    pending_records: int = 0
    pending_bytes: int = 0
    last_flush_end: float = float("-inf")
    request_deadline: Optional[float] = None  # REQUEST / FINAL: the deadline the asker gave
    client_ready: bool = True  # False while the export client is still being imported (start-up)
    left_over: bool = False  # the last hold ended with data it could not send


@dataclass(frozen=True)
class Decision:
    action: Action
    until: float = 0.0  # FLUSH / PROBE / FINAL: when the flush must be over
    wait_s: Optional[float] = None  # WAIT: look again after this long at the latest (None: when woken)


def decide(now: float, state: FlushState) -> Decision:
    """What to do now. Pure: the same snapshot always gives the same decision.

    The checks, in order: a final flush always runs; nothing starts from the background
    while the gate is closed; nothing starts while the export client is still being imported,
    once this invocation's export budget is spent, too close to the invocation's cap, or
    before a Retry-After has passed; while the breaker is open only a probe runs, once it is
    due; a requested flush then runs; otherwise a flush starts when the deadline is near
    (INVOKE), the last hold left data behind, the timer is due, a full batch is pending, or
    (continuous) anything is pending.
    """
    s = state
    cfg = s.config
    if s.occasion is Occasion.FINAL:
        return Decision(Action.FINAL, until=_or(s.request_deadline, now))
    asked = s.occasion is Occasion.REQUEST
    background = s.occasion is Occasion.BACKGROUND
    base_until = _or(s.request_deadline, now + cfg.flush_budget_s) if asked else now + cfg.flush_budget_s
    if s.cap is not None and not asked:
        base_until = min(base_until, s.cap)

    if background and not s.gate_open:
        return Decision(Action.WAIT)  # woken when /next returns
    if not s.client_ready:
        # No hold waits for an import: what is pending stays (the gate keeps it from crossing a
        # freeze in flight) and goes once the client is ready, which wakes the worker.
        return _not_now(asked)
    if s.budget_spent:
        return _not_now(asked)  # woken by the next invocation
    if background and s.cap is not None and now >= s.cap - MIN_REQUEST_S:
        return Decision(Action.WAIT)  # too close to the invocation deadline to start anything
    if now < s.not_before:
        return _not_now(asked, s.not_before - now)
    if s.breaker_open:
        probe_due = s.next_probe_at is not None and now >= s.next_probe_at
        if probe_due and (not background or s.pending_records > 0):
            probe_until = min(base_until, now + min(PROBE_TIMEOUT_S, cfg.flush_budget_s))
            return Decision(Action.PROBE, until=probe_until)
        # Probe due but nothing to probe with: woken by the next data.
        return _not_now(asked, None if probe_due or s.next_probe_at is None else s.next_probe_at - now)
    if asked:
        return Decision(Action.FLUSH, until=base_until)
    if (s.occasion is Occasion.INVOKE and s.invocation_deadline is not None
            and s.invocation_deadline - now < cfg.deadline_margin_s and s.cap is not None):
        return Decision(Action.FLUSH, until=s.cap)  # there is no later chance in this invocation
    if s.left_over and s.pending_records > 0:
        return Decision(Action.FLUSH, until=base_until)  # what the last hold could not send, while the function runs

    timer_due = s.timer_due is not None and now >= s.timer_due
    full = s.pending_records > 0 and (s.pending_records >= cfg.max_batch_records
                                      or s.pending_bytes >= cfg.max_batch_bytes)
    if timer_due or full:
        return Decision(Action.FLUSH, until=base_until)
    wait_s = None if s.timer_due is None else s.timer_due - now
    if s.strategy is Strategy.CONTINUOUS and s.pending_records > 0:
        next_at = s.last_flush_end + CONTINUOUS_MIN_GAP_S
        if not background or now >= next_at:
            return Decision(Action.FLUSH, until=base_until)
        wait_s = next_at - now if wait_s is None else min(wait_s, next_at - now)
    return Decision(Action.WAIT, wait_s=wait_s)


def send_together(signals: int, recent_requests_s: Sequence[float]) -> bool:  # ExportOutcome.round_trip_s
    """Whether a flush's signals are drained at once (the exporter thread and its lanes) rather
    than in turn: when several have data, and even the quickest of the recent requests took long
    enough for their waits to overlap with profit. A request to a backend on the same host takes
    ~1 ms, most of it our own CPU: sent at once they would cost more CPU (thread hand-offs) and
    memory (two more threads) and save nothing; a backend elsewhere answers in several ms, and in
    turn a hold would wait for every round trip. The quickest, not a mean: a busy CPU or a new
    connection makes a request slower, never quicker, so only the backend's distance keeps every
    request above ``SEND_TOGETHER_MIN_S``.
    With no request seen yet, in turn: the lanes (threads, and the memory each thread's allocator
    keeps) are started only for a backend that has shown it is worth it."""
    if signals < 2 or not recent_requests_s:
        return False
    return min(recent_requests_s) >= SEND_TOGETHER_MIN_S


def holds_next(strategy: Strategy, breaker_open: bool, near_budget: bool = False) -> bool:
    """Whether ``before_next`` holds ``/next`` for runtimeDone and flushes.

    ``end`` always does. Every strategy does for an invocation that may fill the buffer
    (``near_budget``): holding keeps the gate open while the function runs, so full batches
    drain as they arrive instead of being dropped. Never with the breaker open.
    """
    return not breaker_open and (strategy is Strategy.END or near_budget)


def near_budget(pending: Tuple[int, int], recent: Tuple[int, int], budget: Tuple[int, int]) -> bool:
    """Whether an invocation may fill the buffer: what is pending at INVOKE plus the largest
    volume a recent invocation brought reaches ``NEAR_BUDGET_FRACTION`` of the budget, in
    records or in bytes. Each argument is ``(records, bytes)``."""
    return any(p + v >= NEAR_BUDGET_FRACTION * b for p, v, b in zip(pending, recent, budget))


def request_deadline(now: float, flush_until: float, final: bool, budget_s: float, cap: Optional[float]) -> float:
    """The deadline of one request of a flush: the flush's, and inside an invocation also at most
    ``budget_s`` away and never past the invocation's cap."""
    if final:
        return flush_until
    d = min(flush_until, now + budget_s)
    return d if cap is None else min(d, cap)


def decide_managed_instances(now: float, state: FlushState) -> Decision:
    """``decide`` for Lambda Managed Instances: the environment never freezes and has no
    INVOKE, so there is no gate to respect, no invocation budget and no invocation cap; the
    timer, full batches, Retry-After and the breaker still decide when to export."""
    return decide(now, replace(state, gate_open=True, budget_spent=False, cap=None, invocation_deadline=None))


@dataclass(frozen=True)
class FlushPolicy:
    """How the environment constrains exports: the decision, and whether failed requests
    count against a per-invocation budget (only where an invocation waits for them)."""

    name: str
    decide: Callable[[float, FlushState], Decision]
    invocation_budget: bool


FREEZE_SAFE = FlushPolicy("freeze-safe", decide, invocation_budget=True)  # on-demand, provisioned, SnapStart
MANAGED_INSTANCES = FlushPolicy("managed-instances", decide_managed_instances, invocation_budget=False)


def final_loss_reason(last_failure: Optional[FailureCause]) -> str:
    """Why the records left at the end of the final flush are lost: the backend's failure when the
    last request failed for a reason other than time running out (refused, DNS, TLS, an error
    status...), else the deadline."""
    if last_failure is None or last_failure in (FailureCause.TIMEOUT, FailureCause.CLOSED):
        return loss_mod.SHUTDOWN_DEADLINE
    return loss_mod.EXPORT_FAILED


def _not_now(asked: bool, wait_s: Optional[float] = None) -> Decision:
    return Decision(Action.DEFER) if asked else Decision(Action.WAIT, wait_s=wait_s)


def _or(value: Optional[float], default: float) -> float:
    return default if value is None else value


# --- what the decision remembers ---------------------------------------------------------------


class FlushManager:
    """The invocation pattern, consecutive failures and the last flush: the decision's memory.

    Thread-safe (the events thread records invocations, the worker records flushes).
    All times are ``clock()`` instants (monotonic seconds).
    """

    def __init__(self, config: "FlushConfig", clock: Clock = time.monotonic) -> None:
        if config.strategy not in STRATEGIES:
            raise ValueError(f"unknown flush strategy {config.strategy!r}; allowed: {', '.join(STRATEGIES)}")
        self._config = config
        self._strategy = Strategy(config.strategy)
        self._clock = clock
        self._lock = threading.Lock()
        self._history: Deque[float] = deque(maxlen=HISTORY_SIZE)
        self._failures = 0
        self._last_flush: Optional[float] = None

    def record_invocation(self, now: Optional[float] = None) -> None:
        with self._lock:
            self._history.append(self._now(now))

    def renew_after_restore(self) -> None:
        with self._lock:
            self._history.clear()
            self._failures = 0
            self._last_flush = None

    @property
    def consecutive_failures(self) -> int:
        with self._lock:
            return self._failures

    def effective_strategy(self) -> Strategy:
        with self._lock:
            return self._effective_locked()

    def _effective_locked(self) -> Strategy:
        h = self._history
        average = (h[-1] - h[0]) / (len(h) - 1) if len(h) >= 2 else None
        return effective_strategy(self._strategy, average, self._failures)

    def next_timer_due(self, now: Optional[float] = None) -> Optional[float]:
        """When the timer should next flush, or None when the strategy has no timer.

        Before the first flush the timer is due at once.
        """
        now = self._now(now)
        with self._lock:
            if self._effective_locked() is Strategy.END:
                return None
            if self._last_flush is None:
                return now
            return self._last_flush + self._config.interval_s

    def record_flush(self, success: Optional[bool], now: Optional[float] = None) -> None:
        """Record a finished flush. ``None`` = nothing was sent (only restarts the timer)."""
        now = self._now(now)
        with self._lock:
            self._last_flush = now
            if success is None:
                return
            was_escalated = self._failures >= ESCALATION_FAILURES
            self._failures = 0 if success else self._failures + 1
            escalated = self._failures >= ESCALATION_FAILURES
        if escalated and not was_escalated:
            log.warning("%d consecutive failed flushes: flushing continuously, no longer holding /next",
                        ESCALATION_FAILURES)
        elif was_escalated and not escalated:
            log.info("flush succeeded: back to the %r strategy", self._config.strategy)

    def _now(self, now: Optional[float]) -> float:
        return self._clock() if now is None else now


class CircuitBreaker:
    """Opens after ``failures`` consecutive failed flushes; probes with jittered backoff.

    While open nothing is exported inside invocations except one small probe when
    ``probe_due``; ``/next`` is not held. The first backoff is ~1 s, doubling to
    ``max_backoff_s``; each wait is jittered to [50 %, 100 %] so a fleet of
    sandboxes does not probe a recovering backend in lockstep.
    """

    def __init__(self, failures: int, max_backoff_s: float, clock: Clock = time.monotonic,
                 rng: Callable[[], float] = random.random,
                 initial_backoff_s: float = BREAKER_INITIAL_BACKOFF_S) -> None:
        self._threshold = max(1, failures)
        self._max_backoff = max(initial_backoff_s, max_backoff_s)
        self._initial = initial_backoff_s
        self._clock = clock
        self._rng = rng
        self._lock = threading.Lock()
        self._failures = 0
        self._open = False
        self._backoff = initial_backoff_s
        self._next_probe: Optional[float] = None

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._open

    @property
    def next_probe_at(self) -> Optional[float]:
        with self._lock:
            return self._next_probe if self._open else None

    def probe_due(self, now: Optional[float] = None) -> bool:
        now = self._clock() if now is None else now
        with self._lock:
            return self._open and self._next_probe is not None and now >= self._next_probe

    def record(self, success: bool, now: Optional[float] = None) -> None:
        """Feed one flush (or probe) result."""
        now = self._clock() if now is None else now
        with self._lock:
            if success:
                was_open = self._open
                self._failures, self._open, self._backoff, self._next_probe = 0, False, self._initial, None
            else:
                self._failures += 1
                was_open = self._open
                if self._open:  # a failed probe: back off further
                    self._backoff = min(self._backoff * 2, self._max_backoff)
                elif self._failures >= self._threshold:
                    self._open = True
                if self._open:
                    self._next_probe = now + self._backoff * (0.5 + 0.5 * self._rng())
            failures = self._failures
        if success and was_open:
            log.info("export breaker closed: backend reachable again")
        elif not success and not was_open and self._open:
            log.warning("export breaker open after %d failed flushes: buffering, probing with backoff "
                        "(no export or hold inside invocations)", failures)


class ExportGate:
    """Freeze safety: requests start only while open; ``close`` waits for the one in flight.

    The worker brackets every HTTP request with ``try_begin``/``end``. The events
    thread calls ``open`` when ``/next`` returns and ``close(timeout)`` right before
    it calls ``/next`` again. ``close`` returns False if a request is still open at
    the timeout: the caller decides what to do (``FlushCoordinator`` logs it, once,
    and goes to ``/next`` anyway rather than turn a stuck socket into a function
    timeout; every request's deadline is capped, so this should not happen).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._open = False
        self._in_flight = 0
        self._deadlines: Dict[int, float] = {}  # token -> deadline of each request in flight
        self._tokens = 0
        self.close_timeouts = 0

    def open(self) -> None:
        with self._cond:
            self._open = True
            self._cond.notify_all()

    def close(self, timeout: Optional[float] = None, grace: float = GATE_CLOSE_GRACE_S) -> bool:
        """Stop new requests; wait for the one in flight. True when none is open.

        ``timeout`` None: wait until the in-flight request's own deadline plus ``grace``
        (the request never outlives its deadline, so this is the natural bound).
        """
        with self._cond:
            self._open = False
            self._cond.notify_all()
            if timeout is None:
                latest = max(self._deadlines.values(), default=time.monotonic())
                timeout = max(0.0, latest - time.monotonic()) + grace
            end = time.monotonic() + max(0.0, timeout)
            while self._in_flight:
                remaining = end - time.monotonic()
                if not remaining > 0:
                    self.close_timeouts += 1
                    first = self.close_timeouts == 1
                    break
                self._cond.wait(bounded(remaining))
            else:
                return True
        if first:
            log.warning("export gate: a request was still open %.3fs after close; calling /next anyway",
                        timeout)
        return False

    @property
    def is_open(self) -> bool:
        with self._cond:
            return self._open

    @property
    def in_flight(self) -> int:
        with self._cond:
            return self._in_flight

    def try_begin(self, deadline: Optional[float] = None) -> Optional[int]:
        """Start a request if the gate is open (atomically with respect to ``close``).

        Returns a token for ``end`` (None: closed, do not send). ``deadline`` (monotonic)
        is when the request will have ended at the latest; ``close`` waits for it.
        """
        with self._cond:
            if not self._open:
                return None
            self._in_flight += 1
            self._tokens += 1
            if deadline is not None:
                self._deadlines[self._tokens] = deadline
            return self._tokens

    def end(self, token: int) -> None:
        with self._cond:
            self._in_flight -= 1
            self._deadlines.pop(token, None)
            self._cond.notify_all()



@dataclass
class FlushResult:
    """What one flush did. ``success`` is None when nothing was sent."""

    success: Optional[bool] = None
    sent: Dict[str, int] = field(default_factory=dict)  # records accepted, per signal
    requests: int = 0
    deferred: bool = False  # stopped before the queue was empty (gate, budget, breaker, Retry-After)
    shutdown_dropped: int = 0  # final flush only: records left unsent at the end
    last_failure: Optional[FailureCause] = None  # why the last request failed (None: it did not)


class FlushTicket:
    """A flush asked of the worker; ``wait(timeout)`` returns True once it has finished."""

    def __init__(self, deadline: float, final: bool = False) -> None:
        self.deadline = deadline
        self.final = final
        self.result: Optional[FlushResult] = None
        self._done = threading.Event()

    def wait(self, timeout: float) -> bool:
        return wait_for_event(self._done, time.monotonic() + max(0.0, timeout))

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def _finish(self, result: FlushResult) -> None:
        self.result = result
        self._done.set()


class _Drain:
    """One signal's drain handed to a ``SendLane``: done once ``status`` or ``error`` is set.

    It knows the batch its current request carries, so that a final flush that cannot wait for it
    any longer (``abandon``) counts that batch, and the lane then neither takes another nor counts
    that one again: every record is sent or counted, once.
    """

    def __init__(self, signal: str, result: FlushResult, run: Callable[["_Drain"], DrainStatus]) -> None:
        self.signal = signal
        self.result = result  # the lane's own: merged into the flush's once done
        self.run = run
        self.status: Optional[DrainStatus] = None
        self.error: Optional[BaseException] = None
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._holding: Optional["Batch"] = None
        self._abandoned = False

    def take(self, take_batch: Callable[[], Optional["Batch"]]) -> Optional["Batch"]:
        """Take the next batch and hold it (None once abandoned: the final flush counts the queue)."""
        with self._lock:
            if self._abandoned:
                return None
            self._holding = take_batch()
            return self._holding

    def settle(self) -> bool:
        """The held batch's request is over: True when its outcome is still the lane's to account."""
        with self._lock:
            self._holding = None
            return not self._abandoned

    def abandon(self) -> Optional["Batch"]:
        """The final flush's deadline passed: the batch the lane's request carries, for the caller to
        count (None: it holds none). It may still arrive; counting it lost is the honest report."""
        with self._lock:
            self._abandoned = True
            batch, self._holding = self._holding, None
            return batch


class SendLane(threading.Thread):
    """A thread that drains one signal at a time for the exporter thread.

    The exporter thread ``submit``s a drain and runs another signal's itself; each request still
    starts only through the gate, with the deadline the exporter thread computed, so a lane adds
    no request the gate does not know of. Idle, it waits on its own condition (bounded waits).
    """

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._cond = threading.Condition(threading.Lock())
        self._job: Optional[_Drain] = None
        self._stopping = False

    def submit(self, job: _Drain) -> bool:
        """Hand ``job`` over; False when the lane is busy or stopping (run it elsewhere)."""
        with self._cond:
            if self._job is not None or self._stopping:
                return False
            self._job = job
            self._cond.notify()
            return True

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()

    def run(self) -> None:
        while True:
            with self._cond:
                while self._job is None and not self._stopping:
                    self._cond.wait(MAX_WAIT_S)
                if self._job is None:
                    return
                job = self._job
            try:
                job.status = job.run(job)
            except BaseException as exc:  # noqa: BLE001 - handed to the exporter thread
                job.error = exc
            finally:
                with self._cond:
                    self._job = None
                job.done.set()


SEND_LANES = len(loss_mod.SIGNALS) - 1  # the exporter thread drains one signal itself


class ExportWorker(threading.Thread):
    """The exporter thread: it decides on and drives every HTTP request (its lanes send some).

    Like the OTel SDK's BatchSpanProcessor: one thread, one condition variable, woken by
    its queue (``on_data``), by ``request_flush``, ``begin_invocation`` and ``wake``; what
    it does each time it wakes is ``decide``'s answer, so it never polls. Every request
    starts only through the ``ExportGate`` and its deadline is capped by the flush deadline,
    the invocation's cap (``begin_invocation``) and ``flush_budget_s``. ``clock`` must be
    ``time.monotonic`` or share its epoch: request deadlines go to the exporter and the
    gate, which use ``time.monotonic``.
    """

    def __init__(self, aggregator: BatchQueue, exporter: Exporter, metrics_state: Optional[MetricsSource],
                 manager: FlushManager, gate: ExportGate, loss: loss_mod.LossCounter, config: "FlushConfig",
                 clock: Clock = time.monotonic, breaker: Optional[CircuitBreaker] = None,
                 wall_ns: Callable[[], int] = time.time_ns, policy: FlushPolicy = FREEZE_SAFE) -> None:
        super().__init__(name="lambda-otel-export", daemon=True)
        self.policy = policy
        self.aggregator = aggregator
        self.exporter = exporter
        self.metrics_state = metrics_state
        self.loss = loss
        self.gate = gate
        self.manager = manager
        self.config = config
        self.breaker = breaker or CircuitBreaker(config.breaker_failures, config.breaker_max_backoff_s, clock)
        self._clock = clock
        self._wall_ns = wall_ns
        self._cond = threading.Condition()
        self._tickets: Deque[FlushTicket] = deque()
        self._stopping = False
        self._cap: Optional[float] = None  # latest allowed request deadline in this invocation
        self._invocation_deadline: Optional[float] = None
        self._failing_spent = 0.0  # seconds spent on failed requests in this invocation
        self._not_before = 0.0  # Retry-After: no request before this instant
        self._once = LogOnce()  # one line per kind of problem (no endpoint per signal, export raised, collect raised)
        self.flushes = 0
        self._last_flush_end = float("-inf")
        self._left_over = False  # the last hold ended with data pending (sent first, at the next chance)
        self._lanes: List[SendLane] = []  # threads, started by the first flush with two signals pending
        self._draining: Dict[str, _Drain] = {}  # signals a lane still drains (a late one, past its wait)
        self._recent_requests: Deque[float] = deque(maxlen=RECENT_REQUESTS)  # ExportOutcome.round_trip_s
        aggregator.set_on_data(self.wake)  # a full batch starts at once, without polling
        aggregator.set_on_lost(self._lost_for_good)  # evicted metrics give their loss counts back

    # -- called from other threads ------------------------------------------------
    def request_flush(self, deadline: float, final: bool = False) -> FlushTicket:
        ticket = FlushTicket(deadline, final)
        with self._cond:
            if self._stopping:
                ticket._finish(FlushResult(deferred=True))
                return ticket
            self._tickets.append(ticket)
            self._cond.notify_all()
        return ticket

    def begin_invocation(self, cap: Optional[float], deadline: Optional[float] = None) -> None:
        """A new invocation (or SHUTDOWN, cap None): fresh export budget, new deadline cap."""
        with self._cond:
            self._cap = cap
            self._invocation_deadline = deadline
            self._failing_spent = 0.0
            self._cond.notify_all()

    def end_invocation_by(self, until: float) -> None:
        """A hold's flush: no request of this invocation may end after ``until`` (the cap until the
        next ``begin_invocation``), so one that starts after the hold's flush (a full batch, while the
        gate is still open) cannot make the closing of the gate wait past the hold's bound."""
        with self._cond:
            self._cap = until if self._cap is None else min(self._cap, until)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def note_hold_end(self) -> None:
        """The events thread, at the end of a hold: whatever is still pending is sent at the next
        chance (the next INVOKE, or as soon as the export client is ready while the gate is open)."""
        with self._cond:
            self._left_over = self.aggregator.pending_records() > 0

    def renew_after_restore(self) -> None:
        """SnapStart restore: no Retry-After, budget or breaker state from the snapshot's time."""
        with self._cond:
            self._not_before = 0.0
            self._failing_spent = 0.0
            self._last_flush_end = float("-inf")
            self._left_over = False
            self._cond.notify_all()
        self.breaker.record(True, self._clock())

    def decision(self, occasion: Occasion) -> Decision:
        """``decide`` over the current state (the events thread asks with ``Occasion.INVOKE``)."""
        with self._cond:
            now = self._clock()
            return self.policy.decide(now, self._state_locked(now, occasion))

    def stop(self, timeout: float) -> bool:
        """Stop after the current request; True if the thread ended within ``timeout``."""
        with self._cond:
            self._stopping = True
            tickets, self._tickets = list(self._tickets), deque()
            lanes = list(self._lanes)
            self._cond.notify_all()
        for t in tickets:
            t._finish(FlushResult(deferred=True))
        for lane in lanes:
            lane.stop()
        if self.is_alive():
            self.join(bounded(timeout))
        return not self.is_alive()

    # -- the thread -----------------------------------------------------------------
    def run(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                ticket = self._tickets.popleft() if self._tickets else None
                now = self._clock()
                if ticket is None:
                    decision = self.policy.decide(now, self._state_locked(now, Occasion.BACKGROUND))
                    if decision.action is Action.WAIT:
                        self._cond.wait(bounded(MAX_WAIT_S if decision.wait_s is None else decision.wait_s))
                        continue
                else:
                    occasion = Occasion.FINAL if ticket.final else Occasion.REQUEST
                    decision = self.policy.decide(now, self._state_locked(now, occasion, ticket.deadline))
            try:
                result = self._act(decision)
            except Exception:  # never let the exporter thread die silently
                log.exception("export worker: unexpected error (continuing)")
                result = FlushResult(success=False)
            if ticket is not None:
                ticket._finish(result)

    def _state_locked(self, now: float, occasion: Occasion, request_deadline: Optional[float] = None) -> FlushState:
        return FlushState(
            occasion=occasion,
            strategy=self.manager.effective_strategy(),
            config=self.config,
            gate_open=self.gate.is_open,
            budget_spent=self._failing_spent >= self.config.flush_budget_s,
            cap=self._cap,
            invocation_deadline=self._invocation_deadline,
            not_before=self._not_before,
            breaker_open=self.breaker.is_open,
            next_probe_at=self.breaker.next_probe_at,
            timer_due=self.manager.next_timer_due(now),
            pending_records=self.aggregator.pending_records(),
            pending_bytes=self.aggregator.pending_bytes(),
            last_flush_end=self._last_flush_end,
            request_deadline=request_deadline,
            client_ready=self.exporter.ready(),
            left_over=self._left_over,
        )

    def _act(self, decision: Decision) -> FlushResult:
        if decision.action is Action.FLUSH:
            return self._flush(decision.until)
        if decision.action is Action.PROBE:
            return self._probe(decision.until)
        if decision.action is Action.FINAL:
            return self._final_flush(decision.until)
        return FlushResult(deferred=True)  # DEFER (a WAIT never reaches here)

    # -- flushing -------------------------------------------------------------------
    def _flush(self, until: float) -> FlushResult:
        """Drain the queues once (the periodic/explicit flush)."""
        with self._cond:
            self._left_over = False  # this flush is the chance it was waiting for
        self._collect_metrics()
        result = FlushResult()
        for status in self._drain_together(until, result, final=False):
            if status is not DrainStatus.EMPTY:
                result.deferred = True
                if status is DrainStatus.FAILED:
                    result.success = False
        self._record(result)
        return result

    def _probe(self, until: float) -> FlushResult:
        """One small batch with a short deadline, to see whether the backend is back."""
        self._collect_metrics()
        result = FlushResult()
        busy = self._busy_signals()
        for signal in loss_mod.SIGNALS:
            if signal not in busy and self.aggregator.pending_records(signal):
                status = self._drain_signal(signal, until, result, final=False, max_records=PROBE_MAX_RECORDS,
                                            max_batches=1)
                if status is DrainStatus.FAILED:  # feeds the breaker: the next probe waits a longer backoff
                    result.success = False
                break
        result.deferred = self.aggregator.pending_records() > 0
        if result.success is None and result.requests == 0:
            # Nothing could be sent (gate closed, nothing pending): try again after the next backoff.
            return result
        self._record(result)
        return result

    def _final_flush(self, until: float) -> FlushResult:
        """SHUTDOWN: send everything that fits before ``until``; count the rest; then one last
        metrics request with those counts, in time kept aside for it."""
        self._collect_metrics()
        result = FlushResult()
        last_until, until = until, until - min(FINAL_METRICS_RESERVE_S, max(0.0, until - self._clock()) / 4)
        for _ in range(MAX_BATCH_ATTEMPTS):  # passes: a signal that failed is retried next pass
            self._wait_for_late_lanes(until)  # a lane an earlier flush left running: its signal next
            if self.aggregator.pending_records() == 0 or self._clock() >= until:
                break
            if not self._client_ready_by(until):
                break  # start-up's import did not end in time: what is left is counted below
            with self._cond:
                not_before = self._not_before
            if not_before >= until:
                # The backend asked us to wait past the deadline: what is left is lost to its
                # answer (export_failed), not to our time.
                result.last_failure = result.last_failure or FailureCause.RESPONSE
                break
            with self._cond:  # honour Retry-After (bounded: it ends before the deadline)
                self._cond.wait_for(lambda: self._stopping or self._clock() >= not_before,
                                    bounded(not_before - self._clock()))
            if DrainStatus.FAILED in self._drain_together(until, result, final=True):
                result.success = False
        overran = self._abandon_late_lanes()
        unsent = self.aggregator.discard_all(final_loss_reason(result.last_failure)) + overran
        self._send_last_metrics(last_until, result)
        result.shutdown_dropped = unsent
        result.deferred = unsent > 0
        self._record(result)
        return result

    def _abandon_late_lanes(self) -> int:
        """The final flush's end: a lane still sending now (after every pass waited for it; only a
        starved CPU gets here, the watchdog cuts each request at its deadline) has its batch counted
        as ``shutdown_deadline``; the records counted."""
        with self._cond:
            late = [job for job in self._draining.values() if not job.done.is_set()]
        counted = 0
        for job in late:
            batch = job.abandon()
            if batch is not None:
                self.loss.add(batch.signal, loss_mod.SHUTDOWN_DEADLINE, batch.records)
                self._lost_for_good(batch.signal, batch.items)
                counted += batch.records
        if late:
            log.warning("final flush: an export outlasted the shutdown deadline; the %d records it carried are "
                        "counted as shutdown_deadline (they may still arrive)", counted)
        return counted

    def _client_ready_by(self, until: float) -> bool:
        """Whether the export client is ready, waiting (woken by start-up) until ``until`` at most
        for its import: an export started before would wait for that import inside the request,
        where no deadline can cut it."""
        with self._cond:
            while not self.exporter.ready() and not self._stopping:
                remaining = until - self._clock()
                if not remaining > 0:
                    return False
                self._cond.wait(bounded(remaining))
            return self.exporter.ready()

    def _send_last_metrics(self, until: float, result: FlushResult) -> None:
        """The losses the final flush just counted, in one metrics request, so the backend's
        ``lambda_otel.dropped`` adds up to the shutdown line. Not queued and not counted if it
        fails: it only describes the loss, which the shutdown line logs anyway."""
        if self.metrics_state is None or loss_mod.METRICS in self._busy_signals():
            return
        try:
            rm = self.metrics_state.collect(self._wall_ns())
        except Exception:  # logged by the first collect that failed
            return
        now = self._clock()
        if rm is None or until - now < MIN_REQUEST_S or not self.exporter.ready():
            return
        from lambda_otel.aggregator import Batch
        from lambda_otel.otlp import count_records

        records = count_records(loss_mod.METRICS, rm)
        token = self.gate.try_begin(until)
        if token is None:
            return
        try:
            outcome = self._export(loss_mod.METRICS, Batch(loss_mod.METRICS, [rm], records, 0), until)
        finally:
            self.gate.end(token)
        result.requests += 1
        if outcome is not None and outcome.kind is ExportKind.SUCCESS:
            result.sent[loss_mod.METRICS] = result.sent.get(loss_mod.METRICS, 0) + records

    def _drain_together(self, until: float, result: FlushResult, final: bool) -> List[DrainStatus]:
        """Drain every signal with data pending, at once if ``send_together`` says so: the first
        here, the others on the lanes; their statuses once all are done. In turn, as before there
        were lanes: each signal is looked at when its turn comes, and a flush stops at the first
        signal not emptied (the backend is failing, or time is out), the final flush only when
        time is out."""
        busy = self._busy_signals()
        with self._cond:
            recent = list(self._recent_requests)
        statuses = [DrainStatus.STOPPED] * len(busy)  # a signal a late lane still drains: not this time
        pending = [s for s in loss_mod.SIGNALS if s not in busy and self.aggregator.pending_records(s)]
        if not send_together(len(pending), recent):
            for signal in loss_mod.SIGNALS:
                if signal in busy:
                    continue
                statuses.append(self._drain_signal(signal, until, result, final))
                if statuses[-1] is DrainStatus.STOPPED or (statuses[-1] is DrainStatus.FAILED and not final):
                    break
            return statuses
        jobs: List[_Drain] = []
        try:
            for signal in pending[1:]:
                part = FlushResult()
                job = _Drain(signal, part, lambda job, s=signal, p=part: self._drain_signal(s, until, p, final, job=job))
                if self._lane_for(job):
                    jobs.append(job)
                else:  # no lane free: in turn, here
                    statuses.append(self._drain_signal(signal, until, result, final))
            statuses.append(self._drain_signal(pending[0], until, result, final))
        except BaseException:
            error = self._join(jobs, until, result, statuses)  # no lane's signal is left running unowned
            if error is not None:
                log.error("export lane failed beside the exporter thread's own error: %r", error)
            raise
        error = self._join(jobs, until, result, statuses)
        if error is not None:
            raise error
        for signal in loss_mod.SIGNALS:  # data that came for another signal meanwhile
            if signal not in pending and signal not in busy and self.aggregator.pending_records(signal):
                statuses.append(self._drain_signal(signal, until, result, final))
        return statuses

    def _join(self, jobs: List[_Drain], until: float, result: FlushResult,
              statuses: List[DrainStatus]) -> Optional[BaseException]:
        """Wait for the lanes' drains until ``until`` + ``GATE_CLOSE_GRACE_S`` (their requests are
        cut by their own deadlines before then) and merge their results; the first error raised in
        a lane is returned. A drain still running then (a starved CPU) is remembered as owning its
        signal: no other drain takes that signal until it is done."""
        error: Optional[BaseException] = None
        end = until + GATE_CLOSE_GRACE_S
        for job in jobs:
            if not wait_for_event(job.done, end, self._clock):
                with self._cond:
                    self._draining[job.signal] = job
                self._once.warning(log, "lane_late", "export of %s outlasted its flush's deadline; its outcome "
                                   "is not in this flush's result", job.signal)
                statuses.append(DrainStatus.STOPPED)
            elif job.error is not None:
                error = error or job.error
                statuses.append(DrainStatus.FAILED)
            else:
                _merge(result, job.result)
                statuses.append(job.status or DrainStatus.STOPPED)
        return error

    def _busy_signals(self) -> set:
        """Signals a late lane still drains (see ``_join``): every drain path leaves them alone."""
        with self._cond:
            self._draining = {s: job for s, job in self._draining.items() if not job.done.is_set()}
            return set(self._draining)

    def _wait_for_late_lanes(self, until: float) -> None:
        """The final flush: let a late lane finish (bounded by ``until``), so that its signal can be
        drained, and what is left counted, after it."""
        with self._cond:
            late = list(self._draining.values())
        for job in late:
            wait_for_event(job.done, until, self._clock)

    def _lane_for(self, job: _Drain) -> bool:
        """Give ``job`` to an idle lane (started on first use); False when none is free."""
        with self._cond:
            if self._stopping:
                return False
            lanes = list(self._lanes)
        for lane in lanes:
            if lane.submit(job):
                return True
        with self._cond:  # stop() takes its list of lanes under this lock: none is added after it
            if self._stopping or len(self._lanes) >= SEND_LANES:
                return False
            lane = SendLane(f"lambda-otel-export-lane-{len(self._lanes) + 1}")
            self._lanes.append(lane)
        lane.start()
        return lane.submit(job)

    def _drain_signal(self, signal: str, until: float, result: FlushResult, final: bool,
                      max_records: Optional[int] = None, max_batches: int = MAX_BATCHES_PER_FLUSH,
                      job: Optional[_Drain] = None) -> DrainStatus:
        """Send batches of one signal until its queue is empty, the gate closes, or time runs out.
        ``job``: the lane's drain this runs for (None on the exporter thread)."""
        cfg = self.config
        take = partial(self.aggregator.take_batch, signal, cfg.max_batch_bytes, max_records or cfg.max_batch_records)
        for _ in range(max_batches):
            now = self._clock()
            with self._cond:
                cap, not_before = self._cap, self._not_before
                spent = self.policy.invocation_budget and self._failing_spent >= cfg.flush_budget_s
            req_deadline = request_deadline(now, until, final, cfg.flush_budget_s, cap)
            if req_deadline - now < MIN_REQUEST_S or now < not_before or (spent and not final):
                return DrainStatus.STOPPED
            token = self.gate.try_begin(req_deadline)
            if token is None:
                return DrainStatus.STOPPED
            batch = None
            try:
                batch = take() if job is None else job.take(take)
                if batch is None:
                    return DrainStatus.EMPTY
                started = self._clock()
                try:
                    outcome = self._export(signal, batch, req_deadline)
                finally:
                    if job is not None and not job.settle():
                        batch = None  # the final flush gave up on this request and counted its batch
                if batch is None:
                    return DrainStatus.STOPPED
                elapsed = self._clock() - started
                if outcome is not None and outcome.round_trip_s is not None:
                    with self._cond:
                        self._recent_requests.append(outcome.round_trip_s)
            finally:
                self.gate.end(token)
            kind = ExportKind.RETRYABLE if outcome is None else outcome.kind
            if kind is ExportKind.NOT_READY:  # nothing was sent (headers not resolved yet): not a failure
                self.aggregator.requeue(batch)
                with self._cond:
                    self._not_before = max(self._not_before, self._clock() + NOT_READY_RETRY_S)
                return DrainStatus.STOPPED
            result.requests += 1
            result.last_failure = None
            if kind is ExportKind.SUCCESS:
                # Partial-success rejections are counted by the exporter itself.
                rejected = min(batch.records, max(0, outcome.rejected_records))
                result.sent[signal] = result.sent.get(signal, 0) + batch.records - rejected
                if result.success is None:
                    result.success = True
            elif kind is ExportKind.REJECTED:  # the backend answered: it is up, the data is bad
                self.loss.add(signal, loss_mod.EXPORT_REJECTED, batch.records)
                self._lost_for_good(signal, batch.items)
                if result.success is None:
                    result.success = True
            elif kind is ExportKind.NO_ENDPOINT:
                self.loss.add(signal, loss_mod.NO_ENDPOINT, batch.records)
                self._once.warning(log, ("no_endpoint", signal),
                                   "no endpoint configured for %s: dropping them (counted as no_endpoint)", signal)
            else:  # RETRYABLE (or an exception)
                # Nothing drains the queue now: platform telemetry must not wait for room (that
                # delays runtimeDone, and so the hold, by ADMISSION_WAIT_S per batch). Next hold re-arms it.
                self.aggregator.set_admission_wait(0.0)
                result.last_failure = FailureCause.RESPONSE if outcome is None else outcome.cause
                retry_after = None if outcome is None else outcome.retry_after
                with self._cond:
                    self._failing_spent += elapsed
                    if retry_after:
                        self._not_before = max(self._not_before, self._clock() + retry_after)
                batch.attempts += 1
                if batch.attempts >= MAX_BATCH_ATTEMPTS and not final:  # final: what is left is counted at the end
                    self.loss.add(signal, loss_mod.RETRIES_EXHAUSTED, batch.records)
                    self._lost_for_good(signal, batch.items)
                else:
                    self.aggregator.requeue(batch)  # keeps batch.attempts
                return DrainStatus.FAILED
        return DrainStatus.STOPPED if self.aggregator.pending_records(signal) else DrainStatus.EMPTY

    def _lost_for_good(self, signal: str, items: Sequence[object]) -> None:
        """Metrics items the backend will never have (rejected, retries exhausted, or dropped by the
        queue: queue_full, discard_all): with delta temporality, the loss counts they carried are
        reported again by the next collect (MetricsState.restore), so the exported
        lambda_otel.dropped still sums to the shutdown line. Not for no_endpoint: nothing is ever
        delivered there."""
        if signal == loss_mod.METRICS and self.metrics_state is not None:
            self.metrics_state.restore(items)

    def _export(self, signal: str, batch: "Batch", deadline: float) -> Optional["ExportOutcome"]:
        """One export; None when the exporter raised (it should not; treated as retryable)."""
        try:
            return self.exporter.export(signal, batch.items, deadline)
        except Exception as exc:
            self._once.warning(log, "export_raised", "export of %s raised %r; treating as retryable", signal, exc)
            return None

    def _collect_metrics(self) -> None:
        """Metrics ride along with every flush (including ``lambda_otel.dropped``)."""
        if self.metrics_state is None:
            return
        try:
            rm = self.metrics_state.collect(self._wall_ns())
        except Exception as exc:
            self._once.warning(log, "collect_raised", "metrics collection failed: %r", exc)
            return
        if rm is not None:
            from lambda_otel.otlp import count_records

            self.aggregator.add(loss_mod.METRICS, rm, records=count_records(loss_mod.METRICS, rm), evict=True)

    def _record(self, result: FlushResult) -> None:
        self.flushes += 1
        now = self._clock()
        with self._cond:
            self._last_flush_end = now
        self.manager.record_flush(result.success, now)
        if result.success is not None:
            self.breaker.record(result.success, now)


def _merge(into: FlushResult, part: FlushResult) -> None:
    """Add a lane's result to the flush's: a failure anywhere makes the flush a failure."""
    if part.success is False:
        into.success = False
    elif part.success is True and into.success is None:
        into.success = True
    for signal, records in part.sent.items():
        into.sent[signal] = into.sent.get(signal, 0) + records
    into.requests += part.requests
    into.last_failure = into.last_failure or part.last_failure


@dataclass
class ShutdownSummary:
    """What the final flush did (logged once by ``on_shutdown_event``)."""

    sent: Dict[str, int]  # records sent during the final flush, per signal
    dropped: Dict[str, int]  # records lost over the process's life, per reason
    shutdown_deadline: int  # records left unsent by this final flush
    elapsed_s: float
    completed: bool  # the final flush finished (False: the worker did not answer in time)


@dataclass
class HoldReport:
    """What the last ``before_next`` did, for tests and debugging."""

    held: bool = False  # waited for runtimeDone and flushed
    runtime_done: bool = False  # this invocation's runtimeDone arrived within the wait
    flushed: Optional[FlushResult] = None
    gate_closed: bool = True  # False: a request was still open when we gave up waiting
    elapsed_s: float = 0.0


class FlushCoordinator:
    """What the events thread calls around ``/next``; owns the freeze-safe hold.

    Timekeeping: Lambda's ``deadlineMs`` (epoch ms) is converted once to the
    monotonic clock when the event arrives.
    """

    _RECENT_DONE = 64  # runtimeDone request ids remembered (late ones are harmless)

    def __init__(self, manager: FlushManager, gate: ExportGate, worker: ExportWorker,
                 config: "FlushConfig", clock: Clock = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.manager = manager
        self.gate = gate
        self.worker = worker
        self.config = config
        self._clock = clock
        self._wall = wall
        self._cond = threading.Condition()
        self._done: "OrderedDict[str, float]" = OrderedDict()
        self._current: Optional[Tuple[str, float]] = None  # (request_id, monotonic deadline)
        self._rd_wait = config.runtime_done_wait_s
        self._rd_degraded = False
        self._gave_up: "OrderedDict[str, float]" = OrderedDict()  # holds that missed runtimeDone
        self._invoke_flush: Optional[FlushTicket] = None  # a flush due at INVOKE, waited for before /next
        self._volumes: Deque[Tuple[int, int]] = deque(maxlen=VOLUME_HISTORY)  # (records, bytes) per invocation
        self._intake_at_invoke: Optional[Tuple[int, int]] = None
        self._near_budget = False  # the current invocation may fill the buffer: hold for it
        self._telemetry_drops = 0  # platform.logsDropped seen (a runtimeDone may be among the lost)
        self.last_hold = HoldReport()

    @property
    def runtime_done_wait_s(self) -> float:
        """The current (adaptive) bound on waiting for runtimeDone."""
        with self._cond:
            return self._rd_wait

    def to_monotonic(self, epoch_ms: int) -> float:
        return self._clock() + (epoch_ms / 1000.0 - self._wall())

    # -- events thread ----------------------------------------------------------------
    def on_invoke(self, request_id: str, deadline_ms: int) -> None:
        """Right after ``/next`` returned INVOKE: open the gate, note the invocation."""
        now = self._clock()
        deadline = self.to_monotonic(deadline_ms)
        queue = self.worker.aggregator
        intake = queue.intake()
        pending = (queue.pending_records(), queue.pending_bytes())
        with self._cond:
            self._current = (request_id, deadline)
            if self._intake_at_invoke is not None:  # what the previous invocation brought
                self._volumes.append((intake[0] - self._intake_at_invoke[0], intake[1] - self._intake_at_invoke[1]))
            self._intake_at_invoke = intake
            recent = (max((v[0] for v in self._volumes), default=0), max((v[1] for v in self._volumes), default=0))
            self._near_budget = near_budget(pending, recent, (queue.max_records, queue.max_bytes))
        # Requests may run until the deadline minus the margin; for a very short
        # remaining time, until half of it (there is no later chance to flush).
        cap = deadline - min(self.config.deadline_margin_s, max(0.0, deadline - now) / 2)
        self.worker.begin_invocation(cap, deadline)
        self.gate.open()
        self.worker.wake()
        self.manager.record_invocation(now)
        # A flush due now (deadline near, timer, full buffer, continuous data, breaker probe)
        # starts here, while the function runs; before_next waits for it (bounded by the budget).
        decision = self.worker.decision(Occasion.INVOKE)
        ticket = None
        if decision.action in (Action.FLUSH, Action.PROBE):
            ticket = self.worker.request_flush(decision.until)
        with self._cond:
            self._invoke_flush = ticket

    def on_runtime_done(self, request_id: str) -> None:
        """From the telemetry thread, after that batch is in the aggregator."""
        with self._cond:
            self._done[request_id] = self._clock()
            while len(self._done) > self._RECENT_DONE:
                self._done.popitem(last=False)
            late_but_alive = self._gave_up.pop(request_id, None) is not None
            self._cond.notify_all()
        if late_but_alive:
            # The telemetry path works; that function simply ran longer than our wait.
            self._adapt(True)

    def start(self) -> None:
        """After the worker started. Here nothing: the gate opens at the first INVOKE."""

    def renew_after_restore(self) -> None:
        """SnapStart restore: what the snapshot remembered of invocations, timers, failures and
        the backend's state belongs to another copy of this environment."""
        with self._cond:
            self._done.clear()
            self._gave_up.clear()
            self._volumes.clear()
            self._intake_at_invoke = None
            self._near_budget = False
            self._current = None
            self._rd_wait, self._rd_degraded = self.config.runtime_done_wait_s, False
        self.manager.renew_after_restore()
        self.worker.renew_after_restore()

    def on_telemetry_dropped(self) -> None:
        """From the telemetry thread: Lambda dropped events (``platform.logsDropped``).

        The runtimeDone a hold waits for may be among them: the hold then waits at most
        ``runtime_done_wait_s`` more instead of until the invocation deadline.
        """
        with self._cond:
            self._telemetry_drops += 1
            self._cond.notify_all()

    def before_next(self) -> None:
        """Right before ``/next``: maybe hold for runtimeDone and flush; always close the gate.

        The hold (``holds_next``: ``end``, or any strategy for an invocation that may fill
        the buffer; never with the breaker open) starts right after INVOKE, while the
        function runs, so waiting costs the function nothing until it is done; the gate
        stays open meanwhile, so full batches go out as they fill. It waits
        for this invocation's runtimeDone up to the invocation deadline minus
        ``deadline_margin_s`` (a function cannot run longer), then flushes what is
        pending for at most ``flush_budget_s``.

        If runtimeDone never came (a broken or lagging telemetry path, which would
        otherwise make every invocation run to its deadline), the next holds wait at most
        ``runtime_done_wait_s``, halved after each further miss (floor 50 ms). Trust comes
        back as soon as a runtimeDone is seen on time, or arrives late for an invocation
        whose hold gave up (the function was just long). The flush runs even when
        runtimeDone was missed: the function is then most likely still running, so
        sending older data costs it no time.
        """
        t0 = self._clock()
        with self._cond:
            current, self._current = self._current, None
            near = self._near_budget
        report = HoldReport()
        if current is not None and holds_next(self.manager.effective_strategy(), self.worker.breaker.is_open, near):
            request_id, deadline = current
            limit = deadline - self.config.deadline_margin_s
            if limit > t0:
                report.held = True
                self.worker.aggregator.set_admission_wait(ADMISSION_WAIT_S)
                with self._cond:
                    until = min(t0 + self._rd_wait, limit) if self._rd_degraded else limit
                report.runtime_done = self._wait_runtime_done(request_id, until)
                if not report.runtime_done:
                    with self._cond:
                        self._gave_up[request_id] = t0
                        while len(self._gave_up) > self._RECENT_DONE:
                            self._gave_up.popitem(last=False)
                self._adapt(report.runtime_done)
                now = self._clock()
                flush_deadline = min(now + self.config.flush_budget_s, limit)
                self.worker.end_invocation_by(flush_deadline)
                if flush_deadline > now:
                    # Deferred at once (not waited for) while the export client is still being
                    # imported at start-up: the data goes at the next INVOKE instead.
                    ticket = self.worker.request_flush(flush_deadline)
                    ticket.wait(flush_deadline - now + GATE_CLOSE_GRACE_S)
                    report.flushed = ticket.result
                self.worker.note_hold_end()
        with self._cond:
            invoke_flush, self._invoke_flush = self._invoke_flush, None
        if invoke_flush is not None:  # started at INVOKE: usually done while the function ran
            invoke_flush.wait(invoke_flush.deadline - self._clock() + GATE_CLOSE_GRACE_S)
        report.gate_closed = self._close_gate()
        report.elapsed_s = self._clock() - t0
        self.last_hold = report

    def on_shutdown_event(self, deadline_ms: int) -> ShutdownSummary:
        """SHUTDOWN: final flush of everything, budgeted to ``deadline_ms - shutdown_margin_s``."""
        t0 = self._clock()
        deadline = self.to_monotonic(deadline_ms) - self.config.shutdown_margin_s
        with self._cond:
            self._current = None
        self.worker.begin_invocation(None)
        self.gate.open()
        self.worker.wake()
        ticket = self.worker.request_flush(deadline, final=True)
        completed = ticket.wait(max(0.0, deadline - self._clock()) + GATE_CLOSE_GRACE_S)
        result = ticket.result or FlushResult()
        unsent = result.shutdown_dropped
        if not completed:  # the worker is stuck in a request: count what is left ourselves
            unsent += self.worker.aggregator.discard_all(loss_mod.SHUTDOWN_DEADLINE)
        self._close_gate()
        self.worker.stop(GATE_CLOSE_GRACE_S)
        dropped: Dict[str, int] = {}
        for (_, reason), n in self.worker.loss.snapshot().items():
            dropped[reason] = dropped.get(reason, 0) + n
        summary = ShutdownSummary(dict(result.sent), dropped, unsent, self._clock() - t0, completed)
        # A warning when anything was lost, so it shows at every log level a user may choose.
        log.log(logging.WARNING if unsent or dropped else logging.INFO,
                "final flush: sent %s, unsent at deadline %d, dropped over lifetime %s, %.3fs",
                summary.sent or "{}", unsent, dropped or "{}", summary.elapsed_s)
        return summary

    # -- helpers ------------------------------------------------------------------------
    def _wait_runtime_done(self, request_id: str, until: float) -> bool:
        with self._cond:
            drops = self._telemetry_drops
            while request_id not in self._done:
                if self._telemetry_drops != drops:  # it may have been dropped: bound the rest
                    drops = self._telemetry_drops
                    until = min(until, self._clock() + self.config.runtime_done_wait_s)
                remaining = until - self._clock()
                if not remaining > 0:
                    return False
                self._cond.wait(bounded(remaining))
            return True

    def _adapt(self, timely: bool) -> None:
        with self._cond:
            if timely:
                changed = self._rd_degraded
                self._rd_wait, self._rd_degraded = self.config.runtime_done_wait_s, False
            else:
                changed = not self._rd_degraded
                floor = min(RUNTIME_DONE_WAIT_FLOOR_S, self.config.runtime_done_wait_s)
                # First miss: fall back to the configured wait; each further miss halves it.
                self._rd_wait = self.config.runtime_done_wait_s if changed else max(floor, self._rd_wait / 2)
                self._rd_degraded = True
            wait = self._rd_wait
        if changed and timely:
            log.info("platform.runtimeDone seen again: waiting for it up to the invocation deadline")
        elif changed:
            log.info("platform.runtimeDone missed: waiting at most %.3fs for it until one is seen again", wait)

    def _close_gate(self) -> bool:
        # Nothing drains the queue once the gate is closed: telemetry no longer waits for room.
        self.worker.aggregator.set_admission_wait(0.0)
        # Bounded by the in-flight request's own (capped) deadline plus a grace.
        return self.gate.close()


class ManagedInstancesCoordinator(FlushCoordinator):
    """Lambda Managed Instances: the environment never freezes and there is no INVOKE.

    So the gate is open for good from ``start``, nothing is held (``on_invoke`` and
    ``before_next`` are never called), and the worker (``MANAGED_INSTANCES`` policy) exports in
    the background on the timer and whenever a batch is full. At SHUTDOWN the pipeline waits
    briefly for the reports of invocations in flight (``Pipeline.wait_for_open_reports``), then
    the final flush runs as everywhere.
    """

    def start(self) -> None:
        self.worker.begin_invocation(None)
        self.gate.open()
        self.worker.wake()


def build_flush(config: "FlushConfig", aggregator: BatchQueue, exporter: Exporter,
                metrics_state: Optional[MetricsSource], loss: loss_mod.LossCounter,
                managed_instances: bool = False) -> FlushCoordinator:
    """The flush machinery for one environment; ``coordinator.worker``/``.gate``/``.manager`` are
    its parts. ``managed_instances``: the Managed Instances policy (no freeze, no INVOKE), where
    ``end`` makes no sense: the timer drives every strategy but ``continuous``."""
    if managed_instances and config.strategy != Strategy.CONTINUOUS.value:
        config = replace(config, strategy=Strategy.PERIODIC.value)
    manager = FlushManager(config)
    gate = ExportGate()
    worker = ExportWorker(aggregator, exporter, metrics_state, manager, gate, loss, config,
                          policy=MANAGED_INSTANCES if managed_instances else FREEZE_SAFE)
    kind = ManagedInstancesCoordinator if managed_instances else FlushCoordinator
    return kind(manager, gate, worker, config)
