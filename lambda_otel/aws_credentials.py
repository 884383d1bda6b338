"""The function's AWS credentials, as Lambda gives them to an extension.

Two sources, in the order the AWS SDKs use them:
- ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` (the execution role,
  on ordinary functions);
- the container credentials endpoint, ``AWS_CONTAINER_CREDENTIALS_FULL_URI`` with
  ``AWS_CONTAINER_AUTHORIZATION_TOKEN`` (or ``..._TOKEN_FILE``): what Lambda provides instead when
  SnapStart is on, because credentials captured in a snapshot would have expired by the time a
  copy is restored. Fetched with a short timeout and cached until five minutes before they expire.

``refresh()`` forgets the cached set; the signer calls it after a SnapStart restore and when AWS
answers that the token has expired. Nothing here logs or raises with a secret in the text.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Callable, Mapping, Optional
from urllib.parse import urlsplit

from lambda_otel.sigv4 import Credentials

CONTAINER_TIMEOUT_S = 2.0
EXPIRY_MARGIN_S = 300.0  # renew container credentials this long before they expire
ECS_HOST = "http://169.254.170.2"
MAX_RESPONSE_BYTES = 64 * 1024


class CredentialsError(Exception):
    """No usable credentials; the message names the variables to set and never holds a secret."""


class EnvironmentCredentials:
    """The function's credentials from its environment (see the module docstring). Thread-safe."""

    def __init__(self, env: Optional[Mapping[str, str]] = None, clock: Callable[[], float] = time.time,
                 timeout_s: float = CONTAINER_TIMEOUT_S) -> None:
        self._env = os.environ if env is None else env
        self._clock = clock
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._cached: Optional[Credentials] = None
        self._expires_at: Optional[float] = None

    def get(self) -> Credentials:
        with self._lock:
            if self._cached is not None and (self._expires_at is None or self._clock() < self._expires_at):
                return self._cached
            creds, expires_at = self._load()
            self._cached, self._expires_at = creds, expires_at
            return creds

    def refresh(self) -> None:
        with self._lock:
            self._cached = self._expires_at = None

    # --- sources ----------------------------------------------------------------------------

    def _load(self) -> "tuple[Credentials, Optional[float]]":
        env = self._env
        key_id = (env.get("AWS_ACCESS_KEY_ID") or "").strip()
        secret = (env.get("AWS_SECRET_ACCESS_KEY") or "").strip()
        if key_id and secret:
            token = (env.get("AWS_SESSION_TOKEN") or "").strip() or None
            return Credentials(key_id, secret, token), None
        if key_id or secret:
            missing = "AWS_SECRET_ACCESS_KEY" if key_id else "AWS_ACCESS_KEY_ID"
            raise CredentialsError(f"{missing} is not set (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY go together)")
        full = (env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI") or "").strip()
        relative = (env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") or "").strip()
        if relative:
            return self._from_container(ECS_HOST + relative, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        if full:
            return self._from_container(full, "AWS_CONTAINER_CREDENTIALS_FULL_URI")
        raise CredentialsError(
            "no AWS credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set "
            "(nor AWS_CONTAINER_CREDENTIALS_FULL_URI); on Lambda the execution role provides them"
        )

    def _authorization_token(self) -> Optional[str]:
        path = (self._env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") or "").strip()
        if path:
            try:
                with open(path, encoding="utf-8") as f:
                    return f.read().strip()
            except OSError as exc:
                raise CredentialsError(f"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE: cannot read the file: {exc.strerror}") from None
        return (self._env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN") or "").strip() or None

    def _from_container(self, url: str, variable: str) -> "tuple[Credentials, Optional[float]]":
        import http.client  # only SnapStart-style environments need it

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CredentialsError(f"{variable}: not an http:// or https:// URL")
        conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = conn_cls(parts.hostname, parts.port, timeout=self._timeout_s)
        headers = {"Accept": "application/json"}
        token = self._authorization_token()
        if token:
            headers["Authorization"] = token
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        try:
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            body = resp.read(MAX_RESPONSE_BYTES)
            status = resp.status
        except (OSError, http.client.HTTPException) as exc:
            raise CredentialsError(f"{variable}: the credentials endpoint did not answer ({type(exc).__name__})") from None
        finally:
            conn.close()
        if status != 200:
            raise CredentialsError(f"{variable}: the credentials endpoint answered HTTP {status}")
        try:
            data = json.loads(body.decode("utf-8"))
            creds = Credentials(data["AccessKeyId"], data["SecretAccessKey"], data.get("Token") or None)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise CredentialsError(f"{variable}: the credentials endpoint's answer is not a credentials document") from None
        return creds, self._renew_at(data.get("Expiration"))

    def _renew_at(self, expiration: object) -> Optional[float]:
        now = self._clock()
        if isinstance(expiration, str) and expiration:
            from datetime import datetime

            try:
                when = datetime.fromisoformat(expiration.replace("Z", "+00:00")).timestamp()
            except ValueError:
                when = None
            if when is not None:
                # Never cache for less than a few seconds, so a near-expiry answer cannot cause a fetch per request.
                return max(now + 5.0, when - EXPIRY_MARGIN_S)
        return now + EXPIRY_MARGIN_S
