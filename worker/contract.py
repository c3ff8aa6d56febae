"""The wire contract: what producers send and what the worker publishes.

Other services depend on every name here (``idvcancel.process`` on queue
``idvcancel``, the request fields, the outcomes, the two streams), so they are
extended, never renamed. ``idvcancel schema`` prints the JSON Schema of both sides.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, StringConstraints

from config.names import PROVIDERS, QUEUE, TASK_NAME, ProviderName

__all__ = [
    "AUDIT_FIELD",
    "AUDIT_STREAM",
    "MAX_REQUEST_ID_LENGTH",
    "PROVIDERS",
    "QUEUE",
    "RESULTS_FIELD",
    "RESULTS_STREAM",
    "TASK_NAME",
    "ActionName",
    "CancelRequest",
    "ErrorInfo",
    "Outcome",
    "ProviderName",
    "ResultEvent",
    "SourceName",
    "canonical_json",
    "json_schemas",
    "utc_now_iso",
]

RESULTS_STREAM = "idvcancel:results"
RESULTS_FIELD = "event"
AUDIT_STREAM = "idvcancel:audit"
AUDIT_FIELD = "record"

MAX_REQUEST_ID_LENGTH = 128

ActionName = Literal["cancel", "delete"]
SourceName = Literal["api", "sweep", "supersede", "manual"]


class Outcome(StrEnum):
    """Every way a request can end; there are no others."""

    CANCELLED = "cancelled"
    DELETED = "deleted"
    NOT_CANCELLABLE = "not_cancellable"
    NOT_FOUND = "not_found"
    REJECTED = "rejected"
    UNAUTHORIZED = "unauthorized"
    FAILED = "failed"


def _not_blank(value: str) -> str:
    """A request id of spaces only is no id: it cannot be told apart in a log or a result.
    (The JSON Schema says so with the pattern ``\\S``: at least one other character.)"""
    if not value.strip():
        raise ValueError("must not be only whitespace")
    return value


class CancelRequest(BaseModel):
    """One request to cancel or delete a verification session at a provider.

    Examples:
        >>> CancelRequest.model_validate({"request_id": "r-1", "provider": "idpass",
        ...     "action": "cancel", "reference": "fe4291ca-d831-4760-96df-c9cb03b3cd95",
        ...     "requested_by": "onboarding"}).source
        'api'
    """

    # strict: a number is not a request id, "true" is not a boolean; unknown fields are an error.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    request_id: Annotated[
        str, StringConstraints(min_length=1, max_length=MAX_REQUEST_ID_LENGTH),
        AfterValidator(_not_blank),
    ] = Field(description="Idempotency key: a request id is carried out once.",
              json_schema_extra={"pattern": r"\S"})
    provider: ProviderName
    action: ActionName
    reference: Annotated[str, StringConstraints(min_length=1, max_length=256)] = Field(
        description="The provider's id of the session or transaction."
    )
    reason: Annotated[str, StringConstraints(max_length=1000)] | None = Field(
        default=None,
        description="Why; required by some providers. Must not contain personal data.",
    )
    source: SourceName = "api"
    requested_by: Annotated[str, StringConstraints(min_length=1, max_length=256)] = Field(
        description="The service or person asking."
    )
    options: dict[str, JsonValue] = Field(
        default_factory=dict, description='Provider-specific, e.g. Jumio {"product": "scan"}.'
    )

    def fingerprint(self) -> str:
        """The digest of the canonical request: equal requests, equal fingerprints."""
        return message_digest(canonical_json(self.model_dump()))


class ErrorInfo(BaseModel):
    """Why a request did not succeed: a stable ``code`` and a message for people."""

    code: str
    message: str


class ResultEvent(BaseModel):
    """The one event published on ``idvcancel:results`` for each request."""

    request_id: str | None = Field(
        description="Null only when the message was so malformed no request id could be read."
    )
    provider: str | None
    action: str | None
    reference: str | None
    source: str | None
    outcome: Outcome
    attempts: int = Field(description="Provider calls made for this request.")
    http_status: int | None = Field(description="The last provider HTTP status, if any call.")
    provider_status: str | None = Field(description="The session's status at the provider.")
    fee_refunded: bool | None = Field(description="ID Pass only: whether the fee was refunded.")
    error: ErrorInfo | None
    occurred_at: str = Field(description="ISO 8601, UTC.")
    requested_by: str | None = None
    task_id: str | None = Field(default=None, description="The Celery task id that carried it.")
    recovered: bool = Field(
        default=False,
        description="True when the outcome was read back from the provider after a crash.",
    )


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces: the one serialisation that hashes and fingerprints use."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def message_digest(data: bytes | str) -> str:
    """The one hash that names a message: hex SHA-256 of ``data``.

    It derives every id kept for a message (request fingerprints in the ledger, the
    ``raw-``/``noid-`` task ids of messages that carry none, the fingerprint of an
    unreadable one), so a redelivered copy gets the same name and is answered once.
    The encoding is stable and must stay so (ledgers and task ids persist): bytes are
    hashed as they are, text as UTF-8 with a lone surrogate (which UTF-8 cannot hold)
    written ``?``. Of the encodings the hashers used before (strict, ``surrogatepass``,
    ``replace``), ``replace`` is the one the consumer names raw bodies by, and it never
    raises, so even a message that no store accepts still gets its one id; for the
    other callers nothing changes (they hash canonical JSON that is valid UTF-8, or
    ``repr``/``ascii`` text, which escapes surrogates).

    Examples:
        >>> message_digest("abc") == message_digest(b"abc")
        True
        >>> message_digest("a\\ud800") == message_digest("a?")
        True
    """
    raw = data if isinstance(data, bytes) else data.encode("utf-8", "replace")
    return hashlib.sha256(raw).hexdigest()


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_schemas() -> dict[str, Any]:
    """The contract as JSON Schema, for producers that validate before sending."""
    return {
        "task": {"name": TASK_NAME, "queue": QUEUE, "serializer": "json", "args": ["request"]},
        "request": CancelRequest.model_json_schema(),
        "result_event": ResultEvent.model_json_schema(),
        "streams": {
            "results": {"key": RESULTS_STREAM, "field": RESULTS_FIELD},
            "audit": {"key": AUDIT_STREAM, "field": AUDIT_FIELD},
        },
        "outcomes": [o.value for o in Outcome],
    }
