"""Straight to AWS: what the exporter needs to send OTLP to CloudWatch and X-Ray with no collector.

- Facts about AWS endpoints: which service a host belongs to (``xray.eu-west-1.amazonaws.com``
  -> ``xray``), its region, and CloudWatch's OTLP limits per request (``CLOUDWATCH_*``; the
  pipeline's exporter splits requests under them when an endpoint is CloudWatch's).
- ``build_auth(config)``: the exporter's two hooks, an ``ExportSigner`` (SigV4 with each
  signal's service: ``xray`` for traces, ``monitoring`` for metrics, ``logs`` for logs) and an
  ``AwsHeaderSource`` (per-signal headers, ``${arn:...}`` references resolved by
  ``aws_secrets.SecretHeaders``, CloudWatch Logs' ``x-aws-log-group`` / ``x-aws-log-stream`` and
  its stream created at start).

CloudWatch Logs' OTLP endpoint writes to an existing log group and stream. The defaults are the
function's own log group (``AWS_LAMBDA_LOG_GROUP_NAME`` when Lambda gives it to us, else
``/aws/lambda/<function name>``, Lambda's default) and a stream named ``lambda-otel`` that the user
creates once (docs/aws.md).

This module is imported by config at start, so it imports nothing heavy; signing and the AWS
client are imported by ``build_auth``, on the startup thread.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~3 ms) before the first /next
if TYPE_CHECKING:  # pragma: no cover - typing only
    import threading
    from typing import Callable, Dict, Mapping, Optional, Protocol, Tuple

    from lambda_otel.aws_api import AwsJsonClient
    from lambda_otel.aws_secrets import SecretHeaders
    from lambda_otel.config import Config
    from lambda_otel.sigv4 import CredentialsProvider, SigV4Signer

SIGNALS = ("traces", "metrics", "logs")

# CloudWatch's OTLP endpoints accept at most this per request (uncompressed) and this many spans.
CLOUDWATCH_MAX_REQUEST_BYTES = 5_000_000
CLOUDWATCH_MAX_REQUEST_RECORDS = 10_000
CLOUDWATCH_SERVICES = frozenset({"xray", "logs", "monitoring"})

LOG_GROUP_HEADER = "x-aws-log-group"
LOG_STREAM_HEADER = "x-aws-log-stream"
DEFAULT_LOG_STREAM = "lambda-otel"
EXPIRED_REFRESH_MIN_S = 5.0  # re-read credentials on an expired-token answer at most this often

# Signing names by the first label of an AWS endpoint host, where they differ or matter to us.
SERVICE_BY_HOST_PREFIX = {
    "xray": "xray",
    "logs": "logs",
    "monitoring": "monitoring",
    "secretsmanager": "secretsmanager",
    "ssm": "ssm",
    "aps-workspaces": "aps",
}
_SERVICE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_AWS_SUFFIXES = (".amazonaws.com", ".amazonaws.com.cn", ".api.aws")


def service_from_host(host: str) -> Optional[str]:
    """``xray.us-east-1.amazonaws.com`` -> ``xray``; None for a host that is not a known AWS endpoint."""
    host = (host or "").lower().rstrip(".")
    if not host.endswith(_AWS_SUFFIXES):
        return None
    first = host.split(".", 1)[0]
    if first.endswith("-fips"):
        first = first[: -len("-fips")]
    return SERVICE_BY_HOST_PREFIX.get(first)


def region_from_host(host: str) -> Optional[str]:
    """``logs.eu-west-1.amazonaws.com`` -> ``eu-west-1`` (None when the host names none)."""
    labels = (host or "").lower().rstrip(".").split(".")
    if len(labels) >= 4 and (host or "").lower().rstrip(".").endswith(_AWS_SUFFIXES) and is_region(labels[1]):
        return labels[1]
    return None


def is_service_name(name: str) -> bool:
    """A SigV4 signing name: lower-case letters, digits and '-', not starting with '-'."""
    return 0 < len(name) <= 63 and name[0] != "-" and set(name) <= _SERVICE_CHARS


def is_region(name: str) -> bool:
    """``us-east-1``, ``eu-central-2``, ``us-gov-west-1``: letters-...-digits."""
    parts = name.split("-")
    return (len(parts) >= 3 and len(parts[0]) == 2 and parts[0].isalpha() and parts[0].islower()
            and all(p.isalpha() and p.islower() for p in parts[1:-1]) and parts[-1].isdigit())


# --- the exporter's hooks --------------------------------------------------------------------------


class ExportSigner:
    """The exporter's ``RequestSigner``: SigV4 with the service of the URL's signal.

    ``on_rejected(status, body)`` is for a 400/401/403 answer: when AWS says the token has
    expired, the credentials are re-read and True asks the exporter for one immediate resend.
    Signals are exported from several threads at once, so their requests are often refused
    together: a request signed before another thread's re-read is resent with the new credentials
    without re-reading them again (which ``EXPIRED_REFRESH_MIN_S`` limits).
    """

    def __init__(self, credentials: "CredentialsProvider", region: str, services_by_url: Mapping[str, str],
                 clock: Callable[[], float] = time.time) -> None:
        from lambda_otel.sigv4 import SigV4Signer

        self._credentials = credentials
        self._signers: Dict[str, "SigV4Signer"] = {
            url: SigV4Signer(credentials, region, service, clock=clock) for url, service in services_by_url.items()}
        import threading

        self._lock = threading.Lock()
        self._last_refresh = float("-inf")
        self._signed = threading.local()  # when this thread's last request was signed

    def sign(self, method: str, url: str, headers: Mapping[str, str], body: bytes) -> Dict[str, str]:
        signer = self._signers.get(url)
        if signer is None:
            # Every configured endpoint has its signer; another URL gets no credentials of ours.
            return {}
        self._signed.at = time.monotonic()
        return signer.sign(method, url, headers, body)

    def warm_up(self) -> None:
        """Load the credentials once, ahead of the first export; a problem is the exporter's to report."""
        try:
            self._credentials.get()
        except Exception:  # noqa: BLE001 - reported once by the exporter when it signs
            pass

    def secret_values(self) -> Tuple[str, ...]:
        """The credentials' secret parts, for the exporter to redact from any text it writes
        (a ``SignatureDoesNotMatch`` answer may quote the canonical request, token included)."""
        try:
            creds = self._credentials.get()
        except Exception:  # noqa: BLE001 - no credentials: nothing to redact
            return ()
        return tuple(v for v in (creds.secret_access_key, creds.session_token) if v)

    def on_rejected(self, status: int, body: bytes) -> bool:
        from lambda_otel.sigv4 import is_expired_credentials_answer

        if not is_expired_credentials_answer(status, body):
            return False
        signed_at = getattr(self._signed, "at", None)
        with self._lock:
            if signed_at is not None and signed_at < self._last_refresh:
                return True  # signed with what another thread's re-read has replaced since
            if time.monotonic() - self._last_refresh < EXPIRED_REFRESH_MIN_S:
                return False
            # Under the lock (it only forgets: the next sign re-reads), and the time taken after
            # it, so that whatever was signed before it is resent, never refused for good.
            self.renew_after_restore()
            self._last_refresh = time.monotonic()
        import logging

        logging.getLogger(__name__).info("AWS answered that the credentials have expired: re-reading them")
        return True

    def renew_after_restore(self) -> None:
        """Forget credentials and signing keys (a SnapStart restore, an expired token)."""
        self._credentials.refresh()
        for signer in self._signers.values():
            signer.refresh_credentials()


