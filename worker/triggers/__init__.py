"""What starts a request besides a producer's own call: session tracking and supersede
on re-issue, the abandoned-application sweep, the reconciler that pushes again what
the broker lost, and the releaser of parked requests.

May import: ``config``, the ground modules of ``worker``, ``worker.broker`` (to enqueue),
``worker.delivery`` (rules, validation), ``worker.gate`` (parked requests, the rate
limiter), ``worker.journal``, ``worker.providers``.
"""
