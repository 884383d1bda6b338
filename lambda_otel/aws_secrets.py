"""Export header values kept in Secrets Manager or SSM Parameter Store instead of environment variables.

A header value (``LAMBDA_OTEL_EXPORTER_HEADERS``, ``OTEL_EXPORTER_OTLP_HEADERS`` and their per-signal
variants) may contain references, replaced by the secret's value before any export::

    ${arn:aws:secretsmanager:<region>:<account>:secret:<name>}           the whole SecretString
    ${arn:aws:secretsmanager:<region>:<account>:secret:<name>#<jsonKey>} one field of a JSON secret
    ${arn:aws:ssm:<region>:<account>:parameter/<name>}                    a (SecureString) parameter
    ${arn:aws:ssm:<region>:<account>:parameter/<name>#<jsonKey>}          one field of a JSON parameter

e.g. ``authorization=Bearer ${arn:aws:secretsmanager:eu-west-1:123456789012:secret:otlp-key}``.

How (the contract with the exporter is ``HeaderSource``: ``headers(signal)`` returns the headers
to send, or None while they are not known, in which case nothing is exported and the data stays
buffered):
- resolution runs on its own daemon thread, started off the ``/next`` path (after a SnapStart
  restore for SnapStart functions, whose snapshot has no credentials), each round bounded by a
  timeout as a whole; values are cached for the environment's life, or refreshed every
  ``refresh_s`` in the background while the old values stay in use;
- a failure is logged once per (reference, error code), naming the ARN and AWS's error code, never
  the value; resolution is retried with a growing interval (bounded), so a permission fixed later
  takes effect without a restart;
- resolved values are secrets: they are kept only here and in the headers of export requests;
  ``secret_values()`` lets the exporter redact them from any text it produces.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

if TYPE_CHECKING:  # pragma: no cover - typing only; the client is imported when resolution starts
    from lambda_otel.aws_api import AwsJsonClient, Service
    from lambda_otel.sigv4 import CredentialsProvider

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 3.0
RETRY_FIRST_S = 2.0  # after a failed round, the next try waits this long, doubling each time...
RETRY_MAX_S = 300.0  # ...up to this
# The first export waits this long at most for a resolution already under way (typically a few
# ms from the start-up thread), so the end of the first invocation can usually ship its data.
FIRST_EXPORT_WAIT_S = 0.25

# Anything that looks like a reference: "${arn:" up to the next "}".
_REFERENCE = re.compile(r"\$\{(arn:[^}]*)\}")
_PARTITION = r"aws|aws-cn|aws-us-gov|aws-iso|aws-iso-b|aws-iso-e|aws-iso-f|aws-eusc"
_SECRET_ARN = re.compile(
    rf"^arn:(?P<partition>{_PARTITION}):secretsmanager:(?P<region>[a-z]{{2}}(-[a-z]+)+-\d+):(?P<account>\d{{12}}):"
    r"secret:(?P<name>[A-Za-z0-9/_+=.@!-]+)$"
)
_PARAMETER_ARN = re.compile(
    rf"^arn:(?P<partition>{_PARTITION}):ssm:(?P<region>[a-z]{{2}}(-[a-z]+)+-\d+):(?P<account>\d{{12}}):"
    r"parameter/(?P<name>[A-Za-z0-9/_.-]+)$"
)
_JSON_KEY = re.compile(r"^[^\s{}#]{1,256}$")


class SecretReferenceError(ValueError):
    """A malformed reference; the message names the variable and never holds a header value."""


@dataclass(frozen=True)
class SecretReference:
    """One ``${arn:...}`` as written, and what to call to resolve it."""

    text: str  # the whole "${...}", as it appears in the header value
    arn: str  # without "#jsonKey"
    service: str  # "secretsmanager" or "ssm"
    region: str
    lookup: str  # SecretId / parameter Name: the ARN itself (works across accounts too)
    json_key: Optional[str] = None

    @property
    def fetch_key(self) -> Tuple[str, str]:
        """References to one secret with different JSON keys share one call."""
        return (self.service, self.arn)


def parse_reference(text: str, variable: str) -> SecretReference:
    """``${arn:...}`` -> SecretReference, or SecretReferenceError naming ``variable`` and what is wrong."""
    inner = text[2:-1]
    arn, sep, json_key = inner.partition("#")
    if sep and not _JSON_KEY.match(json_key):
        raise SecretReferenceError(f"{variable}: the JSON key after '#' in {_shown(arn)} is empty or invalid")
    parts = arn.split(":")
    service = parts[2] if len(parts) > 2 else ""
    if service == "secretsmanager":
        m = _SECRET_ARN.match(arn)
        if m is None:
            raise SecretReferenceError(
                f"{variable}: {_shown(arn)} is not a Secrets Manager secret ARN "
                "(allowed: ${arn:aws:secretsmanager:<region>:<12-digit account>:secret:<name>[#<jsonKey>]})")
        return SecretReference(text, arn, "secretsmanager", m["region"], arn, json_key or None)
    if service == "ssm":
        m = _PARAMETER_ARN.match(arn)
        if m is None:
            raise SecretReferenceError(
                f"{variable}: {_shown(arn)} is not an SSM parameter ARN "
                "(allowed: ${arn:aws:ssm:<region>:<12-digit account>:parameter/<name>[#<jsonKey>]})")
        # GetParameter takes the ARN as Name, which also reaches a parameter shared from another account.
        return SecretReference(text, arn, "ssm", m["region"], arn, json_key or None)
    raise SecretReferenceError(
        f"{variable}: {_shown(arn)} names service {service or '(none)'!r}; "
        "references are resolved from secretsmanager or ssm only")


def find_references(value: str, variable: str) -> List[SecretReference]:
    """Every reference in one header value (raises SecretReferenceError on the first malformed one)."""
    refs = [parse_reference(m.group(0), variable) for m in _REFERENCE.finditer(value)]
    if "${arn:" in _REFERENCE.sub("", value):
        raise SecretReferenceError(f"{variable}: a reference '${{arn:...' is not closed with '}}'")
    return refs


def check_references(headers: Mapping[str, str], variable: str) -> None:
    """Validate every reference in a parsed headers variable (for config, at start)."""
    for value in headers.values():
        find_references(value, variable)


def _shown(arn: str) -> str:
    """An ARN is not a secret, but keep a mistyped one short in messages."""
    return repr(arn if len(arn) <= 200 else arn[:200] + "...")


# --- resolving -------------------------------------------------------------------------------


class ResolveError(Exception):
    """One reference could not be resolved: ``code`` is AWS's error code or ours."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail


