"""The one place where lambda-otel's threads are wired together.

Start-up: Lambda's init (its cold start) lasts until every extension's first ``/event/next``,
so only what must happen during init happens before it: register → read config → bind the
listening sockets → subscribe to the Telemetry API (with the bound port). The rest (importing
protobuf, readerwriterlock and our pipeline, building it and starting the servers on the
already bound sockets) runs on a "startup" thread while the first ``/next`` is pending; Lambda's
POSTs and the function's OTLP requests wait in the sockets' backlog meanwhile, and the events
thread waits for that thread (bounded) before handling the first event.
Then the main thread is the events thread: it long-polls ``/event/next`` and, around
each call, lets the FlushCoordinator decide whether to hold ``/next`` for an
end-of-invocation flush. On SHUTDOWN it waits for in-flight telemetry (RWLock write
lock), runs the final flush inside the deadline and exits 0.

Threads: main (events), telemetry listener (+ one per connection), OTLP receiver
(+ one per connection), exporter worker. All but main are daemons: nothing we start
can keep the process alive past SHUTDOWN.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Mapping, Optional

from .config import LOG_LEVELS, Config, ConfigError, load_config
from .extensions_api import Event, ExtensionsApiClient, ExtensionsApiError, InvokeEvent, Registration, ShutdownEvent
from .telemetry_api import bind_socket, listener_host, subscribe

log = logging.getLogger("lambda_otel")

# Our own log lines come back to us as `extension` telemetry records; this prefix is how
# the converter recognises them (and how a user greps for them).
LOG_FORMAT = "[lambda-otel] %(levelname)s %(name)s: %(message)s"


class StartupError(Exception):
    """A fatal problem before the first /next, with the Extension.* error type to report."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


class Extension:
    """The events thread's side of the extension: its pipeline (built in ``pipeline.py``) and the
    lifecycle that drives it (``run``: INVOKE and ``/next``; ``shutdown``)."""

    def __init__(self, config: Config, registration: Registration, client: ExtensionsApiClient, env: Mapping[str, str]) -> None:
        from .pipeline import Pipeline
        from .resource import build_resource

        self.config = config
        self.client = client
        self.pipeline = Pipeline(config, build_resource(env, config, registration.account_id))
        self.last_request_id: Optional[str] = None

    # -- start-up ----------------------------------------------------------------------------

    def start_servers(self, telemetry_sock, receiver_sock) -> None:
        self.pipeline.start(telemetry_sock, receiver_sock)

    # -- the events loop ---------------------------------------------------------------------

    def run(self, first_event: Optional[Event] = None) -> int:
        """Long-poll /next until SHUTDOWN (starting with first_event if the caller already got it).
        Returns the process exit code."""
        event = first_event
        while True:
            if event is None:
                self.pipeline.coordinator.before_next()
                try:
                    event = self.client.next_event()
                except ExtensionsApiError as exc:
                    log.error("event/next failed, exiting: %s", exc)
                    report_exit_error(self.client, "Extension.NextEventFailed", str(exc))
                    return 1
            if isinstance(event, InvokeEvent):
                self.last_request_id = event.request_id
                self.pipeline.converter.on_invoke(event.request_id, event.deadline_ms, event.invoked_function_arn,
                                                  event.tracing_value)
                self.pipeline.coordinator.on_invoke(event.request_id, event.deadline_ms)
                event = None
            else:
                return self.shutdown(event)

    def shutdown(self, event: ShutdownEvent) -> int:
        started = time.monotonic()
        remaining_s = max(0.0, event.deadline_ms / 1000.0 - time.time())
        log.info("SHUTDOWN (%s), %.0f ms to the deadline", event.reason, remaining_s * 1000)

        # The last invocation's platform.report is generated after our last /next, so it
        # arrives only now: give it a short, bounded grace.
        grace = min(self.config.telemetry.report_grace_s, remaining_s / 4)
        if self.last_request_id is not None and grace > 0:
            self.pipeline.wait_for_report(self.last_request_id, grace)

        # Wait for batches being processed right now (read locks) before the final flush.
        # We keep the write lock to the end: a batch that arrives later gets no 200 from us.
        pipeline = self.pipeline
        write_lock = pipeline.rwlock.gen_wlock()
        if not write_lock.acquire(timeout=max(0.01, min(0.5, remaining_s / 4))):
            log.warning("telemetry still being processed at shutdown; flushing what is in the queue")

        pipeline.add_converted(pipeline.converter.on_shutdown(event.reason))
        if pipeline.receiver is not None:
            pipeline.receiver.close_intake()  # no 200 for data that would arrive after the final flush
        pipeline.coordinator.on_shutdown_event(event.deadline_ms)  # logs the one summary line ("final flush: ...")
        log.info("SHUTDOWN handled in %.0f ms", (time.monotonic() - started) * 1000)
        return 0


