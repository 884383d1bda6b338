"""The in-memory queue between everything that produces telemetry and the exporter thread.

One FIFO per signal, but one shared budget (bytes and records) for the whole extension:
the extension lives inside the function's memory, so what matters is the total it holds,
not how it is split between traces, metrics and logs. When the budget is full, the oldest
items are evicted to make room (``evict=True``, counted as ``queue_full``): for platform
telemetry and for the OTLP receiver alike (a refusal would make the function's SDK retry
inside its invocation). ``evict=False`` returns False instead, for a caller that can wait.

Items are protobuf ``ResourceSpans`` / ``ResourceMetrics`` / ``ResourceLogs`` messages. Sizes
are ``ByteSize()`` (serialised, uncompressed); a "record" is one span, metric data point or
log record.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

# The budget rule is the queue config's default, so it lives in config (read before the first
# /next, where importing this module would cost ~2 ms); re-exported here for the queue's users.
from lambda_otel.config import MiB, budget_from_memory  # noqa: F401 - re-exported
from lambda_otel.loss import QUEUE_FULL, SIGNALS, LossCounter
from lambda_otel.otlp import count_records


@dataclass
class _Entry:
    seq: int  # insertion order across all signals: smaller = older
    item: Any
    records: int
    nbytes: int
    attempts: int = 0  # export attempts so far, kept across requeue()


@dataclass
class Batch:
    """Items taken from one signal's queue for one export request.

    ``attempts`` is for the exporter's bookkeeping (how many times this batch was tried); it
    survives ``requeue()``: a batch re-taken later starts from the highest count of its items.
    """

    signal: str
    items: List[Any]
    records: int
    nbytes: int
    attempts: int = 0
    # The queue entries, so requeue() restores sizes and age without recounting.
    _entries: List[_Entry] = field(default_factory=list, repr=False, compare=False)


class Aggregator:
    """Bounded per-signal FIFOs under one shared byte/record budget. Thread-safe.

    ``set_on_data(callback)``: the exporter thread subscribes to be woken after every add, so a
    full batch starts exporting as soon as it is queued. ``set_on_lost(callback)``: told which
    items were dropped from the queue (evicted, discarded), so that the loss counts a metrics item
    carried are reported again. Both callbacks run after the queue's lock is released (they may
    take other locks) and must be quick.
    """

    def __init__(self, max_bytes: int, max_records: int, loss: LossCounter) -> None:
        if max_bytes <= 0 or max_records <= 0:
            raise ValueError("max_bytes and max_records must be positive")
        self.max_bytes = max_bytes
        self.max_records = max_records
        self._loss = loss
        self._lock = threading.Lock()
        self._on_data: Optional[Callable[[], None]] = None
        self._on_lost: Optional[Callable[[str, List[Any]], None]] = None
        self._lost: List[Tuple[str, Any]] = []  # dropped under the lock, handed to _on_lost after it
        self._room = threading.Condition(self._lock)  # wait_for_room producers wait here
        self._room_waiters = 0
        self._admission_wait_s = 0.0
        self._admission_until: Optional[float] = None  # one window for every wait of a hold
        self._intake_records = 0  # everything ever queued (the flush policy's data rate)
        self._intake_bytes = 0
        self._queues: Dict[str, Deque[_Entry]] = {s: deque() for s in SIGNALS}
        self._bytes = 0
        self._records = 0
        self._seq = itertools.count()
        self._oldest_seq = 0  # requeued entries without a known age get older numbers

    # -- producers -----------------------------------------------------------------------

    def add(self, signal: str, item: Any, records: int, nbytes: Optional[int] = None, evict: bool = True) -> bool:
        """Queue one item. Returns False (and drops nothing else) when it was not queued.

        evict=True: drop the oldest items, across signals, until it fits (counted as queue_full).
        evict=False: return False if it does not fit now (the caller answers with backpressure).
        Either way an item larger than the whole budget can never fit: it is counted as
        queue_full and False is returned.
        """
        return self.add_many(signal, [(item, records, nbytes)], evict=evict)

    def add_many(
        self, signal: str, entries: Sequence[Tuple[Any, int, Optional[int]]], evict: bool = True,
        wait_for_room: bool = False,
    ) -> bool:
        """Queue several ``(item, records, nbytes)`` of one signal.

        With evict=False this is all-or-nothing (one OTLP request = one answer): either every
        item fits and all are queued, or nothing is queued and False is returned. Items that
        can never fit are counted and skipped in both modes (the receiver checks
        ``fits_budget`` first, so it can report them as rejected instead).

        wait_for_room (platform telemetry only: its sender, Lambda, buffers meanwhile; never the
        receiver, whose caller is the function): while the exporter drains the queue
        (``set_admission_wait``), wait for room that long before evicting.
        """
        self._check_signal(signal)
        sized = []
        for item, records, nbytes in entries:
            sized.append((item, records, item.ByteSize() if nbytes is None else nbytes))
        all_ok = True
        with self._lock:
            keep = []
            for item, records, nbytes in sized:
                if not self.fits_budget(nbytes, records):
                    self._loss.add(signal, QUEUE_FULL, records)
                    all_ok = False
                else:
                    keep.append((item, records, nbytes))
            if not keep:
                return False if sized else True
            if wait_for_room and self._admission_wait_s > 0:
                self._wait_for_room_locked(sum(n for _, _, n in keep), sum(r for _, r, _ in keep))
            if not evict:
                need_bytes = sum(n for _, _, n in keep)
                need_records = sum(r for _, r, _ in keep)
                if not self._has_room_locked(need_bytes, need_records):
                    return False
            for item, records, nbytes in keep:
                if evict:
                    self._evict_until_fits_locked(nbytes, records)
                self._queues[signal].append(_Entry(next(self._seq), item, records, nbytes))
                self._bytes += nbytes
                self._records += records
                self._intake_records += records
                self._intake_bytes += nbytes
            on_data = self._on_data
            lost = self._take_lost_locked()
        self._hand_over(lost)
        if on_data is not None:
            on_data()
        return all_ok

    def set_admission_wait(self, seconds: float) -> None:
        """How long ``add(..., wait_for_room=True)`` calls may wait for room before evicting: set while
        the exporter drains the queue (a hold), 0 when nothing can drain it (the gate is closed).
        One window for all of them, opened by the first wait: a slow backend drains slowly, and
        batches waiting one after the other would each delay runtimeDone, so the hold."""
        with self._lock:
            self._admission_wait_s = max(0.0, seconds)
            self._admission_until = None
            self._room.notify_all()

    def _wait_for_room_locked(self, nbytes: int, records: int) -> None:
        if self._admission_until is None:
            self._admission_until = time.monotonic() + self._admission_wait_s
        deadline = self._admission_until
        while not self._has_room_locked(min(nbytes, self.max_bytes), min(records, self.max_records)):
            remaining = deadline - time.monotonic()
            if self._admission_wait_s <= 0 or not remaining > 0:  # nothing drains us any more, or too long
                return
            self._room_waiters += 1
            try:
                self._room.wait(min(remaining, 1.0))
            finally:
                self._room_waiters -= 1

    def set_on_data(self, callback: Optional[Callable[[], None]]) -> None:
        """Call ``callback()`` after every add that queued something (None: stop calling)."""
        with self._lock:
            self._on_data = callback

    def set_on_lost(self, callback: Optional[Callable[[str, List[Any]], None]]) -> None:
        """Call ``callback(signal, items)`` with the items dropped from the queue (queue_full
        evictions, ``discard_all``), already counted in the LossCounter (None: stop calling)."""
        with self._lock:
            self._on_lost = callback

    def set_budget(self, max_bytes: int, max_records: int) -> None:
        """A new budget (Managed Instances: once the instance's memory is known). What no longer
        fits is dropped, oldest first, counted as queue_full."""
        if max_bytes <= 0 or max_records <= 0:
            raise ValueError("max_bytes and max_records must be positive")
        with self._lock:
            self.max_bytes, self.max_records = max_bytes, max_records
            self._evict_until_fits_locked(0, 0)
            self._room.notify_all()
            lost = self._take_lost_locked()
        self._hand_over(lost)

    def fits_budget(self, nbytes: int, records: int) -> bool:
        """Could this ever fit (in an empty queue)?"""
        return nbytes <= self.max_bytes and records <= self.max_records

    def has_room(self, nbytes: int, records: int) -> bool:
        """Would this fit now without evicting anything?"""
        with self._lock:
            return self._has_room_locked(nbytes, records)

    # -- the exporter ----------------------------------------------------------------------

    def take_batch(self, signal: str, max_bytes: int, max_records: int) -> Optional[Batch]:
        """Up to max_bytes/max_records of the oldest items of one signal (at least one item)."""
        self._check_signal(signal)
        with self._lock:
            queue = self._queues[signal]
            if not queue:
                return None
            taken: List[_Entry] = [queue.popleft()]
            nbytes, records = taken[0].nbytes, taken[0].records
            while queue:
                nxt = queue[0]
                if nbytes + nxt.nbytes > max_bytes or records + nxt.records > max_records:
                    break
                taken.append(queue.popleft())
                nbytes += nxt.nbytes
                records += nxt.records
            self._bytes -= nbytes
            self._records -= records
            if self._room_waiters:
                self._room.notify_all()
        attempts = max(e.attempts for e in taken)
        return Batch(signal, [e.item for e in taken], records, nbytes, attempts, taken)

    def requeue(self, batch: Batch) -> None:
        """Put a batch back at the front of its queue, in order (after a retryable failure).

        The budget may have filled while the batch was out: then the oldest items (usually
        this batch's, which are the oldest) are dropped and counted as queue_full.
        """
        self._check_signal(batch.signal)
        entries = batch._entries
        hand_made = len(entries) != len(batch.items)
        if hand_made:  # a Batch built by hand: size it now, age it as older than anything queued
            entries = [_Entry(0, it, count_records(batch.signal, it), it.ByteSize()) for it in batch.items]
        with self._lock:
            queue = self._queues[batch.signal]
            for entry in reversed(entries):
                entry.attempts = batch.attempts
                if hand_made:
                    self._oldest_seq -= 1
                    entry.seq = self._oldest_seq
                queue.appendleft(entry)
                self._bytes += entry.nbytes
                self._records += entry.records
            self._evict_until_fits_locked(0, 0)
            lost = self._take_lost_locked()
        self._hand_over(lost)

    def discard_all(self, reason: str, signals: Sequence[str] = SIGNALS) -> int:
        """Drop everything still queued (of ``signals``), counting it under ``reason``; returns the
        records dropped."""
        with self._lock:
            dropped = 0
            for signal in signals:
                queue = self._queues[signal]
                n = sum(e.records for e in queue)
                self._bytes -= sum(e.nbytes for e in queue)
                self._records -= n
                self._loss.add(signal, reason, n)
                dropped += n
                if self._on_lost is not None and queue:
                    self._lost.extend((signal, e.item) for e in queue)
                queue.clear()
            self._room.notify_all()
            lost = self._take_lost_locked()
        self._hand_over(lost)
        return dropped

    # -- observation -----------------------------------------------------------------------

    def pending_records(self, signal: Optional[str] = None) -> int:
        with self._lock:
            if signal is None:
                return self._records
            self._check_signal(signal)
            return sum(e.records for e in self._queues[signal])

    def intake(self) -> Tuple[int, int]:
        """(records, bytes) ever queued by ``add``/``add_many`` (not by ``requeue``): the
        difference between two calls is what arrived in between."""
        with self._lock:
            return self._intake_records, self._intake_bytes

    def pending_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def pending_items(self, signal: Optional[str] = None) -> int:
        with self._lock:
            if signal is None:
                return sum(len(q) for q in self._queues.values())
            return len(self._queues[signal])

    # -- internals ---------------------------------------------------------------------------

    def _has_room_locked(self, nbytes: int, records: int) -> bool:
        return self._bytes + nbytes <= self.max_bytes and self._records + records <= self.max_records

    def _evict_until_fits_locked(self, nbytes: int, records: int) -> None:
        while not self._has_room_locked(nbytes, records):
            oldest_signal = None
            oldest_seq = None
            for signal, queue in self._queues.items():
                if queue and (oldest_seq is None or queue[0].seq < oldest_seq):
                    oldest_signal, oldest_seq = signal, queue[0].seq
            if oldest_signal is None:  # empty and still no room: caller checked fits_budget
                return
            entry = self._queues[oldest_signal].popleft()
            self._bytes -= entry.nbytes
            self._records -= entry.records
            self._loss.add(oldest_signal, QUEUE_FULL, entry.records)
            if self._on_lost is not None:
                self._lost.append((oldest_signal, entry.item))

    def _take_lost_locked(self) -> List[Tuple[str, Any]]:
        lost, self._lost = self._lost, []
        return lost

    def _hand_over(self, lost: List[Tuple[str, Any]]) -> None:
        """Tell ``_on_lost`` (outside the lock) which items were dropped, grouped by signal."""
        callback = self._on_lost
        if not lost or callback is None:
            return
        by_signal: Dict[str, List[Any]] = {}
        for signal, item in lost:
            by_signal.setdefault(signal, []).append(item)
        for signal, items in by_signal.items():
            callback(signal, items)

    @staticmethod
    def _check_signal(signal: str) -> None:
        if signal not in SIGNALS:
            raise ValueError(f"unknown signal {signal!r}")

