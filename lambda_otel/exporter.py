"""OTLP/HTTP export of one batch, bounded as a whole by a deadline.

Why this module is careful:
- The export gate (see docs/design.md) waits for the request in flight before Lambda may freeze
  us, so no request may outlive the ``deadline`` it is given: every attempt's socket timeout is
  ``min(timeout_s, deadline - now)``, DNS is bounded by it too, and a watchdog cuts the request
  at the deadline whatever the backend does (``export_http``). No retry or backoff starts that
  cannot fit, and ``Retry-After`` is capped at ``MAX_RETRY_AFTER_S``.
- After a freeze the pooled keep-alive connection is often dead (the peer or a NAT dropped it
  while we were frozen). A reset on a *reused* connection is retried once, immediately, on a
  fresh connection, without counting as an attempt; connections idle for longer than
  ``IDLE_CLOSE_S`` are closed before use.
- ``requests`` costs ~150 ms to import, so it is imported on the first export, not at start-up.
- Secrets never appear in a log line or in ``ExportOutcome.error``: header values (also those a
  ``HeaderSource`` resolves), credentials and query strings of endpoint URLs are redacted, and
  control characters are escaped. A header value with CR/LF is refused, never sent.
- A dead backend is not silent: the first failure of each kind (DNS, connect, timeout, TLS, an
  HTTP status, a broken response) is logged once per endpoint, naming the endpoint and the
  cause. TLS verification is always on; a certificate that does not verify is a failure like a
  refused connection (``RETRYABLE``, so the flush breaker opens), not a rejection of the data.

Loss accounting: records refused through OTLP ``partial_success`` are counted here (the caller
cannot know them; never more than were sent); whole-request failures are counted by the caller,
who knows the batch.
"""

from __future__ import annotations

import enum
import gzip
import logging
import math
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple
from urllib.parse import quote, unquote, urlsplit

from lambda_otel import __version__, otlp
from lambda_otel.config import ExporterConfig, OtlpProtocol, redact_url
from lambda_otel.export_http import DeadlineExceeded, OwnReceiverAddress, Resolver, Transport, Watchdog
from lambda_otel.log_once import LogOnce
from lambda_otel.loss import EXPORT_REJECTED, LossCounter

log = logging.getLogger(__name__)


class ExportKind(enum.Enum):
    """What the caller does with the batch."""

    SUCCESS = "SUCCESS"  # delivered (minus any partial-success rejections, already counted)
    RETRYABLE = "RETRYABLE"  # keep the data, try later; a failure for the breaker
    REJECTED = "REJECTED"  # drop it; the caller counts export_rejected
    NO_ENDPOINT = "NO_ENDPOINT"  # no URL for this signal; the caller counts no_endpoint
    NOT_READY = "NOT_READY"  # nothing was sent (headers not resolved yet): keep the data, not a failure


SUCCESS = ExportKind.SUCCESS
RETRYABLE = ExportKind.RETRYABLE
REJECTED = ExportKind.REJECTED
NO_ENDPOINT = ExportKind.NO_ENDPOINT
NOT_READY = ExportKind.NOT_READY


class FailureCause(enum.Enum):
    """Why an export did not succeed: for the once-per-kind log line and the loss reason."""

    DNS = "dns"  # the host did not resolve, or not in time
    CONNECT = "connect"  # refused, unreachable, connect timeout
    TIMEOUT = "timeout"  # no (complete) answer before the request's deadline
    TLS = "tls"  # the certificate or the handshake failed
    HTTP_STATUS = "http_status"  # the backend answered an error status
    RESPONSE = "response"  # the connection broke or the answer was not HTTP
    CLOSED = "closed"  # the exporter was closed
    AUTH = "auth"  # the request could not be signed (e.g. no credentials yet)
    CONFIG = "config"  # our settings cannot work (bad URL, bad header, CA bundle missing)


class RequestSigner(Protocol):
    """Adds authentication to one attempt, computed over exactly the bytes sent."""

    def sign(self, method: str, url: str, headers: Mapping[str, str], body: bytes) -> Mapping[str, str]:
        """Headers to add to this attempt (called once per attempt). May raise when it cannot sign
        (no credentials): nothing is sent, the export is RETRYABLE (cause AUTH)."""

    def on_rejected(self, status: int, body: bytes) -> bool:
        """The backend refused a signed request (400/401/403): True if the signer renewed what it
        signs with and the request should be sent again (once)."""

    def secret_values(self) -> Sequence[str]:
        """What it signs with (keys, session token): never in a log line, whatever a backend echoes."""


