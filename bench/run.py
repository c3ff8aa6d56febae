"""idv-cancel benchmark: one run, one machine, every figure against its baseline.

    .venv/bin/python bench/run.py            # full run (a few minutes)
    .venv/bin/python bench/run.py --quick    # smaller counts, for a smoke check
    .venv/bin/python bench/run.py --only throughput --repeat 5
    .venv/bin/python bench/run.py --only transport     # bench/transport.py
    .venv/bin/python bench/run.py --only scaling       # bench/scaling.py, 1/2/4 workers

Starts its own Redis, the simulator (in its own process) and real worker processes;
prints each figure with its target. Not a test: numbers vary with the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worker.broker.producer import Producer  # noqa: E402
from worker.local.procs import WorkerProcess  # noqa: E402
from worker.local.rabbitmq_node import RabbitNode, find_rabbitmq_server  # noqa: E402
from worker.local.redis_server import RedisServer  # noqa: E402

#: Threads per worker process: enough to keep ~rate x latency calls in flight at 100 ms.
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "128"))
WORKERS = int(os.environ.get("BENCH_WORKERS", "1"))
POOL = os.environ.get("BENCH_POOL", "threads")
LOGS = ROOT / "var" / "bench"
LOGS.mkdir(parents=True, exist_ok=True)


class Simulator:
    """The simulator in its own process, so its CPU is not ours."""

    def __init__(self, latency_ms: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker.local.simulator", "--port", "0", "--autocreate",
             "--latency-ms", str(latency_ms)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        info = json.loads(self.proc.stdout.readline())
        self.url: str = info["url"]
        self.env: dict[str, str] = info["env"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True,
                         check=False).stdout
    return [int(p) for p in out.split()]


def env_for(url: str, sim: Simulator | None) -> dict[str, str]:
    env = {"IDVCANCEL_REDIS_URL": url, "IDVCANCEL_RATE_LIMITS": "{}",
           "IDVCANCEL_LEASE_SECONDS": "30"}
    if sim:
        env.update(sim.env)
    return env


def start_workers(env: dict[str, str], app: str = "worker.app") -> list[WorkerProcess]:
    procs = [WorkerProcess(env, concurrency=CONCURRENCY, app=app, loglevel="INFO", pool=POOL,
                           name=f"bench{i}-{uuid.uuid4().hex[:4]}@%h",
                           log_path=LOGS / f"worker-{i}.log")
             for i in range(WORKERS)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.wait_ready(60)
    return procs


def requests(n: int) -> list[dict[str, Any]]:
    run = uuid.uuid4().hex[:6]
    return [{"request_id": f"b-{run}-{i}", "provider": "idpass", "action": "cancel",
             "reference": str(uuid.uuid4()), "requested_by": "bench"} for i in range(n)]


def drain_rate(client: redis.Redis, done: Any, n: int, procs: list[WorkerProcess]) -> float:
    """Rate from the moment workers are ready until ``done()`` reaches ``n``."""
    start = time.perf_counter()
    while done() < n:
        time.sleep(0.01)
    return n / (time.perf_counter() - start)


def _send_raw(url: str, task: str, n: int) -> None:
    """``n`` messages for ``task`` through Celery's own producer (not ``submit_many``)."""
    producer = Producer(url)
    with producer.app.producer_or_acquire() as pub:
        for req in requests(n):
            producer.app.send_task(task, args=[req], queue="idvcancel", producer=pub)


def bench_baseline(n: int) -> float:
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        _send_raw(server.url, "bench.noop", n)
        procs = start_workers(env_for(server.url, None), app="bench.noop_app")

        def done() -> int:
            return n - int(client.llen("idvcancel")) - int(client.hlen("unacked"))
        rate = drain_rate(client, done, n, procs)
        for proc in procs:
            proc.stop()
        return rate


