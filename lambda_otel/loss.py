"""Counting what is lost, so that nothing is lost silently.

Every place that gives up on telemetry (a full queue, a rejected export, a shutdown
deadline, Lambda's own ``platform.logsDropped``) adds to one shared ``LossCounter``.
The counts are cumulative for the life of the process; the metrics collector turns
them into the ``lambda_otel.dropped`` metric that rides along with the next export,
and the shutdown path logs the totals once.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~3 ms) before the first /next
if TYPE_CHECKING:  # pragma: no cover - typing only
    from typing import Dict, Tuple

# Why something was dropped. Strings, so they can go straight into attributes.
QUEUE_FULL = "queue_full"
EXPORT_REJECTED = "export_rejected"
RETRIES_EXHAUSTED = "retries_exhausted"
EXPORT_FAILED = "export_failed"  # the backend was unreachable or kept failing until the data had to go
SHUTDOWN_DEADLINE = "shutdown_deadline"
PLATFORM_LOGS_DROPPED = "platform_logs_dropped"
NO_ENDPOINT = "no_endpoint"
INVALID_RECORD = "invalid_record"  # refused at intake: e.g. a trace or span id of the wrong length

REASONS = (
    QUEUE_FULL,
    EXPORT_REJECTED,
    RETRIES_EXHAUSTED,
    EXPORT_FAILED,
    SHUTDOWN_DEADLINE,
    PLATFORM_LOGS_DROPPED,
    NO_ENDPOINT,
    INVALID_RECORD,
)

# Signals, as named in OTLP/HTTP paths (/v1/<signal>).
TRACES = "traces"
METRICS = "metrics"
LOGS = "logs"
SIGNALS = (TRACES, METRICS, LOGS)


COUNT_MAX = 2**63 - 1  # the largest count an OTLP int64 data point carries


class LossCounter:
    """Thread-safe cumulative counts of dropped records, keyed by (signal, reason).

    A "record" is one span, one metric data point or one log record: the unit a
    user would count when asking "what did I lose?".
    """

    def __init__(self) -> None:
        # Imported here: this module's names are read before the first /next (through otlp, by
        # config's endpoint parser), which needs no thread; counters are made after it.
        import threading

        self._lock = threading.Lock()
        self._counts: Dict[Tuple[str, str], int] = {}
        self._version = 0

    def add(self, signal: str, reason: str, records: int) -> None:
        if records <= 0:
            return
        if reason not in REASONS:
            raise ValueError(f"unknown drop reason {reason!r}")
        key = (signal, reason)
        with self._lock:
            # Saturates: a count taken from input (platform.logsDropped) can be any size, and the
            # shutdown line must agree with the exported int64 metric.
            self._counts[key] = min(COUNT_MAX, self._counts.get(key, 0) + records)
            self._version += 1

    def snapshot(self) -> Dict[Tuple[str, str], int]:
        """A copy of the cumulative counts."""
        with self._lock:
            return dict(self._counts)

    @property
    def version(self) -> int:
        """Grows on every change: lets a collector tell whether anything new was lost."""
        with self._lock:
            return self._version

    def total(self, reason: str | None = None) -> int:
        with self._lock:
            return sum(n for (_, r), n in self._counts.items() if reason is None or r == reason)
