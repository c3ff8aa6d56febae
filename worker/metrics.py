"""Prometheus metrics, and the ``/metrics`` + ``/healthz`` endpoint of a worker.

A worker runs several processes (``worker.runner``) and one of them serves ``/metrics``:
in a worker, prometheus_client runs in multiprocess mode (``worker.runner.metrics_files``),
every process counts into its own file and the serving process sums the files, so the
counts are the whole worker's. What is read at scrape time (the dead-letter depth, from
Redis) comes from the serving process's collectors, so every worker reports the same,
true number.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import REGISTRY, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

REQUESTS = Counter("idvcancel_requests_total", "Requests finished, by provider and outcome",
                   ["provider", "outcome"])
ATTEMPTS = Counter("idvcancel_attempts_total", "Provider calls, by provider and HTTP status",
                   ["provider", "http_status"])
RETRIES = Counter("idvcancel_retries_total", "Retries scheduled, by provider and reason",
                  ["provider", "reason"])
DUPLICATES = Counter("idvcancel_duplicates_total", "Deliveries of requests already done",
                     ["provider"])
LATENCY = Histogram("idvcancel_provider_latency_seconds", "Provider call duration",
                    ["provider"], buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
RESUBMITTED = Counter("idvcancel_resubmitted_total",
                      "Requests the reconciler pushed again, by the ledger phase it found",
                      ["phase"])
BREAKER_STATE = Gauge("idvcancel_breaker_state",
                      "Circuit breaker as last seen here: 0 closed, 1 open, 2 half-open",
                      ["provider"], multiprocess_mode="mostrecent")
#: A retry scheduled this late in a request's retry deadline (IDVCANCEL_RETRY_DEADLINE_SECONDS)
#: counts in ``RETRIES_NEAR_DEADLINE``: the request ends ``failed`` soon unless the provider
#: recovers.
NEAR_DEADLINE_FRACTION = 0.8
RETRIES_NEAR_DEADLINE = Counter(
    "idvcancel_retries_near_deadline_total",
    "Retries scheduled for requests past 80% of their retry deadline, by provider",
    ["provider"])
RATE_LIMITED = Counter("idvcancel_rate_limited_total",
                       "Calls held back by our limiter (local) or refused with 429 (provider)",
                       ["provider", "by"])
JOURNAL_CALLS = Counter("idvcancel_journal_calls_total",
                        "Transition script calls (group commits), by answer: applied, "
                        "head_moved (another process appended to the audit chain first: "
                        "nothing applied, sealed again) or ledger_moved",
                        ["answer"])


def start_series(providers: Iterable[str], outcomes: Iterable[str]) -> None:
    """Show the series alerts watch at 0 before anything happens: ``increase()`` cannot
    see the first request of a series that appears at 1 (e.g. the first ``unauthorized``)."""
    outcomes = tuple(outcomes)
    for provider in providers:
        RETRIES_NEAR_DEADLINE.labels(provider)
        for outcome in outcomes:
            REQUESTS.labels(provider, outcome)


class DeadLetterDepth(Collector):
    """``idvcancel_dead_letters``: entries waiting in the dead-letter store, read live."""

    def __init__(self, read_depth: Callable[[], int]) -> None:
        self.read_depth = read_depth

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("idvcancel_dead_letters", "Entries in the dead-letter store")
        try:
            gauge.add_metric([], float(self.read_depth()))
        except Exception:  # noqa: BLE001 - a scrape must not fail because Redis is away
            gauge.add_metric([], float("nan"))
        yield gauge


class AllProcesses(Collector):
    """The counts in every process's file, then what only this process has: collectors
    read at scrape time, and its own process and platform facts."""

    def __init__(self, path: str) -> None:
        self.files = MultiProcessCollector(None, path)  # type: ignore[no-untyped-call]  # untyped in prometheus_client

    def collect(self) -> Iterator[Metric]:
        counted = list(self.files.collect())  # type: ignore[no-untyped-call]  # as above
        yield from counted
        names = {family.name for family in counted}
        # This process's view of the counted metrics is in the files already.
        yield from (family for family in REGISTRY.collect() if family.name not in names)


def exposed() -> CollectorRegistry:
    """The registry ``/metrics`` shows: every process's counts in multiprocess mode,
    this process's otherwise."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return REGISTRY
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AllProcesses(path))
    return registry


def serve(port: int, healthy: Callable[[], tuple[bool, str]],
          read_depth: Callable[[], int]) -> ThreadingHTTPServer:
    """Serve ``/metrics`` and ``/healthz`` (200 when healthy, 503 otherwise) on ``port``."""
    REGISTRY.register(DeadLetterDepth(read_depth))
    registry = exposed()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/healthz"):
                ok, detail = healthy()
                self._send(200 if ok else 503, detail.encode(), "text/plain")
            elif self.path.startswith("/metrics"):
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            else:
                self._send(404, b"not found", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: scrapes every few seconds would drown the step logs."""

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)  # noqa: S104 - scraped from outside
    threading.Thread(target=server.serve_forever, daemon=True, name="metrics").start()
    return server
