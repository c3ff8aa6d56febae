"""The scrape-time gauges (``worker.ops.gauges``) and the verdicts they read
(``worker.journal.verdicts``), on fakeredis: the real-worker scrape is
tests/integration/test_alerts_e2e.py."""

from __future__ import annotations

import json
import math
import time

import fakeredis
import pytest
import redis
from prometheus_client.core import Metric
from redis.backoff import NoBackoff
from redis.retry import Retry

from worker import keys
from worker.journal import verdicts
from worker.ops import gauges

PROVIDERS = ("idpass", "gu1")


def collected(client: redis.Redis) -> dict[str, dict[tuple[str, ...], float]]:
    """family name → {label values: value} of one scrape."""
    families: list[Metric] = list(gauges.RedisGauges(lambda: client, PROVIDERS).collect())
    return {family.name: {tuple(s.labels.values()): s.value for s in family.samples}
            for family in families}


def push(client: redis.Redis, request_id: str, provider: str, at: float) -> None:
    client.zadd(keys.INTAKE, {request_id: at})
    client.hset(keys.INTAKE_REQUESTS, request_id,
                json.dumps({"request_id": request_id, "provider": provider}))


@pytest.fixture
def client() -> redis.Redis:
    return fakeredis.FakeRedis()


def test_backlog_counts_waiting_requests_by_provider_and_shows_idle_ones_at_zero(
        client: redis.Redis) -> None:
    """Given three requests waiting (two for gu1), then the backlog says so, and idpass,
    with none, shows 0 rather than no line at all."""
    for n, provider in enumerate(["gu1", "gu1", "jumio"]):
        push(client, f"r{n}", provider, 100.0 + n)
    assert collected(client)["idvcancel_backlog"] == {
        ("gu1",): 2.0, ("idpass",): 0.0, ("jumio",): 1.0}


def test_a_backlog_beyond_the_scan_is_shared_out_as_the_longest_waiting_are(
        client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given more waiting requests than one scrape reads, then the total stays exact and
    is shared out in the proportions of those read (the oldest)."""
    monkeypatch.setattr(gauges, "BACKLOG_SCAN", 4)
    for n in range(8):
        push(client, f"r{n}", "gu1" if n % 2 else "idpass", float(n))
    backlog = collected(client)["idvcancel_backlog"]
    assert backlog == {("gu1",): 4.0, ("idpass",): 4.0}


def test_last_result_age_is_the_age_of_the_newest_result_event(client: redis.Redis) -> None:
    """Given no result ever, then the age is infinite (an alert on waiting requests sees
    it); given one written 30 s ago, then about 30."""
    assert collected(client)["idvcancel_last_result_age_seconds"] == {(): math.inf}
    stamp = int((time.time() - 30) * 1000)
    client.xadd(keys.RESULTS, {"event": "{}"}, id=f"{stamp}-0")
    age = collected(client)["idvcancel_last_result_age_seconds"][()]
    assert 29 <= age <= 40


def test_each_verifier_reports_its_own_verdict(client: redis.Redis) -> None:
    """Given the CLI found a break and the checkpoint task verified its records, then each
    keeps its word (a later good checkpoint run does not hide the break)."""
    now = time.time()
    verdicts.record(client, "cli", verdicts.Verdict(False, now - 60))
    verdicts.record(client, "checkpoint", verdicts.Verdict(True, now))
    found = collected(client)
    assert found["idvcancel_audit_verify_ok"] == {("checkpoint",): 1.0, ("cli",): 0.0}
    assert 59 <= found["idvcancel_audit_verify_age_seconds"][("cli",)] <= 70


def test_an_unreadable_verdict_reads_as_a_failure(client: redis.Redis) -> None:
    client.hset(keys.AUDIT_VERIFIED, "cli", "not json")
    assert collected(client)["idvcancel_audit_verify_ok"] == {("cli",): 0.0}


def test_a_scrape_while_redis_is_away_answers_without_failing() -> None:
    """Given Redis unreachable, then the scrape still answers: no backlog, the age NaN."""
    away = redis.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    found = collected(away)
    assert found["idvcancel_backlog"] == {}
    assert math.isnan(found["idvcancel_last_result_age_seconds"][()])


def test_the_circuit_state_is_read_from_the_breaker_every_worker_shares(
        client: redis.Redis) -> None:
    """Given idpass's breaker opened by failures reported through the real breaker script
    (as any worker would), when a scrape reads the gauges, then idpass shows 1 (open) and
    gu1, never failing, 0; once the open time has run out it shows 2 (a probe is due)."""
    from worker.gate.breaker import CircuitBreaker

    breaker = CircuitBreaker(redis.Redis(connection_pool=client.connection_pool,
                                         decode_responses=True),
                             threshold=2, open_seconds=0.2, probe_seconds=5)
    breaker.failure("idpass")
    breaker.failure("idpass")
    assert collected(client)["idvcancel_circuit_state"] == {("idpass",): 1.0, ("gu1",): 0.0}
    time.sleep(0.3)
    assert collected(client)["idvcancel_circuit_state"]["idpass",] == 2.0
