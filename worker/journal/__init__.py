"""The record: ``ledger`` (one request's state, its Redis hash), ``steps`` (a request's
step applied atomically: ledger, audit records, result event, dead letter;
``lua/transition.lua``), ``chain`` (audit records linked by SHA-256), ``verify`` (the
chain read back from Redis and the archive, the first bad record named) and ``archive``
(old records moved to append-only files without breaking the chain).

May import: the ground modules of ``worker`` only.
"""
