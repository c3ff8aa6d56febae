"""urllib3's connection pools behind ``httpx.BaseTransport``: the library the hand
transport (``worker/providers/transport.py``) was measured against, kept here only so
that ``bench/transport.py`` can repeat the measurement. Production does not use it.

Written to be the fair, lean use of urllib3: one pool per host built once and called
with the request's path (no URL parsing or pool-key lookup per call), a ``Retry``
built once, ``retries=False`` (never a resend), no redirects, and the same semantics as
the hand transport (idle expiry, 1xx skipped, httpx's exceptions). An egress proxy
would be a ``urllib3.ProxyManager`` per proxy URL, chosen once per host: no per-call
cost, so the measurement leaves it out.
"""

from __future__ import annotations

import ssl
import time
from typing import TYPE_CHECKING, Any

import certifi
import httpx
import urllib3
from urllib3 import exceptions
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from worker.providers.transport import KEEPALIVE_EXPIRY, MAX_IDLE_PER_HOST, route
from worker.providers.transport import _Response as FinalResponse

if TYPE_CHECKING:
    from urllib3._base_connection import BaseHTTPConnection

_Route = tuple[str, str, int]


class _KeptConnection(HTTPConnection):
    response_class = FinalResponse  # 1xx skipped, as in the hand transport
    #: When it went back to the pool (time.monotonic()).
    idle_since = 0.0


class _KeptTlsConnection(HTTPSConnection, _KeptConnection):
    pass


class _ExpiringPool(HTTPConnectionPool):
    """urllib3's pool, plus an idle limit on the connections it hands out again."""

    ConnectionCls = _KeptConnection

    def _get_conn(self, timeout: float | None = None) -> BaseHTTPConnection:
        conn = super()._get_conn(timeout)
        if (isinstance(conn, _KeptConnection) and conn.sock is not None
                and time.monotonic() - conn.idle_since > KEEPALIVE_EXPIRY):
            conn.close()  # reconnects on the next request, as after a dropped one
        return conn

    def _put_conn(self, conn: BaseHTTPConnection | None) -> None:
        if isinstance(conn, _KeptConnection):
            conn.idle_since = time.monotonic()
        super()._put_conn(conn)


class _ExpiringTlsPool(_ExpiringPool, HTTPSConnectionPool):
    ConnectionCls = _KeptTlsConnection


_POOLS = {"http": _ExpiringPool, "https": _ExpiringTlsPool}
#: Built once: urllib3 would build one per call from ``retries=False``. No retry, no
#: redirect: our pipeline retries, after reading the status when an answer was lost.
_NO_RETRIES = urllib3.Retry(total=False, redirect=False)
_POOL_SIZE: dict[str, Any] = {"maxsize": MAX_IDLE_PER_HOST, "block": False,
                              "retries": _NO_RETRIES}


class Urllib3Transport(httpx.BaseTransport):
    """``httpx.BaseTransport`` over urllib3; safe to share between threads."""

    def __init__(self) -> None:
        self._tls = ssl.create_default_context(cafile=certifi.where())
        self._routes: dict[_Route, HTTPConnectionPool] = {}
        self._timeouts: dict[tuple[float | None, float | None], urllib3.Timeout] = {}

    def _pool(self, route: _Route) -> HTTPConnectionPool:
        pool = self._routes.get(route)
        if pool is None:
            scheme, host, port = route
            pool = self._routes[route] = (
                _ExpiringTlsPool(host, port, ssl_context=self._tls, **_POOL_SIZE)
                if scheme == "https" else _ExpiringPool(host, port, **_POOL_SIZE))
        return pool

    def _timeout(self, request: httpx.Request) -> urllib3.Timeout:
        given = request.extensions.get("timeout", {})
        key = (given.get("connect"), given.get("read"))
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = self._timeouts[key] = urllib3.Timeout(connect=key[0], read=key[1])
        return timeout

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        # Headers exactly as httpx built them (Host, Content-Length, order, case).
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers.raw}
        try:
            answer = self._pool(route(request)).urlopen(
                request.method, url.raw_path.decode("ascii"),
                body=request.read() or None, headers=headers, retries=_NO_RETRIES,
                redirect=False, timeout=self._timeout(request),
                # httpx decodes gzip and friends when the body is read, as with its own pool.
                preload_content=True, decode_content=False)
        except (exceptions.HTTPError, ValueError) as exc:
            raise _translate(exc, request) from exc
        # Raw bytes, as httpx keeps them: a non-ASCII header must not fail a call the
        # provider has already carried out.
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers.iteritems()]
        return httpx.Response(answer.status, headers=raw, stream=httpx.ByteStream(answer.data),
                              extensions={"http_version": b"HTTP/1.1"})

    def close(self) -> None:
        routes, self._routes = list(self._routes.values()), {}
        for pool in routes:
            pool.close()


def _translate(exc: Exception, request: httpx.Request) -> httpx.TransportError:
    """The httpx exception for urllib3's ``exc``, so that callers classify one family and
    can tell "never sent" from "the connection was up: it may have landed"
    (``worker.providers.base.ProviderAdapter.send``)."""
    kind: type[httpx.TransportError]
    if isinstance(exc, ValueError):
        kind = httpx.LocalProtocolError  # a bad URL, a header value with a newline in it
    elif isinstance(exc, (exceptions.NewConnectionError, exceptions.ProxyError)):
        kind = httpx.ConnectError  # before ConnectTimeoutError, its base class
    elif isinstance(exc, exceptions.ConnectTimeoutError):
        kind = httpx.ConnectTimeout
    elif isinstance(exc, exceptions.ReadTimeoutError):
        kind = httpx.ReadTimeout
    elif isinstance(exc, exceptions.SSLError) and _untrusted(exc):
        return httpx.ConnectError(f"TLS certificate not trusted: {exc}", request=request)
    else:
        kind = httpx.ReadError  # the connection was up: the request may have gone out
    return kind(f"{type(exc).__name__}: {exc}", request=request)


def _untrusted(exc: exceptions.SSLError) -> bool:
    """Refused during the handshake, before anything was sent: the certificate's chain or
    name did not verify (``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` name the trusted CAs)."""
    cause = exc.args[0] if exc.args else None
    return isinstance(cause, (ssl.SSLCertVerificationError, ssl.CertificateError,
                              urllib3.util.ssl_match_hostname.CertificateError))
