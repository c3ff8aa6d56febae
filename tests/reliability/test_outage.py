"""Provider outage: ID Pass answers 503 to everything, for a while.

Shorter than the retry budget: every request still ends cancelled, and meanwhile the
circuit breaker keeps the calls to the sick provider far below requests x attempts
while another provider's requests flow on. Longer than the budget: the requests end
``failed`` with dead letters, and replaying them after recovery completes them.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.reliability.conftest import RelStack, wait_until

IDVCANCEL = Path(sys.executable).parent / "idvcancel"

CONCURRENCY = 16
THRESHOLD = 5
OPEN_SECONDS = 1.0
MAX_ATTEMPTS = 20
BREAKER_ENV = {
    "IDVCANCEL_RETRY_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
    "IDVCANCEL_BREAKER_FAILURE_THRESHOLD": str(THRESHOLD),
    "IDVCANCEL_BREAKER_OPEN_SECONDS": str(OPEN_SECONDS),
    "IDVCANCEL_BREAKER_PROBE_SECONDS": "3",
}


def _breaker_state(rel: RelStack) -> str | None:
    state = rel.redis.hget("idvcancel:breaker:idpass", "state")
    return None if state is None else str(state)


@pytest.mark.slow
def test_outage_shorter_than_the_budget_ends_cancelled_behind_an_open_breaker(
    rel: RelStack,
) -> None:
    rel.start_worker(concurrency=CONCURRENCY, **BREAKER_ENV)
    idpass = rel.seeded_requests(50, prefix="idp")
    gu1 = rel.seeded_requests(20, provider="gu1", status="pending", prefix="gu1",
                              reason="customer withdrew the application")
    # Given ID Pass is down (503 to every call)
    rel.sim_client.set_faults("idpass", down=True)
    outage_started = time.monotonic()
    rel.producer.submit_many(idpass)
    # Then the breaker opens, shared in Redis
    wait_until(lambda: _breaker_state(rel) == "open", 30, "the idpass breaker opens")
    # and requests to another provider flow on while ID Pass is still down
    rel.producer.submit_many(gu1)
    gu1_results = rel.wait_results([r["request_id"] for r in gu1], timeout=30, settle=0)
    assert {e["outcome"] for e in gu1_results.values()} == {"cancelled"}
    assert not {e["request_id"] for e in rel.events()} & {r["request_id"] for r in idpass}
    # When the outage has lasted 6 s (under the attempt budget) and ID Pass recovers
    wait_until(lambda: time.monotonic() - outage_started >= 6, 30, "six seconds of outage")
    outage_calls = len(rel.sim_client.calls("idpass"))
    outage_seconds = time.monotonic() - outage_started
    rel.sim_client.set_faults("idpass")
    recovered_at = time.monotonic()
    # Then a probe finds it healthy and closes the breaker
    wait_until(lambda: _breaker_state(rel) == "closed", 30, "a probe closes the breaker")
    closed_after = time.monotonic() - recovered_at
    # and every ID Pass request ends cancelled, once, each session cancelled once
    results = rel.wait_results([r["request_id"] for r in idpass], timeout=60)
    assert Counter(e["outcome"] for e in results.values()) == {"cancelled": 50}
    assert max(e["attempts"] for e in results.values()) < MAX_ATTEMPTS
    assert rel.effective_duplicates() == []
    # and during the outage the provider got far fewer calls than requests x attempts:
    # the first wave (at most one per worker thread, the breaker not yet open), the
    # threshold, and about one probe per open period (x2 for scheduling slack).
    bound = CONCURRENCY + THRESHOLD + 2 * math.ceil(outage_seconds / OPEN_SECONDS) + 2
    assert outage_calls <= bound, f"{outage_calls} calls during the outage (bound {bound})"
    assert outage_calls < len(idpass) * MAX_ATTEMPTS / 10
    held = sum(1 for r in rel.audit() if r["step"] == "retry_scheduled"
               and r.get("error") == "circuit_open")
    assert held > 0, "no request was held back by the open circuit"
    rel.assert_chain_intact()
    print(f"\nshort outage: {len(idpass)} idpass + {len(gu1)} gu1 requests, "
          f"{outage_seconds:.1f} s of 503s; {outage_calls} idpass calls during it "
          f"(bound {bound}; without a breaker up to {len(idpass) * MAX_ATTEMPTS}), "
          f"{held} holds by the open circuit, breaker closed {closed_after:.1f} s after "
          f"recovery; all cancelled, lost 0")


@pytest.mark.slow
def test_outage_longer_than_the_budget_dead_letters_then_replay_completes(
    rel: RelStack,
) -> None:
    # Given a 3 s retry deadline and ID Pass down for longer than that
    rel.start_worker(concurrency=CONCURRENCY, IDVCANCEL_RETRY_DEADLINE_SECONDS="3",
                     **BREAKER_ENV)
    requests = rel.seeded_requests(30)
    ids = [r["request_id"] for r in requests]
    rel.sim_client.set_faults("idpass", down=True)
    rel.producer.submit_many(requests)
    # Then every request ends failed, with a dead letter each
    failed = rel.wait_results(ids, timeout=60)
    assert Counter(e["outcome"] for e in failed.values()) == {"failed": 30}
    codes = Counter(e["error"]["code"] for e in failed.values())
    assert set(codes) <= {"circuit_open", "provider_server_error"}
    assert sorted(rel.redis.hkeys("idvcancel:dlq")) == sorted(ids)
    for rid in ids:
        assert [r["step"] for r in rel.audit(rid)][-1] == "dead_lettered"
    assert all(rel.sim_client.status("idpass", r["reference"]) == "new" for r in requests)
    # When ID Pass is back and an operator replays every dead letter
    rel.sim_client.set_faults("idpass")
    replay = subprocess.run([str(IDVCANCEL), "dlq", "replay", "--all"],
                            env={**os.environ, "IDVCANCEL_REDIS_URL": rel.redis_url},
                            capture_output=True, text=True, timeout=60, check=False)
    assert replay.returncode == 0, replay.stderr
    replayed = [json.loads(line) for line in replay.stdout.splitlines() if line.strip()]
    assert Counter(r["status"] for r in replayed) == {"replayed": 30}
    # Then each request gets a second, final result: cancelled (replay is the one
    # documented exception to "one event per request": one event per run)
    wait_until(lambda: all(len(rel.grouped().get(rid, [])) >= 2 for rid in ids), 60,
               "a second result for every replayed request")
    time.sleep(1.0)  # not an assertion: lets a third event, if any, show up
    grouped = rel.grouped()
    runs = Counter(tuple(e["outcome"] for e in grouped[rid]) for rid in ids)
    assert runs == {("failed", "cancelled"): 30}
    assert rel.redis.hlen("idvcancel:dlq") == 0
    assert rel.effective_duplicates() == []
    assert all(rel.sim_client.status("idpass", r["reference"]) == "cancelled"
               for r in requests)
    assert all("replayed" in [r["step"] for r in rel.audit(rid)] for rid in ids)
    rel.assert_chain_intact()
    print(f"\nlong outage: {len(ids)} requests failed ({dict(codes)}), 30 dead letters; "
          f"'idvcancel dlq replay --all' -> all cancelled, lost 0")
