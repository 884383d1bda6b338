"""The HTTP client under the exporter: ``requests``, bounded as a whole and cheap per call.

Two things ``requests`` does not give us, and one it costs too much for:

- **A deadline for the whole request.** Its timeout applies to each socket operation, so a
  backend that drips its answer a byte at a time keeps a request open for ever, across a freeze.
  ``Watchdog`` (one daemon thread per exporter) shuts the request's socket down at the request's
  deadline, which ends any read or write in progress at once.
- **Bounded DNS.** ``getaddrinfo`` has no timeout. ``Resolver`` runs it on a helper thread and
  waits at most the connect timeout (at most one lookup in flight per host; results cached for
  ``DNS_CACHE_S``, forgotten when a connection to them fails).
- **Cheap calls.** One ``requests.Session`` per endpoint origin, with ``trust_env`` off; each
  request is a ``PreparedRequest`` built by hand (URL prepared once per URL) and sent straight
  through the session's adapter: no per-call environment merging, proxy lookup (done once per
  URL), cookie jar, hooks or redirect handling.

The connection classes hook into urllib3 (``_new_conn`` and ``request``), the one place where a
socket of ours can be reached; anything unexpected there fails the attempt, never the process.
``requests`` and urllib3 are imported on first use.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit

from lambda_otel.config import is_local_address

if TYPE_CHECKING:  # pragma: no cover
    import requests

DNS_CACHE_S = 30.0
DNS_MAX_WAIT_S = 10.0  # a lookup is never waited on longer than this, even without a timeout given
MAX_RESPONSE_BYTES = 1024 * 1024  # an OTLP response is a few bytes; an error page is cut here

AddrInfo = Tuple[int, int, int, str, Any]


class DeadlineExceeded(TimeoutError):
    """The request was still open at its deadline and was cut (by closing its socket)."""


class Resolver:
    """``getaddrinfo`` with a timeout and a short cache. Thread-safe."""

    def __init__(self, cache_s: float = DNS_CACHE_S, clock=time.monotonic) -> None:
        self._cache_s = cache_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: Dict[Tuple[str, int], Tuple[float, List[AddrInfo]]] = {}
        self._pending: Dict[Tuple[str, int], "_Lookup"] = {}

    def resolve(self, host: str, port: int, timeout: Optional[float]) -> List[AddrInfo]:
        """Addresses for ``host``; raises ``socket.gaierror`` or ``DeadlineExceeded`` (too slow)."""
        try:  # an address literal needs no lookup
            return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
        except (socket.gaierror, UnicodeError):
            pass
        key = (host, port)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and self._clock() < cached[0]:
                return cached[1]
            lookup = self._pending.get(key)
            if lookup is None:  # at most one thread per host, however slow its DNS
                lookup = self._pending[key] = _Lookup(host, port, self._done)
                lookup.start()
        if timeout is None:
            timeout = DNS_MAX_WAIT_S
        if not lookup.finished.wait(timeout):
            raise DeadlineExceeded(f"DNS resolution of {host} took longer than {timeout:.3g}s")
        if lookup.error is not None:
            raise lookup.error
        return lookup.result

    def forget(self, host: Optional[str] = None) -> None:
        """Drop cached addresses (of one host, or all): the next connection asks DNS again."""
        with self._lock:
            for key in [k for k in self._cache if host is None or k[0] == host]:
                del self._cache[key]

    def _done(self, lookup: "_Lookup") -> None:
        with self._lock:
            self._pending.pop((lookup.host, lookup.port), None)
            if lookup.error is None:
                self._cache[(lookup.host, lookup.port)] = (self._clock() + self._cache_s, lookup.result)


class _Lookup(threading.Thread):
    def __init__(self, host: str, port: int, on_done) -> None:
        super().__init__(name="lambda-otel-dns", daemon=True)
        self.host, self.port = host, port
        self.finished = threading.Event()
        self.result: List[AddrInfo] = []
        self.error: Optional[BaseException] = None
        self._on_done = on_done

    def run(self) -> None:
        try:
            self.result = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_STREAM)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
            self.error = exc if isinstance(exc, OSError) else socket.gaierror(str(exc))
        finally:
            self._on_done(self)
            self.finished.set()


class _Watch:
    """One attempt under the watchdog: its deadline, the socket it uses, whether it was cut."""

    __slots__ = ("deadline", "sock", "fired", "opened")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.sock: Optional[socket.socket] = None
        self.fired = False
        self.opened = False  # whether the attempt opened a new connection


class Watchdog:
    """Cuts the socket of any request still open at its deadline.

    A transport ``arm``s it before an attempt and ``disarm``s it after reading the answer; its
    connection hooks ``attach`` each socket the attempt uses. Shared by the transports of one
    exporter (the signals' attempts of one flush run at once, from their threads): one thread,
    started on first use, sleeping toward the soonest deadline of the attempts armed. It is woken
    only when a deadline comes sooner than the time it already sleeps to (usually the first
    attempt of a flush): ``disarm`` and the other attempts of a flush, whose deadlines are no
    sooner, cost it no wake-up, so it does not compete with the senders while a flush runs.
    Waking at a deadline that no longer applies, it sleeps again.
    """

    IDLE_WAIT_S = 60.0  # with nothing armed, it re-checks this often (a bound; nothing is due)

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._watches: List[_Watch] = []
        self._thread: Optional[threading.Thread] = None
        self._wakes_at: Optional[float] = None  # when the thread's current wait ends (None: idle)
        self._generation = 0  # the running thread's number; a thread whose number is old ends

    def arm(self, deadline: float) -> _Watch:
        watch = _Watch(deadline)
        with self._cond:
            self._watches.append(watch)
            if self._thread is None:
                self._generation += 1
                self._wakes_at = None
                self._thread = threading.Thread(target=self._run, args=(self._generation,),
                                                name="lambda-otel-export-watchdog", daemon=True)
                self._thread.start()
            elif self._wakes_at is None or self._wakes_at > deadline:
                self._cond.notify()
        return watch

    def stop(self) -> None:
        """End the thread (a later ``arm`` starts a new one)."""
        with self._cond:
            self._generation += 1
            self._thread = None
            self._cond.notify_all()

    def attach(self, watch: _Watch, sock: socket.socket, new: bool = False) -> None:
        """The attempt now uses ``sock`` (``new``: a connection opened for it, not a pooled one)."""
        with self._cond:
            if new:
                watch.opened = True
            if watch.fired:
                _cut(sock)
            else:
                watch.sock = sock

    def disarm(self, watch: _Watch) -> bool:
        """End the attempt's watch; True if the deadline cut it."""
        with self._cond:
            if watch in self._watches:
                self._watches.remove(watch)
            watch.sock = None
            return watch.fired

    def _run(self, generation: int) -> None:
        with self._cond:
            while generation == self._generation:
                now = self._clock()
                soonest: Optional[float] = None
                for watch in self._watches:
                    if watch.fired:
                        continue
                    if watch.deadline <= now:
                        watch.fired = True
                        if watch.sock is not None:
                            _cut(watch.sock)
                    elif soonest is None or watch.deadline < soonest:
                        soonest = watch.deadline
                self._wakes_at = soonest
                self._cond.wait(self.IDLE_WAIT_S if soonest is None else soonest - now)


def _cut(sock: socket.socket) -> None:
    """Shut a socket down (both ways) so a read or write blocked on it returns now.

    ``socket.socket.shutdown`` directly: for a TLS socket it acts on the descriptor without
    touching the TLS object the other thread is using. The owner still closes it.
    """
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, ValueError, TypeError):
        pass


