"""The per-process objects a task needs, built on first use (after any fork)."""

from __future__ import annotations

import threading

from config.settings import get_settings
from worker.delivery.pipeline import Pipeline
from worker.gate.guard import build_guard
from worker.journal.steps import Journal
from worker.redis_client import redis_client

_lock = threading.Lock()
_pipeline: Pipeline | None = None



def pipeline() -> Pipeline:
    """This process's pipeline (one Redis pool, one HTTP transport per provider)."""
    global _pipeline  # noqa: PLW0603 - a process-wide singleton, built lazily after fork
    with _lock:
        if _pipeline is None:
            settings = get_settings()
            client = redis_client(settings.redis_url)
            guard = build_guard(
                client, threshold=settings.breaker_failure_threshold,
                open_seconds=settings.breaker_open_seconds,
                probe_seconds=settings.breaker_probe_seconds, rates=settings.rate_limits,
                margin=settings.rate_limit_margin, park=True)
            journal = Journal(client, ledger_ttl=settings.ledger_ttl_seconds,
                              results_maxlen=settings.results_maxlen)
            _pipeline = Pipeline(settings, journal, guard=guard)
        return _pipeline
