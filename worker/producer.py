"""Enqueue requests from Python: validated before they leave, so a bad request fails
at the producer with a clear error instead of ending ``rejected`` later.

Examples:
    >>> from worker.producer import Producer
    >>> producer = Producer("redis://127.0.0.1:6379/0")      # doctest: +SKIP
    >>> producer.submit({"request_id": "r-1", "provider": "idpass", "action": "cancel",
    ...     "reference": "fe4291ca-d831-4760-96df-c9cb03b3cd95",
    ...     "requested_by": "onboarding"})                      # doctest: +SKIP
    'r-1'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from celery import Celery
from pydantic import ValidationError

from worker.contract import QUEUE, TASK_NAME, CancelRequest
from worker.intake import describe


class InvalidRequest(ValueError):
    """A request that does not satisfy the contract; ``index`` is its place in a batch."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message if index is None else f"request #{index}: {message}")
        self.index = index


def validate(request: CancelRequest | Mapping[str, Any], index: int | None = None
             ) -> CancelRequest:
    if isinstance(request, CancelRequest):
        return request
    try:
        return CancelRequest.model_validate(dict(request))
    except ValidationError as exc:
        raise InvalidRequest(describe(exc), index) from exc


class Producer:
    """Sends ``idvcancel.process`` messages to the broker at ``redis_url``."""

    def __init__(self, redis_url: str) -> None:
        self.app = Celery("idvcancel-producer", broker=redis_url, set_as_current=False)
        self.app.conf.update(task_serializer="json", accept_content=["json"],
                             broker_connection_retry_on_startup=True)

    def submit(self, request: CancelRequest | Mapping[str, Any]) -> str:
        """Validate and enqueue one request; returns its ``request_id``."""
        valid = validate(request)
        self.app.send_task(TASK_NAME, args=[valid.model_dump(mode="json")], queue=QUEUE)
        return valid.request_id

    def submit_many(self, requests: Iterable[CancelRequest | Mapping[str, Any]]) -> list[str]:
        """Validate every request first (nothing is sent if one is invalid), then
        enqueue them over one connection."""
        valid = [validate(r, i) for i, r in enumerate(requests)]
        with self.app.producer_or_acquire() as producer:
            for request in valid:
                self.app.send_task(TASK_NAME, args=[request.model_dump(mode="json")],
                                   queue=QUEUE, producer=producer)
        return [r.request_id for r in valid]

    def close(self) -> None:
        self.app.close()
