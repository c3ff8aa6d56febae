"""The provider transport against real servers on loopback: a provider that closes idle
connections or hangs up mid-call, a forward proxy (CONNECT tunnels and plain HTTP), and
TLS verified against a CA named by ``SSL_CERT_FILE``. Every call goes through a real
adapter (ID Pass) on the production transport, as a worker makes it."""

from __future__ import annotations

import json
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
import trustme

from config.settings import Settings
from worker.contract import CancelRequest
from worker.providers import errors
from worker.providers.idpass import RULES, IdPassAdapter
from worker.providers.transport import PooledTransport

PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")


class Provider(ThreadingHTTPServer):
    """ID Pass's cancel endpoint, counting the connections and requests it receives."""

    daemon_threads = True

    def __init__(self, idle_close_seconds: float | None = None) -> None:
        super().__init__(("127.0.0.1", 0), ProviderHandler)
        ProviderHandler.timeout = idle_close_seconds
        self.requests: list[bytes] = []
        self.connections = 0
        self.hang_up_after_reading = False

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up, and TLS clients that refuse our certificate, are part
        of these tests."""


class ProviderHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    #: Seconds a kept-alive connection may idle before this server closes it (None: never).
    timeout: ClassVar[float | None] = None

    @property
    def provider(self) -> Provider:
        assert isinstance(self.server, Provider)
        return self.server

    def setup(self) -> None:
        super().setup()
        self.provider.connections += 1

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_POST(self) -> None:
        self.provider.requests.append(
            self.rfile.read(int(self.headers.get("Content-Length", 0))))
        if self.provider.hang_up_after_reading:
            self.close_connection = True  # took the request, never answers
            return
        payload = json.dumps({"status": "cancelled", "fee_refunded": False}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_DELETE(self) -> None:
        self.do_POST()


class ForwardProxy(ThreadingHTTPServer):
    """An egress proxy: CONNECT tunnels (https targets) and absolute-URI forwarding
    (http targets), recording each request line it was asked to carry."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ProxyHandler)
        self.seen: list[str] = []
        self.refuse = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Tunnels end when either side hangs up."""


class ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    @property
    def proxy(self) -> ForwardProxy:
        assert isinstance(self.server, ForwardProxy)
        return self.server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_CONNECT(self) -> None:
        self.proxy.seen.append(f"CONNECT {self.path}")
        if self.proxy.refuse:
            self.send_error(403, "egress not allowed")
            return
        host, _, port = self.path.rpartition(":")
        with socket.create_connection((host, int(port)), timeout=5) as upstream:
            self.send_response(200, "Connection established")
            self.end_headers()
            self.wfile.flush()
            pump(self.connection, upstream)
        self.close_connection = True

    def do_POST(self) -> None:
        """Forward one request given in absolute form (``POST http://host:port/path``)."""
        self.proxy.seen.append(f"POST {self.path}")
        body = self.rfile.read(int(self.headers["Content-Length"]))
        host, _, port = self.path.split("/")[2].partition(":")
        with socket.create_connection((host, int(port)), timeout=5) as upstream:
            path = "/" + self.path.split("/", 3)[3]
            head = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items()
                           if k.lower() not in ("connection", "proxy-connection"))
            upstream.sendall(f"POST {path} HTTP/1.1\r\n{head}Connection: close\r\n\r\n"
                             .encode("latin-1") + body)
            while chunk := upstream.recv(65536):
                self.wfile.write(chunk)
        self.close_connection = True


