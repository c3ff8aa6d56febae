"""Our own words for what went wrong: no provider error text in what we keep.

Providers answer errors with free text, and some echo what they hold there (a name, a
date of birth, a document number: "validation for Ana Souza (P1234567) is approved").
The adapters keep that text on the exception, where it helps nobody for long, but what
idv-cancel keeps and hands on — result events, audit records, dead letters, the ledger —
carries only:

- the error **code**: ours (``not_found``, ``provider_timeout``, …) or the provider's own
  machine code where it has one (TXCloud's ``verification_not_cancellable``, gu1's
  ``INVALID_STATUS``), kept only when it looks like a code (letters, digits, ``_.:-``,
  at most 64 characters), else the code of the error's kind;
- a **fixed message** per code, or per kind of error (not cancellable, not found, refused
  credentials, …) with the HTTP status, written here;
- the provider's **status** word (``provider_status``) only when it looks like one.

Messages we write ourselves from our own facts stay as they are: a missing credential
names its setting, and our retry verdict (``GaveUp``, whose message is built from these
fixed messages) says how many attempts it made.
"""

from __future__ import annotations

import re

from worker.providers.errors import (
    AnswerLost,
    NotCancellable,
    NotFound,
    PermanentError,
    ProviderError,
    ProviderRejected,
    ProviderServerError,
    ProviderTimeout,
    ProviderUnreachable,
    RateLimited,
    TransientError,
    Unauthorized,
)

#: What a code (or a status word) must look like to be kept.
_WORD = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
#: Codes whose message is ours alone (built from settings and counts, never a body).
OWN_TEXT_CODES = frozenset({"missing_credentials"})

#: Fixed messages of our own codes.
BY_CODE: dict[str, str] = {
    "action_not_supported": "the provider has no API for this action",
    "invalid_reference": "the provider does not take this reference (its form or length)",
    "reason_required": "the provider requires a longer reason for this action",
    "invalid_options": "the request's options are not valid for this provider and action",
    "invalid_reason": "the provider refused the reason given",
    "transaction_active": "the transaction is active: cancel it before deleting it",
    "erasure_refused": "the provider did not mark the transaction for erasure",
    "erasure_result_missing": "the provider's erasure answer had no result for this "
                              "transaction",
    "erasure_batch_failed": "the batched erasure call gave no answer",
    "endpoint_not_found": "the provider's endpoint was not found: check the base URL setting",
    "unexpected_status": "the provider answered with a status we do not expect",
    "internal_error": "an internal error in idv-cancel (see the worker's log)",
    "circuit_open": "the provider's circuit breaker was open",
    "rate_limited": "the provider's rate limit was reached",
}

#: Fixed messages by kind of error, most specific first.
BY_KIND: tuple[tuple[type[ProviderError], str], ...] = (
    (NotCancellable, "the provider will not cancel or delete the session in its current "
                     "state"),
    (NotFound, "the provider does not know this reference"),
    (Unauthorized, "the provider refused our credentials"),
    (ProviderRejected, "the provider refused the request"),
    (AnswerLost, "the connection broke before the provider's answer"),
    (ProviderUnreachable, "the provider could not be reached"),
    (ProviderTimeout, "the provider did not answer in time"),
    (RateLimited, "the provider's rate limit was reached"),
    (ProviderServerError, "the provider had a server error"),
    (TransientError, "the provider was unavailable"),
    (PermanentError, "the provider refused the request"),
    (ProviderError, "the provider call did not succeed"),
)


def public_code(error: ProviderError) -> str:
    """The error's code if it looks like a code, else its kind's default code.

    Examples:
        >>> public_code(NotFound("x", code="resource_not_found"))
        'resource_not_found'
        >>> public_code(NotFound("x", code="no such id: Ana Souza"))
        'not_found'
    """
    return error.code if _WORD.fullmatch(error.code) else type(error).default_code


def public_message(error: ProviderError) -> str:
    """Our fixed message for ``error`` (its own only where that is ours alone).

    Examples:
        >>> public_message(NotCancellable("validation of Ana Souza is approved",
        ...                               http_status=400))
        'the provider will not cancel or delete the session in its current state (HTTP 400)'
    """
    code = public_code(error)
    if getattr(error, "own_text", False) or code in OWN_TEXT_CODES:
        return error.message
    if code in BY_CODE:
        text = BY_CODE[code]
    else:
        text = next(message for kind, message in BY_KIND if isinstance(error, kind))
    return f"{text} (HTTP {error.http_status})" if error.http_status else text


def public_error(error: ProviderError) -> tuple[str, str]:
    """``(code, message)`` as a result event, an audit record or a dead letter keeps it."""
    return public_code(error), public_message(error)


def public_status(status: str | None) -> str | None:
    """A provider's status word as kept: only when it looks like one.

    Examples:
        >>> public_status("in_review"), public_status("pending for Ana Souza")
        ('in_review', None)
    """
    return status if status is not None and _WORD.fullmatch(status) else None
