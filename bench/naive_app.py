"""The naive peer: what a plain single-task implementation of "cancel once, say so" costs.
``celery -A bench.naive_app worker``.

Same broker and worker settings as idv-cancel (the benchmark runs it as it runs the
pipeline: ``-P threads -c 128`` against Redis). One plain Celery task: ``SET NX`` on the
request id for idempotency, one call through a pooled ``httpx.Client`` shared by the
threads, one ``XADD`` for the result event and one for an audit line. No lease, no
audit chain, no validation, retries, dead letters, confirmation, intake index, logging
or metrics: the CPU the pipeline spends above it is what those guarantees cost.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import httpx
import redis
from celery import Celery

from config.celery import celery_config
from config.settings import get_settings

app = Celery("bench-naive")
app.conf.update(celery_config(get_settings()))
app.conf.worker_consumer = "celery.worker.consumer:Consumer"
if os.environ.get("BENCH_KOMBU_TRANSPORT"):
    # plain Celery: kombu's own Redis transport, as a naive implementation would run
    app.conf.broker_transport = None

_THREADS = int(os.environ.get("BENCH_CONCURRENCY", "128"))
# A connection per thread at most: redis-py's default pool stops at 100.
_redis = redis.Redis.from_url(get_settings().redis_url, decode_responses=True,
                              max_connections=2 * _THREADS)
# As many kept-alive connections as threads: a smaller pool would reconnect, which is
# not what a reasonable naive implementation pays.
_http = httpx.Client(
    base_url=os.environ.get("IDVCANCEL_IDPASS_BASE_URL", "http://127.0.0.1:1"),
    headers={"Authorization": f"Bearer {os.environ.get('IDVCANCEL_IDPASS_TOKEN', '')}"},
    limits=httpx.Limits(max_connections=_THREADS, max_keepalive_connections=_THREADS),
    timeout=10)


@app.task(name="bench.naive")
def naive(request: dict[str, Any]) -> None:
    """Claim the id once, call, publish the result and an audit line."""
    request_id = request["request_id"]
    if not _redis.set(f"bench:naive:{request_id}", "1", nx=True):
        return  # a duplicate: carried out already
    try:
        response = _http.post("/idpass/cancel", json={"id": request["reference"]})
        status = str(response.json().get("status", ""))
        outcome = "cancelled" if response.status_code == 200 else "failed"
    except (httpx.HTTPError, ValueError):
        status, outcome = "", "failed"  # still published: the benchmark counts every one
    at = time.time()
    _redis.xadd("idvcancel:results", {"event": json.dumps(
        {"request_id": request_id, "provider": "idpass", "outcome": outcome,
         "provider_status": status, "occurred_at": at})})
    _redis.xadd("idvcancel:audit", {"record": json.dumps(
        {"step": "completed", "request_id": request_id, "outcome": outcome, "at": at})})
