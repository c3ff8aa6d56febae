"""Fairness under a rate limit and an open breaker (issue 9, part 2).

    .venv/bin/python bench/fairness.py            # full: 1,200 behind 20/s; 5,000 behind a
                                                  # 600 s outage
    .venv/bin/python bench/fairness.py --quick    # the same, outage 60 s and 1,000 waiting
    .venv/bin/python bench/run.py --only fairness [--quick]

Real parts: its own Redis, the simulator in its own process (every call it receives is
recorded with its time: the windows below are counted *at the provider*), and one real
worker process (``celery -A worker.app worker -P threads -c 128``).

A: ``IDVCANCEL_RATE_LIMITS={"txcloud": 20}``. 100 ID Pass cancels at 10/s alone; then
   1,200 TXCloud cancels, and once they wait (parked), 100 ID Pass cancels at 10/s again.
B: TXCloud down (503 to every call) for the outage; 5,000 TXCloud cancels wait on its
   open breaker while 100 ID Pass cancels go at 10/s; then TXCloud comes back and the
   backlog drains behind the same 20/s limit.

Each figure is printed beside its target. Not a test: numbers vary with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run import LOGS, Simulator  # noqa: E402
from worker.broker.producer import Producer  # noqa: E402
from worker.local.procs import WorkerProcess  # noqa: E402
from worker.local.redis_server import RedisServer  # noqa: E402
from worker.local.simulator.client import SimulatorClient, most_in_window  # noqa: E402

RATE = 20.0
HELD = ("rate_limited", "circuit_open")


def requests(provider: str, n: int, tag: str) -> list[dict[str, Any]]:
    run = uuid.uuid4().hex[:6]
    return [{"request_id": f"{tag}-{run}-{i}", "provider": provider, "action": "cancel",
             "reference": (str(uuid.uuid4()) if provider == "idpass"
                           else f"ref{uuid.uuid4().hex[:20]}"),
             "requested_by": "bench"} for i in range(n)]


def max_fixed(times: Iterable[float]) -> int:
    """Most calls within one calendar second (fixed buckets)."""
    return max(Counter(int(t) for t in times).values(), default=0)


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else values[0]


@dataclass
class Run:
    """One stack: Redis, the simulator, a worker, a producer."""

    server: RedisServer
    sim: Simulator
    worker: WorkerProcess
    client: redis.Redis
    producer: Producer
    sim_client: SimulatorClient

    @classmethod
    def open(cls, env: dict[str, str], tag: str) -> Run:
        server = RedisServer()
        server.start()
        sim = Simulator(0)
        full = {"IDVCANCEL_REDIS_URL": server.url, "IDVCANCEL_LEASE_SECONDS": "30",
                **sim.env, **env}
        worker = WorkerProcess(full, concurrency=128, pool="threads", loglevel="INFO",
                               name=f"fair-{tag}-{uuid.uuid4().hex[:4]}@%h",
                               log_path=LOGS / f"fairness-{tag}.log")
        worker.start().wait_ready(90)
        return cls(server, sim, worker, redis.Redis.from_url(server.url, decode_responses=True),
                   Producer(server.url), SimulatorClient(sim.url))

    def close(self) -> None:
        self.worker.stop()
        self.producer.close()
        self.sim_client.close()
        self.sim.stop()
        self.server.stop()

    # -- measuring ---------------------------------------------------------------------
    def cpu(self) -> float:
        """CPU seconds the worker process used so far (user + system, /proc; the thread
        pool runs in this one process)."""
        fields = Path(f"/proc/{self.worker.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stream(self, key: str, field: str) -> Iterator[tuple[float, dict[str, Any]]]:
        """Every entry of a stream, paged: (when it was written, s; its decoded field)."""
        low = "-"
        while True:
            page = cast("list[tuple[str, dict[str, str]]]",
                        self.client.xrange(key, min=low, count=5000))
            for entry_id, fields in page:
                yield int(entry_id.split("-")[0]) / 1000, json.loads(fields[field])
            if len(page) < 5000:
                return
            low = "(" + page[-1][0]

    def results(self) -> dict[str, list[tuple[float, dict[str, Any]]]]:
        """Every result event by request id, with when it was written (s)."""
        out: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        for at, event in self.stream("idvcancel:results", "event"):
            out.setdefault(event["request_id"], []).append((at, event))
        return out

    def audit_steps(self) -> dict[str, Counter[str]]:
        """Per request id, how many audit records of each step (holds by their reason)."""
        out: dict[str, Counter[str]] = {}
        for _, record in self.stream("idvcancel:audit", "record"):
            step = record["step"]
            if step == "retry_scheduled":
                step = f"retry_scheduled:{record.get('error')}"
            out.setdefault(record["request_id"], Counter())[step] += 1
        return out

    def sent_at(self, provider: str, since: float) -> list[float]:
        """When each call to ``provider`` left the worker (its audit ``attempt`` record:
        written after the answer, minus the call's duration)."""
        return [at - record["duration_ms"] / 1000
                for _, record in self.stream("idvcancel:audit", "record")
                if record["step"] == "attempt" and record["provider"] == provider
                and (at := datetime.fromisoformat(record["at"]).timestamp()) >= since]

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> float:
        start = time.monotonic()
        while not predicate():
            if time.monotonic() - start > timeout:
                raise SystemExit(f"timed out after {timeout:.0f} s: {what}")
            time.sleep(0.2)
        return time.monotonic() - start

    def done(self, ids: Iterable[str]) -> bool:
        pipe = self.client.pipeline(transaction=False)
        wanted = list(ids)
        for rid in wanted:
            pipe.hget(f"idvcancel:req:{rid}", "phase")
        return all(phase == "done" for phase in pipe.execute())

    def taken_in(self, ids: list[str]) -> bool:
        """Every request has reached a worker (a ledger) and the queue is empty."""
        pipe = self.client.pipeline(transaction=False)
        for rid in ids:
            pipe.exists(f"idvcancel:req:{rid}")
        pipe.llen("idvcancel")
        *seen, queued = pipe.execute()
        return all(seen) and queued == 0

    def paced(self, batch: list[dict[str, Any]], rate: float) -> dict[str, float]:
        """Send ``batch`` at ``rate``/s, one message each; returns when each left."""
        sent: dict[str, float] = {}
        start = time.time()
        for i, req in enumerate(batch):
            if (pause := start + i / rate - time.time()) > 0:
                time.sleep(pause)
            sent[req["request_id"]] = time.time()
            self.producer.submit(req)
        return sent

    def latency_p99(self, sent: dict[str, float], timeout: float) -> float:
        self.wait(lambda: self.done(sent), timeout, "the ID Pass requests end")
        results = self.results()
        return p99([(results[rid][0][0] - at) * 1000 for rid, at in sent.items()])

    def calls(self, provider: str) -> list[dict[str, Any]]:
        return self.sim_client.calls(provider)


def check(name: str, value: str, target: str, ok: bool) -> bool:
    print(f"  {name:<44} {value:>16}   target {target:<22} {'ok' if ok else 'MISSED'}",
          flush=True)
    return ok


def exactly_once(run: Run, ids: list[str], provider: str) -> bool:
    """Every request has one result event; a cancelled one had one successful call."""
    results = run.results()
    events = Counter(len(results.get(rid, [])) for rid in ids)
    ok_calls = Counter(c["reference"] for c in run.calls(provider) if c["status"] < 400)
    outcomes = Counter(results[rid][0][1]["outcome"] for rid in ids if results.get(rid))
    refs = {results[rid][0][1]["reference"] for rid in ids if results.get(rid)}
    doubled_calls = sum(1 for ref in refs if ok_calls[ref] > 1)
    lost = events.get(0, 0)
    doubled = sum(n for count, n in events.items() if count > 1)
    return check(f"{provider}: lost / doubled events / 2nd calls",
                 f"{lost} / {doubled} / {doubled_calls}", "0 / 0 / 0",
                 lost == doubled == doubled_calls == 0) and check(
        f"{provider}: outcomes", ",".join(f"{k}={v}" for k, v in outcomes.items()),
        "all cancelled", set(outcomes) == {"cancelled"})


def republishes(run: Run, ids: list[str], provider: str) -> bool:
    """Publishes per held request beyond its first: each hold (audit ``retry_scheduled``)
    is one release, each transient retry one countdown, each resubmission one push."""
    steps = run.audit_steps()
    held = [steps[rid] for rid in ids if any(steps[rid][f"retry_scheduled:{r}"] for r in HELD)]
    counts = [sum(n for step, n in c.items() if step.startswith("retry_scheduled"))
              + c["resubmitted"] for c in held]
    released = int(run.client.hget("idvcancel:held:stats", f"released:{provider}") or 0)
    if not counts:
        return check(f"{provider}: held requests", "0", "> 0", False)
    mean, worst = statistics.fmean(counts), max(counts)
    print(f"  {provider}: {len(held)} held; releases published {released}; "
          f"publishes per held request {Counter(counts).most_common()}", flush=True)
    return check(f"{provider}: re-publishes per held request", f"{mean:.2f} (max {worst})",
                 "<= 3", worst <= 3)


def windows(name: str, times: list[float], limit: float, sent: list[float]) -> bool:
    """The drain rate and the most calls in one second, at the provider (the simulator's
    record of each call it received); beside them the same at the worker (when each call
    left it), which shows how much the trip between the two bunched calls up."""
    print(f"  {name}: at the worker, most calls in any 1 s: {most_in_window(sent)} sliding, "
          f"{max_fixed(sent)} in a calendar second; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    sliding, fixed = most_in_window(times), max_fixed(times)
    span = max(times) - min(times) if len(times) > 1 else 0.0
    rate = (len(times) - 1) / span if span else 0.0
    ok = check(f"{name}: drain rate", f"{rate:.2f}/s = {rate / limit:.1%}", ">= 90 % of limit",
               rate >= 0.9 * limit)
    ok &= check(f"{name}: most calls in any 1 s (sliding)", str(sliding), f"<= {limit:g}",
                sliding <= limit)
    return check(f"{name}: most calls in a calendar second", str(fixed), f"<= {limit:g}",
                 fixed <= limit) and ok


def fairness_target(alone: float, loaded: float, name: str) -> bool:
    bound = max(2 * alone, 1000.0)
    return check(f"{name}: idpass p99 enqueue -> result", f"{loaded:.0f} ms",
                 f"<= {bound:.0f} ms (alone {alone:.0f})", loaded <= bound)


def take_in(run: Run, backlog: int, timeout: float) -> list[str]:
    """Submit ``backlog`` TXCloud cancels at once and wait until every one is waiting."""
    txc = requests("txcloud", backlog, "txc")
    run.producer.submit_many(txc)
    took = run.wait(lambda: run.taken_in([r["request_id"] for r in txc]), timeout,
                    "the backlog waits")
    print(f"  {backlog} txcloud taken in and parked in {took:.1f} s", flush=True)
    return [r["request_id"] for r in txc]


def drain(run: Run, name: str, ids: list[str], since: float) -> bool:
    """Wait for the backlog to end; check its pace at the provider, its re-publishes,
    the worker's CPU meanwhile and that each request ended once."""
    cpu0, wall0 = run.cpu(), time.monotonic()
    run.wait(lambda: run.done(ids), len(ids) / RATE * 2 + 120, "the backlog drains")
    cpu = (run.cpu() - cpu0) / (time.monotonic() - wall0)
    times = [c["time"] for c in run.calls("txcloud") if c["time"] >= since]
    (LOGS / f"fairness-{name[0].lower()}-calls.json").write_text(json.dumps(times))
    ok = windows(f"{name} txcloud", times, RATE, run.sent_at("txcloud", since))
    ok &= republishes(run, ids, "txcloud")
    ok &= check(f"{name} worker CPU while draining", f"{cpu:.1%} of a core", "<= 20 %",
                cpu <= 0.2)
    return exactly_once(run, ids, "txcloud") and ok


def scenario_a(backlog: int) -> bool:
    print(f"A: {backlog} txcloud behind {RATE:g}/s, then 100 idpass at 10/s", flush=True)
    run = Run.open({"IDVCANCEL_RATE_LIMITS": json.dumps({"txcloud": RATE})}, "a")
    try:
        alone = run.latency_p99(run.paced(requests("idpass", 100, "alone"), 10), 60)
        start = time.time()
        ids = take_in(run, backlog, 120)
        loaded = run.latency_p99(run.paced(requests("idpass", 100, "busy"), 10), 120)
        ok = fairness_target(alone, loaded, "A")
        return drain(run, "A", ids, start) and ok
    finally:
        run.close()


def scenario_b(backlog: int, outage: float) -> bool:
    open_s = max(2.0, outage / 20)
    print(f"B: txcloud down {outage:g} s (breaker open {open_s:g} s per probe), {backlog}"
          f" waiting, 100 idpass at 10/s meanwhile; then the drain at {RATE:g}/s", flush=True)
    run = Run.open({"IDVCANCEL_RATE_LIMITS": json.dumps({"txcloud": RATE}),
                    "IDVCANCEL_BREAKER_OPEN_SECONDS": f"{open_s:g}",
                    "IDVCANCEL_BREAKER_PROBE_SECONDS": f"{open_s:g}"}, "b")
    try:
        alone = run.latency_p99(run.paced(requests("idpass", 100, "alone"), 10), 60)
        run.sim_client.set_faults("txcloud", down=True)
        down_at = time.monotonic()
        ids = take_in(run, backlog, 300)
        loaded = run.latency_p99(run.paced(requests("idpass", 100, "busy"), 10), 120)
        ok = fairness_target(alone, loaded, "B")
        quiet = outage - (time.monotonic() - down_at)
        cpu0, wall0 = run.cpu(), time.monotonic()
        time.sleep(max(0.0, quiet))
        idle = (run.cpu() - cpu0) / (time.monotonic() - wall0) if quiet > 0 else float("nan")
        ok &= check("B worker CPU while waiting (quiet)", f"{idle:.1%} of a core", "~0",
                    idle <= 0.05)
        failed = sum(1 for c in run.calls("txcloud") if c["status"] >= 500)
        run.sim_client.set_faults("txcloud")
        up = time.time()
        print(f"  outage over after {time.monotonic() - down_at:.0f} s; 503s answered "
              f"{failed} (the breaker's threshold, calls in flight, probes)", flush=True)
        return drain(run, "B (after recovery)", ids, up) and ok
    finally:
        run.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="a,b", help="scenarios: a, b or a,b")
    parser.add_argument("--outage", type=float, help="seconds (default 600; --quick 60)")
    parser.add_argument("--waiting", type=int, help="B's backlog (default 5000; --quick 1000)")
    parser.add_argument("--backlog", type=int, default=1200, help="A's backlog")
    args = parser.parse_args(argv)
    outage = args.outage or (60.0 if args.quick else 600.0)
    waiting = args.waiting or (1000 if args.quick else 5000)
    ok = True
    if "a" in args.only:
        ok &= scenario_a(args.backlog)
    if "b" in args.only:
        ok &= scenario_b(waiting, outage)
    print("fairness: every target met" if ok else "fairness: some target MISSED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
