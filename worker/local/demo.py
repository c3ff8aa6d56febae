"""``idvcancel demo``: the whole job end to end on one machine, nothing preinstalled.

Where it runs (its own Redis, or its own database on ``IDVCANCEL_REDIS_URL``; its own
folder for logs) is ``worker.local.demo_site``. It starts the provider simulator and real
worker processes, sends a sample batch chosen to reach every outcome, waits for every
result event, prints them as a table, verifies the audit chain, and exits 0 only if every
request ended as expected and the chain is intact.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis

from worker.broker.producer import Producer
from worker.errors import DemoError, WorkerStartError
from worker.journal.verify import verify_stream
from worker.local.demo_site import DemoSite
from worker.local.procs import WorkerProcess
from worker.local.simulator.client import SimulatorClient
from worker.local.simulator.server import Simulator

#: Retry settings for the demo: fast, so the "failed" case is over in seconds.
DEMO_ENV = {
    "IDVCANCEL_RETRY_BASE_SECONDS": "0.1",
    "IDVCANCEL_RETRY_CAP_SECONDS": "0.5",
    "IDVCANCEL_RETRY_MAX_ATTEMPTS": "3",
    "IDVCANCEL_HTTP_TIMEOUT_SECONDS": "5",
    "IDVCANCEL_VISIBILITY_TIMEOUT_SECONDS": "30",
    "IDVCANCEL_LEASE_SECONDS": "15",
    "IDVCANCEL_JUMIO_USER_AGENT": "idv-cancel demo/0.1",
    "IDVCANCEL_RATE_LIMITS": '{"txcloud": 5, "jumio": 15}',
    # The idpass cases that fail on purpose can open idpass's breaker (five failures, in
    # whichever order they run): it must hold the "503 x2 then ok" case back for a second,
    # not for the production 30 s.
    "IDVCANCEL_BREAKER_OPEN_SECONDS": "1",
    "IDVCANCEL_BREAKER_PROBE_SECONDS": "1",
}
#: A worker that has not said "ready." by then is reported with its log (Redis and the
#: broker were checked before: this is a worker that cannot start).
WORKER_READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Case:
    """One sample request, the session state behind it, and the outcome it must reach."""

    label: str
    provider: str
    action: str
    expect: str
    status: str | None = None  # seeded session status; None = no such session
    stuck: int | None = None  # the simulator answers this status to every call
    fail_first: tuple[int, ...] = ()
    reason: str | None = None
    options: dict[str, Any] | None = None


CASES = [
    Case("idpass new → refund", "idpass", "cancel", "cancelled", status="new"),
    Case("idpass in_progress → no refund", "idpass", "cancel", "cancelled",
         status="in_progress"),
    Case("idpass 503 ×2 then ok", "idpass", "cancel", "cancelled", status="opened",
         fail_first=(503, 503)),
    Case("idpass complete", "idpass", "cancel", "not_cancellable", status="complete"),
    Case("idpass unknown pass", "idpass", "cancel", "not_found"),
    Case("idpass delete (no API)", "idpass", "delete", "rejected", status="new"),
    Case("idpass bad credentials", "idpass", "cancel", "unauthorized", status="new", stuck=401),
    Case("idpass down for good", "idpass", "cancel", "failed", status="new", stuck=503),
    Case("txcloud pending", "txcloud", "cancel", "cancelled", status="pending"),
    Case("txcloud verified", "txcloud", "cancel", "not_cancellable", status="verified"),
    Case("txcloud 429 then ok", "txcloud", "cancel", "cancelled", status="pending",
         fail_first=(429,)),
    Case("gu1 in_review", "gu1", "cancel", "cancelled", status="in_review",
         reason="customer abandoned the application"),
    Case("gu1 reason too short", "gu1", "cancel", "rejected", status="pending", reason="no"),
    Case("gu1 approved", "gu1", "cancel", "not_cancellable", status="approved",
         reason="customer abandoned the application"),
    Case("jumio scan (eu)", "jumio", "delete", "deleted", status="DONE",
         options={"product": "scan", "region": "eu"}),
    Case("jumio document (sgp)", "jumio", "delete", "deleted", status="PENDING",
         options={"product": "document", "region": "sgp"}),
    Case("jumio unknown scan", "jumio", "delete", "not_found"),
    Case("jumio cancel (no API)", "jumio", "cancel", "rejected", status="PENDING"),
    Case("onespan cancel", "onespan", "cancel", "cancelled", status="new"),
    Case("onespan completed", "onespan", "cancel", "not_cancellable", status="completed"),
    Case("onespan erase", "onespan", "delete", "deleted", status="completed"),
    Case("onespan erase unknown", "onespan", "delete", "not_found"),
    Case("onespan bad token", "onespan", "cancel", "unauthorized", status="new", stuck=401),
]


def _reference(provider: str) -> str:
    return str(uuid.uuid4()) if provider == "idpass" else f"demo-{uuid.uuid4().hex[:16]}"


def _prepare(sim: SimulatorClient, run: str) -> list[tuple[Case, dict[str, Any]]]:
    batch = []
    for i, case in enumerate(CASES):
        reference = _reference(case.provider)
        if case.status is not None:
            seed: dict[str, Any] = {"reference": reference, "status": case.status}
            if case.provider == "jumio":
                product = (case.options or {}).get("product", "scan")
                seed["product"] = {"scan": "scans", "document": "documents"}.get(
                    product, "authentications")
                seed["region"] = (case.options or {}).get("region", "us")
            sim.seed(case.provider, [seed])
        if case.stuck is not None or case.fail_first:
            statuses = [case.stuck] if case.stuck is not None else list(case.fail_first)
            sim.script_reference(case.provider, reference, statuses,
                                 sticky=case.stuck is not None)
        request: dict[str, Any] = {
            "request_id": f"demo-{run}-{i:02d}", "provider": case.provider,
            "action": case.action, "reference": reference, "requested_by": "idvcancel-demo",
            "reason": case.reason if case.reason is not None
            else "demo: customer abandoned the application",
        }
        if case.options:
            request["options"] = case.options
        batch.append((case, request))
    return batch


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def run_demo(workers: int = 1, *, db: int | None = None, keep: bool = False) -> int:
    """Run the demo where :class:`DemoSite` says (its own Redis, or its own database on
    ``IDVCANCEL_REDIS_URL``); 0 when every request ended as expected and the chain is
    intact. DemoError (one line) when it cannot start."""
    site = DemoSite.open(os.environ, db=db, keep=keep)
    try:
        with site:
            for line in site.lines:
                print(line)
            site.succeeded = _run(site, workers)
    finally:
        for line in site.farewell:
            print(line)
    return 0 if site.succeeded else 1


def _start_workers(site: DemoSite, env: dict[str, str], count: int) -> list[WorkerProcess]:
    procs = [WorkerProcess(env, concurrency=16, name=f"demo{i}@%h",
                           log_path=site.log_path(f"worker-{i}")) for i in range(count)]
    for proc in procs:
        proc.start()
    for proc in procs:
        try:
            proc.wait_ready(timeout=WORKER_READY_TIMEOUT_S)
        except WorkerStartError as exc:
            for started in procs:
                started.stop()
            code = proc.returncode
            last = next((line.strip() for line in reversed(proc.log_text().splitlines())
                         if line.strip()), "")
            why = (f"exited with code {code} ({last[:200]})" if code is not None
                   else f"was not ready after {WORKER_READY_TIMEOUT_S:.0f} s")
            raise DemoError(f"worker {proc.name.split('@')[0]} {why}; its log: "
                            f"{proc.log_path}") from exc
    return procs


def _run(site: DemoSite, workers: int) -> bool:
    url = site.redis_url
    sim = Simulator().start()
    procs: list[WorkerProcess] = []
    try:
        env = {**DEMO_ENV, **sim.base_urls(), **sim.credential_env(), **site.worker_env()}
        procs = _start_workers(site, env, workers)
        print(f"simulator: {sim.url}; workers: {len(procs)} ready")
        run = uuid.uuid4().hex[:8]
        with SimulatorClient(sim.url) as client:
            batch = _prepare(client, run)
        # Past the producer's rule check: the cases that break a rule (no delete API, a
        # short gu1 reason) are here to show the worker recording them rejected.
        producer = Producer(url, broker_url=site.broker_url or None, check_rules=False)
        for _case, request in batch:
            producer.submit(request)
        malformed_id = f"demo-{run}-malformed"
        producer.app.send_task("idvcancel.process", args=[{"request_id": malformed_id,
                               "provider": "acme", "action": "cancel"}], queue="idvcancel")
        expected = {r["request_id"]: c.expect for c, r in batch} | {malformed_id: "rejected"}
        labels = {r["request_id"]: c.label for c, r in batch} | {malformed_id: "malformed"}
        results = _wait(redis.Redis.from_url(url, decode_responses=True), expected, 120)
        rows = [["request", "case", "outcome", "expected", "attempts", "http", "refund", "error"]]
        ok = True
        for rid, want in expected.items():
            ev = results.get(rid, {})
            got = ev.get("outcome", "(none)")
            ok &= got == want
            rows.append([rid.rsplit("-", 1)[-1][:2], labels[rid],
                         got + (" ✓" if got == want else " ✗"), want,
                         str(ev.get("attempts", "")), str(ev.get("http_status") or "-"),
                         str(ev.get("fee_refunded") if ev.get("fee_refunded") is not None
                             else "-"), (ev.get("error") or {}).get("code", "-")])
        print()
        _print_table(rows)
        count, broken = verify_stream(redis.Redis.from_url(url, decode_responses=True))
        print()
        print(f"outcomes reached: {sorted({r.get('outcome', '?') for r in results.values()})}")
        print(f"audit chain: {count} records, " + ("intact" if broken is None
                                                 else f"BROKEN at {broken.describe()}"))
        producer.close()
        return ok and broken is None
    finally:
        for proc in procs:
            proc.stop()
        sim.stop()


def _wait(client: redis.Redis, expected: dict[str, str], timeout: float
          ) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    found: dict[str, dict[str, Any]] = {}
    last = "-"
    while time.monotonic() < deadline and len(found) < len(expected):
        entries: Any = client.xrange("idvcancel:results", min=last, max="+")
        for entry_id, fields in entries:
            last = "(" + entry_id
            event = json.loads(fields["event"])
            if event.get("request_id") in expected:
                found[event["request_id"]] = event
        time.sleep(0.1)
    return found


if __name__ == "__main__":
    sys.exit(run_demo())
