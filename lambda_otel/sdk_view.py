"""What the function's own OpenTelemetry SDK sent to our receiver, as far as the converter needs it.

The function's telemetry reaches the backend as sent (the receiver forwards it untouched); the
converter only needs two facts about it to keep one picture of each invocation:

* **Which invocation spans have a SERVER child.** The function's standard instrumentation makes
  its SERVER span a child of the X-Ray ``Parent`` id; in ``join`` mode our invocation span takes
  that id. When the function's SERVER span has arrived, our span is not a second SERVER span but
  the INTERNAL root above it (``has_server_child``).
* **Which log records already arrived as OTLP.** With the SDK's logging handler and Lambda's own
  handler on the same logger, each record reaches us twice: once from the SDK, once as a
  Telemetry API ``function`` line. ``take_log`` finds (and consumes) the SDK's copy of a line, so
  the converter does not export the line again; a line it did export is remembered, and an SDK
  copy that arrives after it (an SDK that does not flush its logs before the invocation ends) is
  dropped from the SDK's request instead: the record reaches the backend once either way.

The receiver's threads call ``observe`` (before queueing a request: it may remove late copies);
the converter's call the look-ups. Memory is bounded
(oldest entries forgotten first) and nothing here raises into the receiver.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Dict, Iterable, List, Optional, Tuple

_SERVER = 2  # opentelemetry.proto.trace.v1.Span.SPAN_KIND_SERVER
MAX_SERVER_PARENTS = 4096
MAX_LOG_KEYS = 8192
MESSAGE_KEY_CHARS = 512  # the first line of a message, at most this long, identifies it


def message_key(text: str) -> str:
    """The part of a message both copies share: its first line (Lambda joins the rest with \\r)."""
    end = len(text)
    for sep in ("\n", "\r"):
        i = text.find(sep, 0, end)
        if i >= 0:
            end = i
    return text[:min(end, MESSAGE_KEY_CHARS)].rstrip()


class _BoundedIndex:
    """A bounded multiset: key -> values, oldest forgotten first; ``take`` consumes one match."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._entries: "OrderedDict[int, Tuple[object, object]]" = OrderedDict()  # seq -> (key, value)
        self._seqs: Dict[object, List[int]] = {}  # key -> its seqs, oldest first
        self._next = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, key, value) -> None:
        seq = self._next
        self._next += 1
        self._entries[seq] = (key, value)
        self._seqs.setdefault(key, []).append(seq)
        while len(self._entries) > self.limit:
            old, (old_key, _) = self._entries.popitem(last=False)
            self._forget(old_key, old)

    def take(self, key, matches: Callable[[object], bool]) -> bool:
        for seq in self._seqs.get(key, ()):
            if matches(self._entries[seq][1]):
                del self._entries[seq]
                self._forget(key, seq)
                return True
        return False

    def clear(self) -> None:
        self._entries.clear()
        self._seqs.clear()

    def _forget(self, key, seq: int) -> None:
        seqs = self._seqs[key]
        seqs.remove(seq)
        if not seqs:
            del self._seqs[key]


