"""idv-cancel benchmark: one run, one machine, every figure against its baseline.

    .venv/bin/python bench/run.py            # full run (a few minutes)
    .venv/bin/python bench/run.py --quick    # smaller counts, for a smoke check

Starts its own Redis, the simulator (in its own process) and real worker processes;
prints each figure with its target. Not a test: numbers vary with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worker.embedded import RedisServer  # noqa: E402
from worker.procs import WorkerProcess  # noqa: E402
from worker.producer import Producer  # noqa: E402

CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "64"))
WORKERS = int(os.environ.get("BENCH_WORKERS", "1"))
POOL = os.environ.get("BENCH_POOL", "threads")


class Simulator:
    """The simulator in its own process, so its CPU is not ours."""

    def __init__(self, latency_ms: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker.simulator", "--port", "0", "--autocreate",
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
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
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
                           log_path=Path(f"/tmp/idvcancel-bench-{i}.log"))
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


def bench_baseline(n: int) -> float:
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        producer = Producer(server.url)
        with producer.app.producer_or_acquire() as pub:
            for req in requests(n):
                producer.app.send_task("bench.noop", args=[req], queue="idvcancel",
                                       producer=pub)
        env = env_for(server.url, None)
        procs = start_workers(env, app="bench.noop_app")

        def done() -> int:
            return n - int(client.llen("idvcancel")) - int(client.hlen("unacked"))
        rate = drain_rate(client, done, n, procs)
        for proc in procs:
            proc.stop()
        return rate


def bench_pipeline(n: int, latency_ms: float) -> tuple[float, dict[str, float]]:
    sim = Simulator(latency_ms)
    try:
        with RedisServer() as server:
            client = redis.Redis.from_url(server.url)
            Producer(server.url).submit_many(requests(n))
            procs = start_workers(env_for(server.url, sim))
            rate = drain_rate(client, lambda: int(client.xlen("idvcancel:results")), n, procs)
            memory = {f"worker{i} RSS MB": rss_mb(p.pid or 0) for i, p in enumerate(procs)}
            memory["redis bytes/request"] = (
                int(client.info("memory")["used_memory"]) / n)  # type: ignore[index]
            for proc in procs:
                proc.stop()
            return rate, memory
    finally:
        sim.stop()


def bench_submit(n: int) -> tuple[float, float]:
    with RedisServer() as server:
        producer = Producer(server.url)
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
            for entry_id, fields in client.xrange("idvcancel:results"):
                event = json.loads(fields["event"])
                arrived = int(entry_id.split("-")[0]) / 1000
                latencies.append((arrived - sent[event["request_id"]]) * 1000)
            for proc in procs:
                proc.stop()
            q = statistics.quantiles(latencies, n=100)
            return q[49], q[98]
    finally:
        sim.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="", help="comma list: baseline,pipeline,latency100,submit,latency,sweep")
    args = parser.parse_args()
    n = 2000 if args.quick else 10000
    only = set(filter(None, args.only.split(",")))
    want = (lambda name: not only or name in only)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; workers {WORKERS} x {CONCURRENCY} threads")
    results: dict[str, Any] = {}
    if want("baseline") or want("pipeline"):
        base = bench_baseline(n)
        pipe, memory = bench_pipeline(n, 0)
        results.update(baseline=base, pipeline=pipe, memory=memory)
        print(f"(1) bare Celery no-op: {base:8.0f}/s   pipeline @0 ms: {pipe:8.0f}/s   "
              f"ratio {pipe / base:.2f} (target >= 0.8)")
        for name, value in memory.items():
            print(f"(6) {name}: {value:,.1f}")
    if want("latency100"):
        slow, _ = bench_pipeline(n, 100)
        zero = results.get("pipeline") or bench_pipeline(n, 0)[0]
        print(f"(2) pipeline @100 ms: {slow:8.0f}/s = {slow / zero:.2f} of @0 ms (target >= 0.9)")
    if want("submit"):
        bulk, one = bench_submit(n * 2)
        print(f"(3) submit_many: {bulk:8.0f}/s   submit: {one:8.0f}/s (target >= 5,000/s bulk)")
    if want("latency"):
        capacity = results.get("pipeline") or bench_pipeline(n, 0)[0]
        p50, p99 = bench_latency(min(n, 3000), capacity / 2)
        print(f"(5) enqueue → result at {capacity / 2:.0f}/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms")


if __name__ == "__main__":
    main()
