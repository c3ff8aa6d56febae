"""A lean HTTP/1.1 transport: ``http.client`` connections kept alive in a stack per host.

Why not httpx's own: its connection pool (httpcore + h11) costs about 0.3 ms of CPU per
call and scans every pooled connection on each request, so the cost grows with the
number of calls in flight - exactly what a worker hiding provider latency has many of.
Why not urllib3's: measured under the adapters it costs 1.2-1.4 times the CPU per call
of this one, 1.5-1.6 times inside the transport (``bench/transport.py``,
docs/performance.md).
``http.client`` is in the standard library. It implements ``httpx.BaseTransport``, so
adapters build ``httpx.Request`` objects and read ``httpx.Response`` objects
(``ProviderAdapter.send``), and tests hand them an ``httpx.MockTransport`` instead.

A request is never sent twice: there are no retries, and a kept-alive connection is
checked before reuse (a readable idle socket means the server closed it or spoke out of
turn) and dropped after ``KEEPALIVE_EXPIRY`` seconds idle, as httpx does. Failures
arrive as httpx's exceptions, split by how far the request got: ``ConnectError`` /
``ConnectTimeout`` (never sent), ``WriteError`` (not sent whole), ``ReadError`` /
``ReadTimeout`` / ``RemoteProtocolError`` (sent: it may have landed).

Through an egress proxy (``HTTPS_PROXY`` and friends, read once when the transport is
built: ``worker.providers.egress``), https goes through a ``CONNECT`` tunnel
(``http.client``'s own) and http is forwarded (the request line names the full URL).
TLS is verified against ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` when set, else certifi's
bundle. Not supported: HTTP/2, a proxy spoken to over TLS (``https://``), schemes other
than http and https.

Examples:
    >>> transport = PooledTransport()
    >>> transport.handle_request(httpx.Request("GET", "http://127.0.0.1:9/"))  # doctest: +SKIP
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
import time
from collections import defaultdict

import httpx

from worker.providers.egress import Egress, Proxy, tls_context

#: Idle connections kept per host; more than the worker's threads is never needed.
MAX_IDLE_PER_HOST = 256
#: Seconds a connection may sit idle before it is closed rather than reused (httpx's
#: default): a NAT or firewall may have forgotten an older one without a word.
KEEPALIVE_EXPIRY = 5.0
_Key = tuple[str, str, int]
_Idle = tuple[http.client.HTTPConnection, float]  # the connection, when it went idle


class _Response(http.client.HTTPResponse):
    """Skips interim answers (1xx such as ``103 Early Hints``) to reach the final one;
    ``http.client`` itself skips only ``100 Continue``."""

    def _read_status(self) -> tuple[str, int, str]:
        while True:
            # Private in typeshed, present in every CPython 3.x http.client.
            version, status, reason = super()._read_status()  # type: ignore[misc]
            if not 102 <= status < 200:
                return version, status, reason
            http.client.parse_headers(self.fp)  # the interim answer's headers


def _closed_by_peer(conn: http.client.HTTPConnection) -> bool:
    """An idle connection whose socket is readable was closed (or spoken to) by the
    server: reusing it would fail after sending, so it is dropped instead. ``poll``, not
    ``select``: the latter refuses descriptors past 1023."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


def route(request: httpx.Request) -> _Key:
    """Scheme, host and port a request goes to (``UnsupportedProtocol`` but for http(s)).

    Examples:
        >>> route(httpx.Request("POST", "https://api.txcloud.io/v1/x"))
        ('https', 'api.txcloud.io', 443)
    """
    url = request.url
    if url.scheme not in ("http", "https"):
        raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}",
                                        request=request)
    return url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80)


class UntrustedCertificate(httpx.ConnectError):
    """The provider's TLS certificate did not verify: nothing was sent."""


