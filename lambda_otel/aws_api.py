"""A small client for AWS's JSON 1.1 APIs (Secrets Manager, SSM), SigV4-signed, over http.client.

Why not an SDK: it would cost ~10 MB and seconds of cold start for two calls. Why not
``requests``: two calls at start-up do not need a connection pool. ``http.client`` and ``ssl`` are
imported on the first call (on the resolver's thread), so importing this module costs almost nothing.

A call is ``POST /`` with ``X-Amz-Target: <prefix>.<Operation>`` and a JSON body, answered with
JSON; an error answer carries ``__type`` (e.g. ``ResourceNotFoundException``) and ``message``.
Every call is bounded by a deadline as a whole: retries (throttling, 5xx, connection errors) and
their backoff fit inside it. An answer saying the token has expired re-reads the credentials and
retries once.

Endpoints follow the AWS SDKs' convention: ``AWS_ENDPOINT_URL_<SERVICE>`` (e.g.
``AWS_ENDPOINT_URL_SECRETS_MANAGER``), then ``AWS_ENDPOINT_URL``, then
``https://<endpoint prefix>.<region>.amazonaws.com``; ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true``
turns the overrides off.
"""

from __future__ import annotations

import json
import random
import re
import time
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional
from urllib.parse import urlsplit

from lambda_otel import __version__
from lambda_otel.aws_credentials import CredentialsError
from lambda_otel.sigv4 import EXPIRED_CREDENTIALS_CODES, CredentialsProvider, SigV4Signer

CONTENT_TYPE = "application/x-amz-json-1.1"
MAX_ATTEMPTS = 4
MAX_RESPONSE_BYTES = 1024 * 1024  # a secret is at most 64 KB; a parameter 8 KB
_XML_CODE = re.compile(r"<Code>([^<]{1,200})</Code>")
_XML_MESSAGE = re.compile(r"<Message>([^<]{0,300})</Message>")
RETRYABLE_CODES = frozenset({"ThrottlingException", "Throttling", "TooManyRequestsException", "InternalServiceError",
                             "InternalServerError", "InternalFailure", "ServiceUnavailable", "RequestTimeout"})


@dataclass(frozen=True)
class Service:
    """What a JSON 1.1 API needs: its signing name, endpoint prefix, target prefix and SDK env name."""

    signing_name: str
    endpoint_prefix: str
    target_prefix: str
    env_suffix: str  # AWS_ENDPOINT_URL_<env_suffix>


SECRETS_MANAGER = Service("secretsmanager", "secretsmanager", "secretsmanager", "SECRETS_MANAGER")
SSM = Service("ssm", "ssm", "AmazonSSM", "SSM")
CLOUDWATCH_LOGS = Service("logs", "logs", "Logs_20140328", "CLOUDWATCH_LOGS")


