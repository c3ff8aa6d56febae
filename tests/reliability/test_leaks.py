"""Leaks: no credential and no personal data ends up where people and other services read.

The simulator is given unique canary credentials, and its sessions carry personal data
(TXCloud's verification objects always hold a name, date of birth, document number and
MRZ; gu1 and TXCloud echo the session metadata, seeded here with more). Every provider
is driven through its success path, its error paths (400, 401, 403, 404, 429, 503 until
the budget is spent, rules broken before any call) and the crash-recovery read-back
(which GETs the full, PII-laden object), with every error answer's text echoing a name
and a licence number. Then the worker logs, the result events, the
audit records, the dead letters and every other key in Redis are searched.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest

from tests.integration.harness import send_process
from tests.reliability.conftest import RELIABILITY_ENV, RelStack, wait_until

IDPASS_TOKEN = "idp-CANARY-7c1e2a9b4d6f"
JUMIO = ("jumio-tok-CANARY-3b2a1c0d9e", "jumio-sec-CANARY-8e7f6a5b4c")
CREDENTIALS: dict[str, Any] = {
    "idpass": IDPASS_TOKEN,
    "txcloud": "txc_live_CANARY-5f8e3b2c1a0d",
    "gu1": "gk_live_CANARY-9a7d6e5f4c3b",
    "jumio": JUMIO,
    "onespan": "eyJhbGciOiJIUzI1NiJ9.CANARY-onespan-jwt.c2lnbmF0dXJl",
}
SECRETS: list[str] = [
    IDPASS_TOKEN, CREDENTIALS["txcloud"], CREDENTIALS["gu1"], *JUMIO,
    CREDENTIALS["onespan"], base64.b64encode(":".join(JUMIO).encode()).decode(),
]
#: What the simulator's TXCloud answers always carry (worker/local/simulator/apis/txcloud.py).
TXCLOUD_PII = ["El Amrani", "AE123456", "Mohammed", "1990-04-12", "MAREL<AMRANI",
               "AE1234567MAR9004125M3001017"]
#: Planted in every seeded session's metadata (echoed by gu1 and TXCloud).
METADATA = {"email": "zelda.canary@example.org", "full_name": "Zelda Canary-Leakmore",
            "phone": "+61 400 123 987", "document_number": "PX-CANARY-9876543",
            "date_of_birth": "1977-07-17"}
#: Added to every error message the providers answer (the simulator's error_detail).
ERROR_ECHO = "(applicant Quentin Echo-Leakwell, licence DL-CANARY-5550123)"
CANARIES = [*SECRETS, *TXCLOUD_PII, *METADATA.values(), "Echo-Leakwell", "DL-CANARY-5550123"]
GU1_REASON = "customer asked to stop the verification"
JUMIO_SCAN = {"product": "scan", "region": "us"}
JUMIO_DOCUMENT = {"product": "document", "region": "eu"}


@pytest.fixture
def sim_credentials() -> dict[str, Any]:
    return dict(CREDENTIALS)


def _case(rel: RelStack, label: str, provider: str, expect: str, *, status: str | None,
          action: str = "cancel", stuck: list[int] | None = None, sticky: bool = True,
          **fields: Any) -> tuple[str, dict[str, Any], str]:
    request = rel.request(provider, action, **fields)
    if status is not None:
        seed: dict[str, Any] = {"reference": request["reference"], "status": status,
                                "metadata": METADATA}
        options = request.get("options") or {}
        if provider == "jumio":
            seed.update(product=options.get("product", "scan"),
                        region=options.get("region", "us"))
        rel.sim_client.seed(provider, [seed])
    if stuck:
        rel.sim_client.script_reference(provider, request["reference"], stuck, sticky=sticky)
    return label, request, expect


def _cases(rel: RelStack) -> list[tuple[str, dict[str, Any], str]]:
    return [
        _case(rel, "idpass ok", "idpass", "cancelled", status="new"),
        _case(rel, "idpass 400", "idpass", "not_cancellable", status="complete"),
        _case(rel, "idpass 404", "idpass", "not_found", status=None),
        _case(rel, "idpass 401", "idpass", "unauthorized", status="new", stuck=[401]),
        _case(rel, "idpass 503 x budget", "idpass", "failed", status="new", stuck=[503]),
        _case(rel, "idpass delete (no API)", "idpass", "rejected", status="new",
              action="delete"),
        _case(rel, "txcloud ok", "txcloud", "cancelled", status="pending"),
        _case(rel, "txcloud 400", "txcloud", "not_cancellable", status="verified"),
        _case(rel, "txcloud 404", "txcloud", "not_found", status=None),
        _case(rel, "txcloud 401", "txcloud", "unauthorized", status="pending", stuck=[401]),
        _case(rel, "txcloud 429 then ok", "txcloud", "cancelled", status="pending",
              stuck=[429], sticky=False),
        _case(rel, "txcloud 503 x budget", "txcloud", "failed", status="pending",
              stuck=[503]),
        _case(rel, "gu1 ok", "gu1", "cancelled", status="pending", reason=GU1_REASON),
        _case(rel, "gu1 400", "gu1", "not_cancellable", status="approved",
              reason=GU1_REASON),
        _case(rel, "gu1 404", "gu1", "not_found", status=None, reason=GU1_REASON),
        _case(rel, "gu1 401", "gu1", "unauthorized", status="pending", stuck=[401],
              reason=GU1_REASON),
        _case(rel, "gu1 503 x budget", "gu1", "failed", status="pending", stuck=[503],
              reason=GU1_REASON),
        _case(rel, "gu1 reason too short", "gu1", "rejected", status="pending", reason="no"),
        _case(rel, "jumio scan ok", "jumio", "deleted", status="DONE", action="delete",
              options=JUMIO_SCAN),
        _case(rel, "jumio document ok", "jumio", "deleted", status="PENDING",
              action="delete", options=JUMIO_DOCUMENT),
        _case(rel, "jumio 404", "jumio", "not_found", status=None, action="delete",
              options=JUMIO_SCAN),
        _case(rel, "jumio 401", "jumio", "unauthorized", status="DONE", action="delete",
              options=JUMIO_SCAN, stuck=[401]),
        _case(rel, "jumio 403", "jumio", "unauthorized", status="DONE", action="delete",
              options=JUMIO_SCAN, stuck=[403]),
        _case(rel, "jumio 503 x budget", "jumio", "failed", status="DONE", action="delete",
              options=JUMIO_SCAN, stuck=[503]),
        _case(rel, "jumio reference too long", "jumio", "rejected", status=None,
              action="delete", options=JUMIO_SCAN, reference="r" * 40),
        _case(rel, "onespan cancel ok", "onespan", "cancelled", status="new"),
        _case(rel, "onespan erase ok", "onespan", "deleted", status="completed",
              action="delete", options={"grace_period": 0}),
        _case(rel, "onespan 400", "onespan", "not_cancellable", status="completed"),
        _case(rel, "onespan 404", "onespan", "not_found", status=None),
        _case(rel, "onespan 401", "onespan", "unauthorized", status="new", stuck=[401]),
        _case(rel, "onespan 503 x budget", "onespan", "failed", status="new", stuck=[503]),
    ]


def _redis_text(rel: RelStack) -> dict[str, str]:
    """Every key in Redis with its whole value as text (streams, hashes, lists, ...)."""
    dump: dict[str, str] = {}
    for key in rel.redis.scan_iter("*", count=1000):
        kind = rel.redis.type(key)
        value: Any
        if kind == "string":
            value = rel.redis.get(key)
        elif kind == "hash":
            value = rel.redis.hgetall(key)
        elif kind == "list":
            value = rel.redis.lrange(key, 0, -1)
        elif kind == "set":
            value = rel.redis.smembers(key)
        elif kind == "zset":
            value = rel.redis.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = rel.redis.xrange(key)
        else:
            value = kind
        dump[key] = str(value)
    return dump


def _found(haystack: str) -> list[str]:
    lower = haystack.lower()
    return [c for c in CANARIES if c.lower() in lower]


@pytest.mark.slow
def test_every_path_and_crash_read_back_leaks_no_secret_or_personal_data(
        rel: RelStack) -> None:
    # Given canary credentials at every provider, canary PII in every session, a worker
    env = {"IDVCANCEL_BREAKER_FAILURE_THRESHOLD": "1000"}  # 503s must not hold others
    worker = rel.start_worker(concurrency=16, **env)
    # Phase 1: every provider, every path, every error answer's text echoing personal data
    for provider in ("idpass", "txcloud", "gu1", "jumio", "onespan"):
        rel.sim_client.set_faults(provider, error_detail=ERROR_ECHO)
    cases = _cases(rel)
    for _, request, expect in cases:
        if expect == "rejected":  # the producer refuses these: published raw
            send_process(rel.broker_url, request)
        else:
            rel.producer.submit(request)
    results = rel.wait_results([r["request_id"] for _, r, _ in cases], timeout=60)
    wrong = {label: results[r["request_id"]]["outcome"] for label, r, expect in cases
             if results[r["request_id"]]["outcome"] != expect}
    assert not wrong, f"paths not taken as planned: {wrong}"
    # and five more are read back after a crash mid-call (a GET of the whole object)
    for provider in ("idpass", "txcloud", "gu1", "jumio", "onespan"):
        rel.sim_client.set_faults(provider, latency_ms=2000)
    recovering = [
        _case(rel, "idpass read-back", "idpass", "cancelled", status="new"),
        _case(rel, "txcloud read-back", "txcloud", "cancelled", status="pending"),
        _case(rel, "gu1 read-back", "gu1", "cancelled", status="pending", reason=GU1_REASON),
        _case(rel, "jumio read-back", "jumio", "deleted", status="DONE", action="delete",
              options=JUMIO_SCAN),
        _case(rel, "onespan read-back", "onespan", "cancelled", status="new"),
    ]
    ids = [r["request_id"] for _, r, _ in recovering]
    for _, request, _ in recovering:
        rel.producer.submit(request)
    wait_until(lambda: rel.phases(ids)["calling"] == len(ids), 30, "all five mid-call")
    worker.kill()
    killed_at = time.monotonic()
    wait_until(lambda: rel.sim_client.stats()["effective_references"]
               >= sum(1 for _, _, e in cases if e in ("cancelled", "deleted")) + len(ids),
               30, "the orphaned calls landed")
    for provider in ("idpass", "txcloud", "gu1", "jumio", "onespan"):
        rel.sim_client.set_faults(provider)
    time.sleep(max(0.0, killed_at + float(RELIABILITY_ENV[
        "IDVCANCEL_VISIBILITY_TIMEOUT_SECONDS"]) + 1 - time.monotonic()))  # the scenario
    rel.start_worker(concurrency=16, **env)
    recovered = rel.wait_results(ids, timeout=60)
    for label, request, expect in recovering:
        event = recovered[request["request_id"]]
        assert (event["outcome"], event["recovered"]) == (expect, True), (label, event)
    # Then no canary is anywhere: worker logs, results, audit, dead letters, Redis
    places = {"worker logs": rel.worker_logs(),
              **{f"redis key {k}": v for k, v in _redis_text(rel).items()}}
    leaks = {where: found for where, text in places.items() if (found := _found(text))}
    assert not leaks, f"leaked: {leaks}"
    # (and the canaries did travel: the provider really got them and sent PII back)
    calls = rel.sim_client.calls()
    assert any(IDPASS_TOKEN in str(c["headers"]) for c in calls)
    assert rel.sim_client.session("txcloud", recovering[1][1]["reference"]) is not None
    dead = rel.redis.hlen("idvcancel:dlq")
    print(f"\nleaks: {len(cases) + len(recovering)} requests over 5 providers "
          f"({len(cases)} paths + {len(recovering)} crash read-backs), {len(calls)} provider "
          f"calls, {dead} dead letters, {len(places)} places searched for "
          f"{len(CANARIES)} canaries: 0 found")
