"""The reconciler: pushes again the requests whose message the broker lost.

kombu's Redis transport pops a message (``BRPOP``) and records it as un-acked in a
second round trip: a worker killed -9, or a Redis crash, between the two loses that
message, with no trace in the queue, the un-acked hash or the ledger. So every request
our producers push (``worker.broker.producer``: the API, the CLI, the sweep, supersede,
``dlq replay``) is also written to the **intake index** in the same step
(``lua/push.lua``):

- ``idvcancel:intake``: sorted set, request id → when it was pushed (epoch seconds);
- ``idvcancel:intake:requests``: hash, request id → the validated request JSON.

An entry leaves the index when its request's ledger becomes ``done`` (the journal's
step, ``lua/transition.lua``), so the index holds the requests in flight. Celery beat
enqueues ``idvcancel.reconcile`` every ``IDVCANCEL_RECONCILE_INTERVAL_SECONDS``; a run
(``run_reconcile``) claims, with ``lua/reconcile.lua``, every entry older than
``IDVCANCEL_RECONCILE_AFTER_SECONDS`` (default 3 x the visibility timeout) that still
has no ledger, or whose ledger is in flight (``calling``/``waiting``) with its lease or
retry time that long past (its redelivery or retry message was lost too), writes a
``resubmitted`` audit record for each through the journal (the hash chain holds), and
pushes them again. Pushing again is always safe: the ledger answers a copy of a finished
request with a ``duplicate`` record and a copy of one in flight by recovery (the
provider's status is read before any second call). The claim moves each entry's score to
now, so an entry is pushed at most once per age, whatever number of beat instances run.

**A backlog is not a loss.** A request still waiting in the queue behind thousands of
others has no ledger either. The queue is first in, first out (LPUSH, BRPOP), so every
request pushed before the oldest one still queued has left the queue: the cut is the
earlier of ``now - age`` and the push time of the oldest queued request we can name
(``queue_bound``: the last ``TAIL_SCAN`` entries, by our message header or a JSON body).
Without that, a bulk submission bigger than the workers can drain within the age would
be pushed again, and again, while it waits.

Not covered: messages that foreign producers LPUSH without the index entries (the README
gives them the two commands to add), and messages of other priorities than 0 (kombu
keeps those in other lists; our producers never set one).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis

from config.settings import Settings
from worker import keys, scripts
from worker.broker import wire
from worker.broker.producer import validate
from worker.contract import QUEUE, CancelRequest
from worker.delivery import records
from worker.errors import InvalidRequest
from worker.journal.steps import Journal
from worker.logs import get_logger
from worker.metrics import RESUBMITTED
from worker.triggers.tracking import shared_sender

#: Entries one claim script looks at (and one push sends): keeps each script short.
CLAIM_CHUNK = 1000
#: Most entries one run looks at; the next run carries on (bounds a run's time).
MAX_PER_RUN = 20_000
#: Queue entries read from the tail (the oldest) to find the oldest push still queued.
TAIL_SCAN = 100


class Sender(Protocol):
    """What pushes requests again: ``worker.broker.producer.Producer`` or a test double."""

    def submit_many(self, requests: Iterable[CancelRequest | Mapping[str, Any]]) -> list[str]:
        ...


@dataclass
class ReconcileReport:
    """What one reconcile run did.

    Parameters:
        now: the run's clock (epoch seconds).
        cut: entries pushed before it were due.
        queue_bound: push time of the oldest request found waiting in the queue (None:
            the queue is empty, or its tail names none of ours).
        resubmitted: request ids pushed again, in order.
        by_phase: how many of them by the ledger phase found (``none`` = no ledger).
        forgotten: entries dropped because their ledger was done (a copy pushed after
            the request ended) or they held no request.
        left: due entries a delivery is still at work on (looked at again after an age).
        moved: claimed entries whose ledger moved before the audit step (a delivery
            took them meanwhile): not pushed, looked at again after an age.
        unreadable: entries dropped because their request JSON is not a valid request.
    """

    now: float
    cut: float
    queue_bound: float | None = None
    resubmitted: list[str] = field(default_factory=list)
    by_phase: dict[str, int] = field(default_factory=dict)
    forgotten: int = 0
    left: int = 0
    moved: int = 0
    unreadable: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"ok": True, "resubmitted": len(self.resubmitted), "by_phase": self.by_phase,
                "forgotten": self.forgotten, "left": self.left, "moved": self.moved,
                "unreadable": len(self.unreadable), "cut": round(self.cut, 3),
                "queue_bound": self.queue_bound}


@dataclass(frozen=True)
class _Claim:
    request_id: str
    request_json: str
    phase: str
    version: int
    score: float


def queue_bound(client: redis.Redis) -> float | None:
    """The earliest index score among the requests at the tail of the queue (the oldest
    entries: BRPOP takes from the right), or None when it names none of ours.

    Every request pushed before that one has left the queue (first in, first out), so
    an entry older than it with no ledger was delivered and lost, not waiting. Messages
    kombu restores after a crash go back to the tail; their first push time only makes
    the bound earlier (safer)."""
    tail: list[str] = client.lrange(QUEUE, -TAIL_SCAN, -1)  # type: ignore[assignment]
    ids = [rid for entry in tail if (rid := wire.request_id_of(entry)) is not None]
    if not ids:
        return None
    scores: list[float | None] = client.zmscore(keys.INTAKE, ids)
    known = [float(s) for s in scores if s is not None]
    return min(known) if known else None


def _claim(client: redis.Redis, cut: float, now: float, limit: int
           ) -> tuple[list[_Claim], int, int]:
    """Claim up to ``limit`` due entries (``lua/reconcile.lua``): (claims, forgotten, left)."""
    script = scripts.script(client, "reconcile")
    reply = json.loads(str(script(keys=[keys.INTAKE, keys.INTAKE_REQUESTS, keys.HELD_REQUESTS],
                                  args=[f"{cut:.3f}", f"{now:.3f}", str(limit),
                                        keys.REQUEST_LEDGER_PREFIX])))
    claimed = reply.get("claimed") or []  # an empty Lua table encodes as {}
    claims = [_Claim(str(c[0]), str(c[1]), str(c[2]), int(c[3]), float(c[4]))
              for c in (claimed if isinstance(claimed, list) else [])]
    return claims, int(reply.get("forgotten", 0)), int(reply.get("left", 0))


def _drop(client: redis.Redis, request_ids: list[str]) -> None:
    """Forget entries that can never be pushed again (their JSON is not a request)."""
    if request_ids:
        pipe = client.pipeline(transaction=True)
        pipe.zrem(keys.INTAKE, *request_ids)
        pipe.hdel(keys.INTAKE_REQUESTS, *request_ids)
        pipe.execute()


def _epoch(now: float | None) -> float:
    return time.time() if now is None else float(now)


def run_reconcile(client: redis.Redis, settings: Settings, now: float | None = None, *,
                  sender: Sender | None = None, journal: Journal | None = None
                  ) -> ReconcileReport:
    """Push again what the broker lost (see the module docstring).

    Parameters:
        client: Redis (``decode_responses=True``; the broker's).
        settings: the age (``reconcile_age_seconds``) and the ledger TTL.
        now: epoch seconds (default: the clock); tests pass a later time.
        sender: what pushes (default: a shared ``Producer``, signing when configured).
        journal: where the ``resubmitted`` records go (default: a journal of ``client``).

    Examples:
        >>> run_reconcile(client, settings).summary()               # doctest: +SKIP
        {'ok': True, 'resubmitted': 1, 'by_phase': {'none': 1}, ...}
    """
    at = _epoch(now)
    bound = queue_bound(client)
    cut = at - settings.reconcile_age_seconds
    report = ReconcileReport(now=at, cut=cut if bound is None else min(cut, bound),
                             queue_bound=bound)
    out = sender or shared_sender(settings)
    book = journal or Journal(client, ledger_ttl=settings.ledger_ttl_seconds)
    log = get_logger()
    looked = 0
    while looked < MAX_PER_RUN:
        claims, forgotten, left = _claim(client, report.cut, at, CLAIM_CHUNK)
        report.forgotten += forgotten
        report.left += left
        looked += len(claims) + forgotten + left
        _resubmit(client, claims, at, out, book, report, log)
        if len(claims) + forgotten + left < CLAIM_CHUNK:
            break
    level = log.warning if report.resubmitted else log.info
    level("reconcile_done", **report.summary())
    return report


def _resubmit(client: redis.Redis, claims: list[_Claim], now: float, sender: Sender,
              journal: Journal, report: ReconcileReport, log: Any) -> None:
    """Audit, then push, the claimed entries whose ledger has not moved since the claim."""
    valid: list[tuple[_Claim, CancelRequest]] = []
    unreadable: list[str] = []
    for claim in claims:
        try:
            valid.append((claim, validate(json.loads(claim.request_json))))
        except (ValueError, InvalidRequest):
            unreadable.append(claim.request_id)
    if unreadable:
        log.error("reconcile_unreadable", count=len(unreadable), first=unreadable[:5])
        _drop(client, unreadable)
        report.unreadable.extend(unreadable)
    # Audit first: a crash before the push leaves a record of a push that did not
    # happen, and the entry (already bumped) is pushed again one age later.
    answers = journal.apply_many([
        (keys.request_ledger(claim.request_id), claim.version,
         [records.resubmitted(request.model_dump(mode="json"), phase=claim.phase,
                              waited_s=now - claim.score)])
        for claim, request in valid])
    send = []
    for (claim, request), moved in zip(valid, answers, strict=True):
        if moved is not None:  # a delivery took it between the claim and now: not lost
            report.moved += 1
            continue
        send.append(request)
        phase = claim.phase or "none"
        report.by_phase[phase] = report.by_phase.get(phase, 0) + 1
        RESUBMITTED.labels(phase).inc()
        log.warning("resubmitted", request_id=claim.request_id, phase=phase,
                    waited_s=round(now - claim.score, 3))
    if send:
        report.resubmitted.extend(sender.submit_many(send))