class FunctionSdkView:
    """Thread-safe, bounded index of the function's SDK spans and log records."""

    def __init__(self, max_server_parents: int = MAX_SERVER_PARENTS, max_log_keys: int = MAX_LOG_KEYS,
                 on_deduplicated: Optional[Callable[[int], None]] = None) -> None:
        self._lock = threading.Lock()
        self._max_parents = max(1, max_server_parents)
        self._server_parents: "OrderedDict[Tuple[bytes, bytes], None]" = OrderedDict()
        # (severity, message key) -> time (ns) of SDK records no Telemetry API line has matched yet
        self._sdk_logs = _BoundedIndex(max_log_keys)
        # (severity, message key) -> (lo, hi) time window of lines we exported with no SDK copy seen
        self._exported = _BoundedIndex(max_log_keys)
        self._on_deduplicated = on_deduplicated
        self._noted_unseen = 0  # exported lines remembered before the SDK sent any log record
        self.sdk_logs_seen = False  # sticky: this function's SDK sends logs

    # -- the receiver's side ------------------------------------------------------------------

    def observe(self, signal: str, items: Iterable) -> None:
        """Index accepted ``ResourceSpans`` / ``ResourceLogs`` items. Never raises."""
        try:
            if signal == "traces":
                self._observe_spans(items)
            elif signal == "logs":
                self._observe_logs(items)
        except Exception:  # a record we cannot index is simply not deduplicated
            pass

    def _observe_spans(self, items: Iterable) -> None:
        found = [(s.trace_id, s.parent_span_id) for rs in items for ss in rs.scope_spans for s in ss.spans
                 if s.kind == _SERVER and s.parent_span_id]
        if not found:
            return
        with self._lock:
            for key in found:
                self._server_parents[key] = None
            while len(self._server_parents) > self._max_parents:
                self._server_parents.popitem(last=False)

    def _observe_logs(self, items: Iterable) -> None:
        """Index the SDK's records, or drop those whose line we already exported (the SDK sent
        them after their invocation ended): one lock for both, so no order of the two threads
        lets a record through twice."""
        dropped = 0
        with self._lock:
            for rl in items:
                for sl in rl.scope_logs:
                    late = []
                    for i, lr in enumerate(sl.log_records):
                        if lr.body.WhichOneof("value") != "string_value" or not lr.time_unix_nano:
                            continue
                        self.sdk_logs_seen = True
                        key, t = (lr.severity_number, message_key(lr.body.string_value)), lr.time_unix_nano
                        if self._exported.take(key, lambda window: window[0] <= t < window[1]):
                            late.append(i)
                        else:
                            self._sdk_logs.add(key, t)
                    for i in reversed(late):
                        del sl.log_records[i]
                    dropped += len(late)
        if dropped and self._on_deduplicated is not None:
            self._on_deduplicated(dropped)

    # -- the converter's side -----------------------------------------------------------------

    def has_server_child(self, trace_id: bytes, span_id: bytes) -> bool:
        with self._lock:
            return (trace_id, span_id) in self._server_parents

    def take_log(self, severity: int, message: str, lo_ns: int, hi_ns: int) -> bool:
        """True: the SDK's copy of this line (same severity and message, timed in [lo_ns, hi_ns))
        arrived, and is consumed. False: the caller exports the line, and it is remembered so that
        an SDK copy arriving later is dropped instead."""
        return self.take_logs([(severity, message, lo_ns, hi_ns)])[0]

    def take_logs(self, lines: List[Tuple[int, str, int, int]]) -> List[bool]:
        """``take_log`` for many lines under one lock (an invocation's held lines).

        Until the SDK has sent any log record, exported lines are remembered only up to the
        index's size: a function whose SDK sends no logs stops paying for them there, and one whose
        SDK is merely late has its first records deduplicated."""
        out = []
        with self._lock:
            if not self.sdk_logs_seen:
                room = self._exported.limit - self._noted_unseen
                for severity, message, lo_ns, hi_ns in lines[:max(0, room)]:
                    self._exported.add((severity, message_key(message)), (lo_ns, hi_ns))
                self._noted_unseen += min(len(lines), max(0, room))
                return [False] * len(lines)
            for severity, message, lo_ns, hi_ns in lines:
                key = (severity, message_key(message))
                if self._sdk_logs.take(key, lambda t: lo_ns <= t < hi_ns):
                    out.append(True)
                else:
                    self._exported.add(key, (lo_ns, hi_ns))
                    out.append(False)
        return out

    def renew_after_restore(self) -> None:
        """A restored snapshot starts with what the snapshot's SDK sent: nothing of it is this copy's."""
        with self._lock:
            self._server_parents.clear()
            self._sdk_logs.clear()
            self._exported.clear()
            self._noted_unseen = 0