class PooledTransport(httpx.BaseTransport):
    """``httpx.BaseTransport`` over ``http.client``; safe to share between threads. Reads
    the proxy and CA variables from the environment when built (ValueError naming the
    variable for a proxy URL it cannot use)."""

    def __init__(self) -> None:
        self._idle: defaultdict[_Key, list[_Idle]] = defaultdict(list)
        self._lock = threading.Lock()
        self._tls = tls_context()
        self._egress = Egress()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        key = route(request)
        timeout = request.extensions.get("timeout", {})
        proxy = self._egress.proxy_for(key)
        conn = self._checkout(key, proxy, timeout.get("connect"))
        # Forwarded by a proxy (plain http), the request line names the full URL.
        target = url.raw_path.decode("ascii")
        forwarded = proxy is not None and url.scheme == "http"
        if forwarded:
            target = f"http://{key[1]}:{key[2]}{target}"
        stage = "connect" if conn.sock is None else "write"
        try:
            if stage == "connect":
                conn.connect()
                stage = "write"
            conn.sock.settimeout(timeout.get("read"))
            # Headers exactly as httpx built them (Host, Content-Length, order, case).
            conn.putrequest(request.method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in request.headers.raw:
                conn.putheader(name.decode("latin-1"), value)
            if forwarded and proxy is not None:
                for proxy_header in proxy.headers.items():
                    conn.putheader(*proxy_header)
            conn.endheaders(request.read() or None)
            stage = "read"
            answer = conn.getresponse()
            content = answer.read()
            # Raw bytes, as httpx keeps them: a non-ASCII header must not fail a call
            # the provider has already carried out.
            headers = [(k.encode("latin-1"), v.encode("latin-1"))
                       for k, v in answer.getheaders()]
        except BaseException as exc:
            conn.close()
            translated = _translate(exc, request, stage)
            if translated is exc:
                raise
            raise translated from exc
        if answer.will_close:
            conn.close()
        else:
            self._checkin(key, conn)
        return httpx.Response(answer.status, headers=headers,
                              stream=httpx.ByteStream(content),
                              extensions={"http_version": b"HTTP/1.1"})

    def _checkout(self, key: _Key, proxy: Proxy | None, connect_timeout: float | None
                  ) -> http.client.HTTPConnection:
        now = time.monotonic()
        with self._lock:
            idle = self._idle[key]
            while idle:
                conn, since = idle.pop()
                if now - since <= KEEPALIVE_EXPIRY and not _closed_by_peer(conn):
                    return conn
                conn.close()
        scheme, host, port = key
        # Through a proxy the socket goes to the proxy: for https, a CONNECT tunnel to
        # the provider first (http.client's own), then TLS with the provider's name.
        peer, peer_port = (proxy.host, proxy.port) if proxy else (host, port)
        conn = (http.client.HTTPSConnection(peer, peer_port, timeout=connect_timeout,
                                            context=self._tls)
                if scheme == "https" else
                http.client.HTTPConnection(peer, peer_port, timeout=connect_timeout))
        if proxy and scheme == "https":
            conn.set_tunnel(host, port, headers=proxy.headers)
        conn.response_class = _Response
        return conn

    def _checkin(self, key: _Key, conn: http.client.HTTPConnection) -> None:
        now = time.monotonic()
        stale: list[http.client.HTTPConnection] = []
        with self._lock:
            idle = self._idle[key]
            # The stack's bottom is its oldest: expire from there.
            while idle and now - idle[0][1] > KEEPALIVE_EXPIRY:
                stale.append(idle.pop(0)[0])
            if len(idle) < MAX_IDLE_PER_HOST:
                idle.append((conn, now))
            else:
                stale.append(conn)
        for old in stale:
            old.close()

    def close(self) -> None:
        with self._lock:
            pools, self._idle = list(self._idle.values()), defaultdict(list)
        for idle in pools:
            for conn, _ in idle:
                conn.close()


def _translate(exc: BaseException, request: httpx.Request, stage: str) -> BaseException:
    """The httpx exception for ``exc``, by how far the request got (``connect``, ``write``
    or ``read``), so that callers classify one family and can tell "never sent" from
    "sent, answer lost" (``worker.providers.base.ProviderAdapter.send``)."""
    kind: type[httpx.TransportError]
    if isinstance(exc, ssl.SSLCertVerificationError):
        return UntrustedCertificate(f"TLS certificate not trusted ({exc.verify_message});"
                                    " SSL_CERT_FILE names the CAs to trust", request=request)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        kind = {"connect": httpx.ConnectTimeout, "write": httpx.WriteTimeout}.get(
            stage, httpx.ReadTimeout)
    elif isinstance(exc, http.client.HTTPException):
        kind = httpx.RemoteProtocolError if stage == "read" else httpx.LocalProtocolError
    elif isinstance(exc, OSError):
        kind = {"connect": httpx.ConnectError, "write": httpx.WriteError}.get(
            stage, httpx.ReadError)
    elif isinstance(exc, ValueError) and stage != "read":
        kind = httpx.LocalProtocolError  # e.g. a header value with a newline in it
    else:
        return exc
    return kind(f"{type(exc).__name__}: {exc}", request=request)
