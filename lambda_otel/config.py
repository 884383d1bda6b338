"""Configuration from environment variables, validated once at start.

Lambda extensions share the function's environment, so three families are read: the standard
``OTEL_*`` variables (shared with the function's own SDK), ``AWS_*`` variables (set by Lambda)
and ``LAMBDA_OTEL_*`` variables, which are ours alone and win where both exist. That precedence
is what lets a function point its SDK at our receiver with
``OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318`` while the extension exports elsewhere with
``LAMBDA_OTEL_EXPORTER_ENDPOINT``.

Every variable is declared once, as a ``Setting`` row of ``SETTINGS``: its names in precedence
order, the ``Config`` field it fills, how it is parsed and bounded, and what it means. The
default is the dataclass field's default (one owner per fact). ``load_config`` reads through
that table only, ``VARIABLES`` is derived from it, and the configuration reference
(docs/configuration.md and the table in README.rst) is generated from it by
``python -m lambda_otel.config_reference --write``; a test fails when they disagree.

To add a variable: give its field a default in the right dataclass below, add a ``Setting`` row
to ``SETTINGS`` (or, for a value another module reads itself, a row with ``field=None`` and
``read_by``), then regenerate the reference.

Who may fail init: only a ``LAMBDA_OTEL_*`` value (ours alone) that we cannot use raises
``ConfigError``, whose message names the variable and the allowed values, because it ends up in
``/extension/init/error`` and in the function's logs, where it must be enough to fix the problem.
A shared ``OTEL_*`` or Lambda ``AWS_*`` value we cannot use is valid for someone else: it is
skipped (the next variable of the row, or the default, is used) and ``Config.warnings`` says so,
to be logged once at start. Messages never contain header values or the credentials of a URL.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from dataclasses import dataclass, field

from .sampling import DEFAULT_SAMPLER, SAMPLERS

# typing.TYPE_CHECKING without importing typing (~3 ms before the first /next): the annotations
# here are strings, read by the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover - typing only
    from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

# ipaddress, socket and urllib.parse are imported where they are needed: this module
# is on the path to the first /next, and most environments never need them there.

STRATEGIES = ("default", "end", "periodic", "continuous")
TELEMETRY_TYPES = ("platform", "function", "extension")
TEMPORALITIES = ("cumulative", "delta")
XRAY_JOIN = "join"
XRAY_LINK = "link"
XRAY_PARENT = "parent"
XRAY_MODES = (XRAY_JOIN, XRAY_LINK, XRAY_PARENT)
LOG_LEVELS = ("debug", "info", "warning", "error")
SIGNALS = ("traces", "metrics", "logs")
LOOPBACK_HOSTS = (
    "127.0.0.1", "localhost", "::1", "0.0.0.0", "sandbox.localdomain", "sandbox",
    "localhost.localdomain", "ip6-localhost", "ip6-loopback",
)
OURS = "LAMBDA_OTEL_"


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


class OtlpProtocol(enum.Enum):
    """How one signal is exported (``OTEL_EXPORTER_OTLP_[<SIGNAL>_]PROTOCOL``)."""

    HTTP_PROTOBUF = "http/protobuf"
    HTTP_JSON = "http/json"


class ConfigError(ValueError):
    """A configuration variable has a value we cannot use."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable


# --- the configuration objects (field defaults are THE defaults) ------------------------------
#
# Each has a docstring: a dataclass without one gets ``inspect.signature`` of itself computed as
# its ``__doc__`` when it is created, which costs time before the first /next.


@dataclass(frozen=True)
class ExporterConfig:
    """Where and how each signal is exported (endpoint, encoding, headers, TLS, timeout)."""

    traces_endpoint: Optional[str] = None
    metrics_endpoint: Optional[str] = None
    logs_endpoint: Optional[str] = None
    traces_protocol: OtlpProtocol = OtlpProtocol.HTTP_PROTOBUF
    metrics_protocol: OtlpProtocol = OtlpProtocol.HTTP_PROTOBUF
    logs_protocol: OtlpProtocol = OtlpProtocol.HTTP_PROTOBUF
    headers: Dict[str, str] = field(default_factory=dict)
    # Per-signal headers (None: the signal uses ``headers``); which variable each signal's headers
    # came from, and the signals whose headers variable is unusable (nothing is exported for them).
    traces_headers: Optional[Dict[str, str]] = None
    metrics_headers: Optional[Dict[str, str]] = None
    logs_headers: Optional[Dict[str, str]] = None
    header_sources: Dict[str, Optional[str]] = field(default_factory=dict)
    held_signals: Dict[str, str] = field(default_factory=dict)
    compression: str = "gzip"
    timeout_s: float = 10.0
    certificate: Optional[str] = None

    def headers_for(self, signal: str) -> Dict[str, str]:
        """The headers configured for ``signal``: its own variable's, else the general ones."""
        own = {"traces": self.traces_headers, "metrics": self.metrics_headers, "logs": self.logs_headers}[signal]
        return dict(self.headers if own is None else own)

    def endpoint(self, signal: str) -> Optional[str]:
        return {"traces": self.traces_endpoint, "metrics": self.metrics_endpoint, "logs": self.logs_endpoint}[signal]

    def protocol(self, signal: str) -> OtlpProtocol:
        return {"traces": self.traces_protocol, "metrics": self.metrics_protocol, "logs": self.logs_protocol}[signal]

    @property
    def any_endpoint(self) -> bool:
        return bool(self.traces_endpoint or self.metrics_endpoint or self.logs_endpoint)


@dataclass(frozen=True)
class FlushConfig:
    """When exports happen and how long they may hold ``/next`` (see flush.py)."""

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


MiB = 1024 * 1024

# budget_from_memory: see its docstring for the why.
BUDGET_FRACTION = 0.05
MIN_QUEUE_BYTES = 4 * MiB
MAX_QUEUE_BYTES = 64 * MiB
BYTES_PER_RECORD = 512
MIN_QUEUE_RECORDS = 10_000
MAX_QUEUE_RECORDS = 131_072


