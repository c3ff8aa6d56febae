"""Global Data ID Pass (Australia): cancel only.

``POST {base}/idpass/cancel`` with ``{"id": <uuid>}`` and a Bearer token. Cancellable
while ``new``, ``opened`` or ``in_progress``; a terminal status answers 400. The fee is
refunded when the pass was still ``new`` or ``opened``; the provider says so in
``fee_refunded``.
"""

from __future__ import annotations

import re
from datetime import timedelta

from worker.contract import CancelRequest, Outcome
from worker.providers.base import ProviderAdapter, ProviderAnswer, join_url, json_body, short
from worker.providers.errors import NotCancellable
from worker.providers.rules import ActionRule, ProviderRules

UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

RULES = ProviderRules(
    provider="idpass",
    actions={
        "cancel": ActionRule(
            allowed_from=frozenset({"new", "opened", "in_progress"}),
            done_status="cancelled",
            outcome=Outcome.CANCELLED,
            reference_pattern=UUID,
            reference_format="a UUID (8-4-4-4-12 hex digits)",
            refund_from=frozenset({"new", "opened"}),
        ),
    },
    statuses=frozenset(
        {"new", "opened", "in_progress", "complete", "failed", "expired", "cancelled"}
    ),
    # Links are valid 1-14 days, 7 by default.
    abandoned_after=timedelta(days=7),
)


class IdPassAdapter(ProviderAdapter):
    rules = RULES

    def _auth(self) -> dict[str, str]:
        return self.bearer(self.settings.idpass_token, "IDVCANCEL_IDPASS_TOKEN")

    def execute(self, request: CancelRequest, rule: ActionRule) -> ProviderAnswer:
        url = join_url(self.settings.idpass_base_url, "idpass/cancel")
        response = self.send("POST", url, json={"id": request.reference}, headers=self._auth())
        body = json_body(response)
        if response.status_code == 200:
            refunded = body.get("fee_refunded")
            return ProviderAnswer(
                outcome=rule.outcome,
                http_status=200,
                provider_status=str(body.get("status") or rule.done_status),
                fee_refunded=refunded if isinstance(refunded, bool) else None,
            )
        message = short(body.get("error") or body.get("message") or "")
        if response.status_code == 400:
            # The only 400 a well-formed cancel gets is "the pass is in a terminal status".
            status = body.get("status")
            raise NotCancellable(
                message or "the pass is in a terminal status",
                http_status=400,
                provider_status=str(status) if status else None,
            )
        self.fail(response, message)

    def read_status(self, request: CancelRequest) -> str | None:
        url = join_url(self.settings.idpass_base_url, "idpass/details")
        response = self.send("POST", url, json={"id": request.reference}, headers=self._auth())
        if response.status_code == 200:
            status = json_body(response).get("status")
            return str(status) if status else None
        self.fail(response, short(json_body(response).get("error") or ""))
