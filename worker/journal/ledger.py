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
Every change is a compare-and-set on the field ``v`` through ``worker.journal.steps``;
``LedgerState`` is the one place that reads and writes the hash's fields.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

import redis

from worker.contract import Outcome


class Phase(StrEnum):
    """Where a request is (the ``phase`` field; no ledger = no phase)."""

    CALLING = "calling"
    WAITING = "waiting"
    DONE = "done"


def _time(value: float) -> str:
    # "0" for no time: what the ledgers have always held for a lease or wait that is over
    return f"{value:.3f}" if value else "0"


def _flag(value: bool) -> str:
    return "1" if value else ""


def _optional(value: object) -> str:
    return str(value) if value else ""


def _conflicts(value: tuple[str, ...]) -> str:
    return json.dumps(list(value))


#: The Redis layout of a ledger, attribute by attribute: (hash field, read, write).
#: The one place that knows it: ``from_hash`` reads through it and every transition
#: writes through it, so the encodings ("1"/"" flags, "" for none, times to the ms)
#: cannot drift apart. Field names and encodings are a stored format: never change them.
_LAYOUT: dict[str, tuple[str, Callable[[str], Any], Callable[[Any], str]]] = {
    "version": ("v", int, str),
    "fingerprint": ("fp", str, str),
    "phase": ("phase", Phase, _optional),
    "owner": ("owner", str, str),
    "lease_until": ("lease_until", float, _time),
    "not_before": ("not_before", float, _time),
    "attempts": ("attempts", int, str),
    "outcome": ("outcome", Outcome, _optional),
    "http_status": ("http_status", int, _optional),
    "provider_status": ("provider_status", str, _optional),
    "conflicts": ("conflicts", lambda text: tuple(json.loads(text)), _conflicts),
    "recover": ("recover", lambda text: text == "1", _flag),
    "created": ("created", float, _time),
    "replays": ("replays", int, str),
}


def _encode(**values: Any) -> dict[str, str]:
    """The hash fields for ``values`` (attribute name -> value), as the journal writes
    them (``lua/transition.lua`` takes a mapping of strings and HSETs it)."""
    return {_LAYOUT[name][0]: _LAYOUT[name][2](value) for name, value in values.items()}


@dataclass(frozen=True)
class LedgerState:
    """What the ledger says about one request (version 0: nothing yet).

    Read with ``from_hash``; each change is one of the transitions below, which give
    the fields to write (only those that change: the hash keeps the others).
    """

    version: int = 0
    fingerprint: str = ""
    phase: Phase | None = None
    owner: str = ""
    lease_until: float = 0.0
    not_before: float = 0.0
    attempts: int = 0
    outcome: Outcome | None = None
    http_status: int | None = None
    provider_status: str | None = None
    conflicts: tuple[str, ...] = field(default_factory=tuple)
    #: Set when a worker took over from one that died mid-call: read before calling.
    recover: bool = False
    #: When the request was first claimed (epoch seconds): the retry deadline counts from it.
    created: float = 0.0
    #: How many times ``idvcancel dlq replay`` sent it again.
    replays: int = 0

    @classmethod
    def from_hash(cls, raw: Mapping[str, str]) -> LedgerState:
        """The state a ledger hash holds; an absent or empty field is the default."""
        values = {name: read(raw[key]) for name, (key, read, _) in _LAYOUT.items()
                  if raw.get(key)}
        return cls(**values)

    def to_hash(self) -> dict[str, str]:
        """Every field, as ``from_hash`` reads them back (``v`` included: the journal
        sets it itself, so transitions never write it)."""
        return _encode(**{f.name: getattr(self, f.name) for f in fields(self)})

    # -- transitions: the fields each one writes ----------------------------------------
    @staticmethod
    def claimed(fingerprint: str, owner: str, lease_until: float, attempts: int, *,
                recover: bool, created: float | None = None) -> dict[str, str]:
        """``calling``: ``owner`` may call the provider until ``lease_until``.
        ``created`` only on the first claim (the retry deadline counts from it)."""
        first = _encode(created=created) if created is not None else {}
        return {**first, **_encode(fingerprint=fingerprint, phase=Phase.CALLING, owner=owner,
                                   lease_until=lease_until, attempts=attempts,
                                   recover=recover)}

    @staticmethod
    def waiting(attempts: int, not_before: float, http_status: int | None, *,
                recover: bool) -> dict[str, str]:
        """``waiting``: the next attempt not before ``not_before``.

        ``recover`` is only ever raised here, never cleared: a flag the claim set (that
        attempt was a recovery) stays, so the next attempt reads before calling too."""
        return _encode(phase=Phase.WAITING, attempts=attempts, owner="", lease_until=0.0,
                       not_before=not_before, http_status=http_status, provider_status=None,
                       **({"recover": True} if recover else {}))

    @staticmethod
    def done(fingerprint: str, outcome: Outcome, attempts: int, http_status: int | None,
             provider_status: str | None) -> dict[str, str]:
        """``done`` with ``outcome``: later deliveries are duplicates."""
        return _encode(fingerprint=fingerprint, phase=Phase.DONE, outcome=outcome,
                       attempts=attempts, owner="", lease_until=0.0, http_status=http_status,
                       provider_status=provider_status, recover=False)

    def with_conflict(self, fingerprint: str) -> dict[str, str]:
        """A conflicting reuse of the id answered: its fingerprint is remembered, so a
        copy of it is a duplicate (the phase stays ``done``)."""
        return _encode(conflicts=(*self.conflicts, fingerprint))

    def reset_for_replay(self, now: float) -> dict[str, str]:
        """Back to ``waiting`` with a full retry budget, for ``idvcancel dlq replay``:
        attempts 0, no outcome, ``replays`` + 1, the retry deadline counted from ``now``."""
        return _encode(phase=Phase.WAITING, not_before=0.0, attempts=0, outcome=None,
                       owner="", lease_until=0.0, replays=self.replays + 1, created=now)


def read(client: redis.Redis, key: str) -> LedgerState:
    raw: dict[str, str] = client.hgetall(key)  # type: ignore[assignment]
    return LedgerState.from_hash(raw)
