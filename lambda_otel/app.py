"""The one place where lambda-otel's threads are wired together.

Start-up. Lambda's init (its cold start) lasts until every extension's first ``/event/next``, and
since INIT is billed and shares the sandbox's CPU with the function, start-up is judged by its
total CPU and by the first invocation, not only by the instant of the first ``/next``. So:

* before the first ``/next``, only what must happen during init: register, read the config,
  bind the listening sockets, subscribe to the Telemetry API (with the bound port). Its log
  lines are kept and written once logging is set up.
* on-demand and provisioned concurrency: a "startup" thread then sets up logging, builds the
  pipeline and starts the servers on the already bound sockets while the first ``/next`` is
  pending (Lambda's POSTs and the function's OTLP requests wait in the sockets' backlog), and
  finally warms the export client (``requests``). No hold waits for that import: if the first
  invocation ends before it is done, its data is kept (never in flight across the freeze) and
  sent at the next INVOKE or at SHUTDOWN. The events thread waits for the pipeline (bounded)
  before handling the first event.
* SnapStart: init runs once, when the snapshot is taken, and restores are what users wait
  for. So everything is built on the main thread before the first ``/next`` (the snapshot
  point) and no thread of ours runs across the snapshot. The first ``/next`` returning is the
  restore: ``Extension.renew_after_restore`` renews what must be unique per environment, then
  the threads start (fresh timers, no pooled connection from the snapshot) and anything that
  needs AWS credentials starts only then.
* Managed Instances: register SHUTDOWN only (INVOKE is refused there); the per-invocation
  lifecycle comes from the Telemetry API, and there is no freeze, so nothing is held.

Then the main thread is the events thread: it long-polls ``/event/next`` and, around each call,
lets the FlushCoordinator decide whether to hold ``/next`` for an end-of-invocation flush. On
SHUTDOWN it waits for in-flight telemetry (RWLock write lock), runs the final flush inside the
deadline and exits 0.

Threads: main (events), startup (ends after start-up), telemetry listener (+ one per
connection), OTLP receiver (+ one per connection), exporter worker. All but main are daemons:
nothing we start can keep the process alive past SHUTDOWN.
"""

from __future__ import annotations

import os
import sys
import time

from .config import LOG_LEVELS, Config, ConfigError, InitType, load_config
from .extensions_api import ExtensionsApiClient, ExtensionsApiError, InvokeEvent, Registration, ShutdownEvent

# typing.TYPE_CHECKING without importing typing: the modules on the path to the first /next
# need it for annotations only (strings here), and its import costs ~3 ms there.
TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover - typing only
    import socket
    import threading
    from typing import Callable, List, Mapping, NoReturn, Optional, Sequence, Tuple

    from .extensions_api import Event
    from .pipeline import Pipeline

LOGGER_NAME = "lambda_otel"
# Our own log lines come back to us as `extension` telemetry records; this prefix is how
# the converter recognises them (and how a user greps for them).
LOG_FORMAT = "[lambda-otel] %(levelname)s %(name)s: %(message)s"

# Said once when start-up is over (export client imported): from then on every hold exports.
STARTED_LINE = "start-up done: the export client is ready"

# How long the events thread waits for the startup thread when the first event needs no
# pipeline deadline of its own (never reached in practice: building takes ~100 ms).
STARTUP_WAIT_FLOOR_S = 1.0

USAGE = """\
usage: lambda-otel [--help]

lambda-otel is an AWS Lambda extension: Lambda starts it from the layer's
/opt/extensions/lambda-otel beside the function. It registers with the Extensions
API (AWS_LAMBDA_RUNTIME_API), turns the Telemetry API's platform, function and
extension events and the function's own OTLP (received on 127.0.0.1:4318) into
OpenTelemetry traces, metrics and logs, and exports them over OTLP/HTTP.

It is configured by environment variables (LAMBDA_OTEL_* and the standard OTEL_*),
listed in the README, which also shows how to run it on a workstation.
"""


class StartupError(Exception):
    """A fatal problem before the first /next, with the Extension.* error type to report."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


def registration_events(init_type: InitType) -> Tuple[str, ...]:
    """The events to register for: Managed Instances refuse INVOKE (there is none to give: invocations
    overlap and never freeze), and refusing it would fail the environment's init."""
    if init_type is InitType.MANAGED_INSTANCES:
        return ("SHUTDOWN",)
    return ("INVOKE", "SHUTDOWN")


