"""The import path ``worker.producer`` that the README documented before the packages:
kept so that existing callers go on working. New code imports from ``worker``
(``from worker import Producer``); the code lives in ``worker.broker.producer``."""

from worker.broker.producer import BATCH_SIZE, Producer, load_jsonl, validate
from worker.errors import InvalidRequest

__all__ = ["BATCH_SIZE", "InvalidRequest", "Producer", "load_jsonl", "validate"]
