"""The Celery configuration, chosen for at-least-once delivery on Redis.

Why each setting (see the README's "Delivery guarantees"):

- ``task_acks_late``: a message is acknowledged only after the task ran, so a worker
  that dies mid-task leaves it un-acked and Redis hands it out again. The pipeline is
  idempotent (the ledger), which is what makes late acks safe.
- ``task_reject_on_worker_lost``: with the prefork pool, a killed child re-queues its
  message instead of acking it. Our default pool is threads, where a crash takes the
  whole process and this setting does nothing; it is kept for ``-P prefork`` deployments.
- ``visibility_timeout``: how long an un-acked message waits before redelivery. Celery's
  one hour would make a crash recover in an hour; ours is minutes, and the settings
  refuse a retry cap that does not fit well inside it (kombu #337: an ETA held longer
  than the timeout is delivered again).
- ``worker_prefetch_multiplier``: the work is I/O-bound and short; a few messages per
  slot keep the threads busy without hoarding messages other workers could take.
- ``worker_cancel_long_running_tasks_on_connection_loss``: late-ack tasks cannot be
  acked over a lost connection and are redelivered. With prefork, cancelling them avoids
  running the same request twice in parallel (the default from Celery 6). The thread
  pool cannot cancel a running thread (Celery logs a warning): there, only the
  idempotency ledger's lease keeps the redelivered copy from calling the provider.
- ``unacked_restore_interval`` / ``unacked_restore_throttle``: kombu 5.7 looks for
  messages past the visibility timeout every 10 s x 10; we look every 2 s.
"""

from __future__ import annotations

from typing import Any

from config.settings import Settings
from worker.contract import QUEUE

PREFETCH_MULTIPLIER = 4


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings for ``settings``."""
    transport = {
        "visibility_timeout": settings.visibility_timeout_seconds,
        # kombu 5.7 scans for messages past the visibility timeout only every
        # interval x throttle seconds (10 x 10 by default): a dead worker's messages
        # came back ~100 s late. Scan every 2 s instead.
        "unacked_restore_interval": 2,
        "unacked_restore_throttle": 1,
        "socket_keepalive": True,
        "health_check_interval": 10,
        "retry_on_timeout": True,
    }
    return {
        "broker_url": settings.redis_url,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # reconnect for as long as it takes
        "result_backend": None,
        "task_ignore_result": True,
        "task_default_queue": QUEUE,
        "task_routes": {"idvcancel.*": {"queue": QUEUE}},
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": PREFETCH_MULTIPLIER,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_hijack_root_logger": False,
        # Messages Celery cannot decode or route still end "rejected", on the record.
        "worker_consumer": "worker.consumer:RecordingConsumer",
        "worker_send_task_events": False,
        "enable_utc": True,
        # The periodic tasks (``celery -A worker.app beat``). The sweep: several beat
        # instances are safe: sweeps claim sessions atomically. ``expires``: a tick that
        # waited a whole interval (workers down) is dropped; the next one does its work.
        "beat_schedule": {
            "idvcancel-sweep": {
                "task": "idvcancel.sweep",
                "schedule": settings.sweep_interval_seconds,
                "options": {"queue": QUEUE, "expires": settings.sweep_interval_seconds},
            },
            # Audit records past IDVCANCEL_AUDIT_RETENTION_SECONDS move to the archive files
            # (worker.retention). Overlapping runs are safe: one lock, the other returns.
            "idvcancel-retention": {
                "task": "idvcancel.retention",
                "schedule": settings.retention_interval_seconds,
                "options": {"queue": QUEUE, "expires": settings.retention_interval_seconds},
            },
            # Requests in the intake index that waited longer than
            # IDVCANCEL_RECONCILE_AFTER_SECONDS without a ledger (or with a dead one) are
            # pushed again (worker.reconcile): kombu can lose a message it popped.
            # Several beat instances are safe: entries are claimed atomically.
            "idvcancel-reconcile": {
                "task": "idvcancel.reconcile",
                "schedule": settings.reconcile_interval_seconds,
                "options": {"queue": QUEUE, "expires": settings.reconcile_interval_seconds},
            },
        },
    }
