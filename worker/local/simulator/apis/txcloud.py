"""TXCloud: ``POST /identity/verifications/{id}/cancel`` (no body), ``GET .../{id}``."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, ClassVar

from worker.local.simulator.apis.base import SEGMENT, ApiError, Outcome, ProviderAPI, match
from worker.local.simulator.store import Session, Store
from worker.local.simulator.wire import SimRequest, SimResponse

CANCEL = rf"/identity/verifications/{SEGMENT}/cancel"
READ = rf"/identity/verifications/{SEGMENT}"

ERROR_TYPES = {
    400: ("validation_error", "invalid_request"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("authorization_error", "forbidden"),
    404: ("not_found_error", "resource_not_found"),
    405: ("validation_error", "method_not_allowed"),
    409: ("idempotency_error", "conflict"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


class TxCloudAPI(ProviderAPI):
    name = "txcloud"
    statuses = (
        "pending", "verified", "rejected", "review", "manual_review",
        "failed", "expired", "error", "cancelled",
    )
    cancellable = ("pending",)
    mounts: ClassVar[Mapping[str, str]] = {"/txcloud/v1": ""}

    def __init__(self, store: Store, api_key: str) -> None:
        super().__init__(store)
        self.api_key = api_key

    def references(self, req: SimRequest) -> list[str]:
        found = match(CANCEL, req.sub_path) or match(READ, req.sub_path)
        return [found[0]] if found else []

    def route(self, req: SimRequest) -> Outcome:
        cancel = match(CANCEL, req.sub_path)
        read = match(READ, req.sub_path)
        if cancel is None and read is None:
            raise ApiError(404, "Unrecognized request URL")
        if (cancel and req.method != "POST") or (read and req.method != "GET"):
            raise ApiError(405, "Method not allowed")
        self.require_bearer(req, self.api_key)
        session = self.lookup((cancel or read or ("",))[0])
        if read is not None:
            return Outcome(SimResponse(200, self.verification(session)))
        if session.status not in self.cancellable:
            raise ApiError(
                400, f"Verification in status '{session.status}' cannot be cancelled",
                {"code": "verification_not_cancellable"},
            )
        session.status = "cancelled"
        return Outcome(SimResponse(200, self.verification(session)), frozenset({session.reference}))

    def error_body(
        self, status: int, message: str, retry_after: int | None, extra: Mapping[str, Any]
    ) -> Any:
        kind, code = ERROR_TYPES.get(status, ("api_error", "internal_error"))
        error = {
            "code": extra.get("code", code),
            "message": message,
            "type": kind,
            "request_id": f"req_{uuid.uuid4().hex[:24]}",
        }
        body: dict[str, Any] = {"error": error}
        if status == 429:
            body["retry_after"] = retry_after if retry_after is not None else 1
        return body

    @staticmethod
    def verification(session: Session) -> dict[str, Any]:
        """A verification object, with the fake PII a real one carries."""
        return {
            "id": session.reference,
            "object": "identity.verification",
            "status": session.status,
            "created_at": "2024-01-02T03:04:05Z",
            "updated_at": "2024-01-02T03:04:05Z",
            "document_type": "passport",
            "country": "MA",
            "extracted_data": {
                "document_number": "AE123456",
                "first_name": "Mohammed",
                "last_name": "El Amrani",
                "date_of_birth": "1990-04-12",
                "nationality": "MAR",
                "mrz": "P<MAREL<AMRANI<<MOHAMMED<<<<<<<<<<<<<<<<<<<\n"
                       "AE1234567MAR9004125M3001017<<<<<<<<<<<<<<02",
            },
            "risk_score": 120,
            "fraud_signals": [],
            "metadata": session.metadata,
        }
