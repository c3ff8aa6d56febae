"""The default worker: each side started exactly the plain way, nothing on the command line.

    .venv/bin/python bench/run.py --only default [--quick] [--repeat N]

Bare Celery, ``celery -A bench.noop_app worker`` (Celery's default pool: prefork, one
child per core; kombu's own Redis transport, Celery as shipped, and beside it on ours),
against ours, ``celery -A worker.app worker`` (the configured pool),
at 0 ms and 100 ms provider latency. Each run starts the workers on an empty queue, waits
until every node answers a ping (our other processes start after the first), then sends
``n`` requests in one bulk submit and times them until all are done; CPU seconds of the
worker's processes over the same span are printed per request too (steadier than time
on a shared machine). Rounds are interleaved, ratios are per round, medians printed.
Beside them, ours as one process (``-P threads``): what the other processes add. Once,
at the end: the worker Celery's default gave before (prefork children with our app,
``-P processes``), at 100 ms, on a few requests.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import celery
import redis

from bench.run import LOGS, Simulator, children, env_for, requests
from worker.broker.producer import Producer
from worker.local.procs import WorkerProcess
from worker.local.redis_server import RedisServer
from worker.runner.threaded_processes import worker_processes

NOOP_TARGET = 0.5
HIDDEN_TARGET = 0.9


@dataclass
class Run:
    rate: float
    cpu_ms: float  # CPU milliseconds of the worker's processes per request


def _cpu_seconds(root: int) -> float:
    """User + system CPU of ``root`` and its descendants (the worker's processes), from
    /proc."""
    total, pending = 0.0, [root]
    while pending:
        pid = pending.pop()
        try:
            # Fields after the command name: state is 3rd, utime 14th, stime 15th.
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        pending.extend(children(pid))
    return total


def _wait_nodes(url: str, count: int, timeout: float = 90) -> None:
    app = celery.Celery(broker=url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(app.control.ping(timeout=1.0) or []) >= count:
                return
        raise RuntimeError(f"fewer than {count} worker nodes answered within {timeout} s")
    finally:
        app.close()


def _drain(url: str, proc: WorkerProcess, nodes: int, n: int,
           done: Callable[[], int]) -> Run:
    proc.start()
    try:
        _wait_nodes(url, nodes)
        cpu = _cpu_seconds(proc.pid)
        start = time.perf_counter()
        producer = Producer(url)
        producer.submit_many(requests(n))
        producer.close()
        while done() < n:
            time.sleep(0.01)
        took = time.perf_counter() - start
        return Run(n / took, (_cpu_seconds(proc.pid) - cpu) * 1000 / n)
    finally:
        proc.stop()


def _worker(app: str, env: dict[str, str], extra: tuple[str, ...] = ()) -> WorkerProcess:
    return WorkerProcess(env, app=app, plain=True, loglevel=None, extra_args=extra,
                         log_path=LOGS / f"default-{app}-{uuid.uuid4().hex[:4]}.log")


def run_noop(n: int, stock: bool = True) -> Run:
    """The bare no-op; ``stock``: on kombu's own Redis transport (Celery as shipped), else
    on ours."""
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)

        def done() -> int:
            # Every message was sent before this is asked: done when neither queued nor
            # un-acked.
            return n - int(client.llen("idvcancel")) - int(client.hlen("unacked"))
        env = env_for(server.url, None)
        if stock:
            env["BENCH_KOMBU_TRANSPORT"] = "1"
        return _drain(server.url, _worker("bench.noop_app", env), 1, n, done)


def run_ours(n: int, latency_ms: float, extra: tuple[str, ...] = (), nodes: int = 0) -> Run:
    sim = Simulator(latency_ms)
    try:
        with RedisServer() as server:
            client = redis.Redis.from_url(server.url)
            proc = _worker("worker.app", env_for(server.url, sim), extra)
            return _drain(server.url, proc, nodes or worker_processes(), n,
                          lambda: int(client.xlen("idvcancel:results")))
    finally:
        sim.stop()


def default_rounds(n: int, repeat: int) -> dict[str, Any]:
    rows: list[dict[str, Run]] = []
    for index in range(max(repeat, 1)):
        row = {"noop": run_noop(n), "ours": run_ours(n, 0), "slow": run_ours(n, 100),
               "one": run_ours(n, 0, ("-P", "threads"), nodes=1),
               "noop_ours": run_noop(n, stock=False)}
        rows.append(row)
        print(f"    round {index + 1}: bare no-op {row['noop'].rate:.0f}/s "
              f"({row['noop'].cpu_ms:.2f} ms CPU each; on our transport "
              f"{row['noop_ours'].rate:.0f}/s, {row['noop_ours'].cpu_ms:.2f}), "
              f"ours @0 ms {row['ours'].rate:.0f}/s "
              f"({row['ours'].cpu_ms:.2f}), ours @100 ms {row['slow'].rate:.0f}/s "
              f"({row['slow'].cpu_ms:.2f}), ours as one process (-P threads) @0 ms "
              f"{row['one'].rate:.0f}/s ({row['one'].cpu_ms:.2f})", flush=True)

    def median(key: str, over: str | None = None) -> float:
        return statistics.median(r[key].rate / (r[over].rate if over else 1.0) for r in rows)
    return {"noop": median("noop"), "ours": median("ours"), "slow": median("slow"),
            "ratio": median("ours", "noop"), "hidden": median("slow", "ours"),
            "one": median("one"), "processes_gain": median("ours", "one"),
            "noop_ours": median("noop_ours"), "ratio_ours": median("ours", "noop_ours")}


def report(n: int, repeat: int, quick: bool) -> None:
    processes = worker_processes()
    print(f"(7) default worker, plain commands, {n} requests a run, our worker "
          f"{processes} processes", flush=True)
    got = default_rounds(n, repeat)
    print(f"(7) bare Celery no-op (prefork, all cores): {got['noop']:8.0f}/s   ours @0 ms: "
          f"{got['ours']:8.0f}/s   ratio {got['ratio']:.2f} (target >= {NOOP_TARGET}); "
          f"the no-op on our transport {got['noop_ours']:.0f}/s, ratio {got['ratio_ours']:.2f}")
    print(f"(7) ours @100 ms: {got['slow']:8.0f}/s = {got['hidden']:.2f} of @0 ms "
          f"(target >= {HIDDEN_TARGET})")
    print(f"(7) ours as one process (-P threads): {got['one']:8.0f}/s; all cores give "
          f"{got['processes_gain']:.2f} x that")
    few = 100 if quick else 300
    old = run_ours(few, 100, ("-P", "processes", "-c", str(processes)), nodes=1)
    print(f"(7) before: prefork children with our app (-P processes -c {processes}) @100 ms: "
          f"{old.rate:8.1f}/s on {few} requests = {old.rate / got['slow']:.2f} of ours")
