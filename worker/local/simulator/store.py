"""Thread-safe in-memory state: sessions, recorded calls, counters and fault settings."""

from __future__ import annotations

import random
import threading
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from worker.local.simulator.faults import Decision, Faults, decide

Key = tuple[str, str]


@dataclass
class Session:
    """One verification session at one provider (Jumio: also its product and region)."""

    provider: str
    reference: str
    status: str
    product: str | None = None
    region: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Call:
    """One recorded provider call. ``effective`` is True when it changed the session's state.

    A OneSpan erasure request naming several transactions is recorded once per transaction
    (same ``request_id``), so that filtering by reference finds it.
    """

    seq: int
    request_id: int
    time: float
    provider: str
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    reference: str | None
    effective: bool
    status: int | None
    fault: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Store:
    """All simulator state behind one re-entrant lock (``store.lock``)."""

    def __init__(
        self,
        autocreate: bool = False,
        faults: Mapping[str, Faults] | None = None,
        rng_seed: int | None = None,
    ) -> None:
        self.lock = threading.RLock()
        self._initial_autocreate = autocreate
        self._initial_faults = {name: f.copy() for name, f in (faults or {}).items()}
        self._rng = random.Random(rng_seed)
        self.autocreate = autocreate
        self.max_calls: int | None = None
        self._sessions: dict[Key, Session] = {}
        self._gone: set[Key] = set()
        self._calls: deque[Call] = deque()
        self._faults: dict[str, Faults] = {}
        self._effective: Counter[Key] = Counter()
        self._counts: dict[str, Counter[str]] = {}
        self._seq = 0
        self._request_seq = 0
        self.reset()

    def reset(self) -> None:
        """Forget sessions, calls, counters and faults; restore the constructor's options."""
        with self.lock:
            self.autocreate = self._initial_autocreate
            self.max_calls = None
            self._sessions.clear()
            self._gone.clear()
            self._calls = deque()
            self._faults = {name: f.copy() for name, f in self._initial_faults.items()}
            self._effective.clear()
            self._counts.clear()
            self._seq = 0
            self._request_seq = 0

    # -- sessions -------------------------------------------------------------------
    def put(self, session: Session) -> None:
        with self.lock:
            key = (session.provider, session.reference)
            self._sessions[key] = session
            self._gone.discard(key)

    def get(self, provider: str, reference: str) -> Session | None:
        with self.lock:
            return self._sessions.get((provider, reference))

    def is_gone(self, provider: str, reference: str) -> bool:
        with self.lock:
            return (provider, reference) in self._gone

    def remove(self, provider: str, reference: str) -> None:
        """Delete a session for good: autocreate will not bring it back."""
        with self.lock:
            self._sessions.pop((provider, reference), None)
            self._gone.add((provider, reference))

    def snapshot(self, provider: str, references: Sequence[str]
                 ) -> dict[str, tuple[Session | None, bool]]:
        """Copies of these sessions (and whether each was deleted), for ``restore``."""
        with self.lock:
            return {ref: (self._copy(self._sessions.get((provider, ref))),
                          (provider, ref) in self._gone) for ref in references}

    def restore(self, provider: str, saved: Mapping[str, tuple[Session | None, bool]]) -> None:
        """Put sessions back as ``snapshot`` saw them (a call's changes undone)."""
        with self.lock:
            for ref, (session, gone) in saved.items():
                key = (provider, ref)
                if session is None:
                    self._sessions.pop(key, None)
                else:
                    self._sessions[key] = session
                if gone:
                    self._gone.add(key)
                else:
                    self._gone.discard(key)

    @staticmethod
    def _copy(session: Session | None) -> Session | None:
        if session is None:
            return None
        return Session(session.provider, session.reference, session.status, session.product,
                       session.region, dict(session.metadata))

    def lookup(
        self,
        provider: str,
        reference: str,
        initial_status: str,
        product: str | None = None,
        region: str | None = None,
    ) -> Session | None:
        """The session, or with autocreate a new one for a never-seen reference."""
        with self.lock:
            key = (provider, reference)
            session = self._sessions.get(key)
            if session is None and self.autocreate and key not in self._gone:
                session = Session(provider, reference, initial_status, product, region)
                self._sessions[key] = session
            return session

    # -- calls ----------------------------------------------------------------------
    def next_request_id(self) -> int:
        with self.lock:
            self._request_seq += 1
            return self._request_seq

    def record(self, **fields: Any) -> Call:
        """Append a call (all ``Call`` fields but ``seq``) and update the counters."""
        with self.lock:
            self._seq += 1
            call = Call(seq=self._seq, **fields)
            self._calls.append(call)
            self._trim()
            counts = self._counts.setdefault(call.provider, Counter())
            counts["calls"] += 1
            counts[f"status:{call.status}"] += 1
            if call.fault:
                counts[f"fault:{call.fault}"] += 1
            if call.effective and call.reference is not None:
                counts["effective"] += 1
                self._effective[(call.provider, call.reference)] += 1
            return call

    def configure(self, autocreate: bool, max_calls: int | None) -> None:
        """Run-time options; ``max_calls`` keeps only the newest calls (counters keep counting)."""
        with self.lock:
            self.autocreate = autocreate
            self.max_calls = max_calls
            self._trim()

    def _trim(self) -> None:
        if self.max_calls is not None:
            while len(self._calls) > self.max_calls:
                self._calls.popleft()

    def calls(
        self,
        provider: str | None = None,
        reference: str | None = None,
        effective: bool | None = None,
    ) -> list[Call]:
        with self.lock:
            return [
                c for c in self._calls
                if (provider is None or c.provider == provider)
                and (reference is None or c.reference == reference)
                and (effective is None or c.effective == effective)
            ]

    def clear_calls(self) -> None:
        with self.lock:
            self._calls.clear()
            self._effective.clear()
            self._counts.clear()

    def stats(self) -> dict[str, Any]:
        """Per-provider counters and the references changed more than once."""
        with self.lock:
            dupes = [
                {"provider": p, "reference": r, "count": n}
                for (p, r), n in self._effective.items() if n > 1
            ]
            providers = {name: dict(c) for name, c in self._counts.items()}
            return {
                "providers": providers,
                "effective_references": len(self._effective),
                "duplicate_effective_count": len(dupes),
                "duplicate_effective": dupes[:100],
            }

    # -- faults ---------------------------------------------------------------------
    def faults(self, provider: str) -> Faults:
        with self.lock:
            return self._faults.get(provider, Faults()).copy()

    def set_faults(self, provider: str, faults: Faults) -> None:
        with self.lock:
            self._faults[provider] = faults.copy()

    def take_fault(self, provider: str, references: Sequence[str | None] = ()) -> Decision:
        """Decide this call's fault atomically (consumes scripted faults)."""
        with self.lock:
            faults = self._faults.setdefault(provider, Faults())
            return decide(faults, self._rng, references)
