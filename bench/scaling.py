"""Beyond one worker process: audit-chain commits per second, chain conflicts and where
the first ceiling is, with 1, 2 and 4 worker processes (docs/scaling.md).

    .venv/bin/python bench/scaling.py                  # 3,000 requests per configuration
    .venv/bin/python bench/scaling.py --quick          # 1,000
    .venv/bin/python bench/run.py --only scaling

One Redis (ours), the simulator at 100 ms provider latency (so that the worker's CPU is
not what waits), and N worker processes started as production starts them, with explicit
flags: ``celery -A worker.app worker -P threads -c 128 -n w{i}@%h``. The workers are ready
before the requests are submitted; the clock runs from the submission until every result
event is in. Per configuration:

- commits: transition script calls per second (group commits, from each worker's
  ``idvcancel_journal_calls_total``) and audit records appended per second;
- conflicts: calls refused because another process had moved the chain head first
  (``head_moved``: nothing applied, sealed again, sent again), in all and per commit;
- Redis: its CPU (``INFO cpu``, user + sys) over the wall time, and ``EVALSHA`` time
  (``INFO commandstats``); the transition script's own time per call is that less the
  breaker's and the submission's calls, each timed alone on the same Redis afterwards;
- workers: CPU per request of all worker processes together, and of the simulator.

From Redis's CPU per request follows the most requests per second one Redis thread could
carry: the ceiling that more worker processes (or machines) cannot lift.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run import LOGS, Simulator, env_for, requests  # noqa: E402
from worker import keys  # noqa: E402
from worker.broker.producer import Producer  # noqa: E402
from worker.gate.breaker import CircuitBreaker  # noqa: E402
from worker.local.procs import WorkerProcess  # noqa: E402
from worker.local.redis_server import RedisServer  # noqa: E402

THREADS = 128
LATENCY_MS = 100
#: Requests per ``push.lua`` call in ``Producer.submit_many``.
PUSH_CHUNK = 500
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Figures:
    workers: int
    requests: int
    wall: float
    calls: dict[str, float]  # transition script calls by answer, all workers
    records: int
    redis_cpu: float
    evalsha_calls: int
    evalsha_usec: float
    worker_cpu: float
    simulator_cpu: float

    @property
    def commits(self) -> float:
        return sum(self.calls.values())

    @property
    def conflicts(self) -> float:
        return self.calls.get("head_moved", 0.0)


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def evalsha(client: redis.Redis) -> tuple[int, float]:
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), float(stats.get("usec", 0))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def journal_calls(port: int) -> dict[str, float]:
    """``idvcancel_journal_calls_total`` by answer, scraped from one worker."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    calls: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("idvcancel_journal_calls_total{"):
            labels, value = line.rsplit(" ", 1)
            calls[labels.split('answer="')[1].split('"')[0]] = float(value)
    return calls


def run(workers: int, n: int, sim: Simulator) -> Figures:
    """``n`` requests through ``workers`` processes on a Redis of their own."""
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        ports = [free_port() for _ in range(workers)]
        procs = [WorkerProcess({**env_for(server.url, sim), "IDVCANCEL_METRICS_PORT": str(port)},
                               concurrency=THREADS, pool="threads",
                               name=f"w{i}-{uuid.uuid4().hex[:4]}@%h",
                               log_path=LOGS / f"scaling-{workers}-{i}.log")
                 for i, port in enumerate(ports)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.wait_ready(120)
        batch = requests(n)
        producer = Producer(server.url)
        client.config_resetstat()
        cpu0, sim0 = redis_cpu(client), process_cpu(sim.proc.pid)
        workers0 = sum(process_cpu(p.pid) for p in procs)
        start = time.perf_counter()
        producer.submit_many(batch)
        while int(client.xlen(keys.RESULTS)) < n:
            time.sleep(0.02)
        wall = time.perf_counter() - start
        figures_cpu = redis_cpu(client) - cpu0
        calls_made, usec = evalsha(client)
        worker_cpu = sum(process_cpu(p.pid) for p in procs) - workers0
        simulator_cpu = process_cpu(sim.proc.pid) - sim0
        calls: dict[str, float] = {}
        for port in ports:
            for answer, count in journal_calls(port).items():
                calls[answer] = calls.get(answer, 0.0) + count
        records = int(client.xlen(keys.AUDIT))
        for proc in procs:
            proc.stop()
        producer.close()
        return Figures(workers, n, wall, calls, records, figures_cpu, calls_made, usec,
                       worker_cpu, simulator_cpu)


def side_scripts_usec(n: int, breaker_calls: int) -> float:
    """Redis µs the breaker's ``breaker_calls`` calls and the submission of ``n``
    requests take, each timed alone on a fresh Redis (no worker running)."""
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        circuit = CircuitBreaker(client, threshold=5, open_seconds=30, probe_seconds=15)
        client.config_resetstat()
        for _ in range(min(breaker_calls, 4000) // 2):  # as a call does: allow, success
            circuit.allow("idpass")
            circuit.success("idpass")
        calls, usec = evalsha(client)
        per_breaker = usec / max(calls, 1)
        producer = Producer(server.url)
        client.config_resetstat()
        producer.submit_many(requests(n))
        producer.close()
        return per_breaker * breaker_calls + evalsha(client)[1]


COLUMNS = ("workers", "requests/s", "commits/s", "records/s", "conflicts", "per commit",
           "records/commit", "Redis CPU", "EVALSHA µs/call", "transition µs/call",
           "Redis ceiling req/s", "worker CPU ms/req", "simulator CPU ms/req")


def row(f: Figures) -> tuple[list[str], dict[str, Any]]:
    """One configuration's cells (as ``COLUMNS``) and its raw figures."""
    push_calls = math.ceil(f.requests / PUSH_CHUNK)
    breaker_calls = max(f.evalsha_calls - int(f.commits) - push_calls, 0)
    side = side_scripts_usec(f.requests, breaker_calls)
    redis_per_request = f.redis_cpu / f.requests
    applied = max(f.commits - f.conflicts, 1)
    cells = [str(f.workers), f"{f.requests / f.wall:.0f}", f"{f.commits / f.wall:.0f}",
             f"{f.records / f.wall:.0f}", f"{f.conflicts:.0f}",
             f"{f.conflicts / max(f.commits, 1):.2f}", f"{f.records / applied:.1f}",
             f"{f.redis_cpu / f.wall:.0%}", f"{f.evalsha_usec / max(f.evalsha_calls, 1):.0f}",
             f"{(f.evalsha_usec - side) / max(f.commits, 1):.0f}",
             f"{1 / redis_per_request:.0f}", f"{f.worker_cpu / f.requests * 1000:.2f}",
             f"{f.simulator_cpu / f.requests * 1000:.2f}"]
    raw = {"wall_s": round(f.wall, 2), "calls": f.calls, "records": f.records,
           "redis_cpu_s": round(f.redis_cpu, 2), "evalsha_calls": f.evalsha_calls,
           "evalsha_ms": round(f.evalsha_usec / 1000, 1),
           "side_scripts_ms": round(side / 1000, 1), "worker_cpu_s": round(f.worker_cpu, 2),
           "redis_us_per_request": round(redis_per_request * 1e6, 1)}
    return cells, raw


def report(rows: list[Figures]) -> None:
    """A Markdown table (what docs/scaling.md shows), then each row's raw figures."""
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    raws = []
    for figures in rows:
        cells, raw = row(figures)
        raws.append(raw)
        print("| " + " | ".join(cells) + " |", flush=True)
    for figures, raw in zip(rows, raws, strict=True):
        print(f"    {figures.workers} workers, raw: {json.dumps(raw)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 requests each")
    parser.add_argument("--requests", type=int, default=3000, help="per configuration")
    parser.add_argument("--workers", default="1,2,4", help="comma list of process counts")
    args = parser.parse_args(argv)
    n = 1000 if args.quick else args.requests
    print(f"scaling: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; {n} requests per configuration, {THREADS} threads"
          f" per process, provider latency {LATENCY_MS} ms", flush=True)
    sim = Simulator(LATENCY_MS)
    try:
        rows = [run(int(w), n, sim) for w in args.workers.split(",")]
    finally:
        sim.stop()
    report(rows)


if __name__ == "__main__":
    main()

