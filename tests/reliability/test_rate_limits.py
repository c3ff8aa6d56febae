"""Rate limits: ours (shared through Redis by every worker) and the provider's (429).

Our limiter is strict at the provider: at 20/s, never 21 calls within any one-second
window there (no burst), whatever the number of worker processes. A provider's 429 with a
Retry-After is honoured (no call before the delay) and counted on ``/metrics``.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.reliability.conftest import RelStack, free_port
from worker.local.simulator.client import most_in_window

RATE = 20.0


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` of one worker as {(sample name, sorted labels): value}."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def rate_limited(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], provider: str,
                 by: str) -> float:
    key = ("idvcancel_rate_limited_total", (("by", by), ("provider", provider)))
    return samples.get(key, 0.0)


@pytest.mark.slow
def test_shared_limit_holds_across_two_worker_processes(rel: RelStack) -> None:
    # Given two worker processes limited to 20 ID Pass calls a second in all
    ports = [free_port(), free_port()]
    # (a quarter-second margin: see tests/reliability/test_parking.py's LIMITED)
    workers = [rel.launch_worker(concurrency=16, IDVCANCEL_RATE_LIMITS=json.dumps({"idpass": RATE}),
                                 IDVCANCEL_RATE_LIMIT_MARGIN="0.25",
                                 IDVCANCEL_METRICS_PORT=str(port)) for port in ports]
    for proc in workers:
        proc.wait_ready(90)
    requests = rel.seeded_requests(120)
    # When 120 cancels arrive at once
    rel.producer.submit_many(requests)
    results = rel.wait_results([r["request_id"] for r in requests], timeout=75)
    assert Counter(e["outcome"] for e in results.values()) == {"cancelled": 120}
    # Then the provider never saw more than 20 calls in any second, across both
    times = [c["time"] for c in rel.sim_client.calls("idpass")]
    assert len(times) == 120
    peak = most_in_window(times, 1.0)
    assert peak <= RATE, f"{peak} calls within one second"
    span = max(times) - min(times)
    steady_rate = (len(times) - 1) / span
    assert steady_rate <= RATE, f"{steady_rate:.1f} calls/s"
    # and both processes did part of the work, under the one shared limit
    per_worker = [proc.log_text().count('"event": "completed"') for proc in workers]
    assert all(n > 0 for n in per_worker), per_worker
    held = [rate_limited(scrape(port), "idpass", "local") for port in ports]
    assert sum(held) > 0, "the limiter never held a call back"
    for port in ports:
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        assert health.status_code == 200 and health.text == "ok"
    holds = sum(1 for r in rel.audit() if r["step"] == "retry_scheduled"
                and r.get("error") == "rate_limited")
    print(f"\nrate limit: 120 requests, 2 workers ({per_worker} each), limit {RATE:g}/s: "
          f"peak {peak} calls in any 1 s window, {steady_rate:.1f}/s over "
          f"{span:.1f} s, {sum(held):g} local limiter refusals, {holds} audited holds; "
          f"lost 0")


@pytest.mark.parametrize("provider", ["idpass", "txcloud"])
def test_provider_429_retry_after_is_honoured_and_counted(rel: RelStack, provider: str) -> None:
    # Given a worker serving /metrics
    port = free_port()
    rel.start_worker(concurrency=4, IDVCANCEL_METRICS_PORT=str(port))
    status = "new" if provider == "idpass" else "pending"
    (request,) = rel.seeded_requests(1, provider=provider, status=status)
    # and the provider answers 429 twice, asking us to come back after 2 s
    rel.sim_client.set_faults(provider, fail_next=[429, 429], retry_after=2)
    # When the cancel is submitted
    rel.producer.submit(request)
    event = rel.wait_results([request["request_id"]], timeout=60)[request["request_id"]]
    # Then the request still ends cancelled, on the third call
    assert event["outcome"] == "cancelled" and event["attempts"] == 3
    calls = rel.sim_client.calls(provider, request["reference"])
    assert [c["status"] for c in calls] == [429, 429, 200]
    # and no call came before the provider's Retry-After had passed
    gaps = [b["time"] - a["time"] for a, b in itertools.pairwise(calls)]
    assert all(gap >= 2.0 for gap in gaps), gaps
    delays = [r["delay_s"] for r in rel.audit(request["request_id"])
              if r["step"] == "retry_scheduled"]
    assert len(delays) == 2 and all(d >= 2.0 for d in delays), delays
    # and the 429s are counted on /metrics, and /healthz says ok
    assert rate_limited(scrape(port), provider, "provider") == 2
    health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
    assert health.status_code == 200