def _drain_with_simulator(n: int, latency_ms: float, app: str,
                          enqueue: Callable[[str], object]) -> tuple[float, dict[str, float]]:
    """Enqueue ``n`` requests, start ``app``'s workers against the simulator and time
    them until ``n`` result events are in; with worker RSS and Redis bytes per request."""
    sim = Simulator(latency_ms)
    try:
        with RedisServer() as server:
            client = redis.Redis.from_url(server.url)
            enqueue(server.url)
            procs = start_workers(env_for(server.url, sim), app=app)
            rate = drain_rate(client, lambda: int(client.xlen("idvcancel:results")), n, procs)
            memory = {f"worker{i} RSS MB": rss_mb(p.pid or 0) for i, p in enumerate(procs)}
            memory["redis bytes/request"] = int(client.info("memory")["used_memory"]) / n
            for proc in procs:
                proc.stop()
            return rate, memory
    finally:
        sim.stop()


def bench_floor(n: int) -> float:
    """``bench.floor_app``: claim, one raw HTTP call, record; nothing else."""
    return _drain_with_simulator(n, 0, "bench.floor_app",
                                 lambda url: _send_raw(url, "bench.floor", n))[0]


def bench_pipeline(n: int, latency_ms: float) -> tuple[float, dict[str, float]]:
    return _drain_with_simulator(n, latency_ms, "worker.app",
                                 lambda url: Producer(url).submit_many(requests(n)))


