"""The alert rules (deploy/prometheus/alerts.yml) against what a real worker exports.

A real worker process (``IDVCANCEL_METRICS_PORT`` on a free port) on a private Redis and
the simulator carries out real requests; its ``/metrics`` is scraped twice: once after a
healthy run, once after the faults each alert names (a provider down until its breaker
opens and its requests run into their retry deadline and become dead letters, refused
credentials, an audit record inserted behind the chain's back, a request left waiting).
``tests.alerting`` turns the scrapes into promtool's series and ``promtool test rules``
says which alerts fire when.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import alerting
from tests.reliability.conftest import RelStack, close_stack, free_port, open_stack
from tests.tools import promtool

IDVCANCEL = Path(sys.executable).parent / "idvcancel"
#: A deadline short enough to run into within the test; a breaker that opens after three
#: failures, for a second at a time (a held request is looked at again when it closes, so
#: several looks fall in the last 20% of the deadline).
WORKER_ENV = {
    "IDVCANCEL_RETRY_DEADLINE_SECONDS": "8",
    "IDVCANCEL_RETRY_MAX_ATTEMPTS": "100",
    "IDVCANCEL_BREAKER_FAILURE_THRESHOLD": "3",
    "IDVCANCEL_BREAKER_OPEN_SECONDS": "1",
    "IDVCANCEL_BREAKER_PROBE_SECONDS": "3",
}
#: Minutes promtool holds the healthy scrape, then the scrape after the faults.
HEALTHY_MINUTES, TROUBLE_MINUTES = 10, 20
#: When the alerts without ``for`` (and the breaker's 1 m) are looked at; and the
#: "no results" alert, whose age must pass 10 minutes and then hold 5.
EARLY, LATE = "15m", "28m"
ALERTS = sorted(alerting.alert_rules())


def run_cli(stack: RelStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([IDVCANCEL, *args], env={**os.environ, **stack.env},
                          capture_output=True, text=True, timeout=60, check=False)


def scrape(port: int) -> dict[str, float]:
    answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    answer.raise_for_status()
    return alerting.samples(answer.text)


def healthy_run(stack: RelStack) -> None:
    """A request to each of four providers, every one ending well; the chain verified."""
    cases = [("idpass", "new", {}), ("txcloud", "pending", {}),
             ("gu1", "in_review", {"reason": "customer abandoned the application"}),
             ("onespan", "new", {})]
    requests = []
    for provider, status, fields in cases:
        request = stack.request(provider, **fields)
        stack.sim_client.seed(provider, [{"reference": request["reference"],
                                          "status": status}])
        requests.append(request)
    stack.producer.submit_many(requests)
    results = stack.wait_results([r["request_id"] for r in requests], timeout=60, settle=0)
    assert {e["outcome"] for e in results.values()} == {"cancelled"}
    assert run_cli(stack, "audit", "verify").returncode == 0


def faults(stack: RelStack) -> None:
    """ID Pass down until its requests end failed past their deadline, OneSpan refusing
    our token, an audit record inserted; then one more ID Pass request, left waiting
    behind the open breaker."""
    stack.sim_client.set_faults("idpass", down=True)
    down = stack.seeded_requests(4, provider="idpass", prefix="down")
    stack.producer.submit_many(down)
    outcomes = stack.wait_results([r["request_id"] for r in down], timeout=60, settle=0)
    assert {e["outcome"] for e in outcomes.values()} == {"failed"}
    assert stack.redis.hget("idvcancel:breaker:idpass", "state") in ("open", "half_open")
    refused = stack.request("onespan")
    stack.sim_client.seed("onespan", [{"reference": refused["reference"], "status": "new"}])
    stack.sim_client.script_reference("onespan", refused["reference"], [401], sticky=True)
    stack.producer.submit(refused)
    assert stack.wait_results([refused["request_id"]], timeout=30,
                              settle=0)[refused["request_id"]]["outcome"] == "unauthorized"
    last = stack.audit()[-1]
    stack.redis.xadd("idvcancel:audit", {"record": json.dumps({**last, "outcome": "deleted"})})
    assert run_cli(stack, "audit", "verify").returncode == 1
    stack.producer.submit_many(stack.seeded_requests(1, provider="idpass", prefix="held"))


@pytest.fixture(scope="module")
def scrapes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, float]]]:
    """``healthy`` and ``trouble``: what the worker's /metrics said after each run."""
    stack = open_stack(tmp_path_factory.mktemp("alerts"))
    failed = True
    try:
        port = free_port()
        stack.start_worker(concurrency=8, IDVCANCEL_METRICS_PORT=str(port), **WORKER_ENV)
        healthy_run(stack)
        healthy = scrape(port)
        faults(stack)
        trouble = scrape(port)
        failed = False
        yield {"healthy": healthy, "trouble": trouble}
    finally:
        close_stack(stack, show_logs=failed)


