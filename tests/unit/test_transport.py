"""The transport (worker.providers.transport) against a real HTTP server on loopback:
keep-alive, connections the server closed, timeouts, refusals, gzip. Servers that close
idle connections, proxies and TLS: tests/integration/test_transport_e2e.py."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from config.settings import Settings
from worker.contract import CancelRequest
from worker.providers import errors
from worker.providers import transport as transport_module
from worker.providers.idpass import RULES, IdPassAdapter
from worker.providers.transport import PooledTransport


class Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        self.connections = 0
        self.delay = 0.0
        self.close_after_answer = False
        self.gzip = False
        self.early_hints = False
        self.hang_up = False
        self.extra_header: tuple[str, str] | None = None

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up are part of these tests."""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    @property
    def recorder(self) -> Recorder:
        assert isinstance(self.server, Recorder)
        return self.server

    def setup(self) -> None:
        super().setup()
        self.recorder.connections += 1

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.recorder.seen.append((self.command, self.path, dict(self.headers), body))
        time.sleep(self.recorder.delay)
        if self.recorder.hang_up:  # took the request, never answers
            self.close_connection = True
            return
        if self.recorder.early_hints:
            self.wfile.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
        payload = json.dumps({"status": "cancelled", "fee_refunded": True}).encode()
        if self.recorder.gzip:
            payload = gzip.compress(payload)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Set-Cookie", "session=abc; Path=/")
        self.send_header("Content-Length", str(len(payload)))
        if self.recorder.gzip:
            self.send_header("Content-Encoding", "gzip")
        if self.recorder.extra_header:
            self.send_header(*self.recorder.extra_header)
        if self.recorder.close_after_answer:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def server() -> Iterator[Recorder]:
    recorder = Recorder()
    thread = threading.Thread(target=recorder.serve_forever, daemon=True)
    thread.start()
    yield recorder
    recorder.shutdown()
    recorder.server_close()


def url(server: Recorder, path: str = "/idpass/cancel") -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def test_calls_reuse_one_kept_alive_connection(server: Recorder) -> None:
    # Given a client on the pooled transport
    client = httpx.Client(transport=PooledTransport())
    # When it makes five calls one after the other
    answers = [client.post(url(server), json={"id": n}).json() for n in range(5)]
    # Then the server saw five requests, with their bodies, over one connection
    assert [json.loads(body)["id"] for _, _, _, body in server.seen] == list(range(5))
    assert server.connections == 1
    assert answers[0] == {"status": "cancelled", "fee_refunded": True}


def test_a_connection_the_server_closed_is_not_reused_and_nothing_is_sent_twice(
        server: Recorder) -> None:
    # Given a server that closes each connection after answering
    server.close_after_answer = True
    client = httpx.Client(transport=PooledTransport())
    # When three calls are made
    for n in range(3):
        assert client.post(url(server), json={"id": n}).status_code == 200
    # Then each went out exactly once, on a fresh connection
    assert [json.loads(body)["id"] for _, _, _, body in server.seen] == [0, 1, 2]
    assert server.connections == 3


def test_headers_and_method_reach_the_server_as_httpx_builds_them(server: Recorder) -> None:
    client = httpx.Client(transport=PooledTransport(), headers={"User-Agent": "Acme/1.0"})
    client.post(url(server, "/idpass/cancel?x=a%2Fb"), json={"id": "r"},
                headers={"Authorization": "Bearer t"})
    method, path, headers, body = server.seen[0]
    assert (method, path, body) == ("POST", "/idpass/cancel?x=a%2Fb", b'{"id":"r"}')
    assert headers["Authorization"] == "Bearer t" and headers["User-Agent"] == "Acme/1.0"
    assert headers["Content-Type"] == "application/json"


def test_gzip_answers_are_decoded(server: Recorder) -> None:
    server.gzip = True
    client = httpx.Client(transport=PooledTransport())
    assert client.post(url(server), json={}).json()["status"] == "cancelled"


def adapter_for(server_url: str, timeout: float = 5.0) -> IdPassAdapter:
    return IdPassAdapter(Settings(idpass_base_url=server_url, idpass_token="tok",
                                  http_timeout_seconds=timeout))


def request() -> CancelRequest:
    return CancelRequest(request_id="r-1", provider="idpass", action="cancel",
                         reference="2f2c1a8e-4a4b-4c1e-9f1a-3b2c1d0e9f8a",
                         requested_by="tests")


def test_adapter_on_the_default_transport_cancels(server: Recorder) -> None:
    # Given an ID Pass adapter built without a test transport (the production default)
    adapter = adapter_for(url(server, ""))
    # When it cancels
    answer = adapter.execute(request(), RULES.actions["cancel"])
    # Then the server received the documented call and the answer was read
    assert answer.provider_status == "cancelled" and answer.fee_refunded is True
    assert server.seen[0][1] == "/idpass/cancel"


def test_adapter_names_itself_and_carries_no_cookie_between_calls(server: Recorder) -> None:
    # Given an adapter whose first call was answered with a Set-Cookie
    adapter = adapter_for(url(server, ""))
    adapter.execute(request(), RULES.actions["cancel"])
    # When it calls again (another session's request, in production)
    adapter.execute(request(), RULES.actions["cancel"])
    # Then the second call carried no cookie, and both named idv-cancel as the agent
    assert "Cookie" not in server.seen[1][2]
    assert {seen[2]["User-Agent"] for seen in server.seen} == {"idv-cancel/1.0"}


def test_a_slow_answer_is_a_provider_timeout(server: Recorder) -> None:
    server.delay = 1.0
    with pytest.raises(errors.ProviderTimeout):
        adapter_for(url(server, ""), timeout=0.2).execute(request(), RULES.actions["cancel"])


def test_a_refused_connection_is_unreachable() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(errors.ProviderUnreachable):
        adapter_for(f"http://127.0.0.1:{port}").execute(request(), RULES.actions["cancel"])


def test_an_interim_answer_is_skipped_for_the_final_one(server: Recorder) -> None:
    # Given a server that sends 103 Early Hints before its answer
    server.early_hints = True
    # When a call is made, Then the final 200 and its body come back
    answer = httpx.Client(transport=PooledTransport()).post(url(server), json={})
    assert answer.status_code == 200 and answer.json()["status"] == "cancelled"


def test_a_non_ascii_header_does_not_fail_a_call_that_was_carried_out(server: Recorder) -> None:
    server.extra_header = ("X-Note", "caf\u00e9")
    answer = httpx.Client(transport=PooledTransport()).post(url(server), json={})
    assert answer.status_code == 200 and answer.headers["x-note"] == "caf\u00e9"


def test_an_answer_lost_after_the_request_went_out_may_have_landed(server: Recorder) -> None:
    # Given a server that takes the request and hangs up without answering
    server.hang_up = True
    # When the adapter calls, Then the error says the call may have landed
    with pytest.raises(errors.AnswerLost) as lost:
        adapter_for(url(server, "")).execute(request(), RULES.actions["cancel"])
    assert lost.value.may_have_landed and len(server.seen) == 1


def test_idle_connections_expire(server: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a kept-alive connection that has been idle longer than the expiry
    client = httpx.Client(transport=PooledTransport())
    client.post(url(server), json={})
    monkeypatch.setattr(transport_module, "KEEPALIVE_EXPIRY", -1.0)
    # When the next call is made, Then it goes out on a new connection
    client.post(url(server), json={})
    assert server.connections == 2


def test_only_http_and_https_are_spoken() -> None:
    with pytest.raises(httpx.UnsupportedProtocol):
        PooledTransport().handle_request(httpx.Request("GET", "ftp://127.0.0.1/x"))
