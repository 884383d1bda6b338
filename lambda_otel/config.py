"""Configuration from environment variables, validated once at start.

Lambda extensions share the function's environment, so two families are read:
the standard ``OTEL_*`` variables (shared with the function's own SDK) and
``LAMBDA_OTEL_*`` variables, which are ours alone and win where both exist.
That precedence is what lets a function point its SDK at our receiver with
``OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318`` while the extension
exports elsewhere with ``LAMBDA_OTEL_EXPORTER_ENDPOINT``.

Every error names the variable and the allowed values, because the message ends
up in ``/extension/init/error`` and in the function's logs, where it must be
enough to fix the problem.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import socket
from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Optional, Tuple, TypeVar
from urllib.parse import unquote, urlsplit

from lambda_otel.otlp import signal_url

T = TypeVar("T")

STRATEGIES = ("default", "end", "periodic", "continuous")
TELEMETRY_TYPES = ("platform", "function", "extension")
TEMPORALITIES = ("cumulative", "delta", "lowmemory")
XRAY_LINK = "link"
XRAY_PARENT = "parent"
XRAY_MODES = (XRAY_LINK, XRAY_PARENT)
LOG_LEVELS = ("debug", "info", "warning", "error")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]", "0.0.0.0", "sandbox.localdomain", "sandbox")


class InitType(enum.Enum):
    """The kind of execution environment, from ``AWS_LAMBDA_INITIALIZATION_TYPE``.

    It decides what we register for and how we flush: Managed Instances have no INVOKE event and
    never freeze; SnapStart environments are restored from a snapshot and must renew what is unique.
    """

    ON_DEMAND = "on-demand"
    PROVISIONED = "provisioned-concurrency"
    SNAP_START = "snap-start"
    MANAGED_INSTANCES = "lambda-managed-instances"

    @classmethod
    def from_env(cls, raw: Optional[str]) -> "InitType":
        """Missing or unknown means on-demand: Lambda sets this variable, so a value we do not
        know is a newer platform than ours, never a user error to fail init for."""
        try:
            return cls((raw or "").strip().lower())
        except ValueError:
            return cls.ON_DEMAND


class ConfigError(ValueError):
    """A configuration variable has a value we cannot use."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable


@dataclass(frozen=True)
class ExporterConfig:
    traces_endpoint: Optional[str] = None
    metrics_endpoint: Optional[str] = None
    logs_endpoint: Optional[str] = None
    headers: Dict[str, str] = field(default_factory=dict)
    compression: str = "gzip"
    timeout_s: float = 10.0
    certificate: Optional[str] = None

    def endpoint(self, signal: str) -> Optional[str]:
        return {"traces": self.traces_endpoint, "metrics": self.metrics_endpoint, "logs": self.logs_endpoint}[signal]

    @property
    def any_endpoint(self) -> bool:
        return bool(self.traces_endpoint or self.metrics_endpoint or self.logs_endpoint)


@dataclass(frozen=True)
class FlushConfig:
    strategy: str = "default"
    interval_s: float = 20.0
    flush_budget_s: float = 1.0
    deadline_margin_s: float = 0.5
    runtime_done_wait_s: float = 1.0
    max_batch_records: int = 1000
    max_batch_bytes: int = 4 * 1024 * 1024
    shutdown_margin_s: float = 0.2
    breaker_failures: int = 3
    breaker_max_backoff_s: float = 60.0


@dataclass(frozen=True)
class QueueConfig:
    """Memory budget for buffered telemetry. None means: derive from the function's memory size."""

    max_bytes: Optional[int] = None
    max_records: Optional[int] = None
    memory_mb: int = 128


@dataclass(frozen=True)
class TelemetryConfig:
    """The Telemetry API subscription and our listener for it.

    Buffering defaults favour latency: timeoutMs=25 (the API minimum) means
    ``platform.runtimeDone`` reaches us within ~25 ms, so an end-of-invocation
    flush holds ``/next`` only briefly. maxItems/maxBytes stay at the API minimums
    to keep each POST small.
    """

    port: int = 4322
    types: Tuple[str, ...] = TELEMETRY_TYPES
    max_items: int = 1000
    max_bytes: int = 262144
    timeout_ms: int = 25
    schema_version: str = "2022-12-13"
    report_grace_s: float = 0.3


