"""What starts a request besides a producer's own call: session tracking and supersede
on re-issue, the abandoned-application sweep, and the reconciler that pushes again what
the broker lost.

May import: ``config``, the ground modules of ``worker``, ``worker.broker`` (to enqueue),
``worker.delivery`` (rules, validation), ``worker.journal``, ``worker.providers``.
"""
