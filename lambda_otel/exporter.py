"""OTLP/HTTP export of one serialised request, bounded by a deadline.

Why this module is careful:
- The export gate (see docs/design.md) waits for the request in flight before Lambda may freeze
  us, so no request may outlive the ``deadline`` it is given: every attempt's timeout is
  ``min(timeout_s, deadline - now)`` and no retry or backoff starts that cannot fit.
- After a freeze the pooled keep-alive connection is often dead (the peer or a NAT dropped it
  while we were frozen). A reset on a *reused* connection is retried once, immediately, on a
  fresh connection, without counting as an attempt; connections idle for longer than
  ``IDLE_CLOSE_S`` are closed before use.
- ``requests`` costs ~150 ms to import, so it is imported on the first export, not at start-up.
- Header values (e.g. ``Authorization``) never appear in logs or in ``ExportOutcome.error``.
- TLS verification is always on; a certificate problem is a non-retryable ``REJECTED`` outcome
  with a clear error, logged once.

Loss accounting: records refused through OTLP ``partial_success`` are counted here (the caller
cannot know them); whole-request failures are counted by the caller, who knows the batch.
"""

from __future__ import annotations

import email.utils
import enum
import gzip
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from lambda_otel import __version__
from lambda_otel.config import ExporterConfig
from lambda_otel import otlp
from lambda_otel.loss import EXPORT_REJECTED, LossCounter

if TYPE_CHECKING:  # pragma: no cover - typing only; requests is imported lazily
    import requests

log = logging.getLogger(__name__)



class ExportKind(enum.Enum):
    """What the caller does with the batch: done, keep and retry later, drop (counted), no URL."""

    SUCCESS = "SUCCESS"
    RETRYABLE = "RETRYABLE"
    REJECTED = "REJECTED"
    NO_ENDPOINT = "NO_ENDPOINT"


SUCCESS = ExportKind.SUCCESS
RETRYABLE = ExportKind.RETRYABLE
REJECTED = ExportKind.REJECTED
NO_ENDPOINT = ExportKind.NO_ENDPOINT

RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 1.0
MAX_ATTEMPTS = 8  # a bound on top of the deadline, so the loop is bounded in count too
MIN_ATTEMPT_S = 0.005  # do not start an attempt with less time than this left
IDLE_CLOSE_S = 30.0  # pooled connections older than this are presumed dead (freeze, NAT timeout)
GZIP_LEVEL = 1
USER_AGENT = f"lambda-otel/{__version__}"


@dataclass(frozen=True)
class ExportOutcome:
    """What happened to one export.

    kind: SUCCESS | RETRYABLE (keep the data, try later) | REJECTED (drop it; the caller counts
    ``export_rejected``) | NO_ENDPOINT (no URL for this signal; the caller warns once).
    rejected_records: records the backend refused through ``partial_success`` on a SUCCESS
    (already counted in the LossCounter by the exporter; do not count them again).
    retry_after: seconds the backend asked us to wait (Retry-After) when it did not fit the deadline.
    attempts: requests that counted as attempts; stale_retries: immediate re-sends after a dead
    pooled connection (not counted as attempts).
    """

    kind: ExportKind
    status: Optional[int] = None
    rejected_records: int = 0
    retry_after: Optional[float] = None
    error: Optional[str] = None
    attempts: int = 0
    stale_retries: int = 0


