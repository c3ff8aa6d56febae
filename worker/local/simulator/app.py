"""Routes a request to the admin API or to a provider, applying that provider's faults."""

from __future__ import annotations

import threading
import time

from worker.local.simulator.admin import AdminAPI
from worker.local.simulator.apis import Outcome, ProviderAPI
from worker.local.simulator.faults import Decision
from worker.local.simulator.store import Store
from worker.local.simulator.wire import SimRequest, SimResponse

ADMIN_PREFIX = "/_sim"
FAULT_MESSAGES = {
    "down": "service unavailable (simulated outage)",
    "stuck": "simulated failure (this reference)",
    "fail_next": "simulated failure",
    "error_rate": "simulated failure",
    "timeout": "gateway timeout (simulated)",
}


class App:
    """The whole simulator behind one ``dispatch(request) -> response`` call."""

    def __init__(
        self, store: Store, apis: dict[str, ProviderAPI], stopping: threading.Event
    ) -> None:
        self.store = store
        self.apis = apis
        self.stopping = stopping
        self.admin = AdminAPI(store, apis)
        mounts = [
            (prefix, api, name) for api in apis.values() for prefix, name in api.mounts.items()
        ]
        self.mounts = sorted(mounts, key=lambda m: len(m[0]), reverse=True)

    def dispatch(self, req: SimRequest) -> SimResponse:
        if req.path == ADMIN_PREFIX or req.path.startswith(ADMIN_PREFIX + "/"):
            return self.admin.handle(req)
        for prefix, api, mount in self.mounts:
            if req.path == prefix or req.path.startswith(prefix + "/"):
                req.sub_path = req.path[len(prefix):] or "/"
                req.mount = mount
                return self.provider_call(api, req)
        return SimResponse(404, {"error": f"no simulated endpoint at {req.path}"})

    def provider_call(self, api: ProviderAPI, req: SimRequest) -> SimResponse:
        arrived = time.time()
        references = list(dict.fromkeys(api.references(req)))
        decision = self.store.take_fault(api.name, references)
        if decision.latency > 0:
            self.stopping.wait(decision.latency)
        with self.store.lock:
            kept = [r for r in references if r in self.store.faults(api.name).keep_active]
            saved = self.store.snapshot(api.name, kept) if kept else None
            outcome = self.outcome(api, req, decision)
            if saved is not None:  # answered as usual, and nothing changed
                self.store.restore(api.name, saved)
            response = outcome.response
            if decision.kind == "timeout":
                response = api.error(504, FAULT_MESSAGES["timeout"])
                response.close = decision.close
            request_id = self.store.next_request_id()
            headers = dict(req.headers)
            body = req.body_for_record()
            targets: list[str | None] = [*references] if references else [None]
            for reference in targets:
                self.store.record(
                    request_id=request_id, time=arrived, provider=api.name, method=req.method,
                    path=req.path, headers=headers, body=body, reference=reference,
                    effective=reference in outcome.effective,
                    status=None if response.close else response.status, fault=decision.kind,
                )
        if decision.kind == "timeout":
            self.stopping.wait(decision.hang)
        return response

    @staticmethod
    def outcome(api: ProviderAPI, req: SimRequest, decision: Decision) -> Outcome:
        if decision.kind is None or (decision.kind == "timeout" and decision.apply):
            return api.handle(req)
        status = decision.status or 503
        message = FAULT_MESSAGES.get(decision.kind, "simulated failure")
        if status == 429:
            message = "rate limit exceeded (simulated)"
        return Outcome(api.error(status, message, retry_after=decision.retry_after))
