"""The idempotency ledger: one Redis hash per request id, recording its phase.

Celery on Redis delivers at least once, so the same request can arrive twice, in
parallel, or again after a crash. The ledger decides what each delivery may do:

- (no ledger): never seen. A delivery claims it (phase ``calling``).
- ``calling``: a worker holds the lease and may be calling the provider. A delivery
  waits while the lease runs; after it expires it takes over and *recovers*: it reads
  the session's status at the provider before calling again.
- ``waiting``: a transient failure; next attempt not before ``not_before``. A delivery
  waits until then, then claims the next attempt.
- ``done``: finished with ``outcome``. A delivery records a duplicate, nothing more.

A delivery whose fingerprint differs from the ledger's is a conflicting request that
reuses the id: it is rejected (once per distinct fingerprint).
Every change is a compare-and-set on the field ``v`` through ``worker.journal.steps``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import redis

CALLING = "calling"
WAITING = "waiting"
DONE = "done"


@dataclass(frozen=True)
class LedgerState:
    """What the ledger says about one request (version 0: nothing yet)."""

    version: int = 0
    fingerprint: str = ""
    phase: str = ""
    owner: str = ""
    lease_until: float = 0.0
    not_before: float = 0.0
    attempts: int = 0
    outcome: str = ""
    http_status: int | None = None
    provider_status: str | None = None
    conflicts: tuple[str, ...] = field(default_factory=tuple)
    #: Set when a worker took over from one that died mid-call: read before calling.
    recover: bool = False
    #: When the request was first claimed (epoch seconds): the retry deadline counts from it.
    created: float = 0.0

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> LedgerState:
        if not raw:
            return cls()
        http = raw.get("http_status", "")
        return cls(
            version=int(raw.get("v", "0")),
            fingerprint=raw.get("fp", ""),
            phase=raw.get("phase", ""),
            owner=raw.get("owner", ""),
            lease_until=float(raw.get("lease_until") or 0),
            not_before=float(raw.get("not_before") or 0),
            attempts=int(raw.get("attempts") or 0),
            outcome=raw.get("outcome", ""),
            http_status=int(http) if http else None,
            provider_status=raw.get("provider_status") or None,
            conflicts=tuple(json.loads(raw.get("conflicts") or "[]")),
            recover=raw.get("recover") == "1",
            created=float(raw.get("created") or 0),
        )


def read(client: redis.Redis, key: str) -> LedgerState:
    raw: dict[str, str] = client.hgetall(key)  # type: ignore[assignment]
    return LedgerState.from_hash(raw)
