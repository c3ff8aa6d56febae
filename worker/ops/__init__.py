"""What an operator runs and reads: the ``idvcancel`` command line, results and status,
dead letters and their replay, retention of Redis and the audit archive, and the worker's
start-up checks, metrics and health endpoint.

May import: anything in ``worker`` except ``worker.local`` (the CLI's ``demo`` and
``simulate`` commands load it lazily, when asked).
"""
