"""A loopback simulator of the five providers' cancel/delete APIs, for tests and benchmarks.

Start it in-process with ``Simulator().start()`` or as ``python -m worker.local.simulator``;
drive it with ``SimulatorClient(url)``.
"""

from worker.local.simulator.apis import PROVIDERS, Credentials
from worker.local.simulator.client import SimulatorClient, SimulatorError
from worker.local.simulator.faults import Faults
from worker.local.simulator.server import Simulator, main

__all__ = [
    "PROVIDERS",
    "Credentials",
    "Faults",
    "Simulator",
    "SimulatorClient",
    "SimulatorError",
    "main",
]
