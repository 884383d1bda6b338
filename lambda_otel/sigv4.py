"""AWS Signature Version 4 over the standard library (hmac, hashlib), for OTLP export and AWS API calls.

Why our own: an AWS SDK costs ~10 MB and seconds of cold start; signing is a small, published
algorithm. What is signed is exactly what is sent: the caller passes the final body (after gzip)
and the headers it will send, and adds the headers we return.

The algorithm, in named stages (each a pure function, so tests can check every step):
1. ``canonical_request``: method, canonical URI, canonical query, canonical headers, signed header
   names, hex SHA-256 of the payload.
2. ``string_to_sign``: ``AWS4-HMAC-SHA256``, the request time, the credential scope
   (``<date>/<region>/<service>/aws4_request``) and the hash of the canonical request.
3. ``signing_key``: HMAC chain secret -> date -> region -> service -> ``aws4_request``; it only
   changes once a day, so :class:`SigV4Signer` caches it per (key id, date, region, service).
4. ``authorization_header``: ``AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...``.

Secrets (the secret key, the session token, the signing key) never appear in a ``repr``, a log
line or an exception message.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Protocol, Tuple
from urllib.parse import quote, unquote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

# Never signed: they are changed or added by clients and proxies on the way (as in the AWS SDKs),
# or are the signature itself.
UNSIGNED_HEADERS = frozenset(
    {
        "authorization", "content-length", "user-agent", "expect", "x-amzn-trace-id", "baggage", "traceparent",
        "tracestate", "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
        "transfer-encoding", "upgrade",
    }
)
# Services whose APIs want the payload hash as a header too (S3 and its relatives); the others
# (xray, logs, monitoring, secretsmanager, ssm) take it in the canonical request only.
CONTENT_SHA256_SERVICES = frozenset({"s3", "s3-object-lambda", "glacier"})

@dataclass(frozen=True)
class Credentials:
    """One set of AWS credentials. The secret parts are left out of ``repr``."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: Optional[str] = field(default=None, repr=False)


class CredentialsProvider(Protocol):
    """Where a signer gets credentials from; ``refresh()`` forgets any cached set."""

    def get(self) -> Credentials: ...

    def refresh(self) -> None: ...


class StaticCredentials:
    """A fixed set of credentials (tests, or a caller that manages renewal itself)."""

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials

    def get(self) -> Credentials:
        return self._credentials

    def refresh(self) -> None:
        pass


# --- the algorithm, stage by stage ------------------------------------------------------------


