"""OneSpan Identity Verification (formerly Dealflo): cancel, and delete by erasure.

Cancel: ``PUT {base}/api/transaction/{id}/event`` with ``{"trigger":
"transaction_cancelled"}`` and ``Authorization: Bearer <JWT>``. 200 returns the whole
transaction with ``"status": "cancelled"`` → ``cancelled``. The only documented 4xx
besides 401/403 is "400: the transaction data is invalid"; our cancel is always
well-formed, so a 400 means the transaction's state forbids it → ``not_cancellable``
(with the status when the answer names one). 404 → ``not_found``; 401/403 →
``unauthorized``; 429 and 5xx are retried.

Delete: ``POST {base}/api/transactions/mark-for-erasure`` with ``X-Tenant`` and
``{"grace_period": <days >= 0>, "transaction_ids": [...]}``. Erasure is asynchronous: with
grace period 0 the data goes the same day, otherwise it can be unmarked until the period
ends. The answer carries one result per transaction (partial success is possible), which
``mark_for_erasure`` reads. Deletes are batched (``worker.providers.batching``): those of one
grace period that arrive within ``IDVCANCEL_ONESPAN_BATCH_WINDOW_MS`` of each other, on
any of the process's threads, share one call of up to 500 ids, and each request still
gets its own transaction's result; a failure of the call as a whole (unreachable, 401,
429, 5xx, ...) is every request's. The pipeline does not know: ``execute`` blocks until
its batch is answered.

- ``marking_event`` "… - Accepted" → ``deleted`` (provider status ``marked_for_erasure``);
- "already marked for erasure" → ``deleted`` too: the data is going either way
  (idempotent repeats);
- "… not found" → ``not_found``;
- anything else (an active transaction, an id field error, …) → ``rejected`` with the
  provider's text.

Where the public docs disagree, and what this adapter does:

- Statuses: one doc version lists ``new, post_processing, completed, cancelled, expired,
  error``, another adds ``workflow_in_progress, workflow_completed, autosigned,
  vaulted``. The table holds the union; cancellable are ``new``, ``post_processing`` and
  ``workflow_in_progress`` (the in-flight ones of either version).
- Cancel 400: documented only as "invalid data"; read as "state forbids it" (above).
- Erasure answer: the docs show ``{"message", "transactions": [...]}`` with HTTP 202/207;
  the simulator ``{"results": [...]}`` with 200 and ``error`` texts. Both shapes and
  200/202/207 are read the same way.
- Erasure of active transactions: the prose says completed *or incomplete* transactions
  can be marked, the example answer refuses active ones ("must first be cancelled").
  The delete rule lists only non-active statuses; a refusal ends ``rejected``
  (code ``transaction_active``) for a person to cancel first.
- ``X-Tenant``: the example sends it, one page calls it optional. It is required here
  (``IDVCANCEL_ONESPAN_TENANT``; unset → ``unauthorized`` without a call).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from config.settings import Settings
from worker.contract import CancelRequest, Outcome
from worker.errors import RuleViolation
from worker.providers.base import (
    ProviderAdapter,
    ProviderAnswer,
    join_url,
    json_body,
    short,
)
from worker.providers.batching import BatchError, Coalescer
from worker.providers.errors import (
    NotCancellable,
    NotFound,
    ProviderError,
    ProviderRejected,
    TransientError,
)
from worker.providers.rules import ActionRule, ProviderRules, validate_options

TENANT_SETTING = "IDVCANCEL_ONESPAN_TENANT"

#: Our name for the state after mark-for-erasure (the read API may show it, or a 404
#: once the data is gone; the pipeline's recovery takes either as "the delete landed").
MARKED = "marked_for_erasure"
#: The most transaction ids one mark-for-erasure call may carry.
MAX_ERASURE_BATCH = 500
#: HTTP statuses whose body lists a result per transaction (all, or some, accepted).
ERASURE_ANSWERED = frozenset({200, 202, 207})

CANCELLABLE = frozenset({"new", "post_processing", "workflow_in_progress"})
STATUSES = frozenset({
    "new", "post_processing", "completed", "cancelled", "expired", "error",
    "workflow_in_progress", "workflow_completed", "autosigned", "vaulted",
})


class CancelOptions(BaseModel):
    """A cancel takes no options."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DeleteOptions(BaseModel):
    """A delete's options: the days during which the erasure can still be undone."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    grace_period: int = Field(0, ge=0, description="days")


RULES = ProviderRules(
    provider="onespan",
    actions={
        "cancel": ActionRule(
            allowed_from=CANCELLABLE,
            done_status="cancelled",
            outcome=Outcome.CANCELLED,
            options=CancelOptions,
        ),
        "delete": ActionRule(
            # Active transactions must be cancelled before they can be marked.
            allowed_from=STATUSES - CANCELLABLE,
            done_status=MARKED,
            outcome=Outcome.DELETED,
            options=DeleteOptions,
        ),
    },
    statuses=STATUSES,
)

_STATUS_IN_TEXT = re.compile(r"\bstatus\s+([a-z_]+)")
#: "… - Accepted", but not "… - Not accepted".
_ACCEPTED = re.compile(r"(?<!not )\baccepted\b", re.IGNORECASE)


def parse_options(request: CancelRequest) -> CancelOptions | DeleteOptions:
    """The validated options for the request's action, or ``RuleViolation``.

    Examples:
        >>> from worker.contract import CancelRequest
        >>> req = CancelRequest(request_id="r", provider="onespan", action="delete",
        ...     reference="t1", requested_by="x", options={"grace_period": 30})
        >>> parse_options(req)
        DeleteOptions(grace_period=30)
    """
    model: type[CancelOptions | DeleteOptions] = (
        DeleteOptions if request.action == "delete" else CancelOptions
    )
    return validate_options(model, request.options, f"onespan {request.action}")


def error_message(response: httpx.Response) -> str:
    """OneSpan's error text (``message``, else ``error``), cut short."""
    body = json_body(response)
    return short(body.get("message") or body.get("error") or body.get("detail") or "")


