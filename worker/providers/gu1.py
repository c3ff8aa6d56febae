"""gu1 KYC: cancel only, with a reason.

``DELETE {base}/api/kyc/validations/{id}/cancel`` **with a JSON body**
``{"reason": "<at least 5 characters>"}`` and ``Authorization: Bearer
<IDVCANCEL_GU1_API_KEY>``; ``GET {base}/api/kyc/validations/{id}`` reads a validation
back. A DELETE with a body is unusual (httpx's ``client.delete`` takes no body): ours
goes out through ``ProviderAdapter.send("DELETE", url, json=...)``.

The reason is required: ``check`` refuses a request whose reason is shorter than five
characters after trimming, before any call, and we send it trimmed. gu1 keeps it in the
validation's metadata and audit logs, so it must not carry personal data (the contract
says so too).

Cancellable: ``pending``, ``in_progress`` and, in the newer docs, ``in_review``. Under the
older docs an ``in_review`` validation would answer 400 "invalid status", which we report
as ``not_cancellable``: the rules table only decides what the sweep tries, the provider's
answer decides the outcome, so both readings end correctly. Not cancellable:
``approved``, ``rejected``, ``expired``, ``abandoned``, ``cancelled``.

gu1 documents no error body shape, only two kinds of 400, told apart by their text:

==========  ===================================================================
answer      outcome
==========  ===================================================================
200         cancelled (provider_status = body ``status``, ``cancelled`` if absent)
400         "invalid status" → not_cancellable; "invalid reason" → rejected
            (code ``invalid_reason``); any other 400 → rejected
401, 403    unauthorized (also: no API key configured, no call made)
404         not_found
429, 5xx    retried (``Retry-After`` honoured)
==========  ===================================================================

Only the body's ``status`` and its error text are read: a validation also carries the
entity and metadata, which stay out of results and logs.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any, NoReturn

from worker.contract import CancelRequest, Outcome
from worker.providers.base import (
    ProviderAdapter,
    ProviderAnswer,
    blocking_status,
    join_url,
    json_body,
    short,
)
from worker.providers.errors import NotCancellable, ProviderRejected
from worker.providers.rules import ActionRule, ProviderRules

MIN_REASON = 5

STATUSES = frozenset({
    "pending", "in_progress", "in_review",
    "approved", "rejected", "expired", "abandoned", "cancelled",
})

RULES = ProviderRules(
    provider="gu1",
    actions={
        "cancel": ActionRule(
            allowed_from=frozenset({"pending", "in_progress", "in_review"}),
            done_status="cancelled",
            outcome=Outcome.CANCELLED,
            reason_min_length=MIN_REASON,
        ),
    },
    statuses=STATUSES,
    # gu1 publishes no validation lifetime: it has ``abandoned``/``expired`` statuses but
    # not when they are reached. A validation is a session link handed to a person, and
    # such links commonly live about a week (ID Pass: 7 days by default), so one idle for
    # 7 days is treated as abandoned; earlier would cut off people still completing it.
    abandoned_after=timedelta(days=7),
)

#: "validation is approved", "status: expired", "in status 'rejected'".


def error_text(body: Mapping[str, Any]) -> tuple[str | None, str]:
    """``(code, message)`` from a gu1 error body, whatever of the usual shapes it has:
    ``{"error": "text"}``, ``{"error": {"code", "message"}}``, ``{"code", "message"}``.

    Examples:
        >>> error_text({"error": "invalid reason: must be at least 5 characters"})
        (None, 'invalid reason: must be at least 5 characters')
        >>> error_text({"error": {"code": "INVALID_STATUS", "message": "nope"}})
        ('INVALID_STATUS', 'nope')
    """
    error = body.get("error")
    source: Mapping[str, Any] = error if isinstance(error, Mapping) else body
    code = source.get("code")
    message = source.get("message")
    if isinstance(error, str):
        message = message or error
    return (short(code) if code else None, short(message) if message else "")


def _words(text: str) -> str:
    return text.lower().replace("_", " ").replace("-", " ")


class Gu1Adapter(ProviderAdapter):
    rules = RULES

    def _auth(self) -> dict[str, str]:
        return self.bearer(self.settings.gu1_api_key, "IDVCANCEL_GU1_API_KEY")

    def _url(self, *segments: str) -> str:
        return join_url(self.settings.gu1_base_url, "api/kyc/validations", *segments)

    def execute(self, request: CancelRequest, rule: ActionRule) -> ProviderAnswer:
        headers = self._auth()
        reason = (request.reason or "").strip()
        url = self._url(request.reference, "cancel")
        # client.request, not client.delete: only it sends a body with a DELETE.
        response = self.send("DELETE", url, json={"reason": reason}, headers=headers)
        body = json_body(response)
        if 200 <= response.status_code < 300:
            status = body.get("status")
            return ProviderAnswer(
                outcome=rule.outcome,
                http_status=response.status_code,
                provider_status=short(status) if isinstance(status, str) and status
                else rule.done_status,
            )
        code, message = error_text(body)
        if response.status_code == 400:
            self._bad_request(body, code, message, rule)
        self.fail(response, message, code)

    @staticmethod
    def _bad_request(
        body: Mapping[str, Any], code: str | None, message: str, rule: ActionRule
    ) -> NoReturn:
        """gu1's two documented 400s, told apart by their text; always raises."""
        said = _words(f"{code or ''} {message}")
        if "reason" in said:
            raise ProviderRejected(
                message or "gu1 refused the cancellation reason",
                http_status=400, code="invalid_reason",
            )
        if "status" in said:
            raise NotCancellable(
                message or "the validation is not pending, in progress or in review",
                http_status=400, code=code,
                provider_status=blocking_status(body, message, rule, STATUSES),
            )
        raise ProviderRejected(
            message or "gu1 refused the request (400)", http_status=400, code=code
        )

    def read_status(self, request: CancelRequest) -> str | None:
        response = self.send("GET", self._url(request.reference), headers=self._auth())
        body = json_body(response)
        if response.status_code == 200:
            status = body.get("status")
            return short(status) if isinstance(status, str) and status else None
        code, message = error_text(body)
        self.fail(response, message, code)
