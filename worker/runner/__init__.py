"""How the plain ``celery -A worker.app worker`` runs: processes x threads.

``threaded_processes`` is the Celery pool named by the app's configuration
(``worker_pool``): Celery's thread pool in every process, and in the first process the
start of the others (Celery's banner shows its name: ``concurrency: 128
(threaded_processes)``, threads per process); ``siblings`` starts, watches, restarts
and stops those others; ``metrics_files`` puts prometheus_client in multiprocess mode,
so that ``/metrics`` counts the work of every process (ours, and a prefork pool's
children).

May import: ``config``, ``worker.logs``; nothing that imports prometheus_client at module
level (``metrics_files`` must run before it is imported).
"""
