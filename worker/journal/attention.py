"""The "needs attention" store: requests whose result a person must look at again.

A request that ended ``cancelled`` or ``deleted`` is read back at its provider later
(``worker.delivery.confirm``). When that read does not show the action took hold — the session
still active, the data still there, the read refused — the original result event stays
as it was (it said what the provider answered, and consumers may have acted on it), an
audit record ``confirmation_failed`` says what the read showed, and the request is put
here, for ``idvcancel attention list``, the gauge ``idvcancel_needs_attention`` and the
counter ``idvcancel_confirmations_total{result="failed"}``.

An entry holds identifiers and codes only (request id, provider, action, reference, the
provider's status and HTTP status, our error code), never provider text or personal
data. It stays until a person removes it (``forget``); a new failed confirmation of the
same request replaces it.

Keys (``worker.keys``): ``idvcancel:attention`` (hash request id → entry JSON) and
``idvcancel:attention:index`` (sorted set, score = when it was added, s).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import redis
from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.registry import Collector

from worker import keys

#: Most entries ``list_entries`` reads per ZRANGE.
PAGE = 500


def add(client: redis.Redis, entry: Mapping[str, Any], at: float) -> None:
    """Put (or replace) the entry of ``entry["request_id"]``, in one MULTI."""
    request_id = str(entry["request_id"])
    pipe = client.pipeline(transaction=True)
    pipe.hset(keys.ATTENTION, request_id, json.dumps(dict(entry), sort_keys=True))
    pipe.zadd(keys.ATTENTION_INDEX, {request_id: at})
    pipe.execute()


def forget(client: redis.Redis, request_id: str) -> bool:
    """Remove one entry (a person dealt with it); False when there was none."""
    pipe = client.pipeline(transaction=True)
    pipe.hdel(keys.ATTENTION, request_id)
    pipe.zrem(keys.ATTENTION_INDEX, request_id)
    removed, _ = pipe.execute()
    return bool(removed)


def list_entries(client: redis.Redis, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """The entries, oldest first (at most ``limit``)."""
    start, seen = 0, 0
    while limit is None or seen < limit:
        ids: list[str] = client.zrange(keys.ATTENTION_INDEX, start,  # type: ignore[assignment]
                                       start + PAGE - 1)
        if not ids:
            return
        for raw in client.hmget(keys.ATTENTION, ids):
            if raw is None:
                continue
            entry = json.loads(raw)
            if isinstance(entry, dict):
                yield entry
                seen += 1
                if limit is not None and seen >= limit:
                    return
        start += PAGE


def depth(client: redis.Redis) -> int:
    return int(client.hlen(keys.ATTENTION))


class AttentionDepth(Collector):
    """``idvcancel_needs_attention``: entries waiting for a person, read live at scrape
    time (every worker reports the same, true number)."""

    def __init__(self, read_depth: Callable[[], int]) -> None:
        self.read_depth = read_depth

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("idvcancel_needs_attention",
                                  "Requests whose confirmation failed, waiting for a person")
        try:
            gauge.add_metric([], float(self.read_depth()))
        except Exception:  # noqa: BLE001 - a scrape must not fail because Redis is away
            gauge.add_metric([], float("nan"))
        yield gauge


def register_gauge(client: Callable[[], redis.Redis]) -> None:
    """Export ``idvcancel_needs_attention`` on this process's ``/metrics``."""
    REGISTRY.register(AttentionDepth(lambda: depth(client())))