class HeaderSource(Protocol):
    """Headers known only at run time (e.g. secrets resolved in the background)."""

    def headers(self, signal: Optional[str] = None) -> Optional[Mapping[str, str]]:
        """Every user header for ``signal`` (replacing the configured ones), or None while they are
        not known (do not export; keep the data)."""

    def secret_values(self) -> Sequence[str]:
        """Every value that must never appear in a log line."""


RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 1.0
MAX_ATTEMPTS = 8  # a bound on top of the deadline, so the loop is bounded in count too
MIN_ATTEMPT_S = 0.005  # do not start an attempt with less time than this left
IDLE_CLOSE_S = 30.0  # pooled connections older than this are presumed dead (freeze, NAT timeout)
MAX_RETRY_AFTER_S = 120.0  # a backend's Retry-After beyond this is read as this
WARM_UP_DNS_S = 2.0  # how long warm_up() waits for each endpoint's DNS answer
GZIP_LEVEL = 1
USER_AGENT = f"lambda-otel/{__version__}"


@dataclass(frozen=True)
class ExportOutcome:
    """What happened to one export (one batch: one request, or several if it had to be split).

    rejected_records: records the backend refused through ``partial_success`` on a SUCCESS
    (already counted in the LossCounter by the exporter; do not count them again).
    retry_after: seconds the backend asked us to wait (Retry-After, at most MAX_RETRY_AFTER_S)
    when it did not fit the deadline. cause: why it did not succeed (None on success).
    attempts: requests that counted as attempts; stale_retries: immediate re-sends after a dead
    pooled connection (not counted as attempts). round_trip_s: how long the request that succeeded
    took, when it went out on a kept-alive connection (None otherwise: a new connection's first
    request also pays for DNS, connect and TLS): the backend's distance plus our own CPU.
    """

    kind: ExportKind
    status: Optional[int] = None
    rejected_records: int = 0
    retry_after: Optional[float] = None
    error: Optional[str] = None
    attempts: int = 0
    stale_retries: int = 0
    cause: Optional[FailureCause] = None
    round_trip_s: Optional[float] = None


