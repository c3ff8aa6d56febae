"""The admin API under ``/_sim/``: seed sessions, read state and calls, set faults.

Faults never apply here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from worker.local.simulator.apis import ProviderAPI
from worker.local.simulator.faults import Faults
from worker.local.simulator.store import Store
from worker.local.simulator.wire import SimRequest, SimResponse

ALL = "all"


class AdminError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


Handler = Callable[[SimRequest, tuple[str, ...]], Any]


class AdminAPI:
    def __init__(self, store: Store, apis: dict[str, ProviderAPI]) -> None:
        self.store = store
        self.apis = apis
        self.routes: list[tuple[str, str, Handler]] = [
            ("GET", r"/_sim/health", self.health),
            ("POST", r"/_sim/sessions", self.seed),
            ("GET", r"/_sim/sessions/([^/]+)/([^/]+)", self.session),
            ("GET", r"/_sim/calls", self.calls),
            ("DELETE", r"/_sim/calls", self.clear_calls),
            ("GET", r"/_sim/stats", self.stats),
            ("GET", r"/_sim/faults/([^/]+)", self.get_faults),
            ("PUT", r"/_sim/faults/([^/]+)", self.put_faults),
            ("GET", r"/_sim/config", self.config),
            ("PUT", r"/_sim/config", self.put_config),
            ("POST", r"/_sim/reset", self.reset),
        ]

    def handle(self, req: SimRequest) -> SimResponse:
        path = req.path.rstrip("/")
        allowed = []
        for method, pattern, handler in self.routes:
            found = re.fullmatch(pattern, path)
            if found is None:
                continue
            allowed.append(method)
            if method == req.method:
                try:
                    return SimResponse(200, handler(req, tuple(unquote(g) for g in found.groups())))
                except AdminError as exc:
                    return SimResponse(exc.status, {"error": exc.message})
        if allowed:
            return SimResponse(405, {"error": "method not allowed"}, {"Allow": ", ".join(allowed)})
        return SimResponse(404, {"error": f"no admin endpoint at {req.path}"})

    def api(self, name: str) -> ProviderAPI:
        api = self.apis.get(name)
        if api is None:
            raise AdminError(404, f"unknown provider {name!r}; known: {', '.join(self.apis)}")
        return api

    @staticmethod
    def body(req: SimRequest) -> dict[str, Any]:
        body = req.json_object()
        if body is None:
            raise AdminError(400, "body must be a JSON object")
        return body

    # -- handlers -------------------------------------------------------------------
    def health(self, req: SimRequest, _: tuple[str, ...]) -> Any:
        return {"ok": True, "providers": list(self.apis), "autocreate": self.store.autocreate}

    def seed(self, req: SimRequest, _: tuple[str, ...]) -> Any:
        body = self.body(req)
        api = self.api(str(body.get("provider")))
        entries = body.get("sessions")
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise AdminError(400, "'sessions' must be a list of objects")
        try:
            sessions = [api.make_session(entry) for entry in entries]
        except ValueError as exc:
            raise AdminError(400, str(exc)) from exc
        with self.store.lock:
            for session in sessions:
                self.store.put(session)
        return {"created": len(sessions)}

    def session(self, req: SimRequest, params: tuple[str, ...]) -> Any:
        api = self.api(params[0])
        session = self.store.get(api.name, params[1])
        if session is None:
            gone = self.store.is_gone(api.name, params[1])
            raise AdminError(404, "session deleted" if gone else "no such session")
        return api.describe(session)

    def calls(self, req: SimRequest, _: tuple[str, ...]) -> Any:
        effective = req.query.get("effective")
        flag = None if effective is None else effective.lower() in ("1", "true", "yes")
        found = self.store.calls(req.query.get("provider"), req.query.get("reference"), flag)
        return {"calls": [c.to_dict() for c in found]}

    def clear_calls(self, req: SimRequest, _: tuple[str, ...]) -> Any:
        self.store.clear_calls()
        return {"ok": True}

    def stats(self, req: SimRequest, _: tuple[str, ...]) -> Any:
        return self.store.stats()

    def get_faults(self, req: SimRequest, params: tuple[str, ...]) -> Any:
        return self.store.faults(self.api(params[0]).name).to_dict()

    def put_faults(self, req: SimRequest, params: tuple[str, ...]) -> Any:
        names = list(self.apis) if params[0] == ALL else [self.api(params[0]).name]
        try:
            faults = Faults.from_dict(self.body(req))
        except ValueError as exc:
            raise AdminError(400, str(exc)) from exc
        for name in names:
            self.store.set_faults(name, faults)
        return faults.to_dict()

    def config(self, req: SimRequest, _: tuple[str, ...]) -> Any:
        return {"autocreate": self.store.autocreate, "max_calls": self.store.max_calls}

    def put_config(self, req: SimRequest, _: tuple[str, ...]) -> Any:
        body = self.body(req)
        unknown = sorted(set(body) - {"autocreate", "max_calls"})
        if unknown:
            raise AdminError(400, f"unknown config keys: {', '.join(unknown)}")
        autocreate = body.get("autocreate", self.store.autocreate)
        max_calls = body.get("max_calls", self.store.max_calls)
        if not isinstance(autocreate, bool):
            raise AdminError(400, "autocreate must be a boolean")
        if max_calls is not None and (
            isinstance(max_calls, bool) or not isinstance(max_calls, int) or max_calls < 0
        ):
            raise AdminError(400, "max_calls must be null or an integer >= 0")
        self.store.configure(autocreate, max_calls)
        return self.config(req, ())

    def reset(self, req: SimRequest, _: tuple[str, ...]) -> Any:
        self.store.reset()
        return {"ok": True}
