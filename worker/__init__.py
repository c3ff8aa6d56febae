"""idv-cancel: cancels and deletes identity-verification sessions at the providers,
once, with a record of every step.

The public API, for services that enqueue requests or report sessions::

    from worker import CancelRequest, Producer, track

    producer = Producer("redis://127.0.0.1:6379/0")
    producer.submit({"request_id": "r-1", "provider": "idpass", "action": "cancel",
                     "reference": "fe4291ca-d831-4760-96df-c9cb03b3cd95",
                     "requested_by": "onboarding"})

Names are loaded when first used, so ``import worker.app`` (the Celery app) costs no
more than the app itself.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.broker.producer import Producer
    from worker.contract import CancelRequest, Outcome, ResultEvent
    from worker.errors import (
        IdvCancelError,
        InvalidInput,
        InvalidRequest,
        InvalidSession,
        PublishNotConfirmed,
    )
    from worker.providers.errors import ProviderError
    from worker.triggers.tracking import TrackedSession, track

#: Public name -> the module that defines it.
_EXPORTS = {
    "CancelRequest": "worker.contract",
    "Outcome": "worker.contract",
    "ResultEvent": "worker.contract",
    "Producer": "worker.broker.producer",
    "track": "worker.triggers.tracking",
    "TrackedSession": "worker.triggers.tracking",
    "IdvCancelError": "worker.errors",
    "InvalidInput": "worker.errors",
    "InvalidRequest": "worker.errors",
    "InvalidSession": "worker.errors",
    "PublishNotConfirmed": "worker.errors",
    "ProviderError": "worker.providers.errors",
}

__all__ = [
    "CancelRequest",
    "IdvCancelError",
    "InvalidInput",
    "InvalidRequest",
    "InvalidSession",
    "Outcome",
    "Producer",
    "ProviderError",
    "PublishNotConfirmed",
    "ResultEvent",
    "TrackedSession",
    "track",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'worker' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