class LogStreamSetup:
    """Creates the CloudWatch Logs stream that OTLP logs go to, once, on its own daemon thread.

    CloudWatch Logs' OTLP endpoint only writes to an existing stream. ``CreateLogStream`` is
    idempotent for us (``ResourceAlreadyExistsException`` = done); a group that does not exist yet
    (Lambda creates the function's own group with its first log line) is retried within the
    timeout; any other failure (e.g. no ``logs:CreateLogStream`` permission) is logged once and
    logs are sent anyway, in case the stream exists. ``ready()`` is False only while it runs.
    """

    RETRY_S = 0.5

    def __init__(self, client_factory: Callable[[], "AwsJsonClient"], group: str, stream: str,
                 timeout_s: float = 3.0) -> None:
        self._factory = client_factory
        self.group = group
        self.stream = stream
        self._timeout_s = timeout_s
        self._thread: Optional["threading.Thread"] = None
        self.outcome: Optional[str] = None  # "created" | "exists" | an error code

    def start(self) -> None:
        import threading

        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="log-stream-setup", daemon=True)
            self._thread.start()

    def ready(self, wait_s: float = 0.0) -> bool:
        thread = self._thread
        if thread is None or not thread.is_alive():
            return True
        thread.join(wait_s)
        return not thread.is_alive()

    def _run(self) -> None:
        import logging

        from lambda_otel.aws_api import AwsApiError

        deadline = time.monotonic() + self._timeout_s
        error: Optional[AwsApiError] = None
        try:
            client = self._factory()
            while True:
                try:
                    client.call("CreateLogStream", {"logGroupName": self.group, "logStreamName": self.stream}, deadline)
                    self.outcome = "created"
                    return
                except AwsApiError as exc:
                    if exc.code == "ResourceAlreadyExistsException":
                        self.outcome = "exists"
                        return
                    error = exc
                    if exc.code != "ResourceNotFoundException" or time.monotonic() + self.RETRY_S >= deadline:
                        break
                    time.sleep(self.RETRY_S)
        except ValueError as exc:  # a bad endpoint override
            error = AwsApiError("InvalidEndpoint", str(exc))
        self.outcome = error.code if error is not None else "Timeout"
        logging.getLogger(__name__).warning(
            "cannot create CloudWatch Logs stream %r in group %r: %s%s; logs are sent anyway (create the "
            "stream, or allow logs:CreateLogStream; LAMBDA_OTEL_EXPORTER_LOGS_CREATE_STREAM=false stops trying)",
            self.stream, self.group, self.outcome, f" ({error.message})" if error is not None and error.message else "")