def status_named(body: Mapping[str, Any], message: str) -> str | None:
    """The transaction status an error answer names, if it names a known one."""
    status = body.get("status")
    if isinstance(status, str) and status in STATUSES:
        return status
    found = _STATUS_IN_TEXT.search(message)
    return found[1] if found and found[1] in STATUSES else None


def classify_erasure(
    entry: Mapping[str, Any], http_status: int
) -> ProviderAnswer | ProviderError:
    """One transaction's mark-for-erasure result, as an answer or an error (not raised)."""
    event = str(entry.get("marking_event") or "")
    texts = [event, str(entry.get("error") or ""), str(entry.get("message") or "")]
    text = short(" - ".join(t for t in texts if t))
    lower = text.lower()
    if _ACCEPTED.search(event) or "already marked" in lower:
        # Accepted, or marked by an earlier call: either way the data is going.
        return ProviderAnswer(Outcome.DELETED, http_status, MARKED)
    if "not found" in lower:
        return NotFound(text, http_status=http_status)
    if "currently active" in lower or "was active" in lower:
        return ProviderRejected(
            text or "the transaction is active: cancel it first",
            http_status=http_status, code="transaction_active",
        )
    if "id field" in lower:
        return ProviderRejected(text, http_status=http_status, code="invalid_reference")
    return ProviderRejected(
        text or "the provider did not mark the transaction for erasure",
        http_status=http_status, code="erasure_refused",
    )


def parse_erasure_results(
    body: Mapping[str, Any], ids: Sequence[str], http_status: int
) -> dict[str, ProviderAnswer | ProviderError]:
    """Each id's result from a mark-for-erasure answer (``transactions`` per the docs,
    ``results`` per the simulator). An id the answer does not mention gets a transient
    error: marking again is safe ("already marked" reads as deleted)."""
    entries = body.get("transactions")
    if not isinstance(entries, list):
        entries = body.get("results")
    by_id: dict[str, Mapping[str, Any]] = {}
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("transaction_id"), str):
            by_id.setdefault(entry["transaction_id"], entry)
    results: dict[str, ProviderAnswer | ProviderError] = {}
    for transaction_id in ids:
        entry = by_id.get(transaction_id)
        results[transaction_id] = (
            classify_erasure(entry, http_status) if entry is not None else TransientError(
                "the mark-for-erasure answer has no result for this transaction",
                http_status=http_status, code="erasure_result_missing",
            )
        )
    return results