class OtlpExporter:
    """Sends serialised ``Export*ServiceRequest`` bodies to the configured endpoints.

    Meant to be used from one thread (the ExportWorker); ``close()`` may be called from another.
    """

    def __init__(self, config: ExporterConfig, loss: LossCounter) -> None:
        if config.compression not in ("gzip", "none"):
            raise ValueError(f"compression must be 'gzip' or 'none', not {config.compression!r}")
        self._config = config
        self._loss = loss
        self._session: Optional["requests.Session"] = None
        self._proxies: Dict[str, Dict[str, str]] = {}
        self._last_used = 0.0
        self._closed = threading.Event()  # interrupts a backoff wait when closing
        self._warned: set = set()
        self._secrets = tuple(v for v in config.headers.values() if v)
        self._headers = self._build_headers(config)
        self._verify: Any = config.certificate or True

    @staticmethod
    def _build_headers(config: ExporterConfig) -> Dict[str, str]:
        headers = {"User-Agent": USER_AGENT, "Content-Type": "application/x-protobuf"}
        for name, value in config.headers.items():
            if name.lower() not in ("content-encoding", "content-length"):
                headers[name] = value
        if config.compression == "gzip":
            headers["Content-Encoding"] = "gzip"
        return headers

    # --- public API -------------------------------------------------------------------------

    def export(self, signal: str, items: Sequence[Any], deadline: float) -> ExportOutcome:
        """Send ``items`` (Resource* messages of ``signal``) as one request before ``deadline``."""
        url = self._config.endpoint(signal)
        if not url:
            return ExportOutcome(NO_ENDPOINT, error=f"no endpoint configured for {signal}")
        if self._closed.is_set():
            return ExportOutcome(RETRYABLE, error="exporter closed")
        if _never_resolves(url):
            # RFC 6761: names under .invalid never resolve; do not ask DNS (it may hang, unbounded).
            message = "its host is under the reserved .invalid domain (RFC 6761) and never resolves"
            self._warn_once(("fatal", _origin(url)), "export to %s is not possible: %s", _safe_url(url), message)
            return ExportOutcome(REJECTED, error=message)
        body = otlp.encode_request(signal, items)
        payload = gzip.compress(body, GZIP_LEVEL) if self._config.compression == "gzip" else body
        session = self._get_session()

        attempts = stale_retries = 0
        status: Optional[int] = None
        error: Optional[str] = None
        while attempts < MAX_ATTEMPTS:
            remaining = deadline - time.monotonic()
            if remaining < MIN_ATTEMPT_S:
                break
            reused = self._has_idle_connection(url)
            attempts += 1
            try:
                resp = session.post(
                    url,
                    data=payload,
                    headers=self._headers,
                    timeout=min(self._config.timeout_s, remaining),
                    verify=self._verify,
                    proxies=self._proxies_for(url),
                    allow_redirects=False,
                    stream=True,  # so that a huge error page is not read into memory
                )
                try:
                    content = _read_limited(resp)
                finally:
                    resp.close()  # back to the pool if fully read, else the connection is dropped
                self._last_used = time.monotonic()
            except Exception as exc:  # classified below; anything unknown is retryable
                self._last_used = time.monotonic()
                rejected = self._non_retryable(exc, url)
                if rejected is not None:
                    return ExportOutcome(REJECTED, error=rejected, attempts=attempts, stale_retries=stale_retries)
                if reused and stale_retries == 0 and _is_stale_connection_error(exc):
                    # A kept-alive connection died while idle: not the backend's fault, resend now.
                    log.debug("export %s: pooled connection was dead, resending on a fresh one", signal)
                    stale_retries += 1
                    attempts -= 1
                    session.close()  # drop every pooled connection so the resend opens a new one
                    continue
                status, error = None, self._redact(_describe_exception(exc))
                log.debug("export %s attempt %d failed: %s", signal, attempts, error)
            else:
                status = resp.status_code
                if 200 <= status < 300:
                    rejected_n, message = otlp.partial_success(signal, content)
                    if rejected_n:
                        self._loss.add(signal, EXPORT_REJECTED, rejected_n)
                        self._warn_once(("partial", signal), "backend rejected %d %s records (partial success): %s",
                                        rejected_n, signal, self._redact(message) or "no message")
                    return ExportOutcome(SUCCESS, status=status, rejected_records=rejected_n,
                                         attempts=attempts, stale_retries=stale_retries)
                error = f"HTTP {status} from {_safe_url(url)}: {self._redact(_short_body(content))}"
                if status not in RETRYABLE_STATUSES:
                    self._warn_once(("status", signal, status), "export %s rejected: %s (not retried)", signal, error)
                    return ExportOutcome(REJECTED, status=status, error=error, attempts=attempts,
                                         stale_retries=stale_retries)
                retry_after = _parse_retry_after(resp.headers.get("Retry-After"))
                if retry_after is not None:
                    if time.monotonic() + retry_after + MIN_ATTEMPT_S >= deadline:
                        return ExportOutcome(RETRYABLE, status=status, retry_after=retry_after, error=error,
                                             attempts=attempts, stale_retries=stale_retries)
                    if self._closed.wait(retry_after):
                        break
                    continue
            backoff = random.uniform(0.0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * (2 ** (attempts - 1))))
            if time.monotonic() + backoff + MIN_ATTEMPT_S >= deadline:
                break
            if self._closed.wait(backoff):
                break
        if error is None:
            error = "deadline reached before the first attempt" if attempts == 0 else "exporter closed"
        return ExportOutcome(RETRYABLE, status=status, error=error, attempts=attempts, stale_retries=stale_retries)

    def close(self) -> None:
        """Interrupt any backoff wait and close pooled connections. Further exports are RETRYABLE."""
        self._closed.set()
        session, self._session = self._session, None
        if session is not None:
            session.close()

    # --- connection management ------------------------------------------------------------

    def _get_session(self) -> "requests.Session":
        now = time.monotonic()
        if self._session is None:
            import requests  # lazy: ~150 ms of imports we do not pay at start-up

            session = requests.Session()
            # No ~/.netrc, no REQUESTS_CA_BUNDLE surprises: only what the config says.
            session.trust_env = False
            self._session = session
        elif now - self._last_used > IDLE_CLOSE_S:
            log.debug("exporter idle for %.0fs: closing pooled connections", now - self._last_used)
            self._session.close()
        return self._session

    def _proxies_for(self, url: str) -> Dict[str, str]:
        """Proxies from HTTPS_PROXY/HTTP_PROXY/NO_PROXY, looked up once per URL."""
        proxies = self._proxies.get(url)
        if proxies is None:
            from requests.utils import get_environ_proxies

            proxies = self._proxies[url] = get_environ_proxies(url)
        return proxies

    def _has_idle_connection(self, url: str) -> bool:
        """Whether the next request to ``url`` will go out on a kept-alive pooled connection.

        Looks inside urllib3's pool (there is no public API for this); any surprise means "no",
        which only costs the stale-connection shortcut, never correctness.
        """
        if self._session is None:
            return False
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            manager = self._session.get_adapter(url).poolmanager
            for key in manager.pools.keys():
                pool = manager.pools.get(key)
                if pool is None or pool.host != parts.hostname or pool.port != port or pool.pool is None:
                    continue
                with pool.pool.mutex:
                    if any(c is not None and getattr(c, "sock", None) is not None for c in pool.pool.queue):
                        return True
        except Exception:  # noqa: BLE001 - introspection only
            return False
        return False

    # --- errors -----------------------------------------------------------------------------

    def _non_retryable(self, exc: BaseException, url: str) -> Optional[str]:
        """A clear error for failures that retrying cannot fix (TLS, bad URL/header); else None."""
        import requests

        if isinstance(exc, requests.exceptions.SSLError):
            message = (f"TLS certificate verification failed for {_safe_url(url)}: {_describe_exception(exc)}. "
                       f"Verification stays on; set the CA bundle with OTEL_EXPORTER_OTLP_CERTIFICATE")
        elif isinstance(exc, OSError) and self._config.certificate and "certificate" in str(exc).lower():
            message = f"cannot use CA bundle {self._config.certificate!r}: {exc}"
        elif isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                              requests.exceptions.MissingSchema, requests.exceptions.InvalidHeader)):
            message = f"cannot send to {_safe_url(url)}: {_describe_exception(exc)}"
        else:
            return None
        message = self._redact(message)
        # Once per endpoint (not per signal URL): the same certificate problem for all three.
        self._warn_once(("fatal", _origin(url)), "export to %s is not possible: %s", _safe_url(url), message)
        return message

    def _warn_once(self, key: Tuple, fmt: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(fmt, *args)

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "<redacted>")
        return text


