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
- ``worker_pool``, ``worker_concurrency``: the plain ``celery -A worker.app worker`` runs
  ``worker.runner.threaded_processes:ThreadedProcesses``: one worker process per core
  (``IDVCANCEL_WORKER_PROCESSES``), each a full Celery worker on the thread pool with
  ``IDVCANCEL_WORKER_THREADS`` threads (128). The work is I/O-bound: a thread waits on the
  provider, so threads hide latency (rate x latency calls in flight); one process runs
  Python on one core (the GIL), so a process per core uses the machine. Celery's own
  prefork pool (its default) does neither here: a billiard child runs one task at a time,
  so a 100 ms provider leaves each core waiting, and its threads pool alone is one
  process. The first process starts the others (same command line, their own node names),
  restarts one that dies and passes shutdown signals on (``worker.runner.siblings``).
  ``-P threads`` (one process), ``-P processes`` (Celery's prefork; give ``-c`` too: the
  configured concurrency counts threads) and ``-c`` on the command line still win.
  ``-P prefork`` does not: it is the name of Celery's default, which Celery replaces by the
  configured pool (docs/operations.md).
- ``worker_prefetch_multiplier`` (``IDVCANCEL_WORKER_PREFETCH``): the work is I/O-bound and
  short; a few messages per thread keep the threads busy without hoarding messages other
  workers could take.
- ``worker_cancel_long_running_tasks_on_connection_loss``: late-ack tasks cannot be
  acked over a lost connection and are redelivered. With prefork, cancelling them avoids
  running the same request twice in parallel (the default from Celery 6). The thread
  pool cannot cancel a running thread (Celery logs a warning): there, only the
  idempotency ledger's lease keeps the redelivered copy from calling the provider.
- ``unacked_restore_interval`` / ``unacked_restore_throttle``: kombu 5.7 looks for
  messages past the visibility timeout every 10 s x 10; we look every 2 s.
- ``broker_transport``: for ``redis://`` URLs, kombu's Redis transport with a checked pop
  (``worker.broker.redis_transport``), so a queue item that is not a kombu envelope ends
  ``rejected`` instead of killing the worker. An explicit transport wins over the URL
  scheme in kombu's ``Connection`` (the URL still gives host, port, password and db), so
  the URL stays ``redis://``. Other schemes (``rediss://``, ``sentinel://``) keep kombu's
  own transport: its TLS default for ``rediss`` is tied to the scheme name.

On RabbitMQ (``IDVCANCEL_BROKER_URL=amqp://...``, see ``config/broker.py``) the Redis
transport options give way to: the quorum queue and its dead-letter queue as
``task_queues`` (the worker consumes both by default), publisher confirms
(``confirm_publish``: a publish returns once the broker has the message), and Celery's
native delayed delivery for retry countdowns (switched on by the quorum queue; it needs
the topic exchange). ``consumer_timeout``: RabbitMQ closes the channel of a consumer
that holds an un-acked message longer than this (30 min by default). With countdowns
carried by the broker, a worker holds a message only while it runs one attempt (at most
the HTTP timeout, a few journal round trips and the OneSpan batch window) plus the time
it waits in the prefetch buffer behind ``IDVCANCEL_WORKER_PREFETCH`` such attempts per thread:
well under a minute with the defaults, so the broker's default is kept (README).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from config.broker import amqp_queues
from config.names import QUEUE
from config.settings import Settings

#: The pool of the plain ``celery -A worker.app worker``: processes x threads.
WORKER_POOL = "worker.runner.threaded_processes:ThreadedProcesses"
#: kombu's Redis transport with the checked pop (``worker.broker.redis_transport``).
REDIS_TRANSPORT = "worker.broker.redis_transport:Transport"


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings for ``settings``."""
    return {**_common(settings), **(
        _rabbitmq(settings) if settings.broker_is_amqp else _redis(settings))}


def _rabbitmq(settings: Settings) -> dict[str, Any]:
    return rabbitmq_options(settings.broker, settings.delivery_limit)


def rabbitmq_options(broker_url: str, delivery_limit: int) -> dict[str, Any]:
    """What any Celery app talking to our RabbitMQ needs (workers and producers alike)."""
    return {
        "broker_url": broker_url,
        "broker_transport_options": {"confirm_publish": True},
        "task_queues": amqp_queues(delivery_limit),
        "task_default_exchange": QUEUE,
        "task_default_exchange_type": "topic",
        "task_default_routing_key": QUEUE,
        "task_default_queue_type": "quorum",
        # Heartbeats find a dead broker connection (a half-open socket) in seconds, so
        # the worker reconnects and RabbitMQ hands the messages to others.
        "broker_heartbeat": 30,
    }


def _redis(settings: Settings) -> dict[str, Any]:
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
    scheme = urlsplit(settings.broker).scheme
    return {
        "broker_url": settings.broker,
        # None: kombu picks the transport from the URL scheme, as before.
        "broker_transport": REDIS_TRANSPORT if scheme == "redis" else None,
        "broker_transport_options": transport,
    }


def _common(settings: Settings) -> dict[str, Any]:
    return {
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
        "worker_pool": WORKER_POOL,
        "worker_concurrency": settings.worker_threads,
        "worker_prefetch_multiplier": settings.worker_prefetch,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_hijack_root_logger": False,
        # Messages Celery cannot decode or route still end "rejected", on the record.
        "worker_consumer": "worker.broker.consumer:RecordingConsumer",
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
            # (worker.ops.retention). Overlapping runs are safe: one lock, the other returns.
            "idvcancel-retention": {
                "task": "idvcancel.retention",
                "schedule": settings.retention_interval_seconds,
                "options": {"queue": QUEUE, "expires": settings.retention_interval_seconds},
            },
            # Requests in the intake index that waited longer than
            # IDVCANCEL_RECONCILE_AFTER_SECONDS without a ledger (or with a dead one) are
            # pushed again (worker.triggers.reconcile): kombu can lose a message it popped.
            # Several beat instances are safe: entries are claimed atomically.
            "idvcancel-reconcile": {
                "task": "idvcancel.reconcile",
                "schedule": settings.reconcile_interval_seconds,
                "options": {"queue": QUEUE, "expires": settings.reconcile_interval_seconds},
            },
            # Confirmation reads that are due (worker.delivery.confirm): a cancel or deletion that
            # ended well is read back at the provider. Claims are leased: runs at once are
            # safe.
            "idvcancel-confirm": {
                "task": "idvcancel.confirm",
                "schedule": settings.confirm_interval_seconds,
                "options": {"queue": QUEUE, "expires": settings.confirm_interval_seconds},
            },
            # Signed checkpoints of the audit chain (worker.journal.checkpoints), on the queue of
            # the process that holds IDVCANCEL_AUDIT_SIGNING_KEY. Several runs at once are
            # safe: a checkpoint is compared-and-set on the last one.
            "idvcancel-checkpoint": {
                "task": "idvcancel.checkpoint",
                "schedule": settings.checkpoint_tick_seconds,
                "options": {"queue": settings.audit_checkpoint_queue,
                            "expires": settings.checkpoint_tick_seconds},
            },
        },
    }
