"""Turn whatever a message carried into a ``Message``: a valid request, or a precise
reason why not, plus the key under which its ledger lives.

Nothing is dropped here: a message with a readable ``request_id`` is keyed by it; one
without (not an object, no id, an id that is not a short string or is only whitespace)
is keyed by its Celery task id, which survives redelivery, so a malformed message is
also answered once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from worker import keys
from worker.contract import (
    MAX_REQUEST_ID_LENGTH,
    CancelRequest,
    canonical_json,
    message_digest,
)

#: Fields copied from a malformed message into its result and audit record, when they
#: are short strings; other fields (and anything long) are never echoed back.
ECHOED_FIELDS = ("provider", "action", "reference", "source", "requested_by", "reason")
MAX_ECHO = 256


@dataclass(frozen=True)
class Message:
    """One delivery, parsed.

    Parameters:
        ledger_key: where its ledger lives.
        fingerprint: ``message_digest`` of what it carried; equal deliveries, equal fingerprints.
        request_id: the request id if one could be read.
        request: the validated request, or None when invalid.
        error: why it is invalid (``code``, ``message``), or None.
        echo: short string fields of the raw message, for the result of an invalid one.
        task_id: the Celery task id.
    """

    ledger_key: str
    fingerprint: str
    request_id: str | None
    request: CancelRequest | None
    error: tuple[str, str] | None
    echo: Mapping[str, str]
    task_id: str

    def field(self, name: str) -> str | None:
        if self.request is not None:
            value = getattr(self.request, name)
            return value if isinstance(value, str) else None
        return self.echo.get(name)


def _fingerprint_raw(args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """The fingerprint of a message that is not a valid request: the digest of its
    canonical JSON, or of its ``ascii()`` text when it has none that UTF-8 can hold
    (lone surrogates): stable across redeliveries either way."""
    value = {"args": list(args), "kwargs": dict(kwargs)}
    return message_digest(canonical_json(value) if _encodable(value) else ascii((args, kwargs)))


def describe(error: ValidationError) -> str:
    """A short, specific description of what is wrong, never echoing the values."""
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "request"
        parts.append(f"{where}: {item['msg']}")
    more = error.error_count() - 5
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _unwrap(args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[Any, str | None]:
    """The request object from the task arguments, or why there is none."""
    if kwargs:
        return None, f"unexpected keyword arguments: {', '.join(sorted(map(str, kwargs)))[:200]}"
    if len(args) != 1:
        return None, f"expected exactly one positional argument (the request), got {len(args)}"
    raw = args[0]
    if isinstance(raw, str):
        # Some clients send the request JSON-encoded twice; accept it when it is an object.
        try:
            raw = json.loads(raw)
        except ValueError:
            return None, "the request is a string that is not JSON"
    if not isinstance(raw, dict):
        return None, f"the request must be a JSON object, got {type(raw).__name__}"
    return raw, None


def _encodable(value: Any) -> bool:
    try:
        canonical_json(value).encode("utf-8")
    except (UnicodeEncodeError, TypeError, ValueError):
        return False
    return True


def parse(args: Sequence[Any], kwargs: Mapping[str, Any], task_id: str) -> Message:
    """Parse one delivery of ``idvcancel.process``."""
    raw, problem = _unwrap(args, kwargs)
    if problem is None and not _encodable(raw):
        # Valid JSON can carry lone surrogates ("\ud800") that no UTF-8 store accepts:
        # nothing of such a message is echoed or used as a key.
        raw, problem = None, "the request contains text that is not valid Unicode"
    raw_id = raw.get("request_id") if isinstance(raw, dict) else None
    readable = (
        raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= MAX_REQUEST_ID_LENGTH
        and raw_id.strip() else None
    )
    echo = {
        k: v
        for k in ECHOED_FIELDS
        if isinstance(raw, dict) and isinstance(v := raw.get(k), str) and len(v) <= MAX_ECHO
    }
    ledger_key = keys.request_ledger(readable) if readable else keys.message_ledger(task_id)
    request: CancelRequest | None = None
    error: tuple[str, str] | None = None
    if problem is not None:
        error = ("invalid_message", problem)
    else:
        try:
            request = CancelRequest.model_validate(raw)
        except ValidationError as exc:
            error = ("invalid_request", describe(exc))
    fingerprint = request.fingerprint() if request else _fingerprint_raw(args, kwargs)
    return Message(ledger_key, fingerprint, readable, request, error, echo, task_id)