def budget_from_memory(memory_mb: int) -> Tuple[int, int]:
    """Queue budgets ``(max_bytes, max_records)`` for a function with ``memory_mb`` MB.

    Rule:
      * ``max_bytes   = clamp(memory_mb MiB x 5%, 4 MiB, 64 MiB)``
      * ``max_records = clamp(max_bytes / 512, 10_000, 131_072)``

    Why: the extension shares the function's memory. Python plus our imports already take
    ~25-33 MiB, and a queued item costs more in RAM than its serialised size (measured: ~1x
    for messages parsed from the wire, up to ~5x for messages built field by field, ~0.9 KiB
    per 6-attribute span). 5% keeps the worst case small on a 128 MB function (6.4 MiB
    serialised, 13,107 records) while large functions get up to 64 MiB / 131,072 records,
    one budget shared by all three signals. The records cap
    bounds the per-record object overhead that ``ByteSize()`` does not see.
    Examples: 128 MB -> (6.4 MiB, 13,107); 512 MB -> (25.6 MiB, 52,428);
    1,769 MB and up -> (64 MiB, 131,072). Values below 1 are treated as 128 MB (Lambda's minimum).
    """
    if memory_mb < 1:
        memory_mb = 128
    max_bytes = int(memory_mb * MiB * BUDGET_FRACTION)
    max_bytes = max(MIN_QUEUE_BYTES, min(MAX_QUEUE_BYTES, max_bytes))
    max_records = max(MIN_QUEUE_RECORDS, min(MAX_QUEUE_RECORDS, max_bytes // BYTES_PER_RECORD))
    return max_bytes, max_records


@dataclass(frozen=True)
class QueueConfig:
    """Memory budget for buffered telemetry. None means: derive from the function's memory size."""

    max_bytes: Optional[int] = None
    max_records: Optional[int] = None
    memory_mb: Optional[int] = None  # the function's memory setting; None: not told (budgets as for 128 MB)

    def budget(self) -> Tuple[int, int]:
        """The effective ``(max_bytes, max_records)``: what is set, else ``budget_from_memory``."""
        derived_bytes, derived_records = budget_from_memory(self.memory_mb or 0)
        return self.max_bytes or derived_bytes, self.max_records or derived_records


@dataclass(frozen=True)
class TelemetryConfig:
    """The Telemetry API subscription and our listener for it.

    Buffering defaults favour latency: timeoutMs=25 (the API minimum) means
    ``platform.runtimeDone`` reaches us within ~25 ms, so an end-of-invocation
    flush holds ``/next`` only briefly. maxItems/maxBytes are the API maximums: a
    quiet function's batches still leave after 25 ms, small, but a chatty one's
    burst comes in few large POSTs, which we read fast enough that Lambda's buffer
    for us does not overflow (with 1000-event POSTs a 100,000-line invocation lost
    ~25 % of its lines to ``platform.logsDropped`` under load).
    """

    port: int = 4322
    types: Tuple[str, ...] = TELEMETRY_TYPES
    max_items: int = 10000
    max_bytes: int = 1048576
    timeout_ms: int = 25
    report_grace_s: float = 0.3


@dataclass(frozen=True)
class ReceiverConfig:
    """The local OTLP/HTTP receiver the function's SDK exports to, and its request limits."""

    enabled: bool = True
    port: int = 4318
    max_body_bytes: int = 4 * 1024 * 1024
    max_decompressed_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class FunctionConfig:
    """What Lambda tells us about the function, for the resource."""

    name: Optional[str] = None
    version: Optional[str] = None
    region: Optional[str] = None
    log_stream_name: Optional[str] = None
    log_group_name: Optional[str] = None


@dataclass(frozen=True)
class AwsConfig:
    """Exporting straight to AWS (CloudWatch, X-Ray) and secret header values (see aws_export.py).

    After load_config the optional fields hold the effective values: the SigV4 service of each
    signal (from its endpoint's host unless set), the region, the CloudWatch Logs group and stream.
    """

    auth: str = "none"
    region: Optional[str] = None
    traces_service: Optional[str] = None
    metrics_service: Optional[str] = None
    logs_service: Optional[str] = None
    log_group: Optional[str] = None
    log_stream: Optional[str] = None
    create_log_stream: bool = True
    secrets_timeout_s: float = 3.0
    secrets_refresh_s: float = 0.0  # 0: resolved once for the environment's life
    cloudwatch: bool = False  # an endpoint is CloudWatch's: its per-request limits apply

    def service(self, signal: str) -> Optional[str]:
        return {"traces": self.traces_service, "metrics": self.metrics_service, "logs": self.logs_service}[signal]


@dataclass(frozen=True)
class Config:
    """Everything ``load_config`` read and checked, one group per concern; immutable once built."""

    extension_name: Optional[str] = None  # None: the executable's file name (app.extension_name)
    exporter: ExporterConfig = field(default_factory=ExporterConfig)
    flush: FlushConfig = field(default_factory=FlushConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    receiver: ReceiverConfig = field(default_factory=ReceiverConfig)
    function: FunctionConfig = field(default_factory=FunctionConfig)
    aws: AwsConfig = field(default_factory=AwsConfig)
    service_name: Optional[str] = None
    resource_attributes: Dict[str, str] = field(default_factory=dict)
    metrics_temporality: str = "cumulative"
    xray_mode: str = XRAY_JOIN
    traces_sampler: str = DEFAULT_SAMPLER  # the function SDK's sampler (sampling.TraceSampler)
    traces_sampler_arg: float = 1.0
    log_level: str = "info"
    init_type: InitType = InitType.ON_DEMAND
    # Shared values we could not use and what we do instead: log each once at start.
    warnings: Tuple[str, ...] = ()


# --- redaction: nothing secret in a message ----------------------------------------------------


def redact_url(url: str) -> str:
    """``url`` with its user info and query values replaced by ``<redacted>``, for messages."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
    except ValueError:
        return "<unparsable URL>"
    if not parts.scheme or not parts.netloc:
        # Not a URL we can take apart: never echo anything that may hold a secret.
        return "<redacted>" if any(c in url for c in "@?#") else url
    netloc = f"<redacted>@{host}" if "@" in parts.netloc else host
    query = "&".join(
        f"{pair.partition('=')[0]}=<redacted>" if "=" in pair else "<redacted>" for pair in parts.query.split("&") if pair
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


# --- parsers: raw text -> value, or ValueError saying what is allowed --------------------------


def _unset(raw: Optional[str]) -> bool:
    return raw is None or raw.strip() == ""


class Parser:
    """Turns one variable's raw text into its value, or raises ValueError saying what is allowed.

    The base of the small parser classes below: plain classes, neither dataclasses nor a
    ``typing.Protocol``, because this module is imported before the first ``/next``, where every
    dataclass costs time to create and ``typing`` costs ~3 ms to import.
    """

    __slots__ = ()
    allowed: str  # for messages and the reference

    def __call__(self, raw: str, name: str) -> Any:
        raise NotImplementedError

    def show(self, value: Any) -> str:
        """A default as a user would write it."""
        raise NotImplementedError


class Int(Parser):
    __slots__ = ("lo", "hi", "reserved", "allowed")

    def __init__(self, lo: int, hi: int, reserved: Tuple[int, ...] = ()) -> None:
        self.lo, self.hi, self.reserved = lo, hi, reserved
        extra = f" except {', '.join(map(str, reserved))}" if reserved else ""
        self.allowed = f"{lo}..{hi}{extra}"

    def __call__(self, raw: str, name: str) -> Any:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not a whole number (allowed: {self.allowed})") from None
        if not self.lo <= value <= self.hi:
            raise ValueError(f"{value} is out of range (allowed: {self.allowed})")
        if value in self.reserved:
            raise ValueError(f"{value} is reserved by Lambda (allowed: {self.allowed})")
        return value

    def show(self, value: Any) -> str:
        return str(value)


class Millis(Int):
    """Milliseconds in the environment, seconds in ``Config``."""

    __slots__ = ()

    def __init__(self, lo: int, hi: int) -> None:
        super().__init__(lo, hi)
        self.allowed = f"{lo}..{hi} ms"

    def __call__(self, raw: str, name: str) -> float:
        return super().__call__(raw, name) / 1000.0

    def show(self, value: Any) -> str:
        return str(round(value * 1000))


class Choice(Parser):
    __slots__ = ("values", "aliases", "unsupported", "convert", "allowed")

    def __init__(self, values: Tuple[str, ...], aliases: Optional[Dict[str, str]] = None,
                 unsupported: Tuple[str, ...] = (), convert: Optional[Callable[[str], Any]] = None) -> None:
        self.values, self.aliases = values, aliases or {}  # aliases: spelling -> the value it means
        self.unsupported, self.convert = unsupported, convert  # unsupported: valid elsewhere, not here
        self.allowed = ", ".join(values + tuple(self.aliases))

    def __call__(self, raw: str, name: str) -> Any:
        value = self.aliases.get(raw.lower(), raw.lower())
        if value not in self.values:
            verb = "not supported by lambda-otel" if value in self.unsupported else "not allowed"
            raise ValueError(f"{raw!r} is {verb} (allowed: {self.allowed})")
        return self.convert(value) if self.convert else value

    def show(self, value: Any) -> str:
        return value.value if isinstance(value, enum.Enum) else str(value)


class Bool(Parser):
    __slots__ = ()
    allowed = "true, false"

    def __call__(self, raw: str, name: str) -> bool:
        value = raw.lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{raw!r} is not a boolean (allowed: true, false)")

    def show(self, value: Any) -> str:
        return "true" if value else "false"


class Text(Parser):
    __slots__ = ()
    allowed = "any text"

    def __call__(self, raw: str, name: str) -> str:
        return raw

    def show(self, value: Any) -> str:
        return str(value)


class Subset(Parser):
    __slots__ = ("values", "allowed")

    def __init__(self, values: Tuple[str, ...]) -> None:
        self.values = values
        self.allowed = f"a comma-separated subset of {', '.join(values)}"

    def __call__(self, raw: str, name: str) -> Tuple[str, ...]:
        requested = tuple(t.strip().lower() for t in raw.split(",") if t.strip())
        if not requested or any(t not in self.values for t in requested):
            raise ValueError(f"{raw!r} is not allowed (allowed: {self.allowed})")
        return tuple(t for t in self.values if t in requested)

    def show(self, value: Any) -> str:
        return ",".join(value)


class Ratio(Parser):
    """A probability, as the SDK's ratio samplers take it (0.0..1.0)."""

    __slots__ = ()
    allowed = "0.0..1.0"

    def __call__(self, raw: str, name: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not 0.0 <= value <= 1.0:  # also NaN
            raise ValueError(f"{raw!r} is not a probability (allowed: {self.allowed})")
        return value

    def show(self, value: Any) -> str:
        return str(value)


class KeyValues(Parser):
    """``k1=v1,k2=v2`` (percent-decoded, W3C baggage style), as OTEL_EXPORTER_OTLP_HEADERS and
    OTEL_RESOURCE_ATTRIBUTES are written. Never echoes the value: headers carry secrets."""

    __slots__ = ()
    allowed = "key=value pairs separated by commas, percent-encoded, no control characters"

    def __call__(self, raw: str, name: str) -> Dict[str, str]:
        from urllib.parse import unquote

        result: Dict[str, str] = {}
        for part in raw.split(","):
            part = part.strip()
            if not part:
                continue
            key, sep, value = part.partition("=")
            key, value = unquote(key.strip()), unquote(value.strip())
            if not sep or not key:
                raise ValueError("every entry must look like key=value, separated by commas")
            if any(ord(c) < 32 or ord(c) == 127 for c in key + value):
                # A decoded %0A/%0D%0A would split an HTTP header or a log line.
                raise ValueError("an entry contains a line break or another control character")
            result[key] = value
        return result

    def show(self, value: Any) -> str:
        return ",".join(f"{k}={v}" for k, v in value.items())


def parse_key_values(name: str, raw: str) -> Dict[str, str]:
    """``k1=v1,k2=v2`` as used by OTEL_EXPORTER_OTLP_HEADERS and OTEL_RESOURCE_ATTRIBUTES."""
    try:
        return KeyValues()(raw, name)
    except ValueError as exc:
        raise ConfigError(name, str(exc)) from None


def _check_url(raw: str) -> None:
    from urllib.parse import urlsplit

    shown = redact_url(raw)
    try:
        parts = urlsplit(raw)
        parts.port
    except ValueError:
        raise ValueError(f"{shown!r} has an invalid port or address (allowed: an http:// or https:// URL)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{shown!r} is not an http:// or https:// URL")


class Endpoint(Parser):
    """An OTLP/HTTP URL for one signal. A base endpoint (``*_EXPORTER_ENDPOINT``,
    ``OTEL_EXPORTER_OTLP_ENDPOINT``) gets ``/v1/<signal>`` appended to its path (before any query);
    a per-signal one is used as is, as the OTLP exporter specification says."""

    __slots__ = ("signal",)
    allowed = "an http:// or https:// URL"

    def __init__(self, signal: str) -> None:
        self.signal = signal

    def __call__(self, raw: str, name: str) -> str:
        _check_url(raw)
        if name not in BASE_ENDPOINTS:
            return raw
        from .otlp import signal_url  # the signal's path is OTLP's fact

        return signal_url(raw, self.signal)

    def show(self, value: Any) -> str:
        return str(value)


class CaFile(Parser):
    __slots__ = ()
    allowed = "path to a PEM CA bundle"

    def __call__(self, raw: str, name: str) -> str:
        if not os.path.isfile(raw):
            raise ValueError(f"{raw!r} is not a readable file (allowed: path to a PEM CA bundle)")
        return raw

    def show(self, value: Any) -> str:
        return str(value)


BASE_ENDPOINTS = ("LAMBDA_OTEL_EXPORTER_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


# --- the table ---------------------------------------------------------------------------------


class Setting:
    """One configuration value: the variables that set it, first set wins.

    ``field``: dotted path in Config (``"flush.interval_s"``), or None for a variable another module
    reads itself (``read_by``). ``names``: precedence order, ours (``LAMBDA_OTEL_*``) first.
    ``default_doc``: how a computed default reads in the docs. ``unset_doc``: what having no usable
    value means, for the warning.
    """

    __slots__ = ("field", "names", "parser", "doc", "section", "default_doc", "read_by", "unset_doc")

    def __init__(self, field: Optional[str], names: Tuple[str, ...], parser: Parser, doc: str, section: str,
                 default_doc: Optional[str] = None, read_by: Optional[str] = None,
                 unset_doc: Optional[str] = None) -> None:
        self.field, self.names, self.parser, self.doc, self.section = field, names, parser, doc, section
        self.default_doc, self.read_by, self.unset_doc = default_doc, read_by, unset_doc

    def __repr__(self) -> str:
        return f"Setting({self.field!r}, {self.names!r})"

    def default(self) -> Any:
        if self.field is None:
            return None
        return _field_default(self.field)

    def default_text(self) -> str:
        if self.default_doc is not None:
            return self.default_doc
        value = self.default()
        return "(none)" if value is None else self.parser.show(value)


def _field_default(path: str) -> Any:
    cls: Any = Config
    *parents, leaf = path.split(".")
    for part in parents:
        cls = _fields(cls)[part].default_factory
    f = _fields(cls)[leaf]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _fields(cls: Any) -> Dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _exporter_names(suffix: str, signal: Optional[str] = None) -> Tuple[str, ...]:
    """Ours before shared; within each family the per-signal variable before the general one."""
    if signal is None:
        return (f"LAMBDA_OTEL_EXPORTER_{suffix}", f"OTEL_EXPORTER_OTLP_{suffix}")
    s = signal.upper()
    return (f"LAMBDA_OTEL_EXPORTER_{s}_{suffix}", f"LAMBDA_OTEL_EXPORTER_{suffix}",
            f"OTEL_EXPORTER_OTLP_{s}_{suffix}", f"OTEL_EXPORTER_OTLP_{suffix}")


EXPORT = "Export"
FLUSH = "Flushing"
BUFFER = "Buffering"
TELEMETRY = "Telemetry API"
RECEIVER = "Receiver"
RESOURCE = "Resource"
EXTENSION = "Extension"
LAMBDA = "Set by Lambda"
AWS = "AWS credentials and endpoints"
AWS_EXPORT = "Exporting to AWS and secret headers"
SECTIONS = (EXPORT, AWS_EXPORT, FLUSH, BUFFER, TELEMETRY, RECEIVER, RESOURCE, EXTENSION, LAMBDA, AWS)

SETTINGS: Tuple[Setting, ...] = (
    *(
        Setting(f"exporter.{signal}_endpoint", _exporter_names("ENDPOINT", signal), Endpoint(signal),
                "Where the signal is exported. The base variables (``LAMBDA_OTEL_EXPORTER_ENDPOINT``, "
                "``OTEL_EXPORTER_OTLP_ENDPOINT``) get ``/v1/traces``, ``/v1/metrics`` or ``/v1/logs`` appended "
                "to their path; the per-signal ones are used as is. An endpoint that is lambda-otel's own "
                "receiver in any spelling of loopback is refused: from ``LAMBDA_OTEL_*`` at init, from "
                "``OTEL_*`` (the function's SDK pointing at us) with a warning. A host name that resolves "
                "to loopback on the receiver's port (a hosts-file alias) is refused by the export's "
                "connection, on the addresses it resolved (init asks DNS nothing): one warning, and its "
                "records counted as ``export_rejected``.",
                EXPORT, unset_doc=f"exports no {signal}")
        for signal in SIGNALS
    ),
    *(
        Setting(f"exporter.{signal}_protocol", _exporter_names("PROTOCOL", signal),
                Choice(("http/protobuf", "http/json"), unsupported=("grpc",), convert=OtlpProtocol),
                "OTLP encoding of the signal's exports. ``grpc`` (valid for the function's SDK) is not "
                "supported: lambda-otel keeps OTLP/HTTP with protobuf and says so once.", EXPORT)
        for signal in SIGNALS
    ),
    Setting("exporter.headers", _exporter_names("HEADERS"), KeyValues(),
            "``key=value,key2=value2`` (percent-decoded) sent with every export. Values never appear in logs "
            "or errors.", EXPORT, default_doc="(none)", unset_doc="sends no extra headers"),
    *(
        Setting(f"exporter.{signal}_headers", (f"LAMBDA_OTEL_EXPORTER_{signal.upper()}_HEADERS",
                                               f"OTEL_EXPORTER_OTLP_{signal.upper()}_HEADERS"), KeyValues(),
                f"Headers for {signal} exports only, instead of the general ones (which a "
                "``LAMBDA_OTEL_EXPORTER_HEADERS`` keeps winning over the shared per-signal variable).", EXPORT,
                default_doc="the general headers", unset_doc="sends the general headers")
        for signal in SIGNALS
    ),
    Setting("exporter.compression", _exporter_names("COMPRESSION"), Choice(("gzip", "none")),
            "Compression of export bodies.", EXPORT),
    Setting("exporter.timeout_s", _exporter_names("TIMEOUT"), Millis(1, 600_000),
            "Per-request timeout; every request is also cut to the invocation's or the shutdown's deadline.",
            EXPORT),
    Setting("exporter.certificate", _exporter_names("CERTIFICATE"), CaFile(),
            "PEM CA bundle to verify the backend. Verification is never turned off.", EXPORT,
            default_doc="system CAs"),
    Setting("metrics_temporality", _exporter_names("METRICS_TEMPORALITY_PREFERENCE"),
            Choice(TEMPORALITIES, aliases={"lowmemory": "delta"}),
            "Temporality of lambda-otel's metrics. ``lowmemory`` means delta here (all our instruments are "
            "counters and histograms).", EXPORT),
    Setting("aws.auth", ("LAMBDA_OTEL_EXPORTER_AUTH",), Choice(("none", "sigv4")),
            "``sigv4`` signs every export with the function's credentials (AWS Signature Version 4), as "
            "CloudWatch's and X-Ray's OTLP endpoints require (see docs/aws.md).", AWS_EXPORT),
    Setting("aws.region", ("LAMBDA_OTEL_EXPORTER_SIGV4_REGION",), Text(),
            "Region in the signature. Allowed: an AWS region name.", AWS_EXPORT,
            default_doc="the endpoint host's region, else ``AWS_REGION``"),
    *(
        Setting(f"aws.{signal}_service", (f"LAMBDA_OTEL_EXPORTER_{signal.upper()}_SIGV4_SERVICE",
                                          "LAMBDA_OTEL_EXPORTER_SIGV4_SERVICE"), Text(),
                f"SigV4 service name for {signal} exports (``xray``, ``monitoring``, ``logs``...). Allowed: "
                "lower-case letters, digits and ``-``.", AWS_EXPORT, default_doc="from the endpoint's host")
        for signal in SIGNALS
    ),
    Setting("aws.log_group", ("LAMBDA_OTEL_EXPORTER_LOGS_LOG_GROUP",), Text(),
            "CloudWatch Logs group for logs sent to CloudWatch's OTLP endpoint (``x-aws-log-group``); it must "
            "exist.", AWS_EXPORT, default_doc="the function's log group"),
    Setting("aws.log_stream", ("LAMBDA_OTEL_EXPORTER_LOGS_LOG_STREAM",), Text(),
            "Its log stream (``x-aws-log-stream``); it must exist.", AWS_EXPORT, default_doc="``lambda-otel``"),
    Setting("aws.create_log_stream", ("LAMBDA_OTEL_EXPORTER_LOGS_CREATE_STREAM",), Bool(),
            "With SigV4 export to CloudWatch Logs, create the log stream at start if it does not exist "
            "(needs ``logs:CreateLogStream``).", AWS_EXPORT),
    Setting("aws.secrets_timeout_s", ("LAMBDA_OTEL_SECRETS_TIMEOUT_MS",), Millis(100, 60_000),
            "Longest one resolution of the ``${arn:...}`` references in header values may take, all calls "
            "included.", AWS_EXPORT),
    Setting("aws.secrets_refresh_s", ("LAMBDA_OTEL_SECRETS_REFRESH_MS",), Millis(0, 7 * 24 * 3_600_000),
            "Re-resolve secret header values this often, in the background (``0``: once per environment).",
            AWS_EXPORT),
    Setting("flush.strategy", ("LAMBDA_OTEL_FLUSH_STRATEGY",), Choice(STRATEGIES),
            "When to export (see Flushing).", FLUSH),
    Setting("flush.interval_s", ("LAMBDA_OTEL_FLUSH_INTERVAL_MS",), Millis(100, 3_600_000),
            "Interval of the time-based strategies.", FLUSH),
    Setting("flush.flush_budget_s", ("LAMBDA_OTEL_FLUSH_BUDGET_MS",), Millis(10, 60_000),
            "Longest an end-of-invocation flush may hold ``/next``; also the per-invocation export budget.", FLUSH),
    Setting("flush.runtime_done_wait_s", ("LAMBDA_OTEL_RUNTIME_DONE_WAIT_MS",), Millis(0, 60_000),
            "How long a hold waits for ``platform.runtimeDone`` after one was missed (normally it waits up to "
            "the invocation deadline); halved after each further miss, restored when one is seen.", FLUSH),
    Setting("flush.deadline_margin_s", ("LAMBDA_OTEL_DEADLINE_MARGIN_MS",), Millis(0, 10_000),
            "Nothing is held or sent closer than this to the invocation's deadline.", FLUSH),
    Setting("flush.shutdown_margin_s", ("LAMBDA_OTEL_SHUTDOWN_MARGIN_MS",), Millis(0, 1500),
            "The final flush ends this long before SHUTDOWN's ``deadlineMs``.", FLUSH),
    Setting("flush.max_batch_records", ("LAMBDA_OTEL_MAX_BATCH_RECORDS",), Int(1, 100_000),
            "Records per export request at most. The buffer must hold at least one batch.", FLUSH),
    Setting("flush.max_batch_bytes", ("LAMBDA_OTEL_MAX_BATCH_BYTES",), Int(1024, 64 * 1024 * 1024),
            "Bytes (uncompressed) per export request at most. The buffer must hold at least one batch.", FLUSH),
    Setting("flush.breaker_failures", ("LAMBDA_OTEL_BREAKER_FAILURES",), Int(1, 1000),
            "Consecutive failed flushes that open the circuit breaker (see Flushing).", FLUSH),
    Setting("flush.breaker_max_backoff_s", ("LAMBDA_OTEL_BREAKER_MAX_BACKOFF_MS",), Millis(100, 3_600_000),
            "Longest wait between two probes of a backend that is down.", FLUSH),
    Setting("queue.max_bytes", ("LAMBDA_OTEL_QUEUE_MAX_BYTES",), Int(64 * 1024, 1024 * 1024 * 1024),
            "Memory budget for buffered telemetry, in bytes (see Memory). At least one batch "
            "(``LAMBDA_OTEL_MAX_BATCH_BYTES``).", BUFFER, default_doc="from memory size"),
    Setting("queue.max_records", ("LAMBDA_OTEL_QUEUE_MAX_RECORDS",), Int(100, 10_000_000),
            "Record budget for buffered telemetry. At least one batch (``LAMBDA_OTEL_MAX_BATCH_RECORDS``).",
            BUFFER, default_doc="from memory size"),
    Setting("telemetry.port", ("LAMBDA_OTEL_TELEMETRY_PORT",), Int(1024, 65535, reserved=(9001,)),
            "Port of the Telemetry API listener.", TELEMETRY),
    Setting("telemetry.types", ("LAMBDA_OTEL_TELEMETRY_TYPES",), Subset(TELEMETRY_TYPES),
            "Telemetry API event types to subscribe to.", TELEMETRY),
    Setting("telemetry.max_items", ("LAMBDA_OTEL_TELEMETRY_MAX_ITEMS",), Int(1000, 10000),
            "Telemetry API buffering: events per POST at most.", TELEMETRY),
    Setting("telemetry.max_bytes", ("LAMBDA_OTEL_TELEMETRY_MAX_BYTES",), Int(262144, 1048576),
            "Telemetry API buffering: bytes per POST at most.", TELEMETRY),
    Setting("telemetry.timeout_ms", ("LAMBDA_OTEL_TELEMETRY_TIMEOUT_MS",), Int(25, 30000),
            "Telemetry API buffering: longest Lambda holds events, in ms. The default is the minimum: "
            "``platform.runtimeDone`` reaches us ~25 ms after the function returns, so an "
            "end-of-invocation flush holds ``/next`` only briefly.", TELEMETRY),
    Setting("telemetry.report_grace_s", ("LAMBDA_OTEL_REPORT_GRACE_MS",), Millis(0, 1500),
            "At SHUTDOWN, how long to wait for the last invocation's ``platform.report``.", TELEMETRY),
    Setting("receiver.enabled", ("LAMBDA_OTEL_RECEIVER_ENABLED",), Bool(),
            "Run the OTLP receiver for the function's own telemetry.", RECEIVER),
    Setting("receiver.port", ("LAMBDA_OTEL_RECEIVER_PORT",), Int(1024, 65535),
            "Its port, on 127.0.0.1 only; must differ from ``LAMBDA_OTEL_TELEMETRY_PORT``.", RECEIVER),
    Setting("receiver.max_body_bytes", ("LAMBDA_OTEL_RECEIVER_MAX_BODY_BYTES",), Int(1024, 64 * 1024 * 1024),
            "Largest request body the receiver reads (413 beyond).", RECEIVER),
    Setting("receiver.max_decompressed_bytes", ("LAMBDA_OTEL_RECEIVER_MAX_DECOMPRESSED_BYTES",),
            Int(1024, 256 * 1024 * 1024), "Largest inflated body the receiver decodes (413 beyond).", RECEIVER),
    Setting("service_name", ("LAMBDA_OTEL_SERVICE_NAME", "OTEL_SERVICE_NAME"), Text(),
            "``service.name`` of the extension's telemetry.", RESOURCE, default_doc="function name"),
    Setting("resource_attributes", ("OTEL_RESOURCE_ATTRIBUTES",), KeyValues(),
            "Extra resource attributes, ``key=value,...`` (percent-decoded).", RESOURCE,
            default_doc="(none)", unset_doc="adds no attributes"),
    Setting("xray_mode", ("LAMBDA_OTEL_XRAY_PARENT",), Choice(XRAY_MODES),
            "``join``: the invocation span takes the X-Ray ``Parent`` id, so the function's own spans are its "
            "children (one tree, one SERVER span); ``link``/``parent``: the ``Parent`` becomes a link / the parent "
            "(see Traces).", RESOURCE),
    Setting("traces_sampler", ("OTEL_TRACES_SAMPLER",), Choice(SAMPLERS),
            "Shared with the function's SDK: platform spans are sampled as it samples its own, the X-Ray "
            "``Sampled`` flag as the parent; logs and metrics are never sampled.", RESOURCE),
    Setting("traces_sampler_arg", ("OTEL_TRACES_SAMPLER_ARG",), Ratio(),
            "The ratio of ``traceidratio`` / ``parentbased_traceidratio``.", RESOURCE),
    Setting("extension_name", ("LAMBDA_OTEL_EXTENSION_NAME",), Text(),
            "Name registered with the Extensions API (must equal the file name in ``/opt/extensions``).",
            EXTENSION, default_doc="executable name"),
    Setting("log_level", ("LAMBDA_OTEL_LOG_LEVEL",), Choice(LOG_LEVELS),
            "lambda-otel logs only lifecycle events and one line per kind of problem, never per telemetry event.",
            EXTENSION),
    Setting("init_type", ("AWS_LAMBDA_INITIALIZATION_TYPE",), Choice(tuple(t.value for t in InitType), convert=InitType),
            "Kind of execution environment; decides registration and flushing.", LAMBDA),
    Setting("queue.memory_mb", ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE",), Int(1, 1_048_576),
            "Function memory in MB: sizes the buffer budget (as for 128 when unset) and is ``faas.max_memory`` "
            "(absent when unset).", LAMBDA, unset_doc="budgets as for 128 MB and reports no faas.max_memory"),
    Setting("function.name", ("AWS_LAMBDA_FUNCTION_NAME",), Text(), "``faas.name`` (and the default "
            "``service.name``).", LAMBDA, default_doc="``unknown_function``"),
    Setting("function.version", ("AWS_LAMBDA_FUNCTION_VERSION",), Text(), "``faas.version``.", LAMBDA),
    Setting("function.region", ("AWS_REGION", "AWS_DEFAULT_REGION"), Text(), "``cloud.region``.", LAMBDA),
    Setting("function.log_stream_name", ("AWS_LAMBDA_LOG_STREAM_NAME",), Text(),
            "``faas.instance`` when present.", LAMBDA, default_doc="a random id per environment"),
    Setting("function.log_group_name", ("AWS_LAMBDA_LOG_GROUP_NAME",), Text(),
            "The function's log group: the default CloudWatch Logs group of OTLP logs sent to CloudWatch.",
            LAMBDA, default_doc="``/aws/lambda/<function name>``"),
    Setting(None, ("AWS_LAMBDA_RUNTIME_API",), Text(), "Host and port of the Lambda APIs.", LAMBDA,
            read_by="app.py"),
    # Read where they are used, never copied into Config: credentials must not sit in an object that
    # may be printed, and they change (refresh, SnapStart restore).
    Setting(None, ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"), Text(),
            "The execution role's credentials, set by Lambda; used to sign requests to AWS (SigV4, secrets).",
            AWS, read_by="aws_credentials.py"),
    Setting(None, ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                   "AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"), Text(),
            "The container credentials endpoint and its token, which Lambda provides instead of the key "
            "variables where they are absent (e.g. SnapStart).", AWS, read_by="aws_credentials.py"),
    Setting(None, ("AWS_ENDPOINT_URL_SECRETS_MANAGER", "AWS_ENDPOINT_URL_SSM", "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS",
                   "AWS_ENDPOINT_URL"), Text(),
            "Endpoint overrides for the AWS APIs lambda-otel calls, as in the AWS SDKs (per service first).",
            AWS, default_doc="https://<service>.<region>.amazonaws.com", read_by="aws_api.py"),
    Setting(None, ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",), Bool(),
            "``true``: ignore the endpoint overrides, as the AWS SDKs do.", AWS, default_doc="false",
            read_by="aws_api.py"),
)

VARIABLES: Tuple[str, ...] = tuple(dict.fromkeys(name for s in SETTINGS for name in s.names))


# --- reading the table ---------------------------------------------------------------------------


def is_ours(name: str) -> bool:
    """Only our own variables may fail init; the others belong to the function or to Lambda."""
    return name.startswith(OURS)


class _Reader:
    """Resolves each Setting from the environment, collecting warnings for shared values."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self.sources: Dict[str, Optional[str]] = {}  # field -> variable its value came from
        self._warnings: Dict[str, str] = {}  # variable -> message (one per variable)

    @property
    def warnings(self) -> Tuple[str, ...]:
        return tuple(self._warnings.values())

    def warn(self, name: str, message: str) -> None:
        self._warnings.setdefault(name, f"{name}: {message}")

    def read(self, setting: Setting) -> Any:
        chosen, source = None, None
        skipped: List[Tuple[str, str]] = []
        for name in setting.names:
            if source is not None and not is_ours(name):
                break  # a shared value shadowed by a usable one is none of our business
            raw = self._env.get(name)
            if _unset(raw):
                continue
            try:
                value = setting.parser(raw.strip(), name)
            except ValueError as exc:
                if is_ours(name):
                    raise ConfigError(name, str(exc)) from None
                skipped.append((name, str(exc)))
                continue
            if source is None:
                chosen, source = value, name
        if source is None:
            chosen = setting.default()
        for name, problem in skipped:
            if source is not None:
                instead = f"uses {source} instead"
            elif setting.unset_doc is not None:
                instead = setting.unset_doc
            elif chosen is not None or setting.default_doc is not None:
                instead = f"uses the default ({setting.default_text()}) instead"
            else:
                instead = "leaves it unset"
            self.warn(name, f"{problem}; ignored: lambda-otel {instead}")
        if setting.field is not None:
            self.sources[setting.field] = source
        return chosen


def load_config(env: Mapping[str, str] | None = None) -> Config:
    """Read and validate every setting; raise ConfigError on the first bad ``LAMBDA_OTEL_*`` one.

    Nothing here waits on the network: this runs before the first ``/next``.
    """
    env = os.environ if env is None else env
    reader = _Reader(env)
    values: Dict[str, Any] = {s.field: reader.read(s) for s in SETTINGS if s.field is not None}

    _check_ports(values)
    _check_limits(values)
    _check_self_export(values, reader)
    _check_aws(values, reader, env)
    return _build(values, reader.warnings)


def _build(values: Mapping[str, Any], warnings: Tuple[str, ...]) -> Config:
    groups: Dict[str, Dict[str, Any]] = {}
    top: Dict[str, Any] = {}
    for path, value in values.items():
        parent, _, leaf = path.rpartition(".")
        (groups.setdefault(parent, {}) if parent else top)[leaf] = value
    fields = _fields(Config)
    for parent, kwargs in groups.items():
        top[parent] = fields[parent].default_factory(**kwargs)
    return Config(**top, warnings=warnings)


# --- checks across variables ----------------------------------------------------------------------


def _check_ports(values: Mapping[str, Any]) -> None:
    if values["receiver.enabled"] and values["receiver.port"] == values["telemetry.port"]:
        raise ConfigError(
            "LAMBDA_OTEL_RECEIVER_PORT",
            f"{values['receiver.port']} is also LAMBDA_OTEL_TELEMETRY_PORT (allowed: two different ports)",
        )


def _check_limits(values: Mapping[str, Any]) -> None:
    """A buffer smaller than one batch never counts as full: refuse it, naming both variables."""
    queue = QueueConfig(values["queue.max_bytes"], values["queue.max_records"], values["queue.memory_mb"])
    budget_bytes, budget_records = queue.budget()
    batch_records, batch_bytes = values["flush.max_batch_records"], values["flush.max_batch_bytes"]
    if budget_records < batch_records:
        if queue.max_records is not None:
            raise ConfigError("LAMBDA_OTEL_QUEUE_MAX_RECORDS",
                              f"{budget_records} is below LAMBDA_OTEL_MAX_BATCH_RECORDS ({batch_records}): the buffer "
                              f"must hold at least one batch (allowed: {batch_records} or more)")
        raise ConfigError("LAMBDA_OTEL_MAX_BATCH_RECORDS",
                          f"{batch_records} is above the buffer's {budget_records} records (derived from "
                          f"AWS_LAMBDA_FUNCTION_MEMORY_SIZE; LAMBDA_OTEL_QUEUE_MAX_RECORDS sets it): the buffer must "
                          f"hold at least one batch (allowed: 1..{budget_records})")
    if budget_bytes < batch_bytes:
        if queue.max_bytes is not None:
            raise ConfigError("LAMBDA_OTEL_QUEUE_MAX_BYTES",
                              f"{budget_bytes} is below LAMBDA_OTEL_MAX_BATCH_BYTES ({batch_bytes}): the buffer must "
                              f"hold at least one batch (allowed: {batch_bytes} or more)")
        raise ConfigError("LAMBDA_OTEL_MAX_BATCH_BYTES",
                          f"{batch_bytes} is above the buffer's {budget_bytes} bytes (derived from "
                          f"AWS_LAMBDA_FUNCTION_MEMORY_SIZE; LAMBDA_OTEL_QUEUE_MAX_BYTES sets it): the buffer must "
                          f"hold at least one batch (allowed: 1024..{budget_bytes})")


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is this machine, in any spelling a client would connect with, without DNS.

    Catches loopback and unspecified addresses however written (``127.1``, ``2130706433``, ``0``,
    ``::ffff:127.0.0.1``), ``localhost`` / ``*.localhost`` (RFC 6761), the usual hosts-file names
    (``localhost.localdomain``, ``ip6-localhost``) and a trailing dot.
    """
    host = host.strip().strip("[]").rstrip(".").lower()
    if host in LOOPBACK_HOSTS or host.endswith(".localhost"):
        return True
    ip = _ip(host)
    return ip is not None and _is_local_ip(ip)


def _ip(text: str) -> Any:
    """An ``ipaddress`` address, or None when ``text`` is not an address."""
    import ipaddress
    import socket

    text = text.split("%", 1)[0]  # an IPv6 zone id
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        try:
            return ipaddress.ip_address(socket.inet_aton(text))  # the C library's shorthand forms
        except (OSError, ValueError):
            return None


def _is_local_ip(ip: Any) -> bool:
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None:
        ip = mapped
    return ip.is_loopback or ip.is_unspecified


def is_local_address(text: str) -> bool:
    """Whether an address (as ``getaddrinfo`` returns it) is this machine's loopback or unspecified one."""
    ip = _ip(text)
    return ip is not None and _is_local_ip(ip)


def _is_own_receiver(url: str, receiver_port: int) -> bool:
    """Whether ``url`` is our receiver in a spelling that shows without DNS.

    No lookup before the first ``/next``: a name that only a lookup shows to be this machine (a
    hosts-file alias) is refused by the export's connection (``export_http.OwnReceiverAddress``).
    """
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return port == receiver_port and is_loopback_host(parts.hostname or "")


def _check_self_export(values: Dict[str, Any], reader: _Reader) -> None:
    """An endpoint that is our own receiver would loop every record back to us forever."""
    if not values["receiver.enabled"]:
        return
    port = values["receiver.port"]
    looping: Dict[str, List[str]] = {}  # shared variable -> signals it would loop
    for signal in SIGNALS:
        key = f"exporter.{signal}_endpoint"
        url = values[key]
        if url is None or not _is_own_receiver(url, port):
            continue
        source = reader.sources[key] or "OTEL_EXPORTER_OTLP_ENDPOINT"
        if is_ours(source):
            raise ConfigError(source, f"{redact_url(url)} is lambda-otel's own OTLP receiver (port {port}); "
                                      "exporting there would loop (allowed: your backend's URL)")
        values[key] = None
        looping.setdefault(source, []).append(signal)
    for source, signals in looping.items():
        reader.warn(source, f"this is lambda-otel's own OTLP receiver (port {port}), where the function's SDK "
                            f"sends; exporting there would loop, so lambda-otel exports no {', '.join(signals)}. Set "
                            "LAMBDA_OTEL_EXPORTER_ENDPOINT to your backend (it takes precedence).")


def _check_aws(values: Dict[str, Any], reader: _Reader, env: Mapping[str, str]) -> None:
    """Per-signal headers and their secret references, SigV4 service and region, CloudWatch's limits."""
    from urllib.parse import urlsplit

    from . import aws_export

    general, general_source = values["exporter.headers"], reader.sources["exporter.headers"]
    sources: Dict[str, Optional[str]] = {}
    held: Dict[str, str] = {}
    for signal in SIGNALS:
        key = f"exporter.{signal}_headers"
        own, own_source = values[key], reader.sources[key]
        if own is not None and own_source is not None and (is_ours(own_source) or not is_ours(general_source or "")):
            headers, source = own, own_source
        else:
            values[key] = None
            headers, source = general, general_source
        sources[signal] = source
        if source is None or not any("${arn:" in v for v in headers.values()):
            continue
        from .aws_secrets import SecretReferenceError, check_references

        try:
            check_references(headers, source)
        except SecretReferenceError as exc:
            problem = str(exc).split(": ", 1)[-1]
            if is_ours(source):
                raise ConfigError(source, problem) from None
            held[signal] = problem
            reader.warn(source, f"{problem}; ignored: lambda-otel exports no {signal} until it is fixed")
    values["exporter.header_sources"] = {signal: src for signal, src in sources.items() if src}
    values["exporter.held_signals"] = held

    endpoints = {signal: values[f"exporter.{signal}_endpoint"] for signal in SIGNALS}
    hosts = {signal: (urlsplit(url).hostname or "") if url else "" for signal, url in endpoints.items()}
    # CloudWatch's OTLP endpoints take at most 5 MB / 10,000 records a request: the exporter splits
    # batches under that when an endpoint is CloudWatch's (by its host, or by the SigV4 service below).
    values["aws.cloudwatch"] = any(aws_export.service_from_host(h) in aws_export.CLOUDWATCH_SERVICES
                                   for h in hosts.values() if h)

    to_logs = bool(hosts["logs"]) and aws_export.service_from_host(hosts["logs"]) == "logs"
    if to_logs or values["aws.log_group"] or values["aws.log_stream"]:
        values["aws.log_group"] = (values["aws.log_group"] or values["function.log_group_name"]
                                   or f"/aws/lambda/{values['function.name'] or 'unknown_function'}")
        values["aws.log_stream"] = values["aws.log_stream"] or aws_export.DEFAULT_LOG_STREAM

    if values["aws.auth"] != "sigv4":
        return
    for signal in SIGNALS:
        key = f"aws.{signal}_service"
        if not endpoints[signal]:
            continue
        service = values[key]
        if service is not None:
            if not aws_export.is_service_name(service):
                raise ConfigError(reader.sources[key] or "LAMBDA_OTEL_EXPORTER_SIGV4_SERVICE",
                                  f"{service!r} is not an AWS service signing name (allowed: lower-case letters, "
                                  "digits and '-', e.g. xray, logs, monitoring)")
            continue
        service = aws_export.service_from_host(hosts[signal])
        if service is None:
            raise ConfigError("LAMBDA_OTEL_EXPORTER_SIGV4_SERVICE",
                              f"LAMBDA_OTEL_EXPORTER_AUTH=sigv4, but the AWS service of the {signal} endpoint's host "
                              f"{hosts[signal]!r} is unknown; set it (or LAMBDA_OTEL_EXPORTER_{signal.upper()}"
                              "_SIGV4_SERVICE): allowed: a signing name such as xray, logs, monitoring")
        values[key] = service
    values["aws.cloudwatch"] = values["aws.cloudwatch"] or any(
        values[f"aws.{signal}_service"] in aws_export.CLOUDWATCH_SERVICES for signal in SIGNALS if endpoints[signal])
    region = values["aws.region"]
    if region is not None and not aws_export.is_region(region):
        raise ConfigError("LAMBDA_OTEL_EXPORTER_SIGV4_REGION", f"{region!r} is not an AWS region (allowed: e.g. us-east-1)")
    if region is None:
        region = next((r for r in map(aws_export.region_from_host, hosts.values()) if r), None) or values["function.region"]
    if region is None and any(endpoints.values()):
        raise ConfigError("LAMBDA_OTEL_EXPORTER_SIGV4_REGION",
                          "LAMBDA_OTEL_EXPORTER_AUTH=sigv4 needs a region: AWS_REGION is not set and no endpoint host "
                          "names one (allowed: an AWS region name, e.g. us-east-1)")
    values["aws.region"] = region
    if not any(env.get(n) for n in ("AWS_ACCESS_KEY_ID", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                                    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")) \
            and values["init_type"] is not InitType.SNAP_START:
        reader.warn("AWS_ACCESS_KEY_ID", "LAMBDA_OTEL_EXPORTER_AUTH=sigv4 but no AWS credentials are set "
                                         "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN): exports fail "
                                         "until they are")


__all__ = [
    "AwsConfig", "Config", "ConfigError", "ExporterConfig", "FlushConfig", "FunctionConfig", "InitType", "OtlpProtocol",
    "QueueConfig", "ReceiverConfig", "SETTINGS", "Setting", "TelemetryConfig", "VARIABLES", "is_loopback_host",
    "is_local_address", "is_ours", "load_config", "parse_key_values", "redact_url",
]
