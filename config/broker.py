"""Which broker carries the queue, and on RabbitMQ how the queue is declared.

Two brokers are supported (README "Delivery guarantees" says what each guarantees):

- **Redis** (``redis://``, the default): kombu's Redis transport, one list ``idvcancel``.
- **RabbitMQ** (``amqp://``): ``idvcancel`` is a *quorum queue*. Quorum queues replicate
  each message by Raft before the publisher's confirm, and RabbitMQ hands a consumer's
  un-acked messages back the moment its connection drops: there is no pop window that a
  crash can fall into and no visibility timeout to wait out.

The declaration lives here, once, because the broker refuses a second declaration of
the same queue with other arguments (``PRECONDITION_FAILED``): the worker (through
Celery's ``task_queues``) and our producers (``worker.broker.amqp``) must declare it alike.

- ``x-delivery-limit``: RabbitMQ 4.0 gives quorum queues a default of 20 (and 3.x none);
  we set it explicitly (``IDVCANCEL_DELIVERY_LIMIT``). A message whose deliveries keep
  ending without an ack — its worker dies on it, again and again — is dead-lettered
  instead of taking down worker after worker.
- ``x-dead-letter-exchange``: such a message goes to ``idvcancel.dead``, which the worker
  also consumes and answers ``rejected`` on the record (``worker.broker.consumer``), never
  silently dropped. ``at-least-once`` dead-lettering (which needs ``reject-publish``
  overflow) keeps the message in ``idvcancel`` until the dead-letter queue has it.
- A **topic** exchange: Celery's native delayed delivery (which carries retry countdowns
  on quorum queues instead of the worker holding ETA messages) does not work with
  Celery's default direct exchange.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from kombu import Exchange, Queue

from config.names import QUEUE

AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})
REDIS_SCHEMES = frozenset({"redis", "rediss", "sentinel", "socket", "unix"})

#: The queue and exchange names of the contract (``worker.contract.QUEUE``).
QUEUE_NAME = QUEUE
#: Where RabbitMQ sends a message past its delivery limit; consumed by every worker.
DEAD_LETTER_QUEUE = "idvcancel.dead"
DEAD_LETTER_EXCHANGE = "idvcancel.dead"
#: ``IDVCANCEL_DELIVERY_LIMIT``'s default.
DEFAULT_DELIVERY_LIMIT = 10


def _scheme(url: str) -> str:
    return urlsplit(url).scheme.lower() if "://" in url else ""


def is_amqp(url: str) -> bool:
    """Is ``url`` a RabbitMQ (AMQP 0-9-1) broker?

    Examples:
        >>> is_amqp("amqp://guest:guest@127.0.0.1:5672//"), is_amqp("redis://h:6379/0")
        (True, False)
    """
    return _scheme(url) in AMQP_SCHEMES


def is_redis(url: str) -> bool:
    return _scheme(url) in REDIS_SCHEMES


def amqp_queues(delivery_limit: int) -> tuple[Queue, Queue]:
    """The work queue and the dead-letter queue, declared alike by workers and producers.

    Examples:
        >>> work, dead = amqp_queues(10)
        >>> work.queue_arguments["x-queue-type"], work.queue_arguments["x-delivery-limit"]
        ('quorum', 10)
        >>> dead.name
        'idvcancel.dead'
    """
    work = Queue(
        QUEUE_NAME,
        Exchange(QUEUE_NAME, type="topic", durable=True),
        routing_key=QUEUE_NAME,
        durable=True,
        queue_arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": delivery_limit,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-routing-key": DEAD_LETTER_QUEUE,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )
    dead = Queue(
        DEAD_LETTER_QUEUE,
        Exchange(DEAD_LETTER_EXCHANGE, type="topic", durable=True),
        routing_key=DEAD_LETTER_QUEUE,
        durable=True,
        queue_arguments={"x-queue-type": "quorum"},
    )
    return work, dead
