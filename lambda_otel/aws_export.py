"""Straight to AWS: what the exporter needs to send OTLP to CloudWatch and X-Ray with no collector.

- ``load_aws_settings(env, endpoints)``: our variables for it, validated at start (a bad
  ``LAMBDA_OTEL_*`` value is a ConfigError naming it; a bad shared ``OTEL_*`` value is a warning).
- ``build_auth(settings, headers_by_signal)``: the exporter's two hooks, an ``ExportSigner``
  (SigV4 per signal: ``xray`` for traces, ``monitoring`` for metrics, ``logs`` for logs, from each
  endpoint's host unless set) and a ``SecretHeaders`` header source (per-signal headers, secret
  references resolved, and CloudWatch Logs' ``x-aws-log-group`` / ``x-aws-log-stream``).
- CloudWatch's OTLP limits (``CLOUDWATCH_MAX_REQUEST_BYTES``, ``CLOUDWATCH_MAX_REQUEST_RECORDS``):
  the batch caps are kept under them when an endpoint is CloudWatch's.

CloudWatch Logs' OTLP endpoint writes to an existing log group and stream. The defaults are the
function's own log group (``AWS_LAMBDA_LOG_GROUP_NAME`` when Lambda gives it to us, else
``/aws/lambda/<function name>``, Lambda's default) and a stream named ``lambda-otel`` that the user
creates once (see docs/aws.md).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple
from urllib.parse import urlsplit

from lambda_otel.aws_secrets import SecretHeaders, SecretReferenceError, find_references
from lambda_otel.config import ConfigError, parse_key_values
from lambda_otel.sigv4 import CredentialsProvider, SigV4Signer, is_expired_credentials_answer, region_from_host, service_from_host

log = logging.getLogger(__name__)

SIGNALS = ("traces", "metrics", "logs")
AUTH_MODES = ("none", "sigv4")

# CloudWatch's OTLP endpoints accept at most this per request (uncompressed) and this many spans.
CLOUDWATCH_MAX_REQUEST_BYTES = 5_000_000
CLOUDWATCH_MAX_REQUEST_RECORDS = 10_000
# A request is its items plus a few bytes of framing each; keep the batch's item bytes under this.
CLOUDWATCH_MAX_BATCH_BYTES = CLOUDWATCH_MAX_REQUEST_BYTES - 64 * 1024
CLOUDWATCH_SERVICES = frozenset({"xray", "logs", "monitoring"})

LOG_GROUP_HEADER = "x-aws-log-group"
LOG_STREAM_HEADER = "x-aws-log-stream"
DEFAULT_LOG_STREAM = "lambda-otel"
SECRETS_TIMEOUT_S = 3.0
EXPIRED_REFRESH_MIN_S = 5.0  # re-read credentials on an expired-token answer at most this often

_SERVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")


@dataclass(frozen=True)
class AwsSettings:
    """Everything of ours about exporting to AWS, read once at start."""

    auth: str = "none"
    region: Optional[str] = None
    services: Dict[str, str] = field(default_factory=dict)  # signal -> SigV4 service (sigv4 only)
    headers: Dict[str, Dict[str, str]] = field(default_factory=dict)  # signal -> headers as configured
    header_sources: Dict[str, str] = field(default_factory=dict)  # signal -> the variable they came from
    unusable: Dict[str, str] = field(default_factory=dict)  # signal -> why its headers cannot be used
    log_group: Optional[str] = None  # set when the logs endpoint is CloudWatch Logs (or overridden)
    log_stream: Optional[str] = None
    secrets_timeout_s: float = SECRETS_TIMEOUT_S
    secrets_refresh_s: Optional[float] = None
    cloudwatch: bool = False  # some endpoint is a CloudWatch OTLP endpoint: keep its request limits


def is_cloudwatch_endpoint(url: Optional[str]) -> bool:
    return bool(url) and service_from_host(urlsplit(url).hostname or "") in CLOUDWATCH_SERVICES


def default_log_group(env: Mapping[str, str]) -> str:
    group = (env.get("AWS_LAMBDA_LOG_GROUP_NAME") or "").strip()
    if group:
        return group
    return f"/aws/lambda/{(env.get('AWS_LAMBDA_FUNCTION_NAME') or 'unknown_function').strip()}"


def _get(env: Mapping[str, str], *names: str) -> Tuple[Optional[str], Optional[str]]:
    for name in names:
        value = env.get(name)
        if value is not None and value.strip():
            return name, value.strip()
    return None, None


def _ms(env: Mapping[str, str], name: str, lo: int, hi: int) -> Optional[float]:
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"{raw!r} is not a whole number of milliseconds (allowed: {lo}..{hi})") from None
    if not lo <= value <= hi:
        raise ConfigError(name, f"{value} is out of range (allowed: {lo}..{hi} ms)")
    return value / 1000.0


def _header_names(signal: str) -> Tuple[str, ...]:
    s = signal.upper()
    return (f"LAMBDA_OTEL_EXPORTER_{s}_HEADERS", "LAMBDA_OTEL_EXPORTER_HEADERS",
            f"OTEL_EXPORTER_OTLP_{s}_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS")


def load_aws_settings(env: Mapping[str, str], endpoints: Mapping[str, Optional[str]]) -> AwsSettings:
    """Read and check our AWS variables. ``endpoints`` maps each signal to its export URL (or None)."""
    name, raw = _get(env, "LAMBDA_OTEL_EXPORTER_AUTH")
    auth = (raw or "none").lower()
    if auth not in AUTH_MODES:
        raise ConfigError("LAMBDA_OTEL_EXPORTER_AUTH", f"{raw!r} is not allowed (allowed: {', '.join(AUTH_MODES)})")

    headers: Dict[str, Dict[str, str]] = {}
    sources: Dict[str, str] = {}
    unusable: Dict[str, str] = {}
    for signal in SIGNALS:
        source, value = _get(env, *_header_names(signal))
        parsed: Dict[str, str] = {}
        if value is not None and source is not None:
            try:
                parsed = parse_key_values(source, value)
                for header_value in parsed.values():
                    find_references(header_value, source)
            except (ConfigError, SecretReferenceError) as exc:
                if source.startswith("LAMBDA_OTEL_"):
                    raise ConfigError(source, str(exc).split(": ", 1)[-1]) from None
                # A shared variable never fails init; without its headers nothing is sent for this signal.
                unusable[signal] = f"{exc}; lambda-otel exports no {signal} until it is fixed"
                parsed = {}
            sources[signal] = source
        headers[signal] = parsed

    cloudwatch = any(is_cloudwatch_endpoint(endpoints.get(s)) for s in SIGNALS)
    log_group = log_stream = None
    logs_url = endpoints.get("logs")
    to_cloudwatch_logs = bool(logs_url) and service_from_host(urlsplit(logs_url).hostname or "") == "logs"
    overridden = _get(env, "LAMBDA_OTEL_EXPORTER_LOGS_LOG_GROUP", "LAMBDA_OTEL_EXPORTER_LOGS_LOG_STREAM")[1]
    if to_cloudwatch_logs or overridden:
        log_group = (env.get("LAMBDA_OTEL_EXPORTER_LOGS_LOG_GROUP") or "").strip() or default_log_group(env)
        log_stream = (env.get("LAMBDA_OTEL_EXPORTER_LOGS_LOG_STREAM") or "").strip() or DEFAULT_LOG_STREAM

    services: Dict[str, str] = {}
    region = None
    if auth == "sigv4":
        for signal in SIGNALS:
            url = endpoints.get(signal)
            if not url:
                continue
            var, service = _get(env, f"LAMBDA_OTEL_EXPORTER_{signal.upper()}_SIGV4_SERVICE",
                                "LAMBDA_OTEL_EXPORTER_SIGV4_SERVICE")
            if service is not None:
                if not _SERVICE_NAME.match(service):
                    raise ConfigError(var, f"{service!r} is not an AWS service signing name "
                                           "(allowed: lower-case letters, digits and '-', e.g. xray, logs, monitoring)")
            else:
                service = service_from_host(urlsplit(url).hostname or "")
                if service is None:
                    raise ConfigError(
                        "LAMBDA_OTEL_EXPORTER_SIGV4_SERVICE",
                        f"LAMBDA_OTEL_EXPORTER_AUTH=sigv4 but the AWS service of the {signal} endpoint "
                        f"{urlsplit(url).hostname!r} cannot be told from its host; set it "
                        f"(or LAMBDA_OTEL_EXPORTER_{signal.upper()}_SIGV4_SERVICE), e.g. xray, logs, monitoring")
            services[signal] = service
        var, region = _get(env, "LAMBDA_OTEL_EXPORTER_SIGV4_REGION")
        if region is not None and not _REGION.match(region):
            raise ConfigError(var, f"{region!r} is not an AWS region (allowed: e.g. us-east-1, eu-west-1)")
        if region is None:
            hosts = [region_from_host(urlsplit(endpoints[s] or "").hostname or "") for s in services]
            region = next((r for r in hosts if r), None)
        if region is None:
            _, region = _get(env, "AWS_REGION", "AWS_DEFAULT_REGION")
        if region is None and services:
            raise ConfigError("LAMBDA_OTEL_EXPORTER_SIGV4_REGION",
                              "LAMBDA_OTEL_EXPORTER_AUTH=sigv4 needs a region: AWS_REGION is not set and the "
                              "endpoint host names none; set LAMBDA_OTEL_EXPORTER_SIGV4_REGION (e.g. us-east-1)")
        if services and not (_get(env, "AWS_ACCESS_KEY_ID")[1] or _get(env, "AWS_CONTAINER_CREDENTIALS_FULL_URI")[1]
                             or _get(env, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")[1]) \
                and (env.get("AWS_LAMBDA_INITIALIZATION_TYPE") or "") != "snap-start":
            log.warning("LAMBDA_OTEL_EXPORTER_AUTH=sigv4 but no AWS credentials are set (AWS_ACCESS_KEY_ID, "
                        "AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN): exports will fail until they are")

    return AwsSettings(
        auth=auth,
        region=region,
        services=services,
        headers=headers,
        header_sources=sources,
        unusable=unusable,
        log_group=log_group,
        log_stream=log_stream,
        secrets_timeout_s=_ms(env, "LAMBDA_OTEL_SECRETS_TIMEOUT_MS", 100, 60_000) or SECRETS_TIMEOUT_S,
        secrets_refresh_s=_ms(env, "LAMBDA_OTEL_SECRETS_REFRESH_MS", 0, 7 * 24 * 3_600_000) or None,
        cloudwatch=cloudwatch,
    )


def batch_limits(settings: AwsSettings, max_bytes: int, max_records: int) -> Tuple[int, int]:
    """The per-request caps to use: CloudWatch's limits when its endpoints are in use."""
    if not settings.cloudwatch:
        return max_bytes, max_records
    return min(max_bytes, CLOUDWATCH_MAX_BATCH_BYTES), min(max_records, CLOUDWATCH_MAX_REQUEST_RECORDS)


