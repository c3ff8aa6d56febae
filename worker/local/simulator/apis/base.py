"""What every simulated provider API shares: routing helpers, errors, session seeding."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import unquote

from worker.local.simulator.store import Session, Store
from worker.local.simulator.wire import SimRequest, SimResponse, same_secret


class ApiError(Exception):
    """Raised inside a provider route; turned into that provider's error body."""

    def __init__(self, status: int, message: str, extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = dict(extra or {})


@dataclass(frozen=True)
class Outcome:
    """A provider's answer plus the references whose state it changed."""

    response: SimResponse
    effective: frozenset[str] = frozenset()


def match(pattern: str, path: str) -> tuple[str, ...] | None:
    """Path parameters (URL-decoded) when ``path`` matches ``pattern`` (a trailing / is fine)."""
    found = re.fullmatch(pattern + "/?", path)
    return tuple(unquote(g) for g in found.groups()) if found else None


SEGMENT = r"([^/]+)"


class ProviderAPI:
    """Base class: subclasses set the class attributes and implement ``route``."""

    name: ClassVar[str]
    statuses: ClassVar[tuple[str, ...]]
    cancellable: ClassVar[tuple[str, ...]]
    mounts: ClassVar[Mapping[str, str]]  # URL prefix -> mount name

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- to implement ---------------------------------------------------------------
    def references(self, req: SimRequest) -> list[str]:
        """The session references a call targets, read from path or body (for recording)."""
        raise NotImplementedError

    def route(self, req: SimRequest) -> Outcome:
        """Answer a call; runs under the store lock, so it must not block."""
        raise NotImplementedError

    def error_body(
        self, status: int, message: str, retry_after: int | None, extra: Mapping[str, Any]
    ) -> Any:
        return {"error": message, **extra}

    # -- shared ---------------------------------------------------------------------
    def handle(self, req: SimRequest) -> Outcome:
        try:
            return self.route(req)
        except ApiError as exc:
            return Outcome(self.error(exc.status, exc.message, extra=exc.extra))

    def error(
        self,
        status: int,
        message: str,
        *,
        retry_after: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> SimResponse:
        detail = self.store.faults(self.name).error_detail
        if detail:
            message = f"{message} {detail}"
        headers = {}
        if status == 429 and retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        body = self.error_body(status, message, retry_after, extra or {})
        return SimResponse(status, body, headers)

    def require_bearer(self, req: SimRequest, token: str) -> None:
        if not same_secret(req.bearer(), token):
            raise ApiError(401, "missing or invalid bearer token")

    def lookup(
        self, reference: str, product: str | None = None, region: str | None = None
    ) -> Session:
        """The session (autocreated if so configured) or a 404."""
        session = self.store.lookup(self.name, reference, self.cancellable[0], product, region)
        if session is None:
            raise ApiError(404, f"{reference} not found")
        return session

    def normalize_status(self, status: str) -> str:
        if status not in self.statuses:
            raise ValueError(
                f"unknown {self.name} status {status!r}; expected one of {', '.join(self.statuses)}"
            )
        return status

    def make_session(self, entry: Mapping[str, Any]) -> Session:
        """A session from an admin seed entry; raises ValueError when malformed."""
        reference = entry.get("reference")
        if not isinstance(reference, str) or not reference:
            raise ValueError("each session needs a non-empty string 'reference'")
        status = entry.get("status") or self.cancellable[0]
        if not isinstance(status, str):
            raise ValueError("'status' must be a string")
        metadata = entry.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise ValueError("'metadata' must be an object")
        return Session(self.name, reference, self.normalize_status(status), metadata=metadata)

    def describe(self, session: Session) -> dict[str, Any]:
        """The admin view of a session."""
        return session.to_dict()
