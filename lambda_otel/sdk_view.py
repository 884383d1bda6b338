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
  the converter does not export the line again.

The receiver's threads call ``observe``; the converter's calls the look-ups. Memory is bounded
(oldest entries forgotten first) and nothing here raises into the receiver.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Dict, Iterable, List, Tuple

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


class FunctionSdkView:
    """Thread-safe, bounded index of the function's SDK spans and log records."""

    def __init__(self, max_server_parents: int = MAX_SERVER_PARENTS, max_log_keys: int = MAX_LOG_KEYS) -> None:
        self._lock = threading.Lock()
        self._max_parents = max(1, max_server_parents)
        self._max_logs = max(1, max_log_keys)
        self._server_parents: "OrderedDict[Tuple[bytes, bytes], None]" = OrderedDict()
        # Unmatched SDK records: seq -> (key, time ns), oldest first; key -> their seqs.
        self._log_entries: "OrderedDict[int, Tuple[Tuple[int, str], int]]" = OrderedDict()
        self._log_seqs: Dict[Tuple[int, str], List[int]] = {}
        self._next_seq = 0
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
        found = []
        for rl in items:
            for sl in rl.scope_logs:
                for lr in sl.log_records:
                    if lr.body.WhichOneof("value") == "string_value" and lr.time_unix_nano:
                        found.append(((lr.severity_number, message_key(lr.body.string_value)), lr.time_unix_nano))
        if not found:
            return
        with self._lock:
            self.sdk_logs_seen = True
            for key, t in found:
                seq = self._next_seq
                self._next_seq += 1
                self._log_entries[seq] = (key, t)
                self._log_seqs.setdefault(key, []).append(seq)
            while len(self._log_entries) > self._max_logs:
                seq, (key, _) = self._log_entries.popitem(last=False)
                self._forget(key, seq)

    def _forget(self, key: Tuple[int, str], seq: int) -> None:
        seqs = self._log_seqs[key]
        seqs.remove(seq)
        if not seqs:
            del self._log_seqs[key]

    # -- the converter's side -----------------------------------------------------------------

    def has_server_child(self, trace_id: bytes, span_id: bytes) -> bool:
        with self._lock:
            return (trace_id, span_id) in self._server_parents

    def take_log(self, severity: int, message: str, lo_ns: int, hi_ns: int) -> bool:
        """Consume one SDK record with this severity and message, timed in [lo_ns, hi_ns)."""
        key = (severity, message_key(message))
        with self._lock:
            for seq in self._log_seqs.get(key, ()):
                if lo_ns <= self._log_entries[seq][1] < hi_ns:
                    del self._log_entries[seq]
                    self._forget(key, seq)
                    return True
            return False

    def renew_after_restore(self) -> None:
        """A restored snapshot starts with what the snapshot's SDK sent: nothing of it is this copy's."""
        with self._lock:
            self._server_parents.clear()
            self._log_entries.clear()
            self._log_seqs.clear()