def mark_for_erasure(
    adapter: OneSpanAdapter, ids: Sequence[str], grace_period: int = 0
) -> dict[str, ProviderAnswer | ProviderError]:
    """Mark up to ``MAX_ERASURE_BATCH`` transactions for erasure in one call.

    Returns each (distinct) id's own result, an answer or an error not raised. Raises a
    ``ProviderError`` when the call as a whole fails (unreachable, timeout, 400, 401/403,
    429, 5xx, ...): that applies to every id. ``ValueError`` for an empty or oversized
    batch or a negative grace period (a caller's bug: nothing is sent).
    """
    unique = list(dict.fromkeys(ids))
    if not 1 <= len(unique) <= MAX_ERASURE_BATCH:
        raise ValueError(f"mark-for-erasure takes 1 to {MAX_ERASURE_BATCH} ids; got {len(unique)}")
    if grace_period < 0:
        raise ValueError("grace_period must be >= 0")
    headers = {**adapter.auth(), "X-Tenant": adapter.tenant()}
    url = join_url(adapter.settings.onespan_base_url, "api/transactions/mark-for-erasure")
    response = adapter.send(
        "POST", url, json={"grace_period": grace_period, "transaction_ids": unique},
        headers=headers,
    )
    if response.status_code in ERASURE_ANSWERED:
        return parse_erasure_results(json_body(response), unique, response.status_code)
    message = error_message(response)
    if response.status_code == 404:
        # The endpoint itself is missing (base URL?): it says nothing about the ids.
        raise ProviderRejected(
            message or "mark-for-erasure endpoint not found; check IDVCANCEL_ONESPAN_BASE_URL",
            http_status=404, code="endpoint_not_found",
        )
    adapter.fail(response, message)


class OneSpanAdapter(ProviderAdapter):
    rules = RULES

    def __init__(self, settings: Settings, transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(settings, transport)
        # One coalescer per process, shared by its threads: one call per grace period.
        # A leader's call is bounded by the HTTP client's timeouts (pool, connect, write,
        # read: each up to http_timeout_seconds); a caller stops waiting well after that.
        self.erasures: Coalescer[int, str, ProviderAnswer] = Coalescer(
            self._mark_batch,
            window=settings.onespan_batch_window_ms / 1000,
            max_size=MAX_ERASURE_BATCH,
            timeout=4 * settings.http_timeout_seconds + 1,
        )

    def auth(self) -> dict[str, str]:
        return self.bearer(self.settings.onespan_token, "IDVCANCEL_ONESPAN_TOKEN")

    def tenant(self) -> str:
        return self.require(self.settings.onespan_tenant.strip(), TENANT_SETTING)

    def execute(self, request: CancelRequest, rule: ActionRule) -> ProviderAnswer:
        try:
            options = parse_options(request)
        except RuleViolation as exc:
            # RULES refuses these before the pipeline calls; should one get here,
            # end it rejected without a call (a RuleViolation here would be retried).
            raise ProviderRejected(exc.message, code=exc.code) from None
        if isinstance(options, DeleteOptions):
            return self._erase(request, options)
        return self._cancel(request, rule)

    def _cancel(self, request: CancelRequest, rule: ActionRule) -> ProviderAnswer:
        url = join_url(self.settings.onespan_base_url, "api/transaction", request.reference,
                       "event")
        response = self.send("PUT", url, json={"trigger": "transaction_cancelled"},
                             headers=self.auth())
        body = json_body(response)
        if response.status_code == 200:
            status = body.get("status")
            if status in (None, "", "cancelled", "canceled"):
                return ProviderAnswer(rule.outcome, 200, str(status or rule.done_status))
            raise ProviderRejected(
                short(f"the cancel was answered 200 but the transaction is {status}"),
                http_status=200, code="unexpected_status", provider_status=short(status),
            )
        message = error_message(response)
        if response.status_code == 400:
            raise NotCancellable(
                message or "the transaction's state does not allow a cancel",
                http_status=400, provider_status=status_named(body, message),
            )
        self.fail(response, message)

    def _erase(self, request: CancelRequest, options: DeleteOptions) -> ProviderAnswer:
        # Missing credentials end the request at once, rather than after a batch window.
        self.auth()
        self.tenant()
        try:
            return self.erasures.submit(options.grace_period, request.reference)
        except BatchError as exc:
            # No result is known (the batch's leader failed): retried, and marking again
            # is safe ("already marked" reads as deleted).
            raise TransientError(
                short(f"the batched mark-for-erasure call gave no answer: {exc}"),
                code="erasure_batch_failed",
            ) from exc

    def _mark_batch(
        self, grace_period: int, ids: list[str]
    ) -> dict[str, ProviderAnswer | ProviderError]:
        return mark_for_erasure(self, ids, grace_period)

    def read_status(self, request: CancelRequest) -> str | None:
        url = join_url(self.settings.onespan_base_url, "api/transaction", request.reference)
        response = self.send("GET", url, headers=self.auth())
        if response.status_code == 200:
            status = json_body(response).get("status")
            return str(status) if status else None
        self.fail(response, error_message(response))
