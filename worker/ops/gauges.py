"""Gauges read from Redis at scrape time: what is waiting, whether results still come,
and how the audit chain last verified.

Redis holds the truth shared by every worker, so each scrape reads it there and every
worker reports the same numbers; nothing is counted per request. One scrape costs two
round trips: ``ZCARD`` + ``ZRANGE`` of the intake index, the last result entry and the
verdicts, then one ``HMGET`` of at most ``BACKLOG_SCAN`` request bodies.

- ``idvcancel_backlog{provider}``: requests pushed and not yet done (the intake index,
  ``worker.triggers.reconcile``): queued, or waiting for a retry, the breaker or the rate
  limit. Exact up to ``BACKLOG_SCAN`` requests; beyond, the total is exact and shared out
  in the proportions of the ``BACKLOG_SCAN`` longest waiting.
- ``idvcancel_last_result_age_seconds``: seconds since the last result event
  (``idvcancel:results``); +Inf when there has never been one.
- ``idvcancel_audit_verify_ok{by}`` (1 verified, 0 broken) and
  ``idvcancel_audit_verify_age_seconds{by}``: each verifier's last verdict
  (``worker.journal.verdicts``).
- ``idvcancel_circuit_state{provider}``: each provider's circuit breaker as Redis holds it
  for every worker (``worker.gate.breaker``). ``idvcancel_breaker_state`` is what one
  process last saw, and a process that stops calling a provider keeps its last sight: the
  alert watches this one.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import redis
from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.registry import Collector

from worker import keys
from worker.journal import verdicts

#: Most request bodies one scrape reads to share the backlog out by provider.
BACKLOG_SCAN = 2000


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _provider(body: Any) -> str:
    try:
        provider = json.loads(body).get("provider")
    except (ValueError, AttributeError):
        return "unknown"
    return provider if isinstance(provider, str) else "unknown"


def backlog_by_provider(total: int, bodies: list[Any], providers: Iterable[str] = ()
                        ) -> dict[str, float]:
    """``total`` waiting requests shared out as the providers of ``bodies`` (the longest
    waiting ones; None for an id whose body is gone) are; 0 for each of ``providers``
    with none, so that a dashboard shows a line at 0 rather than no data.

    Examples:
        >>> bodies = [b'{"provider": "gu1"}', b'{"provider": "jumio"}']
        >>> backlog_by_provider(4, bodies, ["gu1", "idpass"])
        {'gu1': 2.0, 'idpass': 0.0, 'jumio': 2.0}
    """
    counts = Counter(_provider(body) for body in bodies if body is not None)
    scanned = sum(counts.values())
    shares = {provider: 0.0 for provider in providers}
    if not scanned and total:
        counts, scanned = Counter(unknown=1), 1
    for provider, n in counts.items():
        shares[provider] = n * total / scanned
    return dict(sorted(shares.items()))


class RedisGauges(Collector):
    """The gauges above, for one Redis (``client`` is called at each scrape); the
    backlog of each of ``providers`` is reported, 0 when it has none."""

    def __init__(self, client: Callable[[], redis.Redis], providers: Iterable[str] = ()
                 ) -> None:
        self.client = client
        self.providers = tuple(providers)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily("idvcancel_backlog", "Requests pushed and not yet done",
                              labels=["provider"]),
            GaugeMetricFamily("idvcancel_last_result_age_seconds",
                              "Seconds since the last result event"),
            GaugeMetricFamily("idvcancel_audit_verify_ok",
                              "Last verification of the audit chain: 1 verified, 0 broken",
                              labels=["by"]),
            GaugeMetricFamily("idvcancel_audit_verify_age_seconds",
                              "Seconds since the last verification of the audit chain",
                              labels=["by"]),
            GaugeMetricFamily("idvcancel_circuit_state",
                              "Circuit breaker as every worker shares it (Redis): 0 closed,"
                              " 1 open, 2 a probe is due or running", labels=["provider"]),
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The families without samples: registering must not read Redis."""
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = self._families()
        try:
            self._read(*families)
        except Exception:  # noqa: BLE001 - a scrape must not fail because Redis is away
            families[1].add_metric([], math.nan)
        yield from families

    def _read(self, backlog: GaugeMetricFamily, last_age: GaugeMetricFamily,
              ok: GaugeMetricFamily, age: GaugeMetricFamily,
              circuit: GaugeMetricFamily) -> None:
        client = self.client()
        pipe = client.pipeline(transaction=False)
        pipe.zcard(keys.INTAKE)
        pipe.zrange(keys.INTAKE, 0, BACKLOG_SCAN - 1)
        pipe.xrevrange(keys.RESULTS, count=1)
        pipe.hgetall(keys.AUDIT_VERIFIED)
        pipe.time()
        for provider in self.providers:
            pipe.hmget(keys.breaker(provider), "state", "open_until")
        total, ids, last, raw_verdicts, (seconds, micros), *breakers = pipe.execute()
        now = seconds + micros / 1e6
        for provider, (state, open_until) in zip(self.providers, breakers, strict=True):
            circuit.add_metric([provider], circuit_value(state, open_until, now))
        bodies = client.hmget(keys.INTAKE_REQUESTS, ids) if ids else []
        for provider, waiting in backlog_by_provider(int(total), bodies,
                                                     self.providers).items():
            backlog.add_metric([provider], waiting)
        if last:
            stamp_ms = int(_text(last[0][0]).split("-", 1)[0])
            last_age.add_metric([], max(0.0, now - stamp_ms / 1000))
        else:
            last_age.add_metric([], math.inf)
        found = verdicts.parse({_text(k): _text(v) for k, v in raw_verdicts.items()})
        for verifier, verdict in sorted(found.items()):
            ok.add_metric([verifier], 1.0 if verdict.ok else 0.0)
            age.add_metric([verifier], max(0.0, now - verdict.at))


def circuit_value(state: Any, open_until_ms: Any, now: float) -> float:
    """A breaker's hash (``lua/breaker.lua``) as a number: 0 closed, 1 open, 2 a probe is
    due or running. An open circuit whose time ran out is 2: it stays "open" in Redis
    until the next call asks, and that call is the probe.

    Examples:
        >>> circuit_value(None, None, 100.0)
        0.0
        >>> circuit_value(b"open", b"150000", 100.0), circuit_value(b"open", b"90000", 100.0)
        (1.0, 2.0)
        >>> circuit_value("half_open", None, 100.0)
        2.0
    """
    name = _text(state) if state is not None else "closed"
    if name == "closed":
        return 0.0
    if name == "open" and float(_text(open_until_ms or 0)) / 1000 > now:
        return 1.0
    return 2.0


def register(client: Callable[[], redis.Redis], providers: Iterable[str]) -> None:
    """Export these gauges on this process's ``/metrics``."""
    REGISTRY.register(RedisGauges(client, providers))