def amz_date(epoch_s: float) -> str:
    """``YYYYMMDDTHHMMSSZ`` (UTC), the format of X-Amz-Date."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(epoch_s))


def _uri_encode(text: str) -> str:
    """RFC 3986 encoding as SigV4 wants it: everything but unreserved characters, UTF-8 first."""
    return quote(text, safe="-_.~")


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4, keeping a trailing slash; empty segments ('//') are collapsed."""
    out: List[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if out:
                out.pop()
            continue
        out.append(segment)
    normalized = "/" + "/".join(out)
    if path.endswith("/") and normalized != "/":
        normalized += "/"
    return normalized


def canonical_uri(path: str, service: str) -> str:
    """The path as it goes on the wire, normalised and encoded once more (S3: neither).

    ``path`` is the URL's path as the caller gave it; characters outside the unreserved set
    (including the ``%`` of an already encoded path) are percent-encoded, which is what makes
    the signature match the request line an HTTP client sends.
    """
    if not path:
        return "/"
    if service == "s3":
        return quote(path, safe="/~")
    return quote(_remove_dot_segments(path), safe="/~")


def canonical_query(query: str) -> str:
    """Each name and value decoded then encoded the SigV4 way, sorted by name then value."""
    if not query:
        return ""
    pairs: List[Tuple[str, str]] = []
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((_uri_encode(unquote(name.replace("+", "%20"))), _uri_encode(unquote(value.replace("+", "%20")))))
    return "&".join(f"{n}={v}" for n, v in sorted(pairs))


def host_header(url: str) -> str:
    """The Host an HTTP client sends for ``url``: the host name, with the port unless it is the default."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    port = parts.port
    if port is not None and port != {"http": 80, "https": 443}.get(parts.scheme):
        host = f"{host}:{port}"
    return host


def _trim(value: str) -> str:
    return " ".join(str(value).split())


def headers_to_sign(headers: Mapping[str, str]) -> Dict[str, str]:
    """Lower-cased names -> canonical values, without the headers that are never signed."""
    out: Dict[str, str] = {}
    for name, value in headers.items():
        lname = name.lower().strip()
        if lname in UNSIGNED_HEADERS:
            continue
        out[lname] = f"{out[lname]},{_trim(value)}" if lname in out else _trim(value)
    return out


def canonical_request(method: str, url: str, signed: Mapping[str, str], payload_hash: str, service: str) -> str:
    """Stage 1. ``signed`` maps lower-case header names to canonical values (``headers_to_sign``)."""
    parts = urlsplit(url)
    names = sorted(signed)
    return "\n".join(
        [
            method.upper(),
            canonical_uri(parts.path, service),
            canonical_query(parts.query),
            "".join(f"{n}:{signed[n]}\n" for n in names),
            ";".join(names),
            payload_hash,
        ]
    )


def credential_scope(date: str, region: str, service: str) -> str:
    return f"{date}/{region}/{service}/aws4_request"


def string_to_sign(request_time: str, scope: str, canonical: str) -> str:
    """Stage 2."""
    return "\n".join([ALGORITHM, request_time, scope, hashlib.sha256(canonical.encode("utf-8")).hexdigest()])


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def signing_key(secret_access_key: str, date: str, region: str, service: str) -> bytes:
    """Stage 3: the HMAC chain. ``date`` is ``YYYYMMDD``."""
    key = _hmac(("AWS4" + secret_access_key).encode("utf-8"), date)
    key = _hmac(key, region)
    key = _hmac(key, service)
    return _hmac(key, "aws4_request")


def signature(key: bytes, to_sign: str) -> str:
    return hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def authorization_header(access_key_id: str, scope: str, signed_names: str, sig: str) -> str:
    """Stage 4."""
    return f"{ALGORITHM} Credential={access_key_id}/{scope}, SignedHeaders={signed_names}, Signature={sig}"


# --- the signer --------------------------------------------------------------------------------


class SigV4Signer:
    """Signs requests for one (region, service) with credentials from a provider.

    Implements the exporter's ``RequestSigner``: ``sign(method, url, headers, body)`` returns the
    headers to add (``X-Amz-Date``, ``X-Amz-Security-Token`` when there is a session token,
    ``x-amz-content-sha256`` for the services that want it, ``Authorization``), computed over
    exactly ``body``. Thread-safe. ``clock`` returns epoch seconds (injectable for tests).
    """

    def __init__(
        self,
        credentials: CredentialsProvider,
        region: str,
        service: str,
        clock: Callable[[], float] = time.time,
        content_sha256: Optional[bool] = None,
    ) -> None:
        self._credentials = credentials
        self.region = region
        self.service = service
        self._clock = clock
        self._content_sha256 = service in CONTENT_SHA256_SERVICES if content_sha256 is None else content_sha256
        self._lock = threading.Lock()
        self._key_cache: Dict[Tuple[str, str, str, str], bytes] = {}

    def __repr__(self) -> str:
        return f"SigV4Signer(region={self.region!r}, service={self.service!r})"

    def sign(self, method: str, url: str, headers: Mapping[str, str], body: bytes) -> Dict[str, str]:
        creds = self._credentials.get()
        now = self._clock()
        request_time = amz_date(now)
        date = request_time[:8]
        payload_hash = hashlib.sha256(body or b"").hexdigest()

        added: Dict[str, str] = {"X-Amz-Date": request_time}
        if creds.session_token:
            added["X-Amz-Security-Token"] = creds.session_token
        if self._content_sha256:
            added["x-amz-content-sha256"] = payload_hash

        to_sign = {k: v for k, v in headers.items() if k.lower() not in ("x-amz-date", "x-amz-security-token", "host")}
        to_sign.update(added)
        to_sign["host"] = _host_from_headers(headers) or host_header(url)
        signed = headers_to_sign(to_sign)
        scope = credential_scope(date, self.region, self.service)
        canonical = canonical_request(method, url, signed, payload_hash, self.service)
        sig = signature(self._signing_key(creds, date), string_to_sign(request_time, scope, canonical))
        added["Authorization"] = authorization_header(creds.access_key_id, scope, ";".join(sorted(signed)), sig)
        return added

    def _signing_key(self, creds: Credentials, date: str) -> bytes:
        cache_key = (creds.access_key_id, date, self.region, self.service)
        with self._lock:
            key = self._key_cache.get(cache_key)
            if key is None:
                # A new day or new credentials: the old keys are useless from now on.
                self._key_cache.clear()
                key = self._key_cache[cache_key] = signing_key(creds.secret_access_key, date, self.region, self.service)
            return key

    def credentials(self) -> Credentials:
        """The credentials the next signature will use (for redaction; never log them)."""
        return self._credentials.get()

    def secret_values(self) -> Tuple[str, ...]:
        """The secret key and session token in use, for the caller to redact from any text."""
        try:
            creds = self._credentials.get()
        except Exception:  # noqa: BLE001 - no credentials, nothing to redact
            return ()
        return tuple(v for v in (creds.secret_access_key, creds.session_token) if v)

    def refresh_credentials(self) -> None:
        """Forget cached credentials and signing keys (an expired-token answer, a restore)."""
        self._credentials.refresh()
        with self._lock:
            self._key_cache.clear()

    def renew_after_restore(self) -> None:
        """SnapStart: the snapshot's credentials are stale in every restored copy."""
        self.refresh_credentials()


def _host_from_headers(headers: Mapping[str, str]) -> Optional[str]:
    for name, value in headers.items():
        if name.lower() == "host":
            return value
    return None


# Error codes with which AWS says "your credentials are no longer valid": re-read them and retry.
EXPIRED_CREDENTIALS_CODES = frozenset(
    {"ExpiredToken", "ExpiredTokenException", "RequestExpired", "InvalidClientTokenId", "UnrecognizedClientException"}
)


def is_expired_credentials_answer(status: int, body: bytes) -> bool:
    """True for a 400/403 whose body names an expired or unknown token (JSON, XML or text)."""
    if status not in (400, 401, 403):
        return False
    text = body[:2048].decode("utf-8", "replace")
    return any(code in text for code in EXPIRED_CREDENTIALS_CODES) or "security token included in the request is expired" in text
