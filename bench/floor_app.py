"""The floor: what any pipeline with our guarantees must at least do per request, and
nothing else. ``celery -A bench.floor_app worker``.

Same broker and worker settings as idv-cancel. The task makes the three I/O steps no
implementation of "a provider is called at most once, and every step is on the record"
can skip: one Redis script call that claims the request *before* the provider call, one
provider call (raw ``http.client`` on a kept-alive connection per thread, no HTTP
library), and one Redis script call that records the outcome. No validation, rules,
audit chain, retries, logging or metrics.

Its rate over the bare no-op's rate shows what is left of the ratio once this minimum
work is done one call each: the benchmark prints it beside the real pipeline's. (A
journal that shares script calls between threads, as ours does, could in principle
beat it; ours does not, because of everything else a request needs.)
"""

from __future__ import annotations

import http.client
import json
import os
import threading
from typing import Any
from urllib.parse import urlsplit

import redis
from celery import Celery

from config.celery import celery_config
from config.settings import get_settings

app = Celery("bench-floor")
app.conf.update(celery_config(get_settings()))
app.conf.worker_consumer = "celery.worker.consumer:Consumer"

_CLAIM = "return redis.call('HSET', KEYS[1], 'phase', 'calling', 'owner', ARGV[1])"
_DONE = ("redis.call('HSET', KEYS[1], 'phase', 'done', 'outcome', ARGV[1]) "
         "return redis.call('XADD', KEYS[2], '*', 'event', ARGV[2])")
_local = threading.local()
# A connection per thread at most: redis-py's default pool stops at 100.
_client = redis.Redis.from_url(get_settings().redis_url, decode_responses=True,
                               max_connections=2 * int(os.environ.get("BENCH_CONCURRENCY",
                                                                      "128")))
_claim, _done = _client.register_script(_CLAIM), _client.register_script(_DONE)
_base = urlsplit(os.environ.get("IDVCANCEL_IDPASS_BASE_URL", "http://127.0.0.1:1"))
_token = os.environ.get("IDVCANCEL_IDPASS_TOKEN", "")


def _connection() -> http.client.HTTPConnection:
    conn: http.client.HTTPConnection | None = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = http.client.HTTPConnection(_base.hostname or "", _base.port,
                                                        timeout=10)
    return conn


@app.task(name="bench.floor")
def floor(request: dict[str, Any]) -> None:
    """Claim, call, record: the same message shape as ``idvcancel.process``."""
    ledger = f"bench:floor:{request['request_id']}"
    _claim(keys=[ledger], args=["floor"])
    conn = _connection()
    try:
        conn.request("POST", f"{_base.path}/idpass/cancel",
                     body=json.dumps({"id": request["reference"]}),
                     headers={"Content-Type": "application/json",
                              "Authorization": f"Bearer {_token}"})
        answer = json.loads(conn.getresponse().read())
    except (OSError, http.client.HTTPException, ValueError):
        conn.close()  # the next task in this thread starts on a fresh connection
        _local.conn = None
        answer = {"status": "error"}  # still recorded: the benchmark counts every one
    _done(keys=[ledger, "idvcancel:results"],
          args=[answer.get("status", ""), json.dumps({"request_id": request["request_id"]})])
