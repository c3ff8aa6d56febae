"""What may hold a provider call back, shared by every worker through Redis: the circuit
breaker, the rate limiter, and the guard that asks both.

May import: the ground modules of ``worker`` and ``worker.providers.errors``.
"""
