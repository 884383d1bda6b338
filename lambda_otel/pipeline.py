"""The telemetry pipeline, built in one place: listeners in, OTLP/HTTP out.

    Telemetry API POST ─► TelemetryListener ─► Pipeline.process_batch ─► converter ─┐
    function's OTLP    ─► OtlpReceiver ──────────────────────────────────────────────┼─► Aggregator ─► ExportWorker ─► backend
                                                                  metrics collect ───┘

``Pipeline`` owns every object on that path and is the only place that builds them, so the
extension (app.py), the tests and the benchmarks run the same wiring. It also runs the one
step that needs several of them at once: a Telemetry API batch is converted and queued under
the RWLock's read lock, and the request ids it completes are passed to the flush coordinator.

The events thread (app.py) drives the lifecycle; this module has no thread of its own: the
listeners' threads call ``process_batch``, the worker is started by ``start``.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from typing import Any, Deque, Dict, Iterable, List, Mapping, Optional, Set

from .config import Config
from .log_once import LogOnce
from .loss import LOGS, PLATFORM_LOGS_DROPPED, TRACES
from .telemetry_api import BatchRefused

log = logging.getLogger("lambda_otel.pipeline")

# Request ids remembered as reported / named by a platform event: only the latest invocation's
# report is waited for, and the silence check looks SILENCE_WINDOW INVOKEs back, so a few hundred
# cover any lag of the Telemetry API; more would only cost memory (~0.2 KiB an invocation).
_RECENT_IDS = 512
# Invocations started and not reported yet (Managed Instances run many at once); past this the set
# is cleared rather than grow without bound when reports stop coming.
_OPEN_REMEMBERED = 10_000
# A batch waits this long for the read lock (only SHUTDOWN's write lock holds it up) before it
# is refused: the write lock is kept until the process exits.
BATCH_LOCK_WAIT_S = 1.0
# An invocation with no platform event this many INVOKEs later is reported (once).
SILENCE_WINDOW = 16


class RecentIds:
    """The last ``cap`` request ids added (a set that forgets the oldest first)."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._ids: Dict[str, None] = {}

    def update(self, *groups: Iterable[str]) -> None:
        for group in groups:
            for rid in group:
                self._ids.pop(rid, None)
                self._ids[rid] = None
        while len(self._ids) > self._cap:
            del self._ids[next(iter(self._ids))]

    def __contains__(self, rid: object) -> bool:
        return rid in self._ids

    def __len__(self) -> int:
        return len(self._ids)