class Extension:
    """The events thread's side of the extension: its pipeline (built in ``pipeline.py``) and the
    lifecycle that drives it (``run``: INVOKE and ``/next``; ``shutdown``)."""

    def __init__(self, config: Config, registration: Registration, client: ExtensionsApiClient, env: Mapping[str, str]) -> None:
        from .pipeline import Pipeline
        from .resource import build_resource

        self.config = config
        self.client = client
        self.pipeline: Pipeline = Pipeline(config, build_resource(env, config, registration.account_id))
        self.last_request_id: Optional[str] = None
        self.restores = 0

    # -- start-up ----------------------------------------------------------------------------

    def start_servers(self, telemetry_sock: "socket.socket", receiver_sock: Optional["socket.socket"]) -> None:
        """Start every thread of the pipeline on the already bound sockets."""
        self.pipeline.start(telemetry_sock, receiver_sock)

    def renew_after_restore(self) -> None:
        """A SnapStart restore: every copy of the snapshot must be its own environment.

        The ONE place where per-environment state is renewed, on the events thread, before any
        thread of ours runs again.
        """
        from .resource import renew_after_restore as renew_resource

        self.restores += 1
        pipeline = self.pipeline
        renew_resource(pipeline.resource_attributes, pipeline.resource)
        pipeline.converter.renew_after_restore()  # id generator reseeded from os.urandom, invocations cleared
        pipeline.metrics.renew_after_restore()
        pipeline.exporter.renew_after_restore()  # the snapshot's pooled connections are dead
        pipeline.auth.renew_after_restore()  # credentials, signing keys, secrets: this copy's own
        self.last_request_id = None

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
                    _logger().error("event/next failed, exiting: %s", exc)
                    report_exit_error(self.client, "Extension.NextEventFailed", str(exc))
                    return 1
            if isinstance(event, InvokeEvent):
                self.last_request_id = event.request_id
                self.pipeline.converter.on_invoke(event.request_id, event.deadline_ms, event.invoked_function_arn,
                                                  event.tracing_value)
                self.pipeline.coordinator.on_invoke(event.request_id, event.deadline_ms)
                self.pipeline.on_invoke(event.request_id)  # says once if platform events stopped coming
                event = None
            else:
                return self.shutdown(event)

    def shutdown(self, event: ShutdownEvent) -> int:
        log = _logger()
        started = time.monotonic()
        remaining_s = max(0.0, event.deadline_ms / 1000.0 - time.time())
        log.info("SHUTDOWN (%s), %.0f ms to the deadline", event.reason, remaining_s * 1000)

        # The last invocation's platform.report is generated after our last /next, so it
        # arrives only now: give it a short, bounded grace.
        grace = min(self.config.telemetry.report_grace_s, remaining_s / 4)
        if self.last_request_id is not None and grace > 0:
            self.pipeline.wait_for_report(self.last_request_id, grace)
        # Managed Instances have no INVOKE: wait (in the same grace) for every started invocation's report.
        self.pipeline.wait_for_open_reports(max(0.0, grace - (time.monotonic() - started)))

        # Close both listeners' intake and wait (bounded) for batches being processed right now:
        # from here on nothing is acknowledged that the final flush would miss.
        pipeline = self.pipeline
        pipeline.close_intake(event.reason, timeout=max(0.01, min(0.5, remaining_s / 4)))
        pipeline.coordinator.on_shutdown_event(event.deadline_ms)  # logs the one summary line ("final flush: ...")
        log.info("SHUTDOWN handled in %.0f ms", (time.monotonic() - started) * 1000)
        return 0


# --- logging -------------------------------------------------------------------------------------
#
# Importing and configuring ``logging`` costs several ms, which the first /next need not wait
# for: lines from before it are kept here and written, in order, once logging is set up.

_early_lines: List[Tuple[str, str, tuple]] = []


def _early(level: str, message: str, *args: object) -> None:
    _early_lines.append((level, message, args))


def _logger():
    import logging

    return logging.getLogger(LOGGER_NAME)