def _value_of(ref: SecretReference, answer: Mapping) -> str:
    """The value a reference stands for, from a GetSecretValue / GetParameter answer."""
    if ref.service == "ssm":
        raw = (answer.get("Parameter") or {}).get("Value")
    else:
        raw = answer.get("SecretString")
        if raw is None and answer.get("SecretBinary") is not None:
            try:
                raw = base64.b64decode(answer["SecretBinary"]).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError, TypeError):
                raise ResolveError("SecretNotText", "the secret is binary and not UTF-8 text") from None
    if not isinstance(raw, str):
        raise ResolveError("NoValue", "the answer holds no value")
    if ref.json_key is not None:
        try:
            doc = json.loads(raw)
        except ValueError:
            raise ResolveError("SecretNotJson", f"the value is not a JSON object, so #{ref.json_key} cannot be read") from None
        if not isinstance(doc, dict) or ref.json_key not in doc:
            raise ResolveError("JsonKeyNotFound", f"the JSON object has no key {ref.json_key!r}")
        field = doc[ref.json_key]
        raw = field if isinstance(field, str) else json.dumps(field)
    if any(ord(c) < 32 or ord(c) == 127 for c in raw):
        raise ResolveError("InvalidHeaderValue", "the value contains a line break or another control character")
    return raw


