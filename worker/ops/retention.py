"""Retention: what keeps Redis bounded while requests accumulate.

Four things grow with every request, and each has its bound:

- **Ledgers** (``idvcancel:req:<id>``): a finished ledger expires after
  ``IDVCANCEL_LEDGER_TTL_SECONDS`` (the journal's ``EXPIRE``; ledgers in flight carry
  none). A duplicate arriving after that is carried out again.
- **Result events** (``idvcancel:results``): ``XADD MAXLEN ~ IDVCANCEL_RESULTS_MAXLEN``.
- **The intake index** (``idvcancel:intake`` and ``idvcancel:intake:requests``, see
  ``worker.triggers.reconcile``): an entry leaves when its ledger becomes done (the
  journal's step). ``trim_intake``, here, forgets what can stay behind: copies pushed after
  the request ended, entries pushed longer ago than ``IDVCANCEL_LEDGER_TTL_SECONDS`` that
  never got a ledger (pushing them again could carry out a request whose ledger expired),
  request JSON without an index entry, and entries without JSON (``lua/intake_trim.lua``).
- **Audit records** (``idvcancel:audit``): moved to the archive files by
  ``worker.journal.archive``.

The task ``idvcancel.retention`` (tasks/retention.py) runs both.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from worker import keys, scripts

#: Index entries looked at per ``lua/intake_trim.lua`` call.
INTAKE_PAGE = 500


@dataclass(frozen=True)
class IntakeReport:
    """What one ``trim_intake`` run forgot, by reason, and what is left."""

    done: int = 0
    expired: int = 0
    orphans: int = 0
    empty: int = 0
    left: int = 0

    def summary(self) -> dict[str, int]:
        return {"done": self.done, "expired": self.expired, "orphans": self.orphans,
                "empty": self.empty, "left": self.left}


def trim_intake(client: redis.Redis, ledger_ttl_seconds: int, now: float | None = None,
                *, page: int = INTAKE_PAGE) -> IntakeReport:
    """Forget the intake index entries that no longer matter (``lua/intake_trim.lua``).

    One pass over the index (``ZSCAN``), and over the request hash only when it holds
    more entries than the index (orphans), a page per script call. O(n) in the requests
    in flight, once per retention run.

    Parameters:
        client: a Redis client (``decode_responses=True``).
        ledger_ttl_seconds: entries older than this with no ledger are forgotten (0:
            never, ledgers are kept forever).
        now: epoch seconds (default: the clock).
        page: entries per script call.
    """
    now = time.time() if now is None else now
    bound = f"{now - ledger_ttl_seconds:.3f}" if ledger_ttl_seconds > 0 else ""
    script = scripts.script(client, "intake_trim")
    totals = [0, 0, 0, 0]

    def trim(ids: list[str]) -> None:
        if ids:
            reply = script(keys=[keys.INTAKE, keys.INTAKE_REQUESTS],
                           args=[keys.REQUEST_LEDGER_PREFIX, bound, *ids])
            for i, count in enumerate(reply):
                totals[i] += int(count)

    ids: list[str] = []
    for member, _score in client.zscan_iter(keys.INTAKE, count=page):
        ids.append(str(member))
        if len(ids) >= page:
            trim(ids)
            ids = []
    trim(ids)
    if int(client.hlen(keys.INTAKE_REQUESTS)) > int(client.zcard(keys.INTAKE)):
        ids = []
        for name, _json in client.hscan_iter(keys.INTAKE_REQUESTS, count=page):
            ids.append(str(name))
            if len(ids) >= page:
                trim(ids)
                ids = []
        trim(ids)
    done, expired, orphans, empty = totals
    return IntakeReport(done, expired, orphans, empty, left=int(client.zcard(keys.INTAKE)))