class OwnReceiverAddress(Exception):
    """A connection would reach our own OTLP receiver: everything sent there would come back to us.

    Not an ``OSError``, so urllib3 and requests hand it on as it is (no retry, no wrapping)."""


class Transport:
    """POSTs through one ``requests.Session`` per endpoint origin; see the module docstring.

    Used from one thread at a time; ``close()`` may come from another. Transports may share a
    ``Resolver`` and a ``Watchdog`` (both thread-safe); ``close()`` stops the watchdog only if the
    transport made its own. ``own_receiver_port``: no connection is made to a loopback (or
    unspecified) address on that port; the connection raises ``OwnReceiverAddress`` instead. It is
    judged on the addresses the connection itself resolved (a hosts-file alias of 127.0.0.1 only
    shows there), so the check costs no lookup of its own.
    """

    def __init__(self, verify: Any, resolver: Optional[Resolver] = None, watchdog: Optional[Watchdog] = None,
                 own_receiver_port: Optional[int] = None) -> None:
        self.verify = verify
        self.own_receiver_port = own_receiver_port
        self.resolver = resolver or Resolver()
        self._own_watchdog = watchdog is None
        self.watchdog = watchdog or Watchdog()
        self._watch: Optional[_Watch] = None  # the current (or last) attempt's
        self._lock = threading.Lock()
        self._sessions: Dict[str, "requests.Session"] = {}
        self._urls: Dict[str, Tuple[str, Dict[str, str]]] = {}  # url -> (prepared url, proxies)
        self._adapter_cls = None

    def warm_up(self) -> None:
        """Import requests and urllib3 and build the adapter class, so the first export does not."""
        if self._adapter_cls is None:
            self._adapter_cls = _adapter_class(self)

    @property
    def last_reused(self) -> bool:
        """Whether the last ``post`` went out on a pooled connection (opened none of its own)."""
        return self._watch is not None and not self._watch.opened

    def attach(self, sock: socket.socket, new: bool = False) -> None:
        """The connection hooks: the current attempt now uses ``sock``."""
        watch = self._watch
        if watch is not None:
            self.watchdog.attach(watch, sock, new)

    def resolve(self, url: str, timeout: float) -> bool:
        """Look the URL's host up now (cached for the first connection); False if that failed."""
        parts = urlsplit(url)
        try:
            self.resolver.resolve(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80), timeout)
        except (OSError, ValueError):
            return False
        return True

    def post(self, url: str, headers: Mapping[str, str], body: bytes, timeout: float,
             deadline: float) -> Tuple[int, Mapping[str, str], bytes]:
        """(status, headers, body up to MAX_RESPONSE_BYTES); raises requests' exceptions, or
        ``DeadlineExceeded`` when the deadline cut the request."""
        import requests

        session, prepared_url, proxies = self._session_for(url)
        request = requests.PreparedRequest()
        request.method = "POST"
        request.url = prepared_url
        request.headers = dict(headers)
        request.headers["Content-Length"] = str(len(body))
        request.body = body
        adapter = session.get_adapter(prepared_url)
        watch = self._watch = self.watchdog.arm(deadline)
        try:
            response = adapter.send(request, stream=True, timeout=timeout, verify=self.verify, cert=None,
                                    proxies=proxies)
            try:
                content = _read_limited(response)
            finally:
                response.close()  # back to the pool if fully read, else the connection is dropped
        except Exception as exc:
            if self.watchdog.disarm(watch):
                raise DeadlineExceeded("request cut at its deadline") from exc
            raise
        if self.watchdog.disarm(watch) and not _framed(response):
            # Cut after the status line came: http.client takes the EOF for the end of the head and
            # of a body without a length, so a 200 may look complete when it was not. A framed answer
            # (Content-Length or chunked) read without error is whole, even if the watchdog fired
            # just after it: calling it a timeout would send delivered data twice.
            raise DeadlineExceeded("request cut at its deadline")
        return response.status_code, response.headers, content

    def drop_connections(self, url: Optional[str] = None) -> None:
        """Close pooled connections (of one endpoint, or all); sessions stay usable."""
        with self._lock:
            sessions = [s for o, s in self._sessions.items() if url is None or o == _origin(url)]
        for session in sessions:
            session.close()

    def close(self) -> None:
        """Close every pooled connection, forget DNS answers, end the watchdog's thread. Usable again."""
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            session.close()
        self.resolver.forget()
        if self._own_watchdog:
            self.watchdog.stop()

    # -- internals ------------------------------------------------------------------------------

    def _session_for(self, url: str):
        with self._lock:
            known = self._urls.get(url)
            origin = _origin(url)
            session = self._sessions.get(origin)
        if known is None:
            import requests
            from requests.utils import get_environ_proxies

            prepared = requests.PreparedRequest()
            prepared.prepare_url(url, None)
            # HTTPS_PROXY/HTTP_PROXY/NO_PROXY, looked up once per URL rather than per call.
            known = (prepared.url, get_environ_proxies(url))
            with self._lock:
                self._urls[url] = known
        if session is None:
            import requests

            session = requests.Session()
            session.trust_env = False  # no ~/.netrc, no REQUESTS_CA_BUNDLE surprises: only our config
            adapter = self._adapter()
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            with self._lock:
                session = self._sessions.setdefault(origin, session)
        return session, known[0], known[1]

    def _adapter(self):
        if self._adapter_cls is None:
            self._adapter_cls = _adapter_class(self)
        return self._adapter_cls()


