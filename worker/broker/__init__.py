"""How a request travels between services and workers: the wire format, producers
(``Producer``: Redis list or RabbitMQ quorum queue), the checked Redis transport, message
signing, and the consumer that answers what Celery cannot take.

May import: ``config``, the ground modules of ``worker`` (contract, keys, logs, metrics),
``worker.delivery`` (the consumer hands messages to the pipeline; the producer validates
as the pipeline does).
"""
