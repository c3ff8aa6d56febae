"""A loopback simulator of the five providers' cancel/delete APIs, for tests and benchmarks.

Start it in-process with ``Simulator().start()`` or as ``python -m worker.simulator``;
drive it with ``SimulatorClient(url)``.
"""

from worker.simulator.apis import PROVIDERS, Credentials
from worker.simulator.client import SimulatorClient, SimulatorError
from worker.simulator.faults import Faults
from worker.simulator.server import Simulator, main

__all__ = [
    "PROVIDERS",
    "Credentials",
    "Faults",
    "Simulator",
    "SimulatorClient",
    "SimulatorError",
    "main",
]
