"""The record: ``steps`` applies a request's step atomically (ledger, audit records,
result event, dead letter; ``lua/transition.lua``), ``chain`` links audit records by
SHA-256, ``verify`` walks the chain in Redis and names the first bad record.

May import: the ground modules of ``worker`` only.
"""
