"""Builders for what the pipeline writes: audit drafts, result events, dead letters.

Only named fields go in, so nothing from a provider's body (which can hold names,
dates of birth, document numbers) can reach a record by accident.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from worker.contract import ErrorInfo, Outcome, ResultEvent, utc_now_iso
from worker.delivery.intake import Message
from worker.journal.steps import DeadLetter


class AuditStep(StrEnum):
    """Every ``step`` an audit record can name (readers of ``idvcancel:audit`` match on
    these values: they are extended, never renamed)."""

    RECEIVED = "received"
    REJECTED = "rejected"
    ATTEMPT = "attempt"
    RETRY_SCHEDULED = "retry_scheduled"
    RECOVERY = "recovery"
    COMPLETED = "completed"
    DEAD_LETTERED = "dead_lettered"
    DUPLICATE = "duplicate"
    #: A dead-lettered request sent again (``worker.ops.deadletters``).
    REPLAYED = "replayed"
    #: The reconciler pushed a request again (``worker.triggers.reconcile``): its message
    #: was lost.
    RESUBMITTED = "resubmitted"


#: The most of an unreadable message a dead letter keeps, in characters.
RAW_LIMIT = 4096


def draft(step: AuditStep, message: Message, **details: Any) -> dict[str, Any]:
    """An audit record (before sealing) for one step of one message."""
    return {
        "step": step,
        "at": utc_now_iso(),
        "request_id": message.request_id,
        "task_id": message.task_id,
        "requested_by": message.field("requested_by"),
        "source": message.field("source"),
        "reason": message.field("reason"),
        "provider": message.field("provider"),
        "action": message.field("action"),
        "reference": message.field("reference"),
        **details,
    }


def request_draft(step: AuditStep, request: Mapping[str, Any], **details: Any
                  ) -> dict[str, Any]:
    """``draft``'s record for a step taken on a stored request (a JSON object) rather than
    on a delivered message: there is no task yet, so ``task_id`` is None."""
    return {
        "step": step,
        "at": utc_now_iso(),
        "request_id": request["request_id"],
        "task_id": None,
        **{name: request.get(name) for name in (
            "requested_by", "source", "reason", "provider", "action", "reference")},
        **details,
    }


def resubmitted(request: Mapping[str, Any], *, phase: str, waited_s: float
                ) -> dict[str, Any]:
    """The audit draft of a reconciler's resubmission: the ledger phase it found ("" =
    none) and how long the request had been in the intake index since it was last
    pushed."""
    return request_draft(AuditStep.RESUBMITTED, request, phase=phase or None,
                         waited_s=round(waited_s, 3))


def event(
    message: Message,
    outcome: Outcome,
    *,
    attempts: int = 0,
    http_status: int | None = None,
    provider_status: str | None = None,
    fee_refunded: bool | None = None,
    error: tuple[str, str] | None = None,
    recovered: bool = False,
) -> ResultEvent:
    """The result event, built as the model its published JSON Schema comes from
    (``idvcancel schema``), so what the stream gets cannot drift from what it says."""
    return ResultEvent(
        request_id=message.request_id,
        provider=message.field("provider"),
        action=message.field("action"),
        reference=message.field("reference"),
        source=message.field("source") or ("api" if message.request else None),
        outcome=outcome,
        attempts=attempts,
        http_status=http_status,
        provider_status=provider_status,
        fee_refunded=fee_refunded,
        error=ErrorInfo(code=error[0], message=error[1]) if error else None,
        occurred_at=utc_now_iso(),
        requested_by=message.field("requested_by"),
        task_id=message.task_id,
        recovered=recovered,
    )


def error_of(result: ResultEvent) -> dict[str, str] | None:
    """The event's ``error`` as it is written (audit records and dead letters carry it too)."""
    return result.error.model_dump() if result.error else None


def dead_letter(
    message: Message, result: ResultEvent, raw: tuple[Any, ...] | None = None
) -> DeadLetter:
    """Everything needed to replay the request (or, unreadable, to inspect it)."""
    entry: dict[str, Any] = {
        "id": message.request_id or f"task:{message.task_id}",
        "request": message.request.model_dump() if message.request else None,
        "outcome": result.outcome.value,
        "error": error_of(result),
        "attempts": result.attempts,
        "http_status": result.http_status,
        "task_id": message.task_id,
        "dead_lettered_at": result.occurred_at,
    }
    if message.request is None and raw is not None:
        entry["raw"] = inspectable(raw)
    return DeadLetter(entry["id"], entry)


def inspectable(raw: tuple[Any, ...]) -> str:
    """``raw`` as printable ASCII of at most ``RAW_LIMIT`` characters, for a person to read.

    Escaped, not base64: Python's ``ascii()`` of the parts, so invalid UTF-8 bytes read
    ``\\xff`` and lone surrogates ``\\ud800`` while the rest stays legible, and the entry is
    always storable JSON. Cut short so a huge payload cannot fill Redis; long bytes or text
    are cut before escaping (an escaped byte takes at most four characters), so a 2 MB
    message costs kilobytes of work, not megabytes.

    Examples:
        >>> inspectable((b"not json \\xff",))
        "(b'not json \\\\xff',)"
        >>> len(inspectable((b"x" * 2_000_000,)))
        4096
    """
    cut = tuple(part[:RAW_LIMIT] if isinstance(part, bytes | str) else part for part in raw)
    return ascii(cut)[:RAW_LIMIT]
