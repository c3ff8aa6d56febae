"""OneSpan IDV: cancel by ``PUT /api/transaction/{id}/event``, erase by ``mark-for-erasure``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from worker.local.simulator.apis.base import SEGMENT, ApiError, Outcome, ProviderAPI, match
from worker.local.simulator.store import Session, Store
from worker.local.simulator.wire import SimRequest, SimResponse, same_secret

EVENT = rf"/api/transaction/{SEGMENT}/event"
READ = rf"/api/transaction/{SEGMENT}"
ERASE = r"/api/transactions/mark-for-erasure"
MAX_ERASE = 500
MARKED = "marked_for_erasure"
ACCEPTED = "Transaction Erase Request - Accepted"


class OneSpanAPI(ProviderAPI):
    name = "onespan"
    statuses = (
        "new", "post_processing", "workflow_in_progress",
        "completed", "cancelled", "expired", "error",
        "workflow_completed", "autosigned", "vaulted", MARKED,
    )
    cancellable = ("new", "post_processing", "workflow_in_progress")
    mounts: ClassVar[Mapping[str, str]] = {"/onespan": ""}

    def __init__(self, store: Store, token: str, tenant: str) -> None:
        super().__init__(store)
        self.token = token
        self.tenant = tenant

    def references(self, req: SimRequest) -> list[str]:
        found = match(EVENT, req.sub_path) or match(READ, req.sub_path)
        if found:
            return [found[0]]
        if match(ERASE, req.sub_path) is not None:
            ids = self.erase_ids(req)
            return list(dict.fromkeys(ids)) if ids else []
        return []

    def route(self, req: SimRequest) -> Outcome:
        event, read = match(EVENT, req.sub_path), match(READ, req.sub_path)
        erase = match(ERASE, req.sub_path)
        wanted = "PUT" if event else "GET" if read else "POST" if erase is not None else None
        if wanted is None:
            raise ApiError(404, "Not found")
        if req.method != wanted:
            raise ApiError(405, "Method not allowed")
        self.require_bearer(req, self.token)
        if read:
            return Outcome(SimResponse(200, self.transaction(self.lookup(read[0]))))
        if event:
            return self.cancel(req, event[0])
        return self.mark_for_erasure(req)

    def cancel(self, req: SimRequest, reference: str) -> Outcome:
        body = req.json_object()
        if not body or body.get("trigger") != "transaction_cancelled":
            raise ApiError(400, "Invalid transaction event: trigger must be transaction_cancelled")
        session = self.lookup(reference)
        if session.status not in self.cancellable:
            raise ApiError(400, f"Transaction in status {session.status} cannot be cancelled")
        session.status = "cancelled"
        return Outcome(SimResponse(200, self.transaction(session)), frozenset({reference}))

    def mark_for_erasure(self, req: SimRequest) -> Outcome:
        if not same_secret(req.headers.get("x-tenant"), self.tenant):
            raise ApiError(403, "Missing or invalid X-Tenant header")
        body = req.json_object() or {}
        grace = body.get("grace_period")
        if isinstance(grace, bool) or not isinstance(grace, int) or grace < 0:
            raise ApiError(400, "grace_period must be an integer >= 0")
        ids = self.erase_ids(req)
        if ids is None:
            raise ApiError(400, f"transaction_ids must list 1 to {MAX_ERASE} transaction ids")
        results: list[dict[str, Any]] = []
        accepted: set[str] = set()
        for ref in ids:
            session = self.store.lookup(self.name, ref, self.cancellable[0])
            if session is None:
                results.append({"transaction_id": ref, "error": "Transaction not found"})
            elif session.status == MARKED:
                results.append(
                    {"transaction_id": ref, "error": "Transaction already marked for erasure"}
                )
            else:
                session.metadata.update(status_before_erasure=session.status, grace_period=grace)
                session.status = MARKED
                accepted.add(ref)
                results.append({"transaction_id": ref, "marking_event": ACCEPTED})
        return Outcome(SimResponse(200, {"results": results}), frozenset(accepted))

    @staticmethod
    def erase_ids(req: SimRequest) -> list[str] | None:
        body = req.json_object() or {}
        ids = body.get("transaction_ids")
        if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_ERASE:
            return None
        if not all(isinstance(i, str) and i for i in ids):
            return None
        return ids

    def error_body(
        self, status: int, message: str, retry_after: int | None, extra: Mapping[str, Any]
    ) -> Any:
        return {"message": message, **extra}

    def transaction(self, session: Session) -> dict[str, Any]:
        return {
            "id": session.reference,
            "status": session.status,
            "request_ids": [],
            "tenant_id": self.tenant,
            "brand_id": "onespan",
            "workflow_id": "00000000-0000-0000-0000-200000000001",
            "language": "english",
            "created": "2024-01-02T03:04:05.000Z",
            "users": [],
            "tokens": [],
            "documents": [],
            "expiry_period": 90,
            "disable_notifications": False,
            "disable_recording": False,
            "verifications": [],
            "version": 5,
        }