def bench_submit(n: int, broker: str = "redis") -> tuple[float, float]:
    """Bulk and one-at-a-time submission rates; ``broker="rabbitmq"`` publishes to a
    private RabbitMQ node under publisher confirms (the index still goes to Redis)."""
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(RedisServer())
        broker_url = None
        if broker == "rabbitmq":
            broker_url = stack.enter_context(RabbitNode()).url
        producer = Producer(server.url, broker_url=broker_url)
        stack.callback(producer.close)
        batch = requests(n)
        start = time.perf_counter()
        producer.submit_many(batch)
        bulk = n / (time.perf_counter() - start)
        single = requests(max(n // 10, 100))
        start = time.perf_counter()
        for req in single:
            producer.submit(req)
        one = len(single) / (time.perf_counter() - start)
        return bulk, one


def bench_latency(n: int, rate: float) -> tuple[float, float]:
    """Send at ``rate``/s; p50 and p99 from enqueue to the result event."""
    sim = Simulator(0)
    try:
        with RedisServer() as server:
            client = redis.Redis.from_url(server.url, decode_responses=True)
            procs = start_workers(env_for(server.url, sim))
            producer = Producer(server.url)
            sent: dict[str, float] = {}
            start = time.time()
            for i, req in enumerate(requests(n)):
                due = start + i / rate
                if (pause := due - time.time()) > 0:
                    time.sleep(pause)
                sent[req["request_id"]] = time.time()
                producer.submit(req)
            while client.xlen("idvcancel:results") < n:
                time.sleep(0.01)
            latencies = []
            results = cast("list[tuple[str, dict[str, str]]]",
                           client.xrange("idvcancel:results"))
            for entry_id, fields in results:
                event = json.loads(fields["event"])
                arrived = int(entry_id.split("-")[0]) / 1000
                latencies.append((arrived - sent[event["request_id"]]) * 1000)
            for proc in procs:
                proc.stop()
            q = statistics.quantiles(latencies, n=100)
            return q[49], q[98]
    finally:
        sim.stop()


def bench_sweep(total: int, due: int) -> tuple[float, float, int]:
    """Seed ``total`` tracked sessions (``due`` of them idle past the threshold) straight
    into the tracking keys, then time one sweep: select, claim and enqueue."""
    from config.settings import Settings
    from worker import keys
    from worker.triggers.sweep import run_sweep

    with RedisServer() as server:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        now = time.time()
        active = keys.track_active("idpass")
        seeded = time.perf_counter()
        for start in range(0, total, 20_000):
            with client.pipeline(transaction=False) as pipe:
                scores: dict[str, float] = {}
                for i in range(start, min(start + 20_000, total)):
                    ref = f"{uuid.UUID(int=i)}"
                    idle = 8 * 86400 if i < due else 3600
                    scores[ref] = now - idle
                    pipe.hset(keys.track_session("idpass", ref), mapping={
                        "reference": ref, "application_id": f"app-{i}", "status": "opened",
                        "last_activity": f"{now - idle:.3f}", "options": "{}",
                        "state": "active", "updated_at": f"{now:.3f}"})
                pipe.zadd(active, scores)
                pipe.execute()
        seed_s = time.perf_counter() - seeded
        settings = Settings(redis_url=server.url, sweep_batch_size=due)
        producer = Producer(server.url)
        start_t = time.perf_counter()
        report = run_sweep(client, settings, now=now, sender=producer)
        took = time.perf_counter() - start_t
        return took, seed_s, len(report.enqueued)


def bench_retention(n: int) -> tuple[float, float]:
    """Redis bytes per completed request before and after retention ran (ledger TTL
    elapsed, results capped, audit archived)."""
    sim = Simulator(0)
    try:
        with RedisServer() as server:
            client = redis.Redis.from_url(server.url, decode_responses=True)
            # A TTL of seconds so that the run can watch it expire; the settings insist
            # it exceed twice the visibility timeout, so that shrinks too.
            env = {**env_for(server.url, sim), "IDVCANCEL_LEDGER_TTL_SECONDS": "5",
                   "IDVCANCEL_VISIBILITY_TIMEOUT_SECONDS": "2",
                   "IDVCANCEL_RETRY_CAP_SECONDS": "0.2", "IDVCANCEL_HTTP_TIMEOUT_SECONDS": "0.7",
                   "IDVCANCEL_LEASE_SECONDS": "1.5", "IDVCANCEL_RESULTS_MAXLEN": "1000"}
            empty = int(client.info("memory")["used_memory"])
            Producer(server.url).submit_many(requests(n))
            procs = start_workers(env)
            deadline = time.time() + 300
            while time.time() < deadline and (client.llen("idvcancel")
                                              or client.hlen("unacked")):
                time.sleep(0.2)
            before = int(client.info("memory")["used_memory"]) - empty
            for proc in procs:
                proc.stop()
            time.sleep(6)  # the ledger TTL runs out
            try:
                from worker.journal.archive import archive_audit
                archive_audit(client, LOGS / "archive", 0, time.time())
            except ImportError:
                pass
            for _ in range(20):  # let Redis's active expiry reach the expired ledgers
                if not any(True for _ in client.scan_iter("idvcancel:req:*", count=1000)):
                    break
                time.sleep(0.5)
            after = int(client.info("memory")["used_memory"]) - empty
            return before / n, after / n
    finally:
        sim.stop()


def throughput_rounds(n: int, repeat: int) -> dict[str, Any]:
    """(1), the floor and (2), measured ``repeat`` times in interleaved rounds.

    On a shared machine the CPU on offer drifts between runs; a ratio taken within one
    round (the four runs back to back) is far steadier than one across rounds, so each
    ratio is the median of the per-round ratios.
    """
    rows: list[dict[str, float]] = []
    memory: dict[str, float] = {}
    for index in range(max(repeat, 1)):
        base = bench_baseline(n)
        pipe, memory = bench_pipeline(n, 0)
        floor = bench_floor(n)
        slow, _ = bench_pipeline(n, 100)
        rows.append({"baseline": base, "pipeline": pipe, "floor": floor, "slow": slow})
        print(f"    round {index + 1}: no-op {base:.0f}/s, pipeline {pipe:.0f}/s, floor "
              f"{floor:.0f}/s, pipeline @100 ms {slow:.0f}/s", flush=True)

    def median(key: str, over: str | None = None) -> float:
        return statistics.median(r[key] / (r[over] if over else 1.0) for r in rows)
    return {"baseline": median("baseline"), "pipeline": median("pipeline"),
            "floor": median("floor"), "slow": median("slow"),
            "ratio": median("pipeline", "baseline"), "floor_ratio": median("floor", "baseline"),
            "hidden": median("slow", "pipeline"), "memory": memory}


def _transport(n: int, args: argparse.Namespace) -> None:
    from bench import transport  # imports this module: only when asked for

    transport.main(["--quick"] if args.quick else [])


def _scaling(n: int, args: argparse.Namespace) -> None:
    from bench import scaling  # imports this module: only when asked for

    scaling.main(["--quick"] if args.quick else [])


def _cpu(n: int, args: argparse.Namespace) -> None:
    from bench import cpu

    cpu.report(cpu.rounds(n, args.repeat))


def _default(n: int, args: argparse.Namespace) -> None:
    from bench.default_worker import report

    report(1000 if args.quick else 3000, args.repeat, args.quick)


#: The parts in modules of their own, run after the ones above, in this order.
PARTS: dict[str, Callable[[int, argparse.Namespace], None]] = {
    "transport": _transport, "scaling": _scaling, "cpu": _cpu, "default": _default,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds of (1), the floor and (2); medians are printed")
    parser.add_argument("--only", default="",
                        help="comma list: throughput (1, floor, 2),submit,sweep,retention,"
                             "latency,transport,scaling,"
                             "cpu (7: CPU ms per request, no-op/floor/naive/pipeline),"
                             "default (8: the plain commands),"
                             "fairness (bench/fairness.py: only when named)")
    args = parser.parse_args()
    n = 2000 if args.quick else 10000
    only = set(filter(None, args.only.split(",")))

    def want(name: str) -> bool:
        return not only or name in only

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; workers {WORKERS} x {CONCURRENCY} threads", flush=True)
    results: dict[str, Any] = {}
    if want("throughput"):
        results = throughput_rounds(n, args.repeat)
        print(f"(1) bare Celery no-op: {results['baseline']:8.0f}/s   pipeline @0 ms: "
              f"{results['pipeline']:8.0f}/s   ratio {results['ratio']:.2f} (target >= 0.8)")
        print(f"(1) floor (claim + raw HTTP call + record, nothing else): "
              f"{results['floor']:8.0f}/s = {results['floor_ratio']:.2f} of the no-op")
        print(f"(2) pipeline @100 ms: {results['slow']:8.0f}/s = {results['hidden']:.2f} of "
              f"@0 ms (target >= 0.9)")
        for name, value in results["memory"].items():
            print(f"(6) {name}: {value:,.1f}")
    if want("submit"):
        bulk, one = bench_submit(n * 2)
        print(f"(3) submit_many: {bulk:8.0f}/s   submit: {one:8.0f}/s (target >= 5,000/s bulk)")
        if find_rabbitmq_server() is not None:
            bulk, one = bench_submit(n * 2, broker="rabbitmq")
            print(f"(3) RabbitMQ, confirmed: submit_many {bulk:8.0f}/s   submit: {one:8.0f}/s"
                  " (target >= 5,000/s bulk)")
    if want("sweep"):
        total, due = (100_000, 1_000) if args.quick else (1_000_000, 10_000)
        took, seed_s, enqueued = bench_sweep(total, due)
        print(f"(4) sweep: {enqueued:,} due of {total:,} tracked selected, claimed and enqueued"
              f" in {took:.2f} s (target <= 2 s; seeding took {seed_s:.0f} s)")
    if want("retention"):
        before, after = bench_retention(n)
        print(f"(6) Redis per completed request: {before:,.0f} B before retention,"
              f" {after:,.0f} B after (ledger TTL, results cap, audit archived)")
    if want("latency"):
        capacity = results.get("pipeline") or bench_pipeline(n, 0)[0]
        p50, p99 = bench_latency(min(n, 3000), capacity / 2)
        print(f"(5) enqueue → result at {capacity / 2:.0f}/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    for name, run_part in PARTS.items():
        if want(name):
            run_part(n, args)
    if "fairness" in only:  # minutes of waiting on a limit and an outage: never by default
        from bench.fairness import main as fairness

        fairness(["--quick"] if args.quick else [])

if __name__ == "__main__":
    main()
