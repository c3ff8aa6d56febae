"""The journal: applies one step of a request atomically (ledger, audit chain, result
event, dead letter) through ``lua/transition.lua``.

The audit chain's hashes are computed here, in Python, and compared-and-set in Redis:
if another worker appended first, the script answers with the new head and we seal
again on top of it. Threads of one process take turns (a lock), so only other
processes can race us; a race costs one more round trip, never a fork in the chain.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis

from worker import audit, keys
from worker.contract import canonical_json

_LUA = resources.files("worker").joinpath("lua/transition.lua").read_text()


@dataclass(frozen=True)
class Moved:
    """The ledger changed under us: re-read it and decide again."""

    version: int


@dataclass(frozen=True)
class DeadLetter:
    entry_id: str
    entry: Mapping[str, Any]


class Journal:
    """Writes steps for all requests of one process.

    Parameters:
        client: a Redis client (``decode_responses=True``).
        ledger_ttl: seconds a finished request's ledger is kept (0 = forever).
        results_maxlen: approximate cap on the results stream (0 = unbounded).
    """

    def __init__(
        self, client: redis.Redis, *, ledger_ttl: int = 0, results_maxlen: int = 0
    ) -> None:
        self.client = client
        self._script = client.register_script(_LUA)
        self._lock = threading.Lock()
        self._head = ""
        self.ledger_ttl = ledger_ttl
        self.results_maxlen = results_maxlen

    def apply(
        self,
        ledger_key: str,
        expected_version: int,
        *,
        ledger: Mapping[str, str] | None = None,
        records: Sequence[Mapping[str, Any]] = (),
        event: Mapping[str, Any] | None = None,
        dead_letter: DeadLetter | None = None,
        ledger_ttl: int | None = None,
    ) -> Moved | None:
        """Apply one step; None when applied, ``Moved`` when the ledger moved first."""
        ttl = self.ledger_ttl if ledger_ttl is None else ledger_ttl
        fixed = [
            json.dumps(ledger) if ledger is not None else "",
            canonical_json(event) if event is not None else "",
            canonical_json(dead_letter.entry) if dead_letter else "",
            dead_letter.entry_id if dead_letter else "",
            str(int(time.time() * 1000)),
            str(ttl),
            str(self.results_maxlen),
        ]
        key_list = [
            ledger_key, keys.AUDIT, keys.AUDIT_HEAD, keys.RESULTS, keys.DLQ, keys.DLQ_INDEX
        ]
        with self._lock:
            while True:
                sealed, new_head = audit.seal_all(records, self._head)
                args = [
                    str(expected_version),
                    self._head,
                    new_head,
                    *fixed,
                    *(canonical_json(r) for r in sealed),
                ]
                reply = self._script(keys=key_list, args=args)
                if reply[0] == 1:
                    if records:
                        self._head = new_head
                    return None
                version, head = int(reply[1]), str(reply[2])
                self._head = head
                if version != expected_version:
                    return Moved(version)
