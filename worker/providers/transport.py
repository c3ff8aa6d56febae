"""A lean HTTP/1.1 transport under ``httpx.Client``: ``http.client`` connections kept
alive in a stack per host.

Why not httpx's own: its connection pool (httpcore + h11) costs about 0.3 ms of CPU per
call and scans every pooled connection on each request, so the cost grows with the
number of calls in flight - exactly what a worker hiding provider latency has many of.
``http.client`` is in the standard library and parses a response in C-backed code.
Adapters still talk to ``httpx.Client`` (and tests still hand them an
``httpx.MockTransport``); only the bytes on the wire go through here.

What it does not do: HTTP/2, proxies (``HTTPS_PROXY``), retries. A request is never
sent twice: a kept-alive connection the server has closed is noticed *before* reuse
(its socket is readable), as httpcore does, and discarded.

Examples:
    >>> client = httpx.Client(transport=PooledTransport())
    >>> client.get("http://127.0.0.1:9/")              # doctest: +SKIP
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
from collections import defaultdict

import certifi
import httpx

#: Idle connections kept per host; more than the worker's threads is never needed.
MAX_IDLE_PER_HOST = 256
_Key = tuple[str, str, int]


def _closed_by_peer(conn: http.client.HTTPConnection) -> bool:
    """An idle connection whose socket is readable was closed (or spoken to) by the
    server: reusing it would fail after sending, so it is dropped instead."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class PooledTransport(httpx.BaseTransport):
    """``httpx.BaseTransport`` over ``http.client``; safe to share between threads.

    Parameters:
        verify: check TLS certificates (certifi's bundle, as httpx does).
    """

    def __init__(self, verify: bool = True) -> None:
        self._idle: defaultdict[_Key, list[http.client.HTTPConnection]] = defaultdict(list)
        self._lock = threading.Lock()
        self._tls = ssl.create_default_context(cafile=certifi.where())
        if not verify:
            self._tls.check_hostname = False
            self._tls.verify_mode = ssl.CERT_NONE

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        key: _Key = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        timeout = request.extensions.get("timeout", {})
        conn = self._checkout(key, timeout.get("connect"))
        connected = conn.sock is not None
        try:
            if not connected:
                conn.connect()
                connected = True
            conn.sock.settimeout(timeout.get("read"))
            # Headers exactly as httpx built them (Host, Content-Length, order, case).
            conn.putrequest(request.method, url.raw_path.decode("ascii"), skip_host=True,
                            skip_accept_encoding=True)
            for name, value in request.headers.raw:
                conn.putheader(name.decode("latin-1"), value)
            conn.endheaders(request.read() or None)
            answer = conn.getresponse()
            content = answer.read()
        except BaseException as exc:
            conn.close()
            translated = _translate(exc, request, connected=connected)
            if translated is exc:
                raise
            raise translated from exc
        if answer.will_close:
            conn.close()
        else:
            self._checkin(key, conn)
        return httpx.Response(answer.status, headers=answer.getheaders(),
                              stream=httpx.ByteStream(content),
                              extensions={"http_version": b"HTTP/1.1"})

    def _checkout(self, key: _Key, connect_timeout: float | None
                  ) -> http.client.HTTPConnection:
        with self._lock:
            idle = self._idle[key]
            while idle:
                conn = idle.pop()
                if not _closed_by_peer(conn):
                    return conn
                conn.close()
        scheme, host, port = key
        if scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=connect_timeout,
                                               context=self._tls)
        return http.client.HTTPConnection(host, port, timeout=connect_timeout)

    def _checkin(self, key: _Key, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle[key]
            if len(idle) < MAX_IDLE_PER_HOST:
                idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            pools, self._idle = list(self._idle.values()), defaultdict(list)
        for idle in pools:
            for conn in idle:
                conn.close()


def _translate(exc: BaseException, request: httpx.Request, *, connected: bool
               ) -> BaseException:
    """The httpx exception httpx's own transport raises for the same failure, so callers
    classify one family (``worker.providers.base.ProviderAdapter.send``)."""
    if isinstance(exc, (socket.timeout, TimeoutError)):
        kind: type[httpx.TransportError] = httpx.ReadTimeout if connected else httpx.ConnectTimeout
    elif isinstance(exc, http.client.HTTPException):
        kind = httpx.RemoteProtocolError
    elif isinstance(exc, OSError):
        kind = httpx.ReadError if connected else httpx.ConnectError
    else:
        return exc
    return kind(f"{type(exc).__name__}: {exc}", request=request)
