"""CPU per request: what each guarantee costs, in worker CPU time rather than wall rates.

    .venv/bin/python bench/run.py --only cpu [--quick] [--repeat N]
    .venv/bin/python bench/cpu.py --against /path/to/other/checkout   # A/B the pipeline

Six workers carry out the same N requests at 0 ms provider latency, in interleaved
rounds, each with the pipeline's pool (``-P threads -c 128``) against its own Redis:

- *no-op*: bare Celery, a task that does nothing (``bench.noop_app``), on kombu's own
  Redis transport (Celery as shipped); *no-op/ours* the same on our transport
  (``worker/broker/redis_transport.py``, whose batch pop halves it);
- *floor*: claim script, one raw ``http.client`` call, record script (``bench.floor_app``);
- *naive*: one plain task, ``SET NX``, pooled httpx, two ``XADD`` (``bench.naive_app``),
  on kombu's own transport; *naive/ours* the same on ours;
- *pipeline*: ``worker.app``, every guarantee on.

The messages are enqueued first and set aside (the queue list renamed), the worker is
started and left to settle, its CPU time read, and then the whole backlog is handed over
at once: the figure is the worker's user+system CPU (its own and its children's, from
``/proc``) spent from then until the last request is done, divided by N. Start-up is not
counted, and the machine's load moves it far less than it moves wall rates.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run import (  # noqa: E402
    CONCURRENCY,
    LOGS,
    POOL,
    Simulator,
    _send_raw,
    children,
    env_for,
    requests,
)
from worker.broker.producer import Producer  # noqa: E402
from worker.local.procs import WorkerProcess  # noqa: E402
from worker.local.redis_server import RedisServer  # noqa: E402

#: Targets of issue 9: pipeline CPU per request over the no-op's, and over the naive peer's.
TARGET_NOOP = 2.0
TARGET_NAIVE = 0.7
_QUEUE, _STAGED = "idvcancel", "bench:staged"
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Contestant:
    name: str
    app: str
    enqueue: Callable[[str, int], object]
    done: Callable[[redis.Redis, int], int]
    cwd: Path = ROOT
    env: tuple[tuple[str, str], ...] = ()


def _results(client: redis.Redis, n: int) -> int:
    return int(client.xlen("idvcancel:results"))


def _drained(client: redis.Redis, n: int) -> int:
    return n - int(client.llen(_QUEUE)) - int(client.hlen("unacked"))


def _submit(url: str, n: int) -> None:
    Producer(url).submit_many(requests(n))


#: A baseline app on kombu's own Redis transport (Celery as shipped), not ours.
_KOMBU_TRANSPORT = (("BENCH_KOMBU_TRANSPORT", "1"),)


def contestants(against: Path | None = None) -> list[Contestant]:
    field = [
        Contestant("no-op", "bench.noop_app", lambda u, n: _send_raw(u, "bench.noop", n),
                   _drained, env=_KOMBU_TRANSPORT),
        Contestant("no-op/ours", "bench.noop_app",
                   lambda u, n: _send_raw(u, "bench.noop", n), _drained),
        Contestant("floor", "bench.floor_app", lambda u, n: _send_raw(u, "bench.floor", n),
                   _results),
        Contestant("naive", "bench.naive_app", lambda u, n: _send_raw(u, "bench.naive", n),
                   _results, env=_KOMBU_TRANSPORT),
        Contestant("naive/ours", "bench.naive_app",
                   lambda u, n: _send_raw(u, "bench.naive", n), _results),
        Contestant("pipeline", "worker.app", _submit, _results),
    ]
    if against is not None:
        field.append(Contestant(f"pipeline@{against.name}", "worker.app", _submit, _results,
                                cwd=against))
    return field


def cpu_seconds(pid: int) -> float:
    """User+system CPU of ``pid`` (with its reaped children) and of its live children."""
    total = 0.0
    for index, each in enumerate([pid, *children(pid)]):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        # utime, stime, cutime, cstime are fields 14-17 (index 11-14 after the name);
        # the reaped children's share only for the worker itself (no double count).
        ticks = fields[11:15] if index == 0 else fields[11:13]
        total += sum(int(t) for t in ticks) / _TICK
    return total


#: Seconds without one more request done before a run is declared stuck.
STUCK_SECONDS = 60.0


def _wait_done(who: Contestant, client: redis.Redis, n: int, proc: WorkerProcess) -> None:
    last, moved = -1, time.monotonic()
    while (done := who.done(client, n)) < n:
        if done != last:
            last, moved = done, time.monotonic()
        elif time.monotonic() - moved > STUCK_SECONDS:
            raise SystemExit(f"bench: {who.name} stuck at {done} of {n} done; its log: "
                             f"{proc.log_path}")
        time.sleep(0.01)


def run_one(who: Contestant, n: int) -> tuple[float, float]:
    """CPU ms per request and requests per second of one worker draining ``n``."""
    sim = Simulator(0)
    try:
        with RedisServer() as server:
            client = redis.Redis.from_url(server.url)
            who.enqueue(server.url, n)
            client.rename(_QUEUE, _STAGED)
            proc = WorkerProcess({**env_for(server.url, sim), "BENCH_CONCURRENCY":
                                  str(CONCURRENCY), **dict(who.env)},
                                 concurrency=CONCURRENCY, app=who.app,
                                 pool=POOL, cwd=who.cwd, name=f"cpu-{who.name}@%h",
                                 log_path=LOGS / f"cpu-{who.name.replace('/', '_')}.log")
            proc.start()
            try:
                proc.wait_ready(60)
                time.sleep(1.0)  # start-up work (ready hooks) is not a request's
                before, started = cpu_seconds(proc.pid), time.perf_counter()
                client.rename(_STAGED, _QUEUE)
                _wait_done(who, client, n, proc)
                spent, took = cpu_seconds(proc.pid) - before, time.perf_counter() - started
            finally:
                proc.stop()
            return spent * 1000 / n, n / took
    finally:
        sim.stop()


def rounds(n: int, repeat: int, against: Path | None = None,
           only: set[str] | None = None) -> dict[str, Any]:
    """``repeat`` interleaved rounds of every contestant; per-round figures and medians
    (a ratio is the median of the per-round ratios: the machine drifts between rounds)."""
    field = [c for c in contestants(against) if not only or c.name in only]
    rows: list[dict[str, float]] = []
    for index in range(max(repeat, 1)):
        row: dict[str, float] = {}
        # ABBA: the machine's load drifts within a round too, so no one always goes first.
        for who in field if index % 2 == 0 else field[::-1]:
            row[who.name], row[f"{who.name}/s"] = run_one(who, n)
        rows.append(row)
        print(f"    round {index + 1}: " + ", ".join(
            f"{w.name} {row[w.name]:.3f} ms ({row[f'{w.name}/s']:.0f}/s)" for w in field),
            flush=True)
    medians = {w.name: statistics.median(r[w.name] for r in rows) for w in field}
    ratios: dict[str, list[float]] = {}
    for top in (w.name for w in field if w.name.startswith("pipeline")):
        for under in ("no-op", "no-op/ours", "naive", "naive/ours", "floor", "pipeline"):
            if under in medians and under != top:
                ratios[f"{top}/{under}"] = [r[top] / r[under] for r in rows]
    return {"median": medians, "ratios": ratios, "rows": rows}


def report(result: dict[str, Any]) -> None:
    medians, ratios = result["median"], result["ratios"]
    print("(7) CPU ms per request (worker user+sys / requests, median of rounds): "
          + ", ".join(f"{name} {ms:.3f}" for name, ms in medians.items()))
    targets = {"pipeline/no-op": TARGET_NOOP, "pipeline/naive": TARGET_NAIVE}
    for name, per_round in ratios.items():
        shown = ", ".join(f"{r:.2f}" for r in per_round)
        target = f" (target <= {targets[name]})" if name in targets else ""
        print(f"(7) {name}: {statistics.median(per_round):.2f}{target}; rounds {shown}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=10000, help="requests per run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--against", type=Path, help="another checkout's pipeline, A/B")
    parser.add_argument("--only", default="", help="comma list of contestant names")
    args = parser.parse_args()
    only = set(filter(None, args.only.split(",")))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; one worker x {CONCURRENCY} threads, {POOL} pool; "
          f"{args.n} requests per run", flush=True)
    report(rounds(args.n, args.repeat, args.against.resolve() if args.against else None,
                  only))


if __name__ == "__main__":
    main()