if TYPE_CHECKING:  # pragma: no cover - a contract for the checker: typing is not imported before the first /next
    class HeaderSet(Protocol):
        """What AwsHeaderSource wraps: ``aws_secrets.SecretHeaders``, or ``StaticHeaders``."""

        def headers(self, signal: Optional[str] = None) -> Optional[Mapping[str, str]]: ...

        def secret_values(self) -> Tuple[str, ...]: ...

        def start(self) -> None: ...

        def renew_after_restore(self) -> None: ...


class StaticHeaders:
    """Per-signal headers known at start (no secret references); a held signal gets None."""

    def __init__(self, templates: Mapping[str, Mapping[str, str]], held: Tuple[str, ...] = ()) -> None:
        self._templates = {s: dict(h) for s, h in templates.items()}
        self._held = frozenset(held)

    def headers(self, signal: Optional[str] = None) -> Optional[Mapping[str, str]]:
        if signal in self._held:
            return None
        if signal is None:
            return dict(next(iter(self._templates.values()), {}))
        return dict(self._templates.get(signal, {}))

    def secret_values(self) -> Tuple[str, ...]:
        return ()

    def start(self) -> None:
        pass

    def renew_after_restore(self) -> None:
        pass


class AwsHeaderSource:
    """The exporter's ``HeaderSource``: the secret-resolving headers, and for logs, the log stream
    set up first (``None`` until then, waiting once, briefly, for the set-up under way)."""

    def __init__(self, secrets: HeaderSet, log_stream: Optional[LogStreamSetup] = None,
                 first_wait_s: float = 0.25) -> None:
        self.secrets = secrets
        self.log_stream = log_stream
        self._first_wait_s = first_wait_s
        self._waited = False

    def headers(self, signal: Optional[str] = None) -> Optional[Mapping[str, str]]:
        if signal == "logs" and self.log_stream is not None:
            wait, self._waited = (0.0 if self._waited else self._first_wait_s), True
            if not self.log_stream.ready(wait):
                return None
        return self.secrets.headers(signal)

    def secret_values(self) -> Tuple[str, ...]:
        return self.secrets.secret_values()

    def start(self) -> None:
        self.secrets.start()
        if self.log_stream is not None:
            self.log_stream.start()

    def renew_after_restore(self) -> None:
        self.secrets.renew_after_restore()


