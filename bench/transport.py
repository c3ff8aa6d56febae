"""The provider transport, measured: urllib3's pools (``bench/urllib3_transport.py``)
against the hand-written ``http.client`` pool production runs
(``worker/providers/transport.py``). urllib3 was to replace it unless measurably slower
per call; it is, so the hand pool stays (docs/performance.md).

    .venv/bin/python bench/transport.py                 # 5 rounds of 4,000 calls
    .venv/bin/python bench/transport.py --quick
    .venv/bin/python bench/run.py --only transport

Each call is the real adapter path a worker takes (``IdPassAdapter.execute``: request
built, sent, answer classified) against the real simulator, in its own process on
loopback with no added latency, so the CPU measured here is the client's alone. Two
loads: one thread, and 64 threads in flight on one shared transport (a worker's threads
share one per provider). The figure that decides is CPU µs per call (this process's CPU
time, all threads, over calls): it is robust to the machine's drift, where calls/s on
two shared cores is not. Rounds alternate which transport goes first; each ratio is the
median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run import Simulator  # noqa: E402
from bench.urllib3_transport import Urllib3Transport  # noqa: E402
from config.settings import Settings  # noqa: E402
from worker.contract import CancelRequest  # noqa: E402
from worker.providers.idpass import RULES, IdPassAdapter  # noqa: E402
from worker.providers.transport import PooledTransport  # noqa: E402

TRANSPORTS: dict[str, type[httpx.BaseTransport]] = {"hand": PooledTransport,
                                                    "urllib3": Urllib3Transport}
#: urllib3 is kept unless its CPU per call exceeds the hand pool's by more than this
#: (the rounds' own spread on this machine is a few per cent).
SLOWER = 1.10


class Metered(httpx.BaseTransport):
    """Wraps a transport and keeps the CPU time each call spent inside it (its thread's
    CPU clock, so it holds with many threads in flight)."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.spent: list[float] = []  # list.append is atomic; a float += is not

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        start = time.thread_time()
        try:
            return self.inner.handle_request(request)
        finally:
            self.spent.append(time.thread_time() - start)

    def close(self) -> None:
        self.inner.close()


@dataclass(frozen=True)
class Run:
    calls: int
    wall: float
    cpu: float
    #: CPU seconds inside the transport alone (the rest is the adapter's, shared).
    in_transport: float

    @property
    def cpu_us(self) -> float:
        return self.cpu / self.calls * 1e6

    @property
    def transport_us(self) -> float:
        return self.in_transport / self.calls * 1e6

    @property
    def rate(self) -> float:
        return self.calls / self.wall


def cancel_requests(n: int) -> list[CancelRequest]:
    return [CancelRequest(request_id=f"t-{i}", provider="idpass", action="cancel",
                          reference=str(uuid.uuid4()), requested_by="bench")
            for i in range(n)]


def timed(adapter: IdPassAdapter, requests: list[CancelRequest], threads: int) -> Run:
    """``requests`` cancelled by ``threads`` threads sharing ``adapter``; every call must
    come back ``cancelled`` (a failed call would flatter its transport)."""
    rule = RULES.actions["cancel"]
    slices = [requests[i::threads] for i in range(threads)]
    failures: list[str] = []
    start = threading.Barrier(threads + 1)

    def work(mine: list[CancelRequest]) -> None:
        start.wait()
        for request in mine:
            status = adapter.execute(request, rule).provider_status
            if status != "cancelled":
                failures.append(str(status))

    meter = adapter.transport
    assert isinstance(meter, Metered)
    meter.spent.clear()
    workers = [threading.Thread(target=work, args=(mine,)) for mine in slices]
    for worker in workers:
        worker.start()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    start.wait()
    for worker in workers:
        worker.join()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    if failures:
        raise SystemExit(f"{len(failures)} calls did not cancel (first: {failures[0]})")
    return Run(len(requests), wall, cpu, sum(meter.spent))


def measure(calls: int, rounds: int, threads: int) -> dict[int, dict[str, list[Run]]]:
    """Runs per load (1 and ``threads`` in flight) and transport, in interleaved rounds."""
    sim = Simulator(0)
    try:
        settings = Settings(idpass_base_url=sim.env["IDVCANCEL_IDPASS_BASE_URL"],
                            idpass_token=sim.env["IDVCANCEL_IDPASS_TOKEN"])
        adapters = {name: IdPassAdapter(settings, transport=Metered(cls()))
                    for name, cls in TRANSPORTS.items()}
        for adapter in adapters.values():  # connections open, code paths warm
            timed(adapter, cancel_requests(threads * 4), threads)
        runs: dict[int, dict[str, list[Run]]] = {
            load: {name: [] for name in adapters} for load in (1, threads)}
        for index in range(rounds):
            order = list(adapters) if index % 2 == 0 else list(reversed(adapters))
            for load in (1, threads):
                for name in order:
                    runs[load][name].append(timed(adapters[name], cancel_requests(calls), load))
            print(f"    round {index + 1}: CPU µs per call urllib3 / hand: " + ", ".join(
                f"{load} in flight {runs[load]['urllib3'][-1].cpu_us:.0f} / "
                f"{runs[load]['hand'][-1].cpu_us:.0f}" for load in (1, threads)), flush=True)
        for adapter in adapters.values():
            adapter.close()
        return runs
    finally:
        sim.stop()


def report(runs: dict[int, dict[str, list[Run]]]) -> list[float]:
    """Prints one line per load; returns the CPU ratios (urllib3 / hand) per load."""
    ratios = []
    for load, by_name in runs.items():
        mine, hand = by_name["urllib3"], by_name["hand"]
        pairs = list(zip(mine, hand, strict=True))
        cpu = statistics.median(m.cpu_us / h.cpu_us for m, h in pairs)
        inner = statistics.median(m.transport_us / h.transport_us for m, h in pairs)
        rate = statistics.median(m.rate / h.rate for m, h in pairs)
        ratios.append(cpu)

        def figures(runs: list[Run]) -> str:
            return (f"{statistics.median(r.cpu_us for r in runs):5.0f} µs CPU/call (in the"
                    f" transport {statistics.median(r.transport_us for r in runs):4.0f}),"
                    f" {statistics.median(r.rate for r in runs):5.0f} calls/s")
        print(f"transport, {load:>2} in flight: urllib3 {figures(mine)} | hand {figures(hand)}"
              f" | urllib3/hand: CPU per call {cpu:.2f} (in the transport {inner:.2f}),"
              f" calls/s {rate:.2f}", flush=True)
    verdict = ("urllib3 is measurably slower per call: the hand pool stays"
               if max(ratios) > SLOWER else "urllib3 is not measurably slower per call")
    print(f"transport: {verdict} (CPU ratio {' / '.join(f'{r:.2f}' for r in ratios)},"
          f" limit {SLOWER:.2f})")
    return ratios


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 1,000 calls")
    parser.add_argument("--calls", type=int, default=4000, help="calls per run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=64, help="calls in flight (2nd load)")
    args = parser.parse_args(argv)
    calls, rounds = (1000, 3) if args.quick else (args.calls, args.rounds)
    report(measure(calls, rounds, args.threads))


if __name__ == "__main__":
    main()