class OtlpExporter:
    """Sends batches of Resource* items to the configured endpoints (OTLP/HTTP, protobuf or JSON).

    ``export`` may run in several threads at once for different signals, never twice at once for
    one signal: each signal has its own ``Transport`` (session and connections), so one flush's
    three requests can wait for their answers together; they share one DNS cache and one deadline
    watchdog.
    ``close()`` may be called from any thread.
    ``signer`` signs each attempt; ``header_source`` adds run-time headers (None from it defers
    the export). A batch over ``max_request_bytes`` (serialised) or ``max_request_records`` is
    sent as several requests, in order.
    ``own_receiver_port``: the port our OTLP receiver listens on (None: no receiver). A connection
    to this machine on that port would loop every record back to us: config refuses the spellings
    it sees without DNS, before the first ``/next``; a name only a lookup shows to be loopback (a
    hosts-file alias) is refused by the connection, on the addresses it resolved
    (``export_http.OwnReceiverAddress``): a config problem, dropped and counted, said once.
    """

    def __init__(self, config: ExporterConfig, loss: LossCounter, signer: Optional[RequestSigner] = None,
                 header_source: Optional[HeaderSource] = None, max_request_bytes: Optional[int] = None,
                 max_request_records: Optional[int] = None, own_receiver_port: Optional[int] = None) -> None:
        if config.compression not in ("gzip", "none"):
            raise ValueError(f"compression must be 'gzip' or 'none', not {config.compression!r}")
        self._config = config
        self._loss = loss
        self._signer = signer
        self._header_source = header_source
        self._max_bytes = max_request_bytes
        self._max_records = max_request_records
        resolver, self._watchdog = Resolver(), Watchdog()
        self._transports = {signal: Transport(config.certificate or True, resolver, self._watchdog, own_receiver_port)
                            for signal in otlp.SPECS}
        self._last_used = {signal: 0.0 for signal in otlp.SPECS}
        self._closed = threading.Event()  # interrupts a backoff wait when closing
        self._once = LogOnce()
        self._secrets = _url_secrets(config) + tuple(
            v for signal in otlp.SPECS for v in config.headers_for(signal).values() if v)
        self._warm_up_pending = False

    def expect_warm_up(self) -> None:
        """Someone (app.py's start-up thread) is about to import the HTTP stack: until ``warm_up``
        is over, ``ready()`` is False, so that no flush starts an export that would wait for it."""
        self._warm_up_pending = True

    def ready(self) -> bool:
        """Whether an export may start now without waiting for the HTTP stack's import: False only
        between ``expect_warm_up`` and the end of ``warm_up`` (without them, the first export imports)."""
        return not self._warm_up_pending

    def warm_up(self, dns_timeout_s: float = WARM_UP_DNS_S, on_ready: Optional[Callable[[], None]] = None,
                resolve: bool = True) -> None:
        """Import the HTTP stack and the request encodings, call ``on_ready``, then resolve the
        endpoints' hosts (``resolve=False``: not, e.g. before a SnapStart snapshot, whose answers a
        restore forgets), so the first export pays none of it (call it off every critical path, e.g.
        on a start-up thread; bounded). An import that fails still ends the wait: the first export
        reports the error, counted."""
        try:
            for transport in self._transports.values():
                transport.warm_up()
            for signal in otlp.SPECS:  # the collector's request modules, imported on first use
                if self._config.endpoint(signal):
                    request = otlp.spec(signal).request_class()
                    if self._config.protocol(signal) is OtlpProtocol.HTTP_JSON:
                        otlp.encode_message(request, otlp.JSON)  # and OTLP/JSON's codec
        finally:
            self._warm_up_pending = False
            if on_ready is not None:
                on_ready()
        if not resolve:
            return
        for url in {self._config.endpoint(signal) for signal in otlp.SPECS} - {None}:
            if not _never_resolves(url):
                self._transports[otlp.TRACES].resolve(url, dns_timeout_s)  # the cache is shared

    # --- public API -------------------------------------------------------------------------

    def export(self, signal: str, items: Sequence[Any], deadline: float) -> ExportOutcome:
        """Send ``items`` (Resource* messages of ``signal``) before ``deadline`` (monotonic)."""
        url = self._config.endpoint(signal)
        if not url:
            return ExportOutcome(NO_ENDPOINT, error=f"no endpoint configured for {signal}")
        if not items:
            return ExportOutcome(SUCCESS)  # nothing to send: no request
        if self._closed.is_set():
            return ExportOutcome(RETRYABLE, error="exporter closed", cause=FailureCause.CLOSED)
        if _never_resolves(url):
            # RFC 6761: names under .invalid never resolve; do not ask DNS.
            return self._config_problem(url, "its host is under the reserved .invalid domain (RFC 6761) "
                                             "and never resolves")
        if self._header_source is not None:
            try:
                user_headers = self._header_source.headers(signal)
            except Exception as exc:  # noqa: BLE001 - a broken source defers, never kills the worker
                self._once.warning(log, ("header_source", signal), "export headers for %s are not available: %s "
                                   "(the data is kept)", signal, self._clean(f"{type(exc).__name__}: {exc}"))
                user_headers = None
            if user_headers is None:
                return ExportOutcome(NOT_READY, error="export headers are not resolved yet")
        else:
            user_headers = self._config.headers_for(signal)
        problem = _header_problem(user_headers)
        if problem:
            return self._config_problem(url, problem)
        content_type = otlp.JSON if self._config.protocol(signal) is OtlpProtocol.HTTP_JSON else otlp.PROTOBUF
        headers = _request_headers(user_headers, self._config.compression, content_type)
        if self._max_bytes is None and self._max_records is None:
            groups = [list(items)]
        else:
            groups = otlp.split_items(signal, items, self._max_bytes, self._max_records)
        if not self._transport_fresh(signal):
            log.debug("exporter idle for more than %.0fs: closing pooled connections", IDLE_CLOSE_S)
        total = ExportOutcome(SUCCESS)
        for group in groups:
            outcome = self._send(signal, url, group, content_type, headers, deadline)
            total = ExportOutcome(
                outcome.kind, outcome.status, total.rejected_records + outcome.rejected_records,
                outcome.retry_after, outcome.error, total.attempts + outcome.attempts,
                total.stale_retries + outcome.stale_retries, outcome.cause, outcome.round_trip_s)
            if outcome.kind is not SUCCESS:
                break
        return total

    def close(self) -> None:
        """Interrupt any backoff wait and close pooled connections. Further exports are RETRYABLE."""
        self._closed.set()
        for transport in self._transports.values():
            transport.close()
        self._watchdog.stop()

    def renew_after_restore(self) -> None:
        """SnapStart restore: the snapshot's pooled connections and DNS answers are stale."""
        for signal, transport in self._transports.items():
            transport.close()
            self._last_used[signal] = 0.0
        self._watchdog.stop()

    # --- one request (one group of items) ----------------------------------------------------

    def _send(self, signal: str, url: str, items: List[Any], content_type: str, headers: Dict[str, str],
              deadline: float) -> ExportOutcome:
        transport = self._transports[signal]
        body = otlp.encode_request(signal, items, content_type)
        payload = gzip.compress(body, GZIP_LEVEL) if self._config.compression == "gzip" else body
        attempts = stale_retries = 0
        renewed = False
        status: Optional[int] = None
        error: Optional[str] = None
        cause: Optional[FailureCause] = None
        while attempts < MAX_ATTEMPTS:
            remaining = deadline - time.monotonic()
            if remaining < MIN_ATTEMPT_S:
                if cause is None:
                    cause, error = FailureCause.TIMEOUT, "deadline reached before the first attempt"
                break
            attempts += 1
            sent = headers
            if self._signer is not None:
                try:
                    signature = self._signer.sign("POST", url, headers, payload)
                except Exception as exc:  # noqa: BLE001 - e.g. no credentials yet: nothing is sent
                    cause, error = FailureCause.AUTH, self._clean(f"cannot sign the request: {exc}")
                    self._first_failure(cause, url, error)
                    attempts -= 1
                    break
                sent = dict(headers)
                sent.update(signature)
            try:
                started = time.monotonic()
                status, response_headers, content = transport.post(
                    url, sent, payload, min(self._config.timeout_s, remaining), deadline)
                self._last_used[signal] = time.monotonic()
                round_trip = self._last_used[signal] - started if transport.last_reused else None
            except Exception as exc:  # classified below; anything unknown is retryable
                self._last_used[signal] = time.monotonic()
                status = None
                fatal = self._config_error(exc, url)
                if fatal is not None:
                    return self._config_problem(url, fatal, attempts=attempts, stale_retries=stale_retries)
                if transport.last_reused and stale_retries == 0 and _is_stale_connection_error(exc):
                    # A kept-alive connection died while idle: not the backend's fault, resend now.
                    log.debug("export %s: pooled connection was dead, resending on a fresh one", signal)
                    stale_retries += 1
                    attempts -= 1
                    transport.drop_connections(url)
                    continue
                cause, error = _classify(exc)
                error = self._clean(error)
                self._first_failure(cause, url, error)
                log.debug("export %s attempt %d failed: %s", signal, attempts, error)
                if cause in (FailureCause.TLS, FailureCause.DNS):
                    break  # not fixed in the next second: let the caller's breaker decide
            else:
                if 200 <= status < 300:
                    answered = otlp.JSON if "json" in (response_headers.get("Content-Type") or "") else otlp.PROTOBUF
                    rejected, message = otlp.partial_success(signal, content, answered)
                    if rejected:  # a backend cannot refuse more than we sent (counted only then: it walks every record)
                        rejected = min(rejected, sum(otlp.count_records(signal, item) for item in items))
                    if rejected:
                        self._loss.add(signal, EXPORT_REJECTED, rejected)
                        self._once.warning(log, ("partial", signal), "backend rejected %d %s records (partial "
                                           "success): %s", rejected, signal, self._clean(message) or "no message")
                    return ExportOutcome(SUCCESS, status=status, rejected_records=rejected,
                                         attempts=attempts, stale_retries=stale_retries, round_trip_s=round_trip)
                cause = FailureCause.HTTP_STATUS
                error = f"HTTP {status} from {redact_url(url)}: {self._clean(_short_body(content))}"
                if status in (400, 401, 403) and self._signer is not None and not renewed \
                        and self._signer.on_rejected(status, content):
                    renewed = True  # e.g. expired credentials, now re-read: send once more
                    attempts -= 1
                    continue
                if status not in RETRYABLE_STATUSES:
                    self._once.warning(log, ("status", _origin(url), status),
                                       "export %s rejected: %s (not retried; dropped and counted as "
                                       "export_rejected)", signal, error)
                    return ExportOutcome(REJECTED, status=status, error=error, attempts=attempts,
                                         stale_retries=stale_retries, cause=cause)
                self._first_failure(cause, url, error, status)
                retry_after = parse_retry_after(response_headers.get("Retry-After"))
                if retry_after is not None:
                    if time.monotonic() + retry_after + MIN_ATTEMPT_S >= deadline:
                        return ExportOutcome(RETRYABLE, status=status, retry_after=retry_after, error=error,
                                             attempts=attempts, stale_retries=stale_retries, cause=cause)
                    if self._closed.wait(retry_after):
                        cause, error = FailureCause.CLOSED, "exporter closed"
                        break
                    continue
            backoff = random.uniform(0.0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * (2 ** (attempts - 1))))
            if time.monotonic() + backoff + MIN_ATTEMPT_S >= deadline:
                break
            if self._closed.wait(backoff):
                cause, error = FailureCause.CLOSED, "exporter closed"
                break
        return ExportOutcome(RETRYABLE, status=status, error=error, attempts=attempts, stale_retries=stale_retries,
                             cause=cause)

    # --- connections, errors, logs -------------------------------------------------------

    def _transport_fresh(self, signal: str) -> bool:
        """Close the signal's pooled connections if idle too long (presumed dead); False when it did."""
        last_used = self._last_used[signal]
        if last_used and time.monotonic() - last_used > IDLE_CLOSE_S:
            self._transports[signal].drop_connections()
            return False
        return True

    def _config_error(self, exc: BaseException, url: str) -> Optional[str]:
        """A clear message for failures our settings cause (retrying cannot fix them); else None."""
        import requests

        if isinstance(exc, OSError) and self._config.certificate and "certificate" in str(exc).lower() \
                and not isinstance(exc, requests.exceptions.RequestException):
            return f"cannot use CA bundle {self._config.certificate!r}: {exc}"
        if isinstance(exc, OwnReceiverAddress):
            return f"{exc}: exporting there would loop every record back (set the endpoint to your backend)"
        if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                            requests.exceptions.MissingSchema, requests.exceptions.InvalidHeader)):
            return f"cannot send to {redact_url(url)}: {type(exc).__name__}"
        return None

    def _config_problem(self, url: str, message: str, attempts: int = 0, stale_retries: int = 0) -> ExportOutcome:
        message = self._clean(message)
        # Once per endpoint (not per signal URL): the same problem for all three.
        self._once.warning(log, ("config", _origin(url)), "export to %s is not possible: %s (dropped and counted "
                           "as export_rejected)", redact_url(url), message)
        return ExportOutcome(REJECTED, error=message, attempts=attempts, stale_retries=stale_retries,
                             cause=FailureCause.CONFIG)

    def _first_failure(self, cause: FailureCause, url: str, error: str, status: Optional[int] = None) -> None:
        hint = ""
        if cause is FailureCause.TLS:
            hint = "; verification stays on: set the CA bundle with OTEL_EXPORTER_OTLP_CERTIFICATE"
        self._once.warning(log, (cause, _origin(url), status),
                           "export to %s failed (%s): %s%s; the data is kept and retried, later failures of this "
                           "kind are counted, not logged", redact_url(url), cause.value, error, hint)

    def _clean(self, text: str) -> str:
        """``text`` without any secret we know of, with control characters escaped (one log line)."""
        secrets = self._secrets
        if self._header_source is not None:
            secrets = secrets + tuple(self._header_source.secret_values())
        if self._signer is not None:
            secrets = secrets + tuple(self._signer.secret_values())
        for secret in secrets:
            for form in _forms(secret):
                text = text.replace(form, "<redacted>")
        return _printable(text)


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Retry-After as seconds from now, within [0, MAX_RETRY_AFTER_S]: delta-seconds or an HTTP
    date. None when absent or unreadable (NaN included)."""
    if not value:
        return None
    value = value.strip()[:64]
    try:
        seconds = float(value)
    except ValueError:
        import email.utils  # only for the rare HTTP-date form (the email package is a costly import)

        try:
            when = email.utils.parsedate_to_datetime(value)
            seconds = when.timestamp() - (time.time() if now is None else now)
        except (TypeError, ValueError, IndexError, OverflowError, AttributeError):
            return None
    if math.isnan(seconds):
        return None
    return min(MAX_RETRY_AFTER_S, max(0.0, seconds))


def _request_headers(user: Mapping[str, str], compression: str, content_type: str) -> Dict[str, str]:
    """User headers plus ours; the encoding headers are ours alone (a user value cannot break them)."""
    headers = {"User-Agent": USER_AGENT}
    for name, value in user.items():
        if name.lower() not in ("content-encoding", "content-length", "content-type"):
            headers[name] = value
    if compression == "gzip":
        headers["Content-Encoding"] = "gzip"
    headers["Content-Type"] = content_type
    return headers


def _header_problem(headers: Mapping[str, str]) -> Optional[str]:
    """Why these headers cannot be sent (CR/LF/NUL would split the request), naming only the header."""
    for name, value in headers.items():
        if not name or any(c in name for c in "\r\n\0:") or any(c in str(value) for c in "\r\n\0"):
            return f"header {_printable(name[:64])!r} has a control character in its name or value (not sent)"
    return None


def _url_secrets(config: ExporterConfig) -> Tuple[str, ...]:
    """Credentials in endpoint URLs (user, password, query values), raw and percent-decoded."""
    found: List[str] = []
    for url in (config.traces_endpoint, config.metrics_endpoint, config.logs_endpoint):
        if not url:
            continue
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        candidates = [userinfo, *userinfo.split(":", 1)] if userinfo else []
        if parts.query:
            candidates.append(parts.query)
            candidates.extend(p.partition("=")[2] for p in parts.query.split("&"))
        for c in candidates:
            if c:
                found.extend({c, unquote(c)})
    return tuple(sorted(set(found), key=len, reverse=True))  # longest first: no partial leftovers


def _forms(secret: str) -> Tuple[str, ...]:
    """The ways a secret may be spelled in a message: raw, repr-escaped, percent-encoded."""
    return tuple({secret, repr(secret)[1:-1], quote(secret, safe="")})


def _printable(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _classify(exc: BaseException) -> Tuple[FailureCause, str]:
    """The cause and a short, header-free description of a failed attempt."""
    import requests
    from urllib3.exceptions import NameResolutionError

    if isinstance(exc, DeadlineExceeded):
        return FailureCause.TIMEOUT, "no complete answer before the request's deadline (cut)"
    if isinstance(exc, requests.exceptions.SSLError):
        return FailureCause.TLS, f"TLS certificate verification or handshake failed: {_innermost(exc)}"
    if _caused_by(exc, NameResolutionError) or _caused_by(exc, DeadlineExceeded):
        return FailureCause.DNS, f"cannot resolve the host: {_innermost(exc)}"
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return FailureCause.CONNECT, "connect timeout"
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return FailureCause.TIMEOUT, "read timeout"
    if isinstance(exc, requests.exceptions.ConnectionError) and _caused_by(exc, ConnectionRefusedError):
        return FailureCause.CONNECT, f"connection refused: {_innermost(exc)}"
    if isinstance(exc, requests.exceptions.ConnectionError) and "NewConnectionError" in repr(exc):
        return FailureCause.CONNECT, f"cannot connect: {_innermost(exc)}"
    return FailureCause.RESPONSE, f"{type(exc).__name__}: {_innermost(exc)}"


def _chain(exc: BaseException):
    seen = 0
    stack = [exc]
    while stack and seen < 20:
        e = stack.pop()
        seen += 1
        yield e
        stack.extend(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))
        for nxt in (getattr(e, "reason", None), e.__cause__, e.__context__):
            if isinstance(nxt, BaseException):
                stack.append(nxt)


def _caused_by(exc: BaseException, cls: type) -> bool:
    return any(isinstance(e, cls) for e in _chain(exc))


def _is_stale_connection_error(exc: BaseException) -> bool:
    """True for "the peer reset/closed a connection we thought was alive"; not for refused or timeouts."""
    import http.client

    for e in _chain(exc):
        if isinstance(e, (DeadlineExceeded, ConnectionRefusedError, TimeoutError)):
            return False
        if isinstance(e, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError,
                          http.client.RemoteDisconnected)):
            return True
    return False


def _innermost(exc: BaseException) -> str:
    inner: BaseException = exc
    for _ in range(10):
        nxt = next((a for a in getattr(inner, "args", ()) if isinstance(a, BaseException)), None)
        nxt = nxt or getattr(inner, "reason", None) or inner.__cause__
        if not isinstance(nxt, BaseException) or nxt is inner:
            break
        inner = nxt
    text = str(inner) or type(inner).__name__
    return text[:300]


def _short_body(content: bytes) -> str:
    text = content[:200].decode("utf-8", "replace").strip()
    return text or "(empty body)"


def _never_resolves(url: str) -> bool:
    """True for hosts under the reserved ``.invalid`` TLD (RFC 6761 §6.4)."""
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    return host == "invalid" or host.endswith(".invalid")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port}"


