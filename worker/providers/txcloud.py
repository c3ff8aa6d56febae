"""TXCloud: cancel only.

``POST {base}/identity/verifications/{id}/cancel`` with no body and
``Authorization: Bearer <IDVCANCEL_TXCLOUD_API_KEY>``; ``GET {base}/identity/verifications/{id}``
reads a verification back. TXCloud has no delete call. The docs say the call "cancels a
pending async verification", so ``pending`` is the only cancellable status.

**The docs disagree on statuses.** The API reference enumerates ``pending, verified,
rejected, review, expired, error``; the concepts page lists ``pending, verified, failed,
expired, cancelled, manual_review``. Neither pins down the status a verification shows
after a cancel (the reference enum has no ``cancelled`` at all). So:

* the rules table lists the union of both lists, so a status from either reading is
  known (and only ``pending`` is cancellable under both);
* **any 200 to a cancel is a success** (``cancelled``), whatever status the body shows;
  ``provider_status`` reports the body's ``status`` as given, or ``cancelled`` when the
  body has none;
* after a crash mid-call the pipeline reads the status back and takes ``cancelled`` as
  "the call landed" (``done_status``). Under the reference reading a cancelled
  verification may show some other status; the pipeline then calls again, and the
  second cancel answers 400 → ``not_cancellable``, which is final and safe (never a
  second effect), though less precise.

Errors come as ``{"error": {"code", "type", "message", "param"?, "request_id"}}``. We
keep ``error.code`` (or ``error.type``) and a shortened ``error.message``, nothing else:
TXCloud objects carry ``extracted_data`` (names, date of birth, document number, MRZ),
which must never reach a log, a result or an error.

==========  ===================================================================
answer      outcome
==========  ===================================================================
200         cancelled (provider_status = body ``status`` or ``cancelled``)
400, 409    not_cancellable when a validation/state error (the verification
            is no longer ``pending``); another error type → rejected
401, 403    unauthorized (also: no API key configured, no call made)
404         not_found
429         retried; ``retry_after`` from the body (top level or in ``error``),
            else the ``Retry-After`` header
5xx         retried (500, 502, 503, 504)
==========  ===================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import httpx

from worker.contract import CancelRequest, Outcome
from worker.providers.base import (
    ProviderAdapter,
    ProviderAnswer,
    blocking_status,
    join_url,
    json_body,
    parse_retry_after,
    short,
)
from worker.providers.errors import NotCancellable, ProviderRejected, RateLimited
from worker.providers.rules import ActionRule, ProviderRules

#: Every status either version of the docs names (API reference + concepts page).
STATUSES = frozenset({
    "pending", "verified", "rejected", "review", "expired", "error",  # API reference
    "failed", "cancelled", "manual_review",  # concepts page
})

RULES = ProviderRules(
    provider="txcloud",
    actions={
        "cancel": ActionRule(
            allowed_from=frozenset({"pending"}),
            done_status="cancelled",
            outcome=Outcome.CANCELLED,
        ),
    },
    statuses=STATUSES,
    # TXCloud documents no validity period for an async verification (nothing in seed 001
    # or the docs). It is processed automatically, so one still ``pending`` after a day
    # is stuck or forgotten: 1 day, as agreed for undocumented async verifications.
    abandoned_after=timedelta(days=1),
)

#: Error types meaning "this request cannot be carried out in the verification's
#: current state" (400 validation_error, 409 idempotency_error / conflict).
STATE_ERROR_TYPES = frozenset({"validation_error", "idempotency_error", "conflict_error"})

#: "in status 'verified'", "status is rejected", "verification is expired".


def error_fields(body: Mapping[str, Any]) -> tuple[str | None, str, str | None]:
    """``(code, message, type)`` from TXCloud's error envelope; nothing else is read.

    Examples:
        >>> error_fields({"error": {"code": "x", "type": "validation_error", "message": "m"}})
        ('x', 'm', 'validation_error')
        >>> error_fields({"error": {"type": "api_error"}})
        ('api_error', '', 'api_error')
        >>> error_fields({"extracted_data": {"last_name": "El Amrani"}})
        (None, '', None)
    """
    error = body.get("error")
    if isinstance(error, Mapping):
        kind = error.get("type")
        kind = str(kind) if kind else None
        code = error.get("code") or kind
        message = error.get("message")
        return (short(code) if code else None, short(message) if message else "", kind)
    if isinstance(error, str):  # not TXCloud's documented shape; kept, cut short
        return None, short(error), None
    return None, "", None


def retry_after(body: Mapping[str, Any], response: httpx.Response) -> float | None:
    """Seconds to wait after a 429: body ``retry_after`` (top level, then inside
    ``error``), else the ``Retry-After`` header."""
    error = body.get("error")
    for source in (body, error if isinstance(error, Mapping) else {}):
        value = source.get("retry_after")
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float) and value >= 0:
            return float(value)
        if isinstance(value, str):
            parsed = parse_retry_after(value)
            if parsed is not None:
                return parsed
    return parse_retry_after(response.headers.get("retry-after"))


class TxCloudAdapter(ProviderAdapter):
    rules = RULES

    def _auth(self) -> dict[str, str]:
        return self.bearer(self.settings.txcloud_api_key, "IDVCANCEL_TXCLOUD_API_KEY")

    def _url(self, *segments: str) -> str:
        return join_url(self.settings.txcloud_base_url, "identity/verifications", *segments)

    def execute(self, request: CancelRequest, rule: ActionRule) -> ProviderAnswer:
        headers = self._auth()
        response = self.send("POST", self._url(request.reference, "cancel"), headers=headers)
        body = json_body(response)
        if 200 <= response.status_code < 300:
            # Any success is a cancel: the docs do not agree on the status it leaves.
            status = body.get("status")
            return ProviderAnswer(
                outcome=rule.outcome,
                http_status=response.status_code,
                provider_status=short(status) if isinstance(status, str) and status
                else rule.done_status,
            )
        code, message, kind = error_fields(body)
        status_code = response.status_code
        if status_code == 429:
            raise RateLimited(
                message or "rate limited", retry_after=retry_after(body, response),
                http_status=429, code=code,
            )
        if status_code in (400, 409):
            if kind is None or kind in STATE_ERROR_TYPES:
                raise NotCancellable(
                    message or "the verification is no longer pending",
                    http_status=status_code, code=code,
                    provider_status=blocking_status(body, message, rule, STATUSES),
                )
            raise ProviderRejected(
                message or f"the provider refused the request ({status_code})",
                http_status=status_code, code=code,
            )
        self.fail(response, message, code)

    def read_status(self, request: CancelRequest) -> str | None:
        response = self.send("GET", self._url(request.reference), headers=self._auth())
        body = json_body(response)
        if response.status_code == 200:
            status = body.get("status")
            return short(status) if isinstance(status, str) and status else None
        code, message, _ = error_fields(body)
        if response.status_code == 429:
            raise RateLimited(
                message or "rate limited", retry_after=retry_after(body, response),
                http_status=429, code=code,
            )
        self.fail(response, message, code)