# --- the exporter's hooks --------------------------------------------------------------------------


class ExportSigner:
    """The exporter's ``RequestSigner``: SigV4 with the service of the URL's signal.

    ``on_rejected(status, body)`` is called by the exporter for a 400/401/403 answer: when AWS says
    the token has expired, credentials are re-read and True asks for one immediate resend.
    """

    def __init__(self, credentials: CredentialsProvider, region: str, services_by_url: Mapping[str, str],
                 clock=time.time) -> None:
        self._credentials = credentials
        self._signers = {url: SigV4Signer(credentials, region, service, clock=clock)
                         for url, service in services_by_url.items()}
        self._default = next(iter(self._signers.values()), None)
        self._lock = threading.Lock()
        self._last_refresh = float("-inf")

    def sign(self, method: str, url: str, headers: Mapping[str, str], body: bytes) -> Dict[str, str]:
        signer = self._signers.get(url, self._default)
        if signer is None:
            return {}
        return signer.sign(method, url, headers, body)

    def on_rejected(self, status: int, body: bytes) -> bool:
        if not is_expired_credentials_answer(status, body):
            return False
        with self._lock:
            now = time.monotonic()
            if now - self._last_refresh < EXPIRED_REFRESH_MIN_S:
                return False
            self._last_refresh = now
        log.info("AWS answered that the credentials have expired: re-reading them")
        self.renew_after_restore()
        return True

    def renew_after_restore(self) -> None:
        self._credentials.refresh()
        for signer in self._signers.values():
            signer.refresh_credentials()


