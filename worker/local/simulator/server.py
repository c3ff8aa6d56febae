"""The HTTP server: one threaded, keep-alive ``http.server`` on loopback for all five APIs."""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import signal
import socket
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

from worker.local.simulator.apis import PROVIDERS, Credentials, build_apis
from worker.local.simulator.app import App
from worker.local.simulator.faults import Faults
from worker.local.simulator.store import Store
from worker.local.simulator.wire import SimRequest, SimResponse

BASE_PATHS = {
    "IDVCANCEL_IDPASS_BASE_URL": "/idpass-api",
    "IDVCANCEL_TXCLOUD_BASE_URL": "/txcloud/v1",
    "IDVCANCEL_GU1_BASE_URL": "/gu1",
    "IDVCANCEL_ONESPAN_BASE_URL": "/onespan",
    **{f"IDVCANCEL_JUMIO_BASE_URL_{r.upper()}": f"/jumio/{r}" for r in ("us", "eu", "sgp")},
    **{f"IDVCANCEL_JUMIO_RETRIEVAL_BASE_URL_{r.upper()}": f"/jumio/retrieval-{r}"
       for r in ("us", "eu", "sgp")},
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], app: App) -> None:
        self.app = app
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up mid-answer are normal here: stay quiet."""

    def close_connections(self) -> None:
        with self.connections_lock:
            open_now = list(self.connections)
        for conn in open_now:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "idv-sim/1.0"
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms stalls

    def setup(self) -> None:
        super().setup()
        with self._server.connections_lock:
            self._server.connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self._server.connections_lock:
                self._server.connections.discard(self.connection)

    @property
    def _server(self) -> _Server:
        return cast(_Server, self.server)

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: request lines may carry references, and nothing else belongs on stdout."""

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _serve(self) -> None:
        try:
            raw = self._read_body()
        except ValueError:
            self._write(SimResponse(400, {"error": "malformed request body"}))
            self.close_connection = True
            return
        parts = urlsplit(self.path)
        req = SimRequest(
            method=self.command,
            path=parts.path,
            query=dict(parse_qsl(parts.query)),
            headers={k.lower(): v for k, v in self.headers.items()},
            raw=raw,
        )
        try:
            response = self._server.app.dispatch(req)
        except Exception:  # noqa: BLE001 - a simulator bug must not kill the connection
            response = SimResponse(500, {"error": "simulator internal error"})
        if response.close:
            self.close_connection = True
            return
        self._write(response)

    def _write(self, response: SimResponse) -> None:
        payload = response.encode()
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if response.body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()


class Simulator:
    """All five provider APIs plus the ``/_sim/`` admin API on one loopback port.

    Example:
        with Simulator(autocreate=True) as sim:
            env = {**sim.base_urls(), **sim.credential_env()}
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        credentials: Credentials | Mapping[str, Any] | None = None,
        autocreate: bool = False,
        faults: Mapping[str, Faults | Mapping[str, Any]] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.credentials = (
            credentials if isinstance(credentials, Credentials)
            else Credentials.from_mapping(credentials)
        )
        initial = {
            name: f if isinstance(f, Faults) else Faults.from_dict(f)
            for name, f in (faults or {}).items()
        }
        self.store = Store(autocreate=autocreate, faults=initial)
        self._stopping = threading.Event()
        self.app = App(self.store, build_apis(self.store, self.credentials), self._stopping)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Simulator:
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server((self.host, self.port), self.app)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
            name="idv-simulator", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # wakes simulated latency and hangs
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("simulator not started")
        return f"http://{self.host}:{self.port}"

    def base_urls(self) -> dict[str, str]:
        return {name: self.url + path for name, path in BASE_PATHS.items()}

    def credential_env(self) -> dict[str, str]:
        return self.credentials.env()

    def env(self) -> dict[str, str]:
        """``base_urls()`` and ``credential_env()`` together."""
        return {**self.base_urls(), **self.credential_env()}

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


#: The User-Agent a worker pointed at the simulator sends to Jumio (mandatory there).
LOCAL_JUMIO_USER_AGENT = "idv-cancel local (simulator)"


def worker_env(sim: Simulator) -> dict[str, str]:
    """Everything a worker needs to talk to ``sim``: every base URL, every credential and
    the Jumio User-Agent (without it Jumio requests end ``unauthorized``)."""
    return {**sim.env(), "IDVCANCEL_JUMIO_USER_AGENT": LOCAL_JUMIO_USER_AGENT}


def shell_exports(sim: Simulator) -> str:
    """``worker_env`` as lines a POSIX shell can ``eval`` (values quoted), after a comment
    saying where the simulator listens.

    Examples:
        >>> print(shell_exports(sim))                          # doctest: +SKIP
        # the provider simulator listens on http://127.0.0.1:8765; eval these lines in a shell
        export IDVCANCEL_GU1_API_KEY=gk_test_sim-gu1-key
        ...
    """
    lines = [f"# the provider simulator listens on {sim.url}; eval these lines in a shell"]
    lines += [f"export {name}={shlex.quote(value)}"
              for name, value in sorted(worker_env(sim).items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print ``{"url", "env"}`` as one JSON line once listening; serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m worker.local.simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--autocreate", action="store_true",
                        help="treat unknown references as sessions in a cancellable state")
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="latency added to every provider call")
    parser.add_argument("--env", action="store_true",
                        help="print the worker's settings as shell export lines (eval them)"
                             " instead of JSON")
    args = parser.parse_args(argv)
    latency = Faults(latency_ms=args.latency_ms)
    faults = {name: latency for name in PROVIDERS} if args.latency_ms else None
    sim = Simulator(args.host, args.port, autocreate=args.autocreate, faults=faults)
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    sim.start()
    try:
        if args.env:
            print(shell_exports(sim), flush=True)
        else:
            print(json.dumps({"url": sim.url, "env": worker_env(sim)}), flush=True)
        while not done.wait(0.5):
            pass
    finally:
        sim.stop()
    return 0