MAX_RESPONSE_BYTES = 1024 * 1024


def _read_limited(resp: "requests.Response") -> bytes:
    """The response body, at most MAX_RESPONSE_BYTES (an OTLP response is a few bytes)."""
    chunks = []
    size = 0
    for chunk in resp.iter_content(16384):
        chunks.append(chunk)
        size += len(chunk)
        if size >= MAX_RESPONSE_BYTES:
            break
    return b"".join(chunks)


def _parse_retry_after(value: Optional[str]) -> Optional[float]:
    """Retry-After as seconds from now: delta-seconds or an HTTP date. None when absent or invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _is_stale_connection_error(exc: BaseException) -> bool:
    """True for "the peer reset/closed a connection we thought was alive"; not for refused or timeouts."""
    import http.client

    seen = 0
    stack = [exc]
    while stack and seen < 20:
        e = stack.pop()
        seen += 1
        if isinstance(e, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, http.client.RemoteDisconnected)):
            return True
        if isinstance(e, (ConnectionRefusedError, TimeoutError)):
            return False
        stack.extend(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))
        for nxt in (getattr(e, "reason", None), e.__cause__, e.__context__):
            if isinstance(nxt, BaseException):
                stack.append(nxt)
    return False


def _describe_exception(exc: BaseException) -> str:
    """A short, header-free description: the exception class and its innermost reason."""
    import requests

    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connect timeout"
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return "read timeout"
    inner: BaseException = exc
    for _ in range(10):
        nxt = next((a for a in getattr(inner, "args", ()) if isinstance(a, BaseException)), None)
        nxt = nxt or getattr(inner, "reason", None) or inner.__cause__
        if not isinstance(nxt, BaseException) or nxt is inner:
            break
        inner = nxt
    text = str(inner) or type(inner).__name__
    return f"{type(exc).__name__}: {text[:300]}"


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


def _safe_url(url: str) -> str:
    """The URL without userinfo or query string (which may carry credentials)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"