class SecretResolver:
    """Fetches references with SigV4-signed calls; one client per (service, region)."""

    def __init__(self, credentials: "CredentialsProvider", env: Mapping[str, str], timeout_s: float = DEFAULT_TIMEOUT_S,
                 client_factory: "Optional[Callable[[Service, str], AwsJsonClient]]" = None) -> None:
        self._credentials = credentials
        self._env = env
        self._timeout_s = timeout_s
        self._factory = client_factory
        self._clients: "Dict[Tuple[str, str], AwsJsonClient]" = {}

    def _client(self, service_name: str, region: str) -> "AwsJsonClient":
        from lambda_otel.aws_api import SECRETS_MANAGER, SSM, AwsJsonClient

        key = (service_name, region)
        client = self._clients.get(key)
        if client is None:
            service = SSM if service_name == "ssm" else SECRETS_MANAGER
            factory = self._factory or (lambda svc, reg: AwsJsonClient(svc, reg, self._credentials, self._env))
            client = self._clients[key] = factory(service, region)
        return client

    def resolve(self, refs: Iterable[SecretReference], deadline: float) -> Tuple[Dict[str, str], Dict[str, ResolveError]]:
        """(values by reference text, errors by reference text). One call per distinct secret."""
        from lambda_otel.aws_api import AwsApiError

        answers: Dict[Tuple[str, str], object] = {}
        values: Dict[str, str] = {}
        errors: Dict[str, ResolveError] = {}
        for ref in refs:
            if ref.fetch_key not in answers:
                try:
                    if ref.service == "ssm":
                        answers[ref.fetch_key] = self._client("ssm", ref.region).call(
                            "GetParameter", {"Name": ref.lookup, "WithDecryption": True}, deadline)
                    else:
                        answers[ref.fetch_key] = self._client("secretsmanager", ref.region).call(
                            "GetSecretValue", {"SecretId": ref.lookup}, deadline)
                except AwsApiError as exc:
                    answers[ref.fetch_key] = ResolveError(exc.code, exc.message)
                except ValueError as exc:  # a bad endpoint override
                    answers[ref.fetch_key] = ResolveError("InvalidEndpoint", str(exc))
            answer = answers[ref.fetch_key]
            if isinstance(answer, ResolveError):
                errors[ref.text] = answer
                continue
            try:
                values[ref.text] = _value_of(ref, answer)  # type: ignore[arg-type]
            except ResolveError as exc:
                errors[ref.text] = exc
        return values, errors


# --- the header source ---------------------------------------------------------------------------