def _adapter_class(transport: Transport):
    """An ``HTTPAdapter`` whose urllib3 connections resolve through ``transport.resolver`` and
    hand their sockets to the transport's current attempt (``transport.attach``)."""
    import requests.adapters
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
    from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

    class _Bounded:
        def _new_conn(self):  # replaces urllib3's create_connection(): same errors, bounded DNS
            timeout = self.timeout if isinstance(self.timeout, (int, float)) else None
            host = self._dns_host
            try:
                infos = transport.resolver.resolve(host, self.port, timeout)
            except socket.gaierror as exc:
                raise NameResolutionError(self.host, self, exc) from exc
            except DeadlineExceeded as exc:
                raise ConnectTimeoutError(self, str(exc)) from exc
            own = transport.own_receiver_port
            if own is not None and self.port == own:
                for *_, address in infos:
                    if is_local_address(str(address[0])):
                        raise OwnReceiverAddress(f"{host} resolves to {address[0]}, this machine, where lambda-otel's "
                                                 f"own OTLP receiver listens on port {own}")
            error: Optional[OSError] = None
            for family, socktype, proto, _, address in infos:
                sock = None
                try:
                    sock = socket.socket(family, socktype, proto)
                    transport.attach(sock, new=True)
                    for option in self.socket_options or ():
                        sock.setsockopt(*option)
                    if timeout is not None:
                        sock.settimeout(timeout)
                    if self.source_address:
                        sock.bind(self.source_address)
                    sock.connect(address)
                    return sock
                except socket.timeout as exc:
                    if sock is not None:
                        sock.close()
                    raise ConnectTimeoutError(
                        self, f"Connection to {self.host} timed out. (connect timeout={timeout})") from exc
                except OSError as exc:
                    error = exc
                    if sock is not None:
                        sock.close()
            transport.resolver.forget(host)
            raise NewConnectionError(self, f"Failed to establish a new connection: {error}") from error

        def request(self, method, url, body=None, headers=None, **kwargs):
            if self.sock is not None:  # a reused connection, or TLS just set up: watch this socket
                transport.attach(self.sock)
            # urllib3 sends the head and then the body, two sends (two segments for the peer to
            # wake for); ours go out as one. ``send`` keeps the head until the body comes.
            self._head = None
            self._join_head = isinstance(body, bytes) and len(body) > 0
            try:
                return super().request(method, url, body=body, headers=headers, **kwargs)
            finally:
                self._join_head, self._head = False, None  # a head kept without its body is never sent

        def send(self, data):
            if getattr(self, "_join_head", False) and isinstance(data, bytes):
                if self._head is None:
                    self._head = data  # the request head (http.client's endheaders): the body follows
                    return
                data, self._head, self._join_head = self._head + data, None, False
            super().send(data)

    http_connection = type("BoundedHTTPConnection", (_Bounded, HTTPConnection), {})
    https_connection = type("BoundedHTTPSConnection", (_Bounded, HTTPSConnection), {})
    pools = {
        "http": type("BoundedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http_connection}),
        "https": type("BoundedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https_connection}),
    }

    class BoundedAdapter(requests.adapters.HTTPAdapter):
        def build_response(self, req, resp):
            # What the base class does, minus the cookie jar (cookielib: the costliest step of a
            # call, and an OTLP backend's cookies mean nothing to us) and the charset guess.
            response = requests.Response()
            response.status_code = resp.status
            response.headers = resp.headers  # urllib3's HTTPHeaderDict: case-insensitive too
            response.raw = resp
            response.reason = resp.reason
            response.url = req.url
            response.request = req
            response.connection = self
            return response

        def init_poolmanager(self, *args, **kwargs):
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools
            self._pools = {}

        def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
            # The pool for an URL is looked up once (proxy choice, key normalisation, the pool
            # manager's lock), not on every call; a pool closed meanwhile is looked up again.
            key = (request.url, verify if isinstance(verify, (bool, str)) else id(verify), cert,
                   tuple(sorted(proxies.items())) if proxies else ())
            cache = getattr(self, "_pools", None)
            pool = cache.get(key) if cache is not None else None
            if pool is None or pool.pool is None:
                pool = super().get_connection_with_tls_context(request, verify, proxies=proxies, cert=cert)
                if cache is not None:
                    if len(cache) > 64:
                        cache.clear()
                    cache[key] = pool
            return pool

        def close(self):
            if getattr(self, "_pools", None) is not None:
                self._pools.clear()
            super().close()

        def proxy_manager_for(self, proxy, **proxy_kwargs):
            manager = super().proxy_manager_for(proxy, **proxy_kwargs)
            manager.pool_classes_by_scheme = pools
            return manager

    return BoundedAdapter


def _framed(response: "requests.Response") -> bool:
    """Whether the answer says where it ends (Content-Length or chunked): then urllib3 raises on a
    cut body, and one read without error is the whole answer."""
    raw = response.raw
    return bool(getattr(raw, "chunked", False)) or getattr(raw, "length_remaining", None) is not None


def _read_limited(response: "requests.Response") -> bytes:
    """The body, at most MAX_RESPONSE_BYTES (the rest is not read: the connection is then dropped)."""
    return response.raw.read(MAX_RESPONSE_BYTES, decode_content=True) or b""


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}".lower()