class Pipeline:
    """Everything between the two listeners and the backend, wired once.

    Attributes (read by app.py, tests and benchmarks): ``config``, ``loss``, ``resource_attributes``, ``resource``,
    ``aggregator``, ``metrics``, ``converter``, ``auth`` (aws_export.ExportAuth), ``exporter``, ``gate``, ``flush_manager``,
    ``worker``, ``coordinator``, ``rwlock``; ``listener`` and ``receiver`` once ``start`` ran
    (``receiver`` stays None when it is disabled).
    """

    def __init__(self, config: Config, resource_attributes: Mapping[str, Any]) -> None:
        # Heavy imports (protobuf, readerwriterlock) happen here, not at module import, so the
        # extension's work before its first /next stays cheap (app.py builds us after it).
        from readerwriterlock import rwlock

        from .aggregator import Aggregator
        from .convert import TelemetryConverter
        from .exporter import OtlpExporter
        from .config import InitType
        from .flush import build_flush
        from .loss import LossCounter
        from .metrics import MetricsState
        from .resource import to_proto
        from .sampling import sampler_from_config
        from .sdk_view import FunctionSdkView

        self.config = config
        self.loss = LossCounter()
        self.resource_attributes = dict(resource_attributes)
        # The one Resource proto the converter and the metrics share (renewed in place at a restore).
        self.resource = resource = to_proto(self.resource_attributes)

        max_bytes, max_records = config.queue.budget()
        self.aggregator = Aggregator(max_bytes, max_records, self.loss)
        self.metrics = MetricsState(resource, config.metrics_temporality, self.loss)
        # What the function's SDK sent (seen by the receiver) joins its spans and ours into one
        # tree and keeps its log records from being exported twice.
        self.sdk_view = FunctionSdkView(on_deduplicated=lambda n: self.metrics.add("lambda_otel.logs.deduplicated", n))
        self.converter = TelemetryConverter(resource, self.metrics, self.loss, xray_mode=config.xray_mode,
                                            sampler=sampler_from_config(config), sdk_view=self.sdk_view)
        from .aws_export import CLOUDWATCH_MAX_REQUEST_BYTES, CLOUDWATCH_MAX_REQUEST_RECORDS, build_auth

        # SigV4 signing (LAMBDA_OTEL_EXPORTER_AUTH=sigv4) and the header source (per-signal headers,
        # CloudWatch Logs' group/stream, secret references resolved off the /next path).
        self.auth = build_auth(config)
        cloudwatch = config.aws.cloudwatch
        self.exporter = OtlpExporter(config.exporter, self.loss, signer=self.auth.signer,
                                     header_source=self.auth.header_source,
                                     max_request_bytes=CLOUDWATCH_MAX_REQUEST_BYTES if cloudwatch else None,
                                     max_request_records=CLOUDWATCH_MAX_REQUEST_RECORDS if cloudwatch else None,
                                     own_receiver_port=config.receiver.port if config.receiver.enabled else None)

        # Managed Instances: no freeze, no INVOKE: background export, no gate, no hold; the buffer
        # is sized by the instance's memory once platform.initStart tells it.
        managed = config.init_type is InitType.MANAGED_INSTANCES
        self.coordinator = build_flush(config.flush, self.aggregator, self.exporter, self.metrics, self.loss,
                                       managed_instances=managed)
        self.gate, self.flush_manager, self.worker = self.coordinator.gate, self.coordinator.manager, \
            self.coordinator.worker
        self._size_by_instance = managed and not (config.queue.max_bytes or config.queue.max_records)

        # Telemetry batches hold the read lock while processed; SHUTDOWN takes the write lock.
        self.rwlock = rwlock.RWLockWrite()
        self.listener = None
        self.receiver = None
        # Intake: closed at SHUTDOWN (no new batch starts), sealed once the final flush may start
        # (no batch may be queued after it).
        self._intake_lock = threading.Lock()
        self._intake_closed = False
        self._sealed = False
        self._convert_lock = threading.Lock()  # the converter, so SHUTDOWN can wait for it bounded
        self._reports_seen = RecentIds(_RECENT_IDS)
        self._open: Set[str] = set()  # started, not reported yet
        self._platform_seen = RecentIds(_RECENT_IDS)  # request ids named by any platform event
        self._invoked: Deque[str] = deque()  # the last INVOKEs' request ids (on_invoke)
        self._log_once = LogOnce()
        self._reports_cond = threading.Condition()

    # -- start and stop -------------------------------------------------------------------------

    def expect_export_client_warm_up(self) -> None:
        """A start-up thread will call ``warm_export_client``: until it did, no flush waits for the
        import (~50-100 ms of CPU): what is pending is kept for the next chance instead."""
        self.exporter.expect_warm_up()

    def warm_export_client(self, resolve: bool = True) -> None:
        """Import the export client's HTTP stack, wake the worker (flushes kept for it may go now),
        then resolve the endpoints (bounded; ``resolve=False``: not)."""
        self.exporter.warm_up(on_ready=self.worker.wake, resolve=resolve)

    def start(self, telemetry_sock: socket.socket, receiver_sock: Optional[socket.socket],
              worker: bool = True) -> None:
        """Serve on the already bound sockets (``receiver_sock`` None: no receiver) and start the
        export worker (``worker=False``: a benchmark that drains the aggregator itself)."""
        from .telemetry_api import TelemetryListener

        self.listener = TelemetryListener(telemetry_sock, self.process_batch, self.config.telemetry)
        self.listener.start()
        if receiver_sock is not None:
            from .receiver import OtlpReceiver

            self.receiver = OtlpReceiver.from_config(self.config.receiver, self.aggregator, self.loss, sock=receiver_sock,
                                                     memory_mb=self.config.queue.memory_mb, observer=self.sdk_view)
            self.receiver.start()
        if worker:
            self.auth.start()  # resolves secret header references on its own thread (idempotent, bounded)
            self.worker.start()
            self.coordinator.start()  # Managed Instances: the export gate opens for good

    def stop(self) -> None:
        """Stop both listeners (tests and benchmarks; the extension simply exits)."""
        if self.listener is not None:
            self.listener.stop()
        if self.receiver is not None:
            self.receiver.stop()

    # -- one Telemetry API batch ------------------------------------------------------------------

    def process_batch(self, events: List[Any]) -> None:
        """Convert one batch and queue the result, under the read lock (the listener answers 200 after).

        Raises ``BatchRefused`` (answered 503, so not acknowledged) once SHUTDOWN closed the intake,
        or when the batch could not be queued before the final flush started: an acknowledged
        batch is always in the queue the final flush drains.
        """
        with self._intake_lock:
            if self._intake_closed:
                raise BatchRefused("lambda-otel is shutting down")
        read_lock = self.rwlock.gen_rlock()
        if not read_lock.acquire(timeout=BATCH_LOCK_WAIT_S):
            raise BatchRefused("lambda-otel is shutting down")
        try:
            with self._convert_lock:
                lambda_dropped = self.loss.total(PLATFORM_LOGS_DROPPED)
                converted = self.converter.process(events)
                lambda_dropped = self.loss.total(PLATFORM_LOGS_DROPPED) != lambda_dropped
            with self._intake_lock:
                if self._sealed:  # the final flush has started without this batch
                    raise BatchRefused("lambda-otel is shutting down")
                self.add_converted(converted)
            for request_id in converted.runtime_done:
                self.coordinator.on_runtime_done(request_id)
            if lambda_dropped:
                self.coordinator.on_telemetry_dropped()  # a runtimeDone may be among the lost
            self._note_lifecycle(converted.started, converted.runtime_done, converted.reports)
            if self._size_by_instance:
                self._budget_from_instance()
        finally:
            read_lock.release()

    def close_intake(self, reason: str, timeout: float) -> bool:
        """SHUTDOWN, before the final flush: stop taking telemetry (both listeners), let the batches
        being processed finish (RWLock write lock), and queue the spans the converter synthesises
        for invocations that never finished. Bounded by ``timeout`` as a whole; False (and one
        warning) if a batch was still being processed then: it is refused (503), never acknowledged.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        with self._intake_lock:
            self._intake_closed = True
        if self.receiver is not None:
            self.receiver.close_intake()  # no plain 200 for data that would arrive after the final flush
        # Kept to the end (the process exits after the final flush): no batch runs after this.
        write_lock = self.rwlock.gen_wlock()
        drained = write_lock.acquire(timeout=max(0.0, deadline - time.monotonic()))
        with self._intake_lock:
            self._sealed = True
        if not drained:
            log.warning("telemetry still being processed at shutdown: that batch is refused, the rest flushed")
        # The converter is free once no batch runs; a batch still converting is waited for only until the deadline.
        if self._convert_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            try:
                self.add_converted(self.converter.on_shutdown(reason))
            finally:
                self._convert_lock.release()
        else:
            log.warning("converter still busy at shutdown: unfinished invocations get no synthesised span")
        return drained

    def _budget_from_instance(self) -> None:
        """Managed Instances: the buffer's budget from the instance's memory (``faas.max_memory``,
        bytes, set on the resource from platform.initStart), once it is known."""
        from .aggregator import budget_from_memory

        for kv in self.resource.attributes:
            if kv.key == "faas.max_memory" and kv.value.int_value > 0:
                self._size_by_instance = False
                self.aggregator.set_budget(*budget_from_memory(kv.value.int_value // (1024 * 1024)))
                return

    def add_converted(self, converted) -> None:
        """Queue converted spans and logs (a batch's, or what the events thread synthesises at shutdown).

        While the exporter drains the queue (a hold), a full queue makes this wait (bounded) for
        room rather than drop: Lambda keeps the telemetry it has not delivered yet."""
        if converted.resource_spans is not None and converted.span_count:
            self.aggregator.add_many(TRACES, [(converted.resource_spans, converted.span_count, None)],
                                     wait_for_room=True)
        if converted.resource_logs is not None and converted.log_count:
            self.aggregator.add_many(LOGS, [(converted.resource_logs, converted.log_count, None)],
                                     wait_for_room=True)

    def _note_lifecycle(self, started: List[str], runtime_done: List[str], reports: List[str]) -> None:
        """Remember which invocations started (``platform.start``), finished and reported."""
        if started or runtime_done or reports:
            with self._reports_cond:
                if len(self._open) > _OPEN_REMEMBERED:
                    self._open.clear()
                self._platform_seen.update(started, runtime_done, reports)
                self._reports_seen.update(reports)
                self._open.update(rid for rid in started if rid not in self._reports_seen)
                self._open.difference_update(reports)
                self._reports_cond.notify_all()

    def on_invoke(self, request_id: str) -> None:
        """INVOKE (events thread): say once if an invocation got no platform event at all.

        A subscription that silently delivers nothing is the worst case (no invocation span, no
        metrics, every hold waiting for a runtimeDone that never comes). An invocation is judged
        ``SILENCE_WINDOW`` INVOKEs later: platform events are buffered by Lambda and arrive late
        (a report only after our next ``/next``; while frozen, nothing is delivered).
        """
        with self._reports_cond:
            self._invoked.append(request_id)
            if len(self._invoked) <= SILENCE_WINDOW:
                return
            earlier = self._invoked.popleft()
            silent = earlier not in self._platform_seen
        if silent:
            self._log_once.warning(
                log, "no-platform-events",
                "no platform event (platform.start, runtimeDone, report) arrived for invocation %s, %d "
                "invocations ago: the Telemetry API subscription delivers none (check "
                "LAMBDA_OTEL_TELEMETRY_TYPES); said once", earlier, SILENCE_WINDOW)

    def wait_for_open_reports(self, timeout: float) -> bool:
        """True once every invocation seen to start has its ``platform.report`` (bounded wait): the
        SHUTDOWN grace on Managed Instances, where no INVOKE names the last invocation."""
        with self._reports_cond:
            return self._reports_cond.wait_for(lambda: not self._open, timeout=max(0.0, timeout))

    def wait_for_report(self, request_id: str, timeout: float) -> bool:
        """True once ``platform.report`` for ``request_id`` has been processed (bounded wait)."""
        with self._reports_cond:
            return self._reports_cond.wait_for(lambda: request_id in self._reports_seen, timeout=max(0.0, timeout))