class SecretHeaders:
    """The exporter's ``HeaderSource``: per-signal headers with their references resolved.

    ``templates`` maps a signal to its headers as configured (values may hold references);
    ``sources`` maps a signal to the variable its headers came from (for messages). Headers
    without references are returned as they are, at once. A ``held`` signal (its headers variable
    was unusable) gets None for ever: nothing is sent without the headers it was meant to carry.
    """

    def __init__(self, templates: Mapping[str, Mapping[str, str]], sources: Mapping[str, str],
                 resolver: SecretResolver, timeout_s: float = DEFAULT_TIMEOUT_S,
                 refresh_s: Optional[float] = None, clock: Callable[[], float] = time.monotonic,
                 held: Iterable[str] = (), first_wait_s: float = FIRST_EXPORT_WAIT_S) -> None:
        self._templates = {s: dict(h) for s, h in templates.items()}
        self._held = frozenset(held)  # signals whose headers could not be parsed: never exported
        self._first_wait_s = first_wait_s
        self._sources = dict(sources)
        self._refs: Dict[str, SecretReference] = {}
        self._ref_variables: Dict[str, str] = {}
        for signal, headers in self._templates.items():
            if signal in self._held:
                continue
            for value in headers.values():
                for ref in find_references(value, self._sources.get(signal, "headers")):
                    self._refs.setdefault(ref.text, ref)
                    self._ref_variables.setdefault(ref.text, self._sources.get(signal, "headers"))
        self._resolver = resolver
        self._timeout_s = timeout_s
        self._refresh_s = refresh_s if refresh_s and refresh_s > 0 else None
        self._clock = clock
        self._lock = threading.Lock()
        self._values: Optional[Dict[str, str]] = None if self._refs else {}
        self._resolved_at = 0.0
        self._running: Optional[threading.Thread] = None
        self._next_try = 0.0
        self._retry_s = RETRY_FIRST_S
        self._logged: set = set()
        self._generation = 0  # bumped by renew_after_restore: a round started before it is discarded
        self._waited = False  # headers() has waited (bounded) for a round once; never again
        self.rounds = 0  # finished resolution rounds (for tests and the debug log)

    @property
    def has_references(self) -> bool:
        return bool(self._refs)

    # --- HeaderSource ---------------------------------------------------------------------

    def headers(self, signal: Optional[str] = None) -> Optional[Dict[str, str]]:
        """The headers to send for ``signal`` (all signals share one set when None), or None while
        a reference is unresolved (do not export; keep the data). The first call made while the
        first resolution is under way waits for it, at most ``first_wait_s``."""
        if signal in self._held:
            return None
        if signal is None:
            template = next(iter(self._templates.values()), {})
        else:
            template = self._templates.get(signal, {})
        if not self._refs:
            return dict(template)
        with self._lock:
            values = self._values
            now = self._clock()
            due = values is None and now >= self._next_try
            stale = values is not None and self._refresh_s is not None and now - self._resolved_at >= self._refresh_s
            if (due or stale) and self._running is None:
                self._start_locked()
            running = self._running if values is None and not self._waited else None
            self._waited = self._waited or running is not None
        if running is not None:
            # Once, bounded: the resolution started at start-up is usually a few ms from done.
            running.join(self._first_wait_s)
            with self._lock:
                values = self._values
        if values is None:
            return None
        return {name: _substitute(value, values) for name, value in template.items()}

    def secret_values(self) -> Tuple[str, ...]:
        """Every resolved value, for redaction: the exporter removes them from any text it writes."""
        with self._lock:
            return tuple(v for v in (self._values or {}).values() if v)

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Begin resolving now, on a daemon thread (never blocks). Idempotent: nothing happens
        without references, while a round runs, or once the values are known."""
        if not self._refs:
            return
        with self._lock:
            if self._running is None and self._values is None:
                self._start_locked()

    def wait(self, timeout: float) -> bool:
        """Wait (bounded) for the round in flight; True when every reference has a value."""
        with self._lock:
            thread = self._running
        if thread is not None:
            thread.join(max(0.0, timeout))
        with self._lock:
            return self._values is not None

    def renew_after_restore(self) -> None:
        """SnapStart: resolve again in every restored copy (the snapshot was taken without
        credentials). Values resolved before, if any, stay in use until the new round succeeds."""
        if not self._refs:
            return
        with self._lock:
            self._generation += 1
            self._running = None
            self._next_try = 0.0
            self._retry_s = RETRY_FIRST_S
            self._start_locked()

    def _start_locked(self) -> None:
        thread = threading.Thread(target=self._round, args=(self._generation,), name="secret-resolver", daemon=True)
        self._running = thread
        thread.start()

    def _round(self, generation: int) -> None:
        started = time.monotonic()
        try:
            values, errors = self._resolver.resolve(self._refs.values(), started + self._timeout_s)
        except Exception as exc:  # noqa: BLE001 - a bug here must not kill the thread silently
            values, errors = {}, {text: ResolveError(type(exc).__name__) for text in self._refs}
        with self._lock:
            if generation != self._generation:
                return  # a restore happened meanwhile; its own round decides
            self._running = None
            self.rounds += 1
            if not errors and len(values) == len(self._refs):
                first = self._values is None
                self._values = values
                self._resolved_at = self._clock()
                self._retry_s = RETRY_FIRST_S
                self._logged.clear()
                if first:
                    log.info("resolved %d secret header reference(s) in %.0f ms", len(values),
                             (time.monotonic() - started) * 1000)
                return
            self._next_try = self._clock() + self._retry_s
            retry_in = self._retry_s
            self._retry_s = min(RETRY_MAX_S, self._retry_s * 2)
            keeping = self._values is not None
            to_log = [(text, err) for text, err in errors.items() if (text, err.code) not in self._logged]
            self._logged.update((text, err.code) for text, err in to_log)
        for text, err in to_log:
            ref = self._refs[text]
            log.error(
                "cannot resolve %s in %s: %s%s; %s; retrying in %.0f s",
                ref.arn + (f"#{ref.json_key}" if ref.json_key else ""),
                self._ref_variables.get(text, "headers"),
                err.code,
                f" ({err.detail})" if err.detail else "",
                "keeping the previous value" if keeping else "nothing is exported until it resolves",
                retry_in,
            )


def _substitute(value: str, values: Mapping[str, str]) -> str:
    return _REFERENCE.sub(lambda m: values.get(m.group(0), m.group(0)), value)