def series(healthy: dict[str, float], trouble: dict[str, float] | None = None
           ) -> list[dict[str, str]]:
    if trouble is None:
        return alerting.input_series([(healthy, HEALTHY_MINUTES + TROUBLE_MINUTES)])
    return alerting.input_series([(healthy, HEALTHY_MINUTES), (trouble, TROUBLE_MINUTES)])


def test_the_rules_file_passes_promtool_check() -> None:
    """Given alerts.yml, when ``promtool check rules`` reads it, then it finds no error."""
    proc = subprocess.run([promtool(), "check", "rules", str(alerting.ALERTS_FILE)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_prometheus_config_passes_promtool_check() -> None:
    """Given prometheus.yml (the compose stack's), when ``promtool check config`` reads it
    and the rule files it names, then it finds no error."""
    config = alerting.ALERTS_FILE.parent / "prometheus.yml"
    proc = subprocess.run([promtool(), "check", "config", str(config)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 rule files found" in proc.stdout


def test_no_alert_fires_on_a_healthy_worker(
        scrapes: dict[str, dict[str, float]], tmp_path: Path) -> None:
    """Given the scrape of a worker that carried out every request well (held for half an
    hour, the last result ageing), then no alert fires, early or late."""
    assert scrapes["healthy"]['idvcancel_backlog{instance="worker:9100",'
                              'job="idvcancel-worker",provider="idpass"}'] == 0
    checks = [{"eval_time": at, "alertname": name, "exp_alerts": []}
              for name in ALERTS for at in (EARLY, LATE)]
    proc = alerting.promtool_test(promtool(), tmp_path, series(scrapes["healthy"]), checks)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_each_alert_fires_on_the_fault_it_names(
        scrapes: dict[str, dict[str, float]], tmp_path: Path) -> None:
    """Given the healthy scrape for 10 minutes, then the scrape after the faults, then
    each alert fires with the labels of its fault, and only those."""
    want: dict[str, tuple[str, list[dict[str, Any]]]] = {
        "IdvcancelBreakerOpen": (EARLY, [alerting.expected("IdvcancelBreakerOpen",
                                                           provider="idpass")]),
        "IdvcancelDeadLettersGrowing": (EARLY, [alerting.expected(
            "IdvcancelDeadLettersGrowing")]),
        "IdvcancelUnauthorized": (EARLY, [alerting.expected("IdvcancelUnauthorized",
                                                            provider="onespan")]),
        "IdvcancelRetriesNearDeadline": (EARLY, [alerting.expected(
            "IdvcancelRetriesNearDeadline", provider="idpass")]),
        "IdvcancelAuditVerificationFailing": (EARLY, [alerting.expected(
            "IdvcancelAuditVerificationFailing", by="cli")]),
        "IdvcancelNoResultsWhileRequestsWait": (LATE, [alerting.expected(
            "IdvcancelNoResultsWhileRequestsWait")]),
    }
    assert sorted(want) == ALERTS  # every rule is exercised
    checks = [{"eval_time": at, "alertname": name, "exp_alerts": alerts}
              for name, (at, alerts) in want.items()]
    # and the "no results" alert waits: not yet at EARLY, the last result 5 minutes old
    checks.append({"eval_time": EARLY, "alertname": "IdvcancelNoResultsWhileRequestsWait",
                   "exp_alerts": []})
    proc = alerting.promtool_test(promtool(), tmp_path,
                                  series(scrapes["healthy"], scrapes["trouble"]), checks)
    assert proc.returncode == 0, proc.stdout + proc.stderr
