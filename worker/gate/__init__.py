"""What may hold a provider call back, shared by every worker through Redis: the circuit
breaker, the rate limiter, the guard that asks both, and the parking lot where the
requests they hold back wait.

May import: the ground modules of ``worker`` and ``worker.providers.errors``.
"""