@dataclass
class ExportAuth:
    """What ``build_auth`` gives the pipeline: pass ``signer`` and ``header_source`` to OtlpExporter."""

    signer: Optional[ExportSigner]
    header_source: SecretHeaders

    def start(self) -> None:
        """Begin resolving secret references (non-blocking). Call it off the /next path."""
        self.header_source.start()

    def renew_after_restore(self) -> None:
        if self.signer is not None:
            self.signer.renew_after_restore()
        self.header_source.renew_after_restore()


def build_auth(settings: AwsSettings, endpoints: Mapping[str, Optional[str]],
               env: Optional[Mapping[str, str]] = None, credentials: Optional[CredentialsProvider] = None) -> ExportAuth:
    """The exporter's signer (None without ``LAMBDA_OTEL_EXPORTER_AUTH=sigv4``) and header source."""
    from lambda_otel.aws_credentials import EnvironmentCredentials
    from lambda_otel.aws_secrets import SecretResolver

    env = os.environ if env is None else env
    creds = credentials or EnvironmentCredentials(env)
    templates: Dict[str, Dict[str, str]] = {}
    for signal in SIGNALS:
        headers = dict(settings.headers.get(signal, {}))
        if signal == "logs" and settings.log_group:
            lower = {k.lower() for k in headers}
            if LOG_GROUP_HEADER not in lower:
                headers[LOG_GROUP_HEADER] = settings.log_group
            if LOG_STREAM_HEADER not in lower:
                headers[LOG_STREAM_HEADER] = settings.log_stream or DEFAULT_LOG_STREAM
        templates[signal] = headers
    for signal, why in settings.unusable.items():
        log.warning("%s", why)
    source = SecretHeaders(templates, settings.header_sources, SecretResolver(creds, env),
                           timeout_s=settings.secrets_timeout_s, refresh_s=settings.secrets_refresh_s,
                           held=tuple(settings.unusable))
    signer = None
    if settings.auth == "sigv4" and settings.services and settings.region:
        by_url = {endpoints[s]: svc for s, svc in settings.services.items() if endpoints.get(s)}
        signer = ExportSigner(creds, settings.region, by_url)
    return ExportAuth(signer, source)


def describe(settings: AwsSettings) -> str:
    """One start-up line: how we export to AWS (no header values)."""
    parts = [f"auth={settings.auth}"]
    if settings.services:
        parts.append("sigv4=" + ",".join(f"{s}:{svc}" for s, svc in settings.services.items()) + f"@{settings.region}")
    if settings.log_group:
        parts.append(f"log group {settings.log_group!r} stream {settings.log_stream!r}")
    return ", ".join(parts)