@dataclass(frozen=True)
class ReceiverConfig:
    enabled: bool = True
    port: int = 4318
    max_body_bytes: int = 4 * 1024 * 1024
    max_decompressed_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class Config:
    extension_name: str = "lambda-otel"
    exporter: ExporterConfig = field(default_factory=ExporterConfig)
    flush: FlushConfig = field(default_factory=FlushConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    receiver: ReceiverConfig = field(default_factory=ReceiverConfig)
    service_name: Optional[str] = None
    resource_attributes: Dict[str, str] = field(default_factory=dict)
    metrics_temporality: str = "cumulative"
    xray_mode: str = "link"
    log_level: str = "info"
    init_type: InitType = InitType.ON_DEMAND


# --- small typed readers -------------------------------------------------------------------


def _get(env: Mapping[str, str], *names: str) -> Tuple[Optional[str], Optional[str]]:
    """First non-empty variable among ``names``: (name, value)."""
    for name in names:
        value = env.get(name)
        if value is not None and value.strip() != "":
            return name, value.strip()
    return None, None


def _int(env: Mapping[str, str], name: str, default: T, lo: int, hi: int) -> T | int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(name, f"{raw!r} is not a whole number (allowed: {lo}..{hi})") from None
    if not lo <= value <= hi:
        raise ConfigError(name, f"{value} is out of range (allowed: {lo}..{hi})")
    return value


def _ms(env: Mapping[str, str], name: str, default_s: float, lo_ms: int, hi_ms: int) -> float:
    value = _int(env, name, None, lo_ms, hi_ms)
    return default_s if value is None else value / 1000.0


def _choice(env: Mapping[str, str], name: str, default: str, allowed: Tuple[str, ...]) -> str:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value not in allowed:
        raise ConfigError(name, f"{raw!r} is not allowed (allowed: {', '.join(allowed)})")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(name, f"{raw!r} is not a boolean (allowed: true, false)")


def parse_key_values(name: str, raw: str) -> Dict[str, str]:
    """``k1=v1,k2=v2`` as used by OTEL_EXPORTER_OTLP_HEADERS and OTEL_RESOURCE_ATTRIBUTES.

    Values are percent-decoded (W3C baggage style), as the OpenTelemetry spec says.
    """
    result: Dict[str, str] = {}
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        key = unquote(key.strip())
        if not sep or not key:
            # Never echo the value: headers may carry secrets.
            raise ConfigError(name, "every entry must look like key=value, separated by commas")
        result[key] = unquote(value.strip())
    return result


def _endpoint_url(name: str, raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(name, f"{raw!r} is not an http:// or https:// URL")
    try:
        parts.port
    except ValueError:
        raise ConfigError(name, f"{raw!r} has an invalid port") from None
    return raw


def _signal_endpoints(env: Mapping[str, str]) -> Tuple[Dict[str, Optional[str]], Dict[str, Optional[str]]]:
    """Per-signal URLs and the variable each came from.

    A base endpoint gets ``/v1/<signal>`` appended; a per-signal variable is used as is,
    as the OTLP exporter specification says.
    """
    base_name, base = _get(env, "LAMBDA_OTEL_EXPORTER_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    if base is not None:
        _endpoint_url(base_name, base)
    urls: Dict[str, Optional[str]] = {}
    sources: Dict[str, Optional[str]] = {}
    for signal in ("traces", "metrics", "logs"):
        upper = signal.upper()
        name, value = _get(env, f"LAMBDA_OTEL_EXPORTER_{upper}_ENDPOINT", f"OTEL_EXPORTER_OTLP_{upper}_ENDPOINT")
        # LAMBDA_OTEL_EXPORTER_ENDPOINT beats the shared OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT.
        if value is not None and not (name.startswith("OTEL_") and base_name == "LAMBDA_OTEL_EXPORTER_ENDPOINT"):
            urls[signal] = _endpoint_url(name, value)
            sources[signal] = name
        elif base is not None:
            urls[signal] = signal_url(base, signal)
            sources[signal] = base_name
        else:
            urls[signal] = None
            sources[signal] = None
    return urls, sources


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is this machine, in any spelling a client would connect with, without DNS.

    Catches loopback and unspecified addresses however written (``127.1``, ``2130706433``, ``0``,
    ``::ffff:127.0.0.1``), ``localhost`` / ``*.localhost`` (RFC 6761) and a trailing dot.
    """
    host = host.strip().strip("[]").rstrip(".").lower()
    if host in LOOPBACK_HOSTS or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:
            ip = ipaddress.ip_address(socket.inet_aton(host))  # the C library's shorthand forms
        except (OSError, ValueError):
            return False
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None:
        ip = mapped
    return ip.is_loopback or ip.is_unspecified


def _refuse_self_export(urls: Dict[str, Optional[str]], sources: Dict[str, Optional[str]], receiver: ReceiverConfig) -> None:
    """An endpoint that is our own receiver would loop every record back to us forever."""
    if not receiver.enabled:
        return
    for signal, url in urls.items():
        if url is None:
            continue
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if is_loopback_host(parts.hostname or "") and port == receiver.port:
            raise ConfigError(
                sources[signal] or "OTEL_EXPORTER_OTLP_ENDPOINT",
                f"{url} is lambda-otel's own OTLP receiver (port {receiver.port}); exporting there would loop. "
                "Set LAMBDA_OTEL_EXPORTER_ENDPOINT to your backend (it takes precedence over OTEL_EXPORTER_OTLP_ENDPOINT).",
            )


def _exporter(env: Mapping[str, str], receiver: ReceiverConfig) -> ExporterConfig:
    urls, sources = _signal_endpoints(env)
    _refuse_self_export(urls, sources, receiver)

    headers: Dict[str, str] = {}
    name, raw = _get(env, "LAMBDA_OTEL_EXPORTER_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS")
    if raw is not None:
        headers = parse_key_values(name, raw)

    name, raw = _get(env, "LAMBDA_OTEL_EXPORTER_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION")
    compression = "gzip"
    if raw is not None:
        compression = raw.lower()
        if compression not in ("gzip", "none"):
            raise ConfigError(name, f"{raw!r} is not allowed (allowed: gzip, none)")

    name, raw = _get(env, "LAMBDA_OTEL_EXPORTER_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
    if raw is not None and raw.lower() != "http/protobuf":
        hint = " (set LAMBDA_OTEL_EXPORTER_PROTOCOL=http/protobuf to keep this value for the function's SDK only)"
        raise ConfigError(name, f"{raw!r} is not supported by lambda-otel (allowed: http/protobuf){hint if name.startswith('OTEL_') else ''}")

    name, raw = _get(env, "LAMBDA_OTEL_EXPORTER_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")
    timeout_s = 10.0
    if raw is not None:
        timeout_s = _ms({name: raw}, name, 10.0, 1, 600_000)

    name, certificate = _get(env, "LAMBDA_OTEL_EXPORTER_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE")
    if certificate is not None and not os.path.isfile(certificate):
        raise ConfigError(name, f"{certificate!r} is not a readable file (allowed: path to a PEM CA bundle)")

    return ExporterConfig(
        traces_endpoint=urls["traces"],
        metrics_endpoint=urls["metrics"],
        logs_endpoint=urls["logs"],
        headers=headers,
        compression=compression,
        timeout_s=timeout_s,
        certificate=certificate,
    )


def _telemetry(env: Mapping[str, str]) -> TelemetryConfig:
    types: Tuple[str, ...] = TELEMETRY_TYPES
    raw = env.get("LAMBDA_OTEL_TELEMETRY_TYPES")
    if raw is not None and raw.strip():
        requested = tuple(t.strip().lower() for t in raw.split(",") if t.strip())
        bad = [t for t in requested if t not in TELEMETRY_TYPES]
        if bad or not requested:
            raise ConfigError(
                "LAMBDA_OTEL_TELEMETRY_TYPES",
                f"{raw!r} is not allowed (allowed: a comma-separated subset of {', '.join(TELEMETRY_TYPES)})",
            )
        types = tuple(t for t in TELEMETRY_TYPES if t in requested)
    port = _int(env, "LAMBDA_OTEL_TELEMETRY_PORT", 4322, 1024, 65535)
    if port == 9001:
        raise ConfigError("LAMBDA_OTEL_TELEMETRY_PORT", "9001 is reserved by Lambda (allowed: 1024..65535 except 9001)")
    return TelemetryConfig(
        port=port,
        types=types,
        max_items=_int(env, "LAMBDA_OTEL_TELEMETRY_MAX_ITEMS", 1000, 1000, 10000),
        max_bytes=_int(env, "LAMBDA_OTEL_TELEMETRY_MAX_BYTES", 262144, 262144, 1048576),
        timeout_ms=_int(env, "LAMBDA_OTEL_TELEMETRY_TIMEOUT_MS", 25, 25, 30000),
        report_grace_s=_ms(env, "LAMBDA_OTEL_REPORT_GRACE_MS", 0.3, 0, 1500),
    )


def _receiver(env: Mapping[str, str]) -> ReceiverConfig:
    return ReceiverConfig(
        enabled=_bool(env, "LAMBDA_OTEL_RECEIVER_ENABLED", True),
        port=_int(env, "LAMBDA_OTEL_RECEIVER_PORT", 4318, 1024, 65535),
        max_body_bytes=_int(env, "LAMBDA_OTEL_RECEIVER_MAX_BODY_BYTES", ReceiverConfig.max_body_bytes, 1024,
                            64 * 1024 * 1024),
        max_decompressed_bytes=_int(env, "LAMBDA_OTEL_RECEIVER_MAX_DECOMPRESSED_BYTES",
                                    ReceiverConfig.max_decompressed_bytes, 1024, 256 * 1024 * 1024),
    )


def _flush(env: Mapping[str, str]) -> FlushConfig:
    return FlushConfig(
        strategy=_choice(env, "LAMBDA_OTEL_FLUSH_STRATEGY", "default", STRATEGIES),
        interval_s=_ms(env, "LAMBDA_OTEL_FLUSH_INTERVAL_MS", 20.0, 100, 3_600_000),
        flush_budget_s=_ms(env, "LAMBDA_OTEL_FLUSH_BUDGET_MS", 1.0, 10, 60_000),
        deadline_margin_s=_ms(env, "LAMBDA_OTEL_DEADLINE_MARGIN_MS", 0.5, 0, 10_000),
        runtime_done_wait_s=_ms(env, "LAMBDA_OTEL_RUNTIME_DONE_WAIT_MS", 1.0, 0, 60_000),
        max_batch_records=_int(env, "LAMBDA_OTEL_MAX_BATCH_RECORDS", 1000, 1, 100_000),
        max_batch_bytes=_int(env, "LAMBDA_OTEL_MAX_BATCH_BYTES", 4 * 1024 * 1024, 1024, 64 * 1024 * 1024),
        shutdown_margin_s=_ms(env, "LAMBDA_OTEL_SHUTDOWN_MARGIN_MS", 0.2, 0, 1500),
        breaker_failures=_int(env, "LAMBDA_OTEL_BREAKER_FAILURES", 3, 1, 1000),
        breaker_max_backoff_s=_ms(env, "LAMBDA_OTEL_BREAKER_MAX_BACKOFF_MS", 60.0, 100, 3_600_000),
    )


def _queue(env: Mapping[str, str]) -> QueueConfig:
    memory_mb = 128
    raw = env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
    if raw and raw.strip():
        try:
            memory_mb = max(1, int(raw.strip()))
        except ValueError:
            raise ConfigError("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", f"{raw!r} is not a whole number of MB") from None
    return QueueConfig(
        max_bytes=_int(env, "LAMBDA_OTEL_QUEUE_MAX_BYTES", None, 64 * 1024, 1024 * 1024 * 1024),
        max_records=_int(env, "LAMBDA_OTEL_QUEUE_MAX_RECORDS", None, 100, 10_000_000),
        memory_mb=memory_mb,
    )


def load_config(env: Mapping[str, str] | None = None) -> Config:
    """Read and validate every setting; raise ConfigError on the first bad one."""
    env = os.environ if env is None else env
    receiver = _receiver(env)
    telemetry = _telemetry(env)
    if receiver.enabled and receiver.port == telemetry.port:
        raise ConfigError(
            "LAMBDA_OTEL_RECEIVER_PORT", f"{receiver.port} is also LAMBDA_OTEL_TELEMETRY_PORT (allowed: two different ports)"
        )

    resource_attributes: Dict[str, str] = {}
    raw = env.get("OTEL_RESOURCE_ATTRIBUTES")
    if raw and raw.strip():
        resource_attributes = parse_key_values("OTEL_RESOURCE_ATTRIBUTES", raw)

    _, service_name = _get(env, "LAMBDA_OTEL_SERVICE_NAME", "OTEL_SERVICE_NAME")
    _, name = _get(env, "LAMBDA_OTEL_EXTENSION_NAME")

    temporality = _choice(env, "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "cumulative", TEMPORALITIES)
    # We only have monotonic counters and histograms: "lowmemory" means delta for both.
    if temporality == "lowmemory":
        temporality = "delta"

    return Config(
        extension_name=name or "lambda-otel",
        exporter=_exporter(env, receiver),
        flush=_flush(env),
        queue=_queue(env),
        telemetry=telemetry,
        receiver=receiver,
        service_name=service_name,
        resource_attributes=resource_attributes,
        metrics_temporality=temporality,
        xray_mode=_choice(env, "LAMBDA_OTEL_XRAY_PARENT", "link", XRAY_MODES),
        log_level=_choice(env, "LAMBDA_OTEL_LOG_LEVEL", "info", LOG_LEVELS),
        init_type=InitType.from_env(env.get("AWS_LAMBDA_INITIALIZATION_TYPE")),
    )


# Every variable we read, for the README table and for tests that check it stays complete.
VARIABLES: Tuple[str, ...] = (
    "LAMBDA_OTEL_EXPORTER_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
    "LAMBDA_OTEL_EXPORTER_HEADERS",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "LAMBDA_OTEL_FLUSH_STRATEGY",
    "LAMBDA_OTEL_FLUSH_INTERVAL_MS",
    "LAMBDA_OTEL_FLUSH_BUDGET_MS",
    "LAMBDA_OTEL_RUNTIME_DONE_WAIT_MS",
    "LAMBDA_OTEL_DEADLINE_MARGIN_MS",
    "LAMBDA_OTEL_SHUTDOWN_MARGIN_MS",
    "LAMBDA_OTEL_QUEUE_MAX_BYTES",
    "LAMBDA_OTEL_QUEUE_MAX_RECORDS",
    "LAMBDA_OTEL_TELEMETRY_PORT",
    "LAMBDA_OTEL_TELEMETRY_TYPES",
    "LAMBDA_OTEL_RECEIVER_ENABLED",
    "LAMBDA_OTEL_RECEIVER_PORT",
    "LAMBDA_OTEL_XRAY_PARENT",
    "LAMBDA_OTEL_EXTENSION_NAME",
    "LAMBDA_OTEL_LOG_LEVEL",
    "LAMBDA_OTEL_BREAKER_FAILURES",
    "LAMBDA_OTEL_BREAKER_MAX_BACKOFF_MS",
    "LAMBDA_OTEL_REPORT_GRACE_MS",
    "LAMBDA_OTEL_TELEMETRY_MAX_ITEMS",
    "LAMBDA_OTEL_TELEMETRY_MAX_BYTES",
    "LAMBDA_OTEL_TELEMETRY_TIMEOUT_MS",
    "LAMBDA_OTEL_RECEIVER_MAX_BODY_BYTES",
    "LAMBDA_OTEL_RECEIVER_MAX_DECOMPRESSED_BYTES",
    "AWS_LAMBDA_INITIALIZATION_TYPE",
)