# --- helpers ------------------------------------------------------------------------------------


def extension_name(env: Mapping[str, str], argv0: str) -> str:
    """Lambda requires the registered name to equal the executable's file name."""
    name = (env.get("LAMBDA_OTEL_EXTENSION_NAME") or "").strip()
    if name:
        return name
    base = os.path.basename(argv0 or "")
    return base if base and not base.endswith(".py") else "lambda-otel"


def report_init_error(client: ExtensionsApiClient, error_type: str, message: str) -> None:
    try:
        client.init_error(error_type, message)
    except ExtensionsApiError as exc:
        log.error("could not report init error: %s", exc)


def report_exit_error(client: ExtensionsApiClient, error_type: str, message: str) -> None:
    try:
        client.exit_error(error_type, message)
    except ExtensionsApiError as exc:
        log.error("could not report exit error: %s", exc)


def _install_thread_watchdog(client: ExtensionsApiClient) -> None:
    """A worker thread that dies leaves the extension half-alive: report it and exit instead."""

    def hook(args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread else "?"
        log.critical("thread %s died: %s: %s", name, args.exc_type.__name__, args.exc_value, exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
        report_exit_error(client, "Extension.ThreadDied", f"lambda-otel thread {name} died: {args.exc_type.__name__}")
        logging.shutdown()
        os._exit(1)

    threading.excepthook = hook


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger("lambda_otel")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


class Startup:
    """Builds the Extension on its own thread, so the first /next need not wait for it."""

    def __init__(self, config: Config, registration: Registration, client: ExtensionsApiClient,
                 env: Mapping[str, str], telemetry_sock, receiver_sock) -> None:
        self._args = (config, registration, client, env)
        self._socks = (telemetry_sock, receiver_sock)
        self._done = threading.Event()
        self.extension: Optional[Extension] = None
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._build, name="startup", daemon=True)

    def begin(self) -> "Startup":
        self._thread.start()
        return self

    def _build(self) -> None:
        try:
            extension = Extension(*self._args)
            extension.start_servers(*self._socks)
            self.extension = extension
        except BaseException as exc:  # handed to the events thread, which reports it
            self.error = exc
        finally:
            self._done.set()
        if self.error is None:
            # Warm the exporter's HTTP stack now, off every critical path, so the first
            # flush (often held at the end of the first invocation) does not pay ~60-150 ms
            # of imports. The events thread does not wait for this.
            try:
                import requests  # noqa: F401
            except ImportError:  # pragma: no cover - a broken install fails at the first export instead
                pass

    def wait(self, timeout: float) -> Extension:
        """The built Extension; raise StartupError if building failed or took longer than timeout."""
        if not self._done.wait(max(0.0, timeout)):
            raise StartupError("Extension.StartupFailed", f"lambda-otel start-up did not finish within {timeout:.1f} s")
        if self.error is not None:
            exc = self.error
            raise StartupError("Extension.StartupFailed", f"lambda-otel start-up failed: {type(exc).__name__}: {exc}") from exc
        assert self.extension is not None
        return self.extension


def start(client: ExtensionsApiClient, registration: Registration, env: Mapping[str, str]) -> Startup:
    """Do what must happen before the first /next and start building the rest in the background;
    raise StartupError on a fatal problem."""
    try:
        config = load_config(env)
    except ConfigError as exc:
        raise StartupError("Extension.ConfigInvalid", f"lambda-otel configuration error: {exc}") from None
    setup_logging(config.log_level)
    for warning in config.warnings:  # shared OTEL_*/AWS_* values we cannot use: said once, never fatal
        log.warning("%s", warning)

    host = listener_host()
    try:
        telemetry_sock = bind_socket(host, config.telemetry.port)
    except OSError as exc:
        raise StartupError(
            "Extension.ListenerBindFailed",
            f"cannot listen for telemetry on {host}:{config.telemetry.port} ({exc}); set LAMBDA_OTEL_TELEMETRY_PORT to a free port",
        ) from None
    receiver_sock = None
    if config.receiver.enabled:
        try:
            receiver_sock = bind_socket("127.0.0.1", config.receiver.port)
        except OSError as exc:
            telemetry_sock.close()
            raise StartupError(
                "Extension.ReceiverBindFailed",
                f"cannot listen for OTLP on 127.0.0.1:{config.receiver.port} ({exc}); "
                "set LAMBDA_OTEL_RECEIVER_PORT to a free port or LAMBDA_OTEL_RECEIVER_ENABLED=false",
            ) from None

    if receiver_sock is not None:
        log.info("OTLP receiver listening on http://127.0.0.1:%d", receiver_sock.getsockname()[1])

    if not config.exporter.any_endpoint:
        log.warning(
            "no OTLP endpoint configured (set LAMBDA_OTEL_EXPORTER_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT): "
            "telemetry will be counted as dropped, not exported"
        )

    try:
        subscribe(client.runtime_api, registration.extension_id, config.telemetry, telemetry_sock.getsockname()[1])
    except ExtensionsApiError as exc:
        telemetry_sock.close()
        if receiver_sock is not None:
            receiver_sock.close()
        raise StartupError("Extension.TelemetrySubscribeFailed", f"Telemetry API subscription failed: {exc}") from None
    return Startup(config, registration, client, env, telemetry_sock, receiver_sock).begin()


def main(argv: Optional[list] = None) -> int:
    argv = sys.argv if argv is None else argv
    env = os.environ
    level = (env.get("LAMBDA_OTEL_LOG_LEVEL") or "info").strip().lower()
    setup_logging(level if level in LOG_LEVELS else "info")
    try:
        client = ExtensionsApiClient(env.get("AWS_LAMBDA_RUNTIME_API", ""))
        registration = client.register(extension_name(env, argv[0] if argv else ""))
    except ExtensionsApiError as exc:
        log.error("cannot register with the Extensions API: %s", exc)
        return 1
    try:
        startup = start(client, registration, env)
    except StartupError as exc:
        log.error("%s", exc)
        report_init_error(client, exc.error_type, str(exc))
        return 1
    except Exception as exc:  # a bug of ours must still be reported, not look like a hang
        log.exception("start-up failed")
        report_init_error(client, "Extension.StartupFailed", f"lambda-otel start-up failed: {type(exc).__name__}: {exc}")
        return 1
    # The first /next ends our part of init; the pipeline is finished meanwhile on the startup thread.
    try:
        first = client.next_event()
    except ExtensionsApiError as exc:
        log.error("event/next failed, exiting: %s", exc)
        report_exit_error(client, "Extension.NextEventFailed", str(exc))
        return 1
    try:
        # Bounded by the event's deadline: past it Lambda gives up on this environment anyway.
        extension = startup.wait(max(1.0, first.deadline_ms / 1000.0 - time.time()))
    except StartupError as exc:
        log.error("%s", exc, exc_info=exc.__cause__)
        report_exit_error(client, exc.error_type, str(exc))
        return 1
    _install_thread_watchdog(client)
    return extension.run(first)
