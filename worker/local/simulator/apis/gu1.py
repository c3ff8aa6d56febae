"""gu1 KYC: ``DELETE /api/kyc/validations/{id}/cancel`` with a JSON ``{"reason"}`` body."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from worker.local.simulator.apis.base import SEGMENT, ApiError, Outcome, ProviderAPI, match
from worker.local.simulator.store import Session, Store
from worker.local.simulator.wire import SimRequest, SimResponse

CANCEL = rf"/api/kyc/validations/{SEGMENT}/cancel"
READ = rf"/api/kyc/validations/{SEGMENT}"
MIN_REASON = 5


class Gu1API(ProviderAPI):
    name = "gu1"
    statuses = (
        "pending", "in_progress", "in_review",
        "approved", "rejected", "expired", "abandoned", "cancelled",
    )
    cancellable = ("pending", "in_progress", "in_review")
    mounts: ClassVar[Mapping[str, str]] = {"/gu1": ""}

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
            raise ApiError(404, "Not found")
        if (cancel and req.method != "DELETE") or (read and req.method != "GET"):
            raise ApiError(405, "Method not allowed")
        self.require_bearer(req, self.api_key)
        if read is not None:
            return Outcome(SimResponse(200, self.validation(self.lookup(read[0]))))
        reason = self.reason(req)
        session = self.lookup((cancel or ("",))[0])
        if session.status not in self.cancellable:
            raise ApiError(
                400,
                f"invalid status: validation is {session.status}; only "
                f"{', '.join(self.cancellable)} can be cancelled",
            )
        session.status = "cancelled"
        session.metadata["cancellationReason"] = reason
        return Outcome(SimResponse(200, self.validation(session)), frozenset({session.reference}))

    @staticmethod
    def reason(req: SimRequest) -> str:
        body = req.json_object()
        reason = body.get("reason") if body else None
        if not isinstance(reason, str) or len(reason.strip()) < MIN_REASON:
            raise ApiError(400, f"invalid reason: must be at least {MIN_REASON} characters")
        return reason.strip()

    @staticmethod
    def validation(session: Session) -> dict[str, Any]:
        return {
            "id": session.reference,
            "entityId": session.metadata.get("entityId", f"ent_{session.reference}"),
            "status": session.status,
            "isCurrent": session.status != "cancelled",
            "provider": "gu1-sim",
            "metadata": session.metadata,
            "createdAt": "2024-01-02T03:04:05Z",
            "updatedAt": "2024-01-02T03:04:05Z",
        }