def pump(client: socket.socket, upstream: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    sockets = [client, upstream]
    while True:
        readable, _, _ = select.select(sockets, [], [], 5)
        if not readable:
            return
        for source in readable:
            data = source.recv(65536)
            if not data:
                return
            (upstream if source is client else client).sendall(data)


def serving(server: ThreadingHTTPServer) -> Iterator[Any]:
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def no_proxy_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sets the proxy variables it means (either case counts)."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def provider() -> Iterator[Provider]:
    yield from serving(Provider())


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    yield from serving(ForwardProxy())


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_provider(ca: trustme.CA) -> Iterator[Provider]:
    """The provider behind HTTPS, its certificate (for 127.0.0.1) signed by ``ca``."""
    server = Provider()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    yield from serving(server)


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def adapter(base_url: str) -> IdPassAdapter:
    """Built after the test set its variables: the transport reads them when built."""
    return IdPassAdapter(Settings(idpass_base_url=base_url, idpass_token="tok",
                                  http_timeout_seconds=3))


def cancel(on: IdPassAdapter, n: int = 0) -> str | None:
    request = CancelRequest(request_id=f"r-{n}", provider="idpass", action="cancel",
                            reference="2f2c1a8e-4a4b-4c1e-9f1a-3b2c1d0e9f8a",
                            requested_by="tests")
    return on.execute(request, RULES.actions["cancel"]).provider_status


def test_sequential_calls_share_one_kept_alive_connection(provider: Provider) -> None:
    """Given an adapter on the production transport, When it cancels five sessions one
    after the other, Then the provider saw five requests over a single connection."""
    idpass = adapter(f"http://127.0.0.1:{provider.port}")
    assert [cancel(idpass, n) for n in range(5)] == ["cancelled"] * 5
    assert len(provider.requests) == 5 and provider.connections == 1


def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    """Given a provider that closes connections idle for 0.2 s, and a kept-alive one
    from a first call, When the adapter calls again after 0.5 s, Then the call succeeds
    on a new connection and the provider received it exactly once."""
    for server in serving(Provider(idle_close_seconds=0.2)):
        idpass = adapter(f"http://127.0.0.1:{server.port}")
        cancel(idpass, 0)
        time.sleep(0.5)
        assert cancel(idpass, 1) == "cancelled"
        assert len(server.requests) == 2 and server.connections == 2


def test_a_connection_dropped_after_the_request_is_an_answer_lost_sent_once(
        provider: Provider) -> None:
    """Given a provider that reads the request, then drops the connection, When the
    adapter calls, Then the error says the call may have landed (the retry reads the
    status first), and the provider received the request exactly once: no silent resend."""
    provider.hang_up_after_reading = True
    with pytest.raises(errors.AnswerLost) as lost:
        cancel(adapter(f"http://127.0.0.1:{provider.port}"))
    assert lost.value.may_have_landed
    assert len(provider.requests) == 1


def test_an_idempotent_method_is_not_resent_either(provider: Provider) -> None:
    """Given the same provider, When a DELETE (OneSpan's delete is one) loses its answer,
    Then it went out once, and the error is one the adapters read as an answer lost
    (urllib3, left to retry, resends an idempotent method on its own)."""
    provider.hang_up_after_reading = True
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        PooledTransport().handle_request(
            httpx.Request("DELETE", f"http://127.0.0.1:{provider.port}/v1/sessions/s-1"))
    assert len(provider.requests) == 1


def test_https_goes_through_the_proxy_tunnel(tls_provider: Provider, proxy: ForwardProxy,
                                             ca_file: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Given HTTPS_PROXY naming an egress proxy, When the adapter cancels at an HTTPS
    provider twice, Then both calls went through one CONNECT tunnel to the provider."""
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    idpass = adapter(f"https://127.0.0.1:{tls_provider.port}")
    assert [cancel(idpass, n) for n in range(2)] == ["cancelled"] * 2
    assert proxy.seen == [f"CONNECT 127.0.0.1:{tls_provider.port}"]
    assert len(tls_provider.requests) == 2


def test_plain_http_is_forwarded_by_the_proxy(provider: Provider, proxy: ForwardProxy,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Given http_proxy (lower case) set, When the adapter calls an http:// provider,
    Then the proxy forwarded the request, named by its full URL."""
    monkeypatch.setenv("http_proxy", proxy.url)
    assert cancel(adapter(f"http://127.0.0.1:{provider.port}")) == "cancelled"
    assert proxy.seen == [f"POST http://127.0.0.1:{provider.port}/idpass/cancel"]
    assert len(provider.requests) == 1


def test_no_proxy_bypasses_the_proxy(provider: Provider, proxy: ForwardProxy,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Given HTTP_PROXY set and NO_PROXY naming the provider's host, When the adapter
    calls, Then the provider was reached directly and the proxy saw nothing."""
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    assert cancel(adapter(f"http://127.0.0.1:{provider.port}")) == "cancelled"
    assert proxy.seen == [] and len(provider.requests) == 1


def test_a_proxy_that_refuses_the_tunnel_means_nothing_was_sent(
        tls_provider: Provider, proxy: ForwardProxy, ca_file: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a proxy that answers CONNECT with 403, When the adapter calls, Then the
    provider is unreachable (not an answer lost: it cannot have landed) and saw nothing."""
    proxy.refuse = True
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    with pytest.raises(errors.ProviderUnreachable) as unreachable:
        cancel(adapter(f"https://127.0.0.1:{tls_provider.port}"))
    assert not unreachable.value.may_have_landed
    assert tls_provider.requests == []


def test_a_proxy_url_that_is_not_http_is_refused_by_name(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """Given HTTPS_PROXY with a SOCKS URL (not supported), When an adapter is built, Then
    one line names the variable."""
    monkeypatch.setenv("HTTPS_PROXY", "socks5://127.0.0.1:1080")
    with pytest.raises(ValueError, match=r"^HTTPS_PROXY is not an http:// proxy URL"):
        adapter("https://127.0.0.1:1")


def test_tls_trusts_the_ca_named_by_ssl_cert_file(tls_provider: Provider, ca_file: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a provider whose certificate a private CA signed, and SSL_CERT_FILE naming
    that CA, When the adapter cancels over HTTPS, Then the call succeeds."""
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)
    assert cancel(adapter(f"https://127.0.0.1:{tls_provider.port}")) == "cancelled"


def test_tls_without_the_ca_fails_verification_before_sending(
        tls_provider: Provider, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given the same provider and no SSL_CERT_FILE (certifi's public CAs), When the
    adapter calls, Then it is unreachable because the certificate is not trusted, and
    nothing was sent (no answer may be lost)."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with pytest.raises(errors.ProviderUnreachable) as unreachable:
        cancel(adapter(f"https://127.0.0.1:{tls_provider.port}"))
    assert not unreachable.value.may_have_landed
    assert str(unreachable.value) == (
        "idpass could not be reached (TLS certificate not trusted (unable to get local"
        " issuer certificate); SSL_CERT_FILE names the CAs to trust)")
    assert tls_provider.requests == []