def setup_logging(level: str = "info") -> None:
    """Our handler on stderr (Lambda sends it back to us as `extension` records), then the kept lines."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger(LOGGER_NAME)
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if level in LOG_LEVELS else "INFO")
    root.propagate = False
    lines, _early_lines[:] = list(_early_lines), []
    for line_level, message, args in lines:
        root.log(getattr(logging, line_level.upper()), message, *args)


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
        _logger().error("could not report init error: %s", exc)


def report_exit_error(client: ExtensionsApiClient, error_type: str, message: str) -> None:
    try:
        client.exit_error(error_type, message)
    except ExtensionsApiError as exc:
        _logger().error("could not report exit error: %s", exc)


def _install_thread_watchdog(client: ExtensionsApiClient) -> None:
    """A worker thread that dies leaves the extension half-alive: report it and exit instead."""
    import logging
    import threading

    def hook(args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread else "?"
        _logger().critical("thread %s died: %s: %s", name, args.exc_type.__name__, args.exc_value,
                           exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
        report_exit_error(client, "Extension.ThreadDied", f"lambda-otel thread {name} died: {args.exc_type.__name__}")
        logging.shutdown()
        os._exit(1)

    threading.excepthook = hook


def wants_help(args: Sequence[str]) -> bool:
    return any(a in ("-h", "--help", "help") for a in args)


# --- start-up -----------------------------------------------------------------------------------


class Prepared:
    """What start-up did before the first /next: the config, the bound sockets, the subscription."""

    def __init__(self, client: ExtensionsApiClient, registration: Registration, env: Mapping[str, str],
                 config: Config, telemetry_sock: "socket.socket", receiver_sock: Optional["socket.socket"]) -> None:
        self.client = client
        self.registration = registration
        self.env = env
        self.config = config
        self.telemetry_sock = telemetry_sock
        self.receiver_sock = receiver_sock

    def build(self) -> Extension:
        """Set up logging and build the pipeline (the heavy imports); starts no thread."""
        setup_logging(self.config.log_level)
        return Extension(self.config, self.registration, self.client, self.env)

    def start(self, extension: Extension) -> None:
        extension.start_servers(self.telemetry_sock, self.receiver_sock)


def warm_export_client(extension: Extension, resolve: bool = True) -> None:
    """Import the exporter's HTTP stack (~50-100 ms of CPU) off every critical path, right after
    the servers are up, then resolve the endpoints (``resolve=False``: not). No hold waits for it: a
    first invocation that ends before it is done keeps its data for the next INVOKE (``flush.decide``:
    the client is not ready)."""
    try:
        extension.pipeline.warm_export_client(resolve)
    except Exception as exc:  # a broken install: the first export reports it, counted
        _logger().warning("could not prepare the exporter's HTTP stack: %s: %s", type(exc).__name__, exc)
        return
    _logger().info(STARTED_LINE)


class Startup:
    """Builds and starts the Extension on its own thread, so the first /next need not wait for it."""

    def __init__(self, prepared: Prepared) -> None:
        self._prepared = prepared
        self._done: Optional[threading.Event] = None
        self.extension: Optional[Extension] = None
        self.error: Optional[BaseException] = None

    def begin(self) -> "Startup":
        """Start the startup thread (called on the main thread once the first /next is on the wire:
        nothing before that needs ``threading``, whose import is then off the path to /next)."""
        import threading

        self._done = threading.Event()
        threading.Thread(target=self._build, name="startup", daemon=True).start()
        return self

    def _build(self) -> None:
        try:
            extension = self._prepared.build()
            extension.pipeline.expect_export_client_warm_up()  # before any thread could flush
            self._prepared.start(extension)
            self.extension = extension
        except BaseException as exc:  # handed to the events thread, which reports it
            self.error = exc
        finally:
            self._done.set()
        if self.extension is not None:
            warm_export_client(self.extension)  # the events thread does not wait for this

    def wait(self, timeout: float) -> Extension:
        """The built Extension; raise StartupError if building failed or took longer than timeout."""
        if self._done is None:
            raise StartupError("Extension.StartupFailed", "lambda-otel start-up was never begun")
        if not self._done.wait(max(0.0, timeout)):
            raise StartupError("Extension.StartupFailed", f"lambda-otel start-up did not finish within {timeout:.1f} s")
        if self.error is not None:
            exc = self.error
            raise StartupError("Extension.StartupFailed", f"lambda-otel start-up failed: {type(exc).__name__}: {exc}") from exc
        assert self.extension is not None
        return self.extension


def prepare(client: ExtensionsApiClient, registration: Registration, env: Mapping[str, str]) -> Prepared:
    """What must happen before the first /next: config, bind, subscribe. Raise StartupError on a
    fatal problem."""
    from .subscription import bind_socket, listener_host, subscribe

    try:
        config = load_config(env)
    except ConfigError as exc:
        raise StartupError("Extension.ConfigInvalid", f"lambda-otel configuration error: {exc}") from None
    for warning in config.warnings:  # shared OTEL_*/AWS_* values we cannot use: said once, never fatal
        _early("warning", "%s", warning)

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
        _early("info", "OTLP receiver listening on http://127.0.0.1:%d", receiver_sock.getsockname()[1])
    if not config.exporter.any_endpoint:
        _early("warning",
               "no OTLP endpoint configured (set LAMBDA_OTEL_EXPORTER_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT): "
               "telemetry will be counted as dropped, not exported")

    try:
        schema = subscribe(client, config.telemetry, telemetry_sock.getsockname()[1])
    except ExtensionsApiError as exc:
        telemetry_sock.close()
        if receiver_sock is not None:
            receiver_sock.close()
        raise StartupError("Extension.TelemetrySubscribeFailed", f"Telemetry API subscription failed: {exc}") from None
    _early("info", "Telemetry API subscribed with schema %s", schema)
    return Prepared(client, registration, env, config, telemetry_sock, receiver_sock)


def _fail_init(client: Optional[ExtensionsApiClient], level: str, error_type: str, message: str,
               exc_info: bool = False) -> int:
    """Log a fatal start-up problem (setting up logging on the spot) and report it to init/error."""
    setup_logging(level)
    _logger().error("%s", message, exc_info=exc_info)
    if client is not None:
        report_init_error(client, error_type, message)
    return 1


def main(argv: Optional[Sequence[str]] = None, env: Optional[Mapping[str, str]] = None,
         at_snapshot: Optional[Callable[[Extension], None]] = None) -> int:
    """Run the extension until SHUTDOWN; the process exit code.

    ``at_snapshot`` (SnapStart only) is called at the snapshot point, right before the first
    ``/next``, with nothing of ours running: the local simulator's restore emulation forks there.
    """
    argv = list(sys.argv if argv is None else argv)
    if wants_help(argv[1:]):
        sys.stdout.write(USAGE)
        return 0
    env = os.environ if env is None else env
    level = (env.get("LAMBDA_OTEL_LOG_LEVEL") or "info").strip().lower()
    try:
        client = ExtensionsApiClient(env.get("AWS_LAMBDA_RUNTIME_API", ""))
        init_type = InitType.from_env(env.get("AWS_LAMBDA_INITIALIZATION_TYPE"))
        registration = client.register(extension_name(env, argv[0] if argv else ""), registration_events(init_type))
    except ExtensionsApiError as exc:
        return _fail_init(None, level, "", f"cannot register with the Extensions API: {exc}")
    try:
        prepared = prepare(client, registration, env)
    except StartupError as exc:
        return _fail_init(client, level, exc.error_type, str(exc))
    except Exception as exc:  # a bug of ours must still be reported, not look like a hang
        return _fail_init(client, level, "Extension.StartupFailed",
                          f"lambda-otel start-up failed: {type(exc).__name__}: {exc}", exc_info=True)

    if prepared.config.init_type is InitType.SNAP_START:
        return _run_snap_start(prepared, at_snapshot)

    startup = Startup(prepared)
    # The first /next ends our part of init; the pipeline is built meanwhile on the startup thread,
    # started once the request is on the wire (so that it never delays the /next itself).
    try:
        first = client.next_event(on_sent=startup.begin)
    except ExtensionsApiError as exc:
        setup_logging(prepared.config.log_level)
        _logger().error("event/next failed, exiting: %s", exc)
        report_exit_error(client, "Extension.NextEventFailed", str(exc))
        return 1
    try:
        # Bounded by the event's deadline: past it Lambda gives up on this environment anyway.
        extension = startup.wait(max(STARTUP_WAIT_FLOOR_S, first.deadline_ms / 1000.0 - time.time()))
    except StartupError as exc:
        setup_logging(prepared.config.log_level)
        _logger().error("%s", exc, exc_info=exc.__cause__)
        report_exit_error(client, exc.error_type, str(exc))
        return 1
    _install_thread_watchdog(client)
    return extension.run(first)


def run_process() -> NoReturn:
    """The process's one way through: ``python -m lambda_otel`` and the layer's launcher both end here.

    ``logging`` is flushed only if something imported it (a ``--help`` or an early failure may not),
    and the exit is ``os._exit``: no stray non-daemon thread (ours or a library's) may delay the exit
    Lambda waits for.
    """
    code = main()
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.shutdown()
    os._exit(code)


def _run_snap_start(prepared: Prepared, at_snapshot: Optional[Callable[[Extension], None]]) -> int:
    """SnapStart: build everything before the snapshot (this thread only), renew after the restore."""
    client = prepared.client
    try:
        extension = prepared.build()
        # Imports only: DNS answers and connections are made after the restore (which forgets
        # any), and no lookup thread of ours may run across the snapshot.
        warm_export_client(extension, resolve=False)
    except Exception as exc:
        return _fail_init(client, prepared.config.log_level, "Extension.StartupFailed",
                          f"lambda-otel start-up failed: {type(exc).__name__}: {exc}", exc_info=True)
    if at_snapshot is not None:
        at_snapshot(extension)
    try:
        first = client.next_event()  # returns in a restored copy of this process
    except ExtensionsApiError as exc:
        _logger().error("event/next failed, exiting: %s", exc)
        report_exit_error(client, "Extension.NextEventFailed", str(exc))
        return 1
    extension.renew_after_restore()
    prepared.start(extension)
    _install_thread_watchdog(client)
    return extension.run(first)