class ExportAuth:
    """What ``build_auth`` gives the pipeline: pass ``signer`` and ``header_source`` to OtlpExporter."""

    def __init__(self, signer: Optional[ExportSigner], header_source: AwsHeaderSource) -> None:
        self.signer = signer
        self.header_source = header_source
        self._warming = False

    def start(self) -> None:
        """Begin resolving secret references and setting up the log stream (non-blocking, each on
        its own daemon thread, idempotent); with a signer, load the credentials now too (from the
        container endpoint under SnapStart), so the first export does not wait for them. Call it
        off the /next path."""
        self.header_source.start()
        if self.signer is not None and not self._warming:
            import threading

            self._warming = True
            threading.Thread(target=self.signer.warm_up, name="credentials-warm-up", daemon=True).start()

    def renew_after_restore(self) -> None:
        if self.signer is not None:
            self.signer.renew_after_restore()
        self.header_source.renew_after_restore()


def header_templates(config: "Config") -> Dict[str, Dict[str, str]]:
    """Each signal's headers as configured (references unresolved), with CloudWatch Logs' headers."""
    templates: Dict[str, Dict[str, str]] = {}
    for signal in SIGNALS:
        headers = config.exporter.headers_for(signal)
        if signal == "logs" and config.aws.log_group:
            lower = {k.lower() for k in headers}
            if LOG_GROUP_HEADER not in lower:
                headers[LOG_GROUP_HEADER] = config.aws.log_group
            if LOG_STREAM_HEADER not in lower:
                headers[LOG_STREAM_HEADER] = config.aws.log_stream or DEFAULT_LOG_STREAM
        templates[signal] = headers
    return templates


def build_auth(config: "Config", env: Optional[Mapping[str, str]] = None,
               credentials: Optional["CredentialsProvider"] = None) -> ExportAuth:
    """The exporter's signer (None unless ``LAMBDA_OTEL_EXPORTER_AUTH=sigv4``) and header source.

    Without SigV4 and without secret references nothing of the AWS machinery is imported (the
    signing and secrets modules cost ~10 ms of start-up CPU): the headers are static."""
    env = os.environ if env is None else env
    aws = config.aws
    templates = header_templates(config)
    held = tuple(config.exporter.held_signals)
    has_references = any("${arn:" in v for headers in templates.values() for v in headers.values())
    sigv4 = aws.auth == "sigv4" and bool(aws.region)
    creds = credentials
    if creds is None and (sigv4 or has_references):
        from lambda_otel.aws_credentials import EnvironmentCredentials

        creds = EnvironmentCredentials(env)
    if has_references:
        from lambda_otel.aws_secrets import SecretHeaders, SecretResolver

        sources = {s: src or "OTEL_EXPORTER_OTLP_HEADERS" for s, src in config.exporter.header_sources.items()}
        source: "HeaderSet" = SecretHeaders(templates, sources, SecretResolver(creds, env),  # type: ignore[arg-type]
                                            timeout_s=aws.secrets_timeout_s, refresh_s=aws.secrets_refresh_s or None,
                                            held=held)
    else:
        source = StaticHeaders(templates, held)
    signer = None
    log_stream = None
    if sigv4 and creds is not None:
        by_url = {config.exporter.endpoint(s): aws.service(s) for s in SIGNALS
                  if config.exporter.endpoint(s) and aws.service(s)}
        if by_url:
            signer = ExportSigner(creds, aws.region, by_url)  # type: ignore[arg-type]
        logs_url = config.exporter.endpoint("logs")
        if logs_url and aws.logs_service == "logs" and aws.create_log_stream and aws.log_group:
            log_stream = LogStreamSetup(_logs_client(creds, aws.region, logs_url, env), aws.log_group,  # type: ignore[arg-type]
                                        aws.log_stream or DEFAULT_LOG_STREAM, timeout_s=aws.secrets_timeout_s)
    return ExportAuth(signer, AwsHeaderSource(source, log_stream))


def _logs_client(creds: "CredentialsProvider", region: str, logs_url: str, env: Mapping[str, str]):
    """CloudWatch Logs' API at the OTLP logs endpoint's origin (a VPC endpoint too), unless overridden."""
    from urllib.parse import urlsplit

    def factory():
        from lambda_otel.aws_api import CLOUDWATCH_LOGS, AwsJsonClient

        parts = urlsplit(logs_url)
        return AwsJsonClient(CLOUDWATCH_LOGS, region, creds, env, endpoint=f"{parts.scheme}://{parts.netloc}")

    return factory
