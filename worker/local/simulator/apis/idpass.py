"""Global Data "ID Pass": ``POST /idpass/cancel`` and ``POST /idpass/details`` with ``{"id"}``."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, ClassVar

from worker.local.simulator.apis.base import ApiError, Outcome, ProviderAPI
from worker.local.simulator.store import Session, Store
from worker.local.simulator.wire import SimRequest, SimResponse

REFUNDABLE = ("new", "opened")


class IdPassAPI(ProviderAPI):
    name = "idpass"
    statuses = ("new", "opened", "in_progress", "complete", "failed", "expired", "cancelled")
    cancellable = ("new", "opened", "in_progress")
    mounts: ClassVar[Mapping[str, str]] = {"/idpass-api": ""}

    def __init__(self, store: Store, token: str) -> None:
        super().__init__(store)
        self.token = token

    def references(self, req: SimRequest) -> list[str]:
        body = req.json_object()
        ref = body.get("id") if body else None
        return [ref] if isinstance(ref, str) and ref else []

    def route(self, req: SimRequest) -> Outcome:
        action = req.sub_path.rstrip("/")
        if action not in ("/idpass/cancel", "/idpass/details"):
            raise ApiError(404, "no such endpoint")
        if req.method != "POST":
            raise ApiError(405, "method not allowed")
        self.require_bearer(req, self.token)
        refs = self.references(req)
        if not refs:
            raise ApiError(400, "invalid request: body must be JSON with a string 'id'")
        session = self.lookup(refs[0])
        if action == "/idpass/details":
            return Outcome(SimResponse(200, self.view(session)))
        return self.cancel(session)

    def cancel(self, session: Session) -> Outcome:
        if session.status not in self.cancellable:
            raise ApiError(
                400, f"ID Pass in status {session.status} cannot be cancelled",
                {"status": session.status},
            )
        refunded = session.status in REFUNDABLE
        session.status = "cancelled"
        body = {"status": "cancelled", "fee_refunded": refunded, "api_reference": str(uuid.uuid4())}
        return Outcome(SimResponse(200, body), frozenset({session.reference}))

    @staticmethod
    def view(session: Session) -> dict[str, Any]:
        return {"id": session.reference, "status": session.status}

    def describe(self, session: Session) -> dict[str, Any]:
        return {**session.to_dict(), "fee_refundable": session.status in REFUNDABLE}