class AwsApiError(Exception):
    """A failed call. ``code`` is AWS's error code (or ours: ``NetworkError``, ``Timeout``,
    ``MissingCredentials``); ``message`` is AWS's message, which never contains a secret value."""

    def __init__(self, code: str, message: str = "", status: Optional[int] = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.status = status

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_CODES or self.code in ("NetworkError", "Timeout") or (
            self.status is not None and self.status >= 500)


def endpoint_url(service: Service, region: str, env: Mapping[str, str], default: Optional[str] = None) -> str:
    """The endpoint to call, following the SDKs' override convention (see the module docstring);
    ``default`` (e.g. the origin of an OTLP endpoint of the same service) before the public one."""
    if (env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS") or "").strip().lower() != "true":
        for name in (f"AWS_ENDPOINT_URL_{service.env_suffix}", "AWS_ENDPOINT_URL"):
            value = (env.get(name) or "").strip()
            if value:
                return value.rstrip("/")
    if default:
        return default.rstrip("/")
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"https://{service.endpoint_prefix}.{region}.{suffix}"


def error_code(status: int, body: bytes, headers: Mapping[str, str]) -> "tuple[str, str]":
    """(code, message) of an error answer: ``__type`` or ``x-amzn-ErrorType``, without namespace."""
    code, message = "", ""
    try:
        data = json.loads(body.decode("utf-8"))
        if isinstance(data, dict):
            code = str(data.get("__type") or data.get("code") or "")
            message = str(data.get("message") or data.get("Message") or "")
    except (ValueError, UnicodeDecodeError):
        # Query-protocol and auth-layer errors come as XML: <Error><Code>AccessDenied</Code>...
        text = body[:4096].decode("utf-8", "replace")
        m_code, m_message = _XML_CODE.search(text), _XML_MESSAGE.search(text)
        code = m_code.group(1) if m_code else ""
        message = m_message.group(1) if m_message else ""
    if not code:
        code = next((v for k, v in headers.items() if k.lower() == "x-amzn-errortype"), "") or f"HTTP{status}"
    code = code.split("#")[-1].split(":")[0].strip() or f"HTTP{status}"
    return code, _first_sentence(message)


def _first_sentence(message: str) -> str:
    """AWS's message up to its first line break, at most 300 characters.

    A ``SignatureDoesNotMatch`` message goes on with "The Canonical String for this request should
    have been ..." — the canonical request, session token included. Only the first line is kept.
    """
    return message.strip().split("\n", 1)[0].split("The Canonical String", 1)[0].strip()[:300]


class AwsJsonClient:
    """Calls one JSON 1.1 API in one region. Thread-safe (one connection per call)."""

    def __init__(self, service: Service, region: str, credentials: CredentialsProvider,
                 env: Mapping[str, str], timeout_s: float = 3.0, endpoint: Optional[str] = None) -> None:
        self.service = service
        self.region = region
        self.url = endpoint_url(service, region, env, endpoint)
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"AWS_ENDPOINT_URL_{service.env_suffix}: {self.url!r} is not an http:// or https:// URL")
        self._parts = parts
        self._signer = SigV4Signer(credentials, region, service.signing_name)
        self._timeout_s = timeout_s
        self._tls: Any = None

    def call(self, operation: str, payload: Mapping[str, Any], deadline: float) -> Dict[str, Any]:
        """One API call, bounded by ``deadline`` (a ``time.monotonic()`` instant). Raises AwsApiError."""
        body = json.dumps(payload).encode("utf-8")
        headers = {"Content-Type": CONTENT_TYPE, "X-Amz-Target": f"{self.service.target_prefix}.{operation}",
                   "User-Agent": f"lambda-otel/{__version__}"}
        refreshed = False
        last: Optional[AwsApiError] = None
        for attempt in range(MAX_ATTEMPTS):
            remaining = deadline - time.monotonic()
            if remaining <= 0.01:
                break
            try:
                return self._once(headers, body, min(self._timeout_s, remaining))
            except AwsApiError as exc:
                last = exc
                if exc.code in EXPIRED_CREDENTIALS_CODES and not refreshed:
                    refreshed = True
                    self._signer.refresh_credentials()
                    continue
                if not exc.retryable:
                    raise
            backoff = random.uniform(0, min(1.0, 0.1 * 2 ** attempt))
            if time.monotonic() + backoff >= deadline:
                break
            time.sleep(backoff)
        raise last or AwsApiError("Timeout", "no time left for the call")

    def _once(self, headers: Dict[str, str], body: bytes, timeout: float) -> Dict[str, Any]:
        parts = self._parts
        path = parts.path or "/"
        url = f"{parts.scheme}://{parts.netloc}{path}"
        try:
            signed = dict(headers, **self._signer.sign("POST", url, headers, body))
        except CredentialsError as exc:
            raise AwsApiError("MissingCredentials", str(exc)) from None
        import http.client  # here, not at import: start-up should not pay for it

        if parts.scheme == "https":
            if self._tls is None:
                import ssl

                self._tls = ssl.create_default_context()
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout,
                                                                            context=self._tls)
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        try:
            conn.request("POST", path, body=body, headers=signed)
            resp = conn.getresponse()
            data = resp.read(MAX_RESPONSE_BYTES)
            status, resp_headers = resp.status, dict(resp.getheaders())
        except TimeoutError:
            raise AwsApiError("Timeout", f"no answer from {_safe(self.url)} within {timeout:.1f} s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise AwsApiError("NetworkError", f"{type(exc).__name__} calling {_safe(self.url)}") from None
        finally:
            conn.close()
        if status == 200:
            try:
                result = json.loads(data.decode("utf-8")) if data else {}
            except (ValueError, UnicodeDecodeError):
                raise AwsApiError("InvalidResponse", f"{_safe(self.url)} answered 200 with a body that is not JSON", 200) from None
            return result if isinstance(result, dict) else {}
        code, message = error_code(status, data, resp_headers)
        raise AwsApiError(code, self._redact(message), status)

    def _redact(self, text: str) -> str:
        """Belt and braces: no credential in a message, whatever the endpoint answered."""
        try:
            creds = self._signer.credentials()
        except Exception:  # noqa: BLE001 - no credentials: nothing to redact
            return text
        for secret in (creds.secret_access_key, creds.session_token):
            if secret:
                text = text.replace(secret, "<redacted>")
        return text


def _safe(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}"
