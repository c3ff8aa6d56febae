"""Confirmation: reading back, some time after a request ended, that it took hold.

A ``cancelled`` or ``deleted`` outcome says what the provider answered, not that the
session is gone: OneSpan's erasure is asynchronous by design, gu1 only "attempts" the
deletion at its vendor, and any provider can answer 200 and keep the session running.
So the step that ends a request ``cancelled`` or ``deleted`` also makes a confirmation
due (``confirmation``: a sorted set scored by due time, and the request it reads),
and a beat task (``idvcancel.confirm``) drains what is due (``drain``): it reads the
session's status at the provider and records what it saw as an audit step,

- ``confirmed`` — ID Pass details ``cancelled``; TXCloud and gu1 GET ``cancelled``;
  Jumio GET 404 (deleted); OneSpan cancel ``cancelled``, erasure after its grace period
  ``marked_for_erasure`` or 404 (erased) — each adapter's ``done_status`` and, for a
  delete, "gone";
- ``confirmation_failed`` — anything else (still active, still readable, a read refused,
  transient failures past the retry budget), with the status and codes read. The request
  also goes to the "needs attention" store (``worker.journal.attention``).

The original result event is never rewritten: it stays what the provider answered.

Why a sorted set and not Celery countdowns: a countdown lives in a worker's memory (or
the broker's delayed delivery) and a OneSpan grace period lasts days; the set survives
restarts, shows what is due, and is drained in O(log n + k). The due time is
``IDVCANCEL_CONFIRM_AFTER_SECONDS`` after the request ended, plus the grace period for a
OneSpan erasure. It is written in the same script call as the step that ends the request
(``lua/transition.lua``), so no crash can leave one without the other; the drain still
reads the ledger first and forgets one whose request did not end that way after all
(a replay, or one made due by ``schedule``). Claims are leased (``lua/confirm_claim.lua``):
a drain that dies leaves them to the next one after the lease, and a request whose audit
record was written but not yet forgotten may then be confirmed twice (both on the record).
Transient read failures are retried with the request retry policy; the breaker and the
rate limit apply to confirmation reads as to calls.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis
from prometheus_client import Counter
from pydantic import ValidationError

from config.settings import Settings
from worker import keys
from worker.contract import CancelRequest, utc_now_iso
from worker.delivery.retry import RetryPolicy
from worker.gate.guard import ProviderGuard
from worker.journal import attention, ledger
from worker.journal.ledger import Phase
from worker.journal.steps import Confirmation, Journal
from worker.logs import get_logger
from worker.providers import get_adapter
from worker.providers.base import ProviderAdapter
from worker.providers.errors import NotFound, PermanentError, TransientError

_CLAIM = resources.files("worker").joinpath("lua/confirm_claim.lua").read_text()

#: Audit steps.
CONFIRMED = "confirmed"
CONFIRMATION_FAILED = "confirmation_failed"
#: The outcomes that get a confirmation.
OUTCOMES = frozenset({"cancelled", "deleted"})
#: How long a claimed confirmation is held before another drain may claim it again.
LEASE_SECONDS = 300.0
#: Most confirmations one drain claims.
BATCH = 200
#: Reads in flight at once in one drain (confirmations come as fast as requests end:
#: one thread reading one after the other would fall behind).
CONCURRENCY = 16
#: How long one ``run`` keeps draining while whole batches are due.
RUN_SECONDS = 60.0
#: A provider status is kept only when it looks like one (no provider text is echoed).
_STATUS = re.compile(r"[A-Za-z0-9_.:-]{1,64}")

CONFIRMATIONS = Counter("idvcancel_confirmations_total",
                        "Confirmation reads recorded, by provider and result "
                        "(confirmed, failed)", ["provider", "result"])


def due_at(request: CancelRequest, finished_at: float, settings: Settings) -> float:
    """When the confirmation read of ``request`` is due: ``IDVCANCEL_CONFIRM_AFTER_SECONDS``
    after it ended, and for a OneSpan erasure after its grace period (days) too.

    Examples:
        >>> r = CancelRequest(request_id="r", provider="onespan", action="delete",
        ...     reference="t1", requested_by="x", options={"grace_period": 2})
        >>> due_at(r, 1000.0, Settings(confirm_after_seconds=60)) - 1000.0
        172860.0
    """
    grace = 0
    if request.provider == "onespan" and request.action == "delete":
        value = request.options.get("grace_period", 0)
        grace = value if isinstance(value, int) and not isinstance(value, bool) else 0
    return finished_at + settings.confirm_after_seconds + grace * 86400


def confirmation(request: CancelRequest, outcome: str, settings: Settings,
                 now: float) -> Confirmation:
    """The confirmation of ``request``, ended ``outcome`` at ``now``: the pipeline hands it
    to the journal with the step that ends the request, so both are written at once."""
    entry = {"request": request.model_dump(mode="json"), "outcome": outcome,
             "finished_at": round(now, 3), "checks": 0}
    return Confirmation(json.dumps(entry, sort_keys=True), due_at(request, now, settings))


def schedule(client: redis.Redis, request: CancelRequest, outcome: str, settings: Settings,
             now: float) -> None:
    """Make the confirmation of ``request`` due on its own (one MULTI). A confirmation
    already due keeps its time (a redelivered finish does not push it back)."""
    made = confirmation(request, outcome, settings, now)
    pipe = client.pipeline(transaction=True)
    pipe.hset(keys.CONFIRM_REQUESTS, request.request_id, made.entry)
    pipe.zadd(keys.CONFIRM_DUE, {request.request_id: made.due}, nx=True)
    pipe.execute()


@dataclass
class DrainReport:
    """What one drain did."""

    claimed: int = 0
    confirmed: int = 0
    failed: int = 0
    deferred: int = 0  # not yet (in flight, held back, a transient read failure)
    dropped: int = 0  # the request did not end cancelled or deleted after all

    def summary(self) -> dict[str, int]:
        return {"claimed": self.claimed, "confirmed": self.confirmed, "failed": self.failed,
                "deferred": self.deferred, "dropped": self.dropped}


@dataclass(frozen=True)
class _Read:
    confirmed: bool
    provider_status: str | None
    http_status: int | None
    error: str | None  # our error code, or the provider's own code


class Confirmer:
    """Drains due confirmations for one process (the pipeline's journal and guard)."""

    def __init__(self, settings: Settings, journal: Journal, *,
                 adapters: Callable[[str, Settings], ProviderAdapter] = get_adapter,
                 guard: ProviderGuard | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.journal = journal
        self.client = journal.client
        self.adapters = adapters
        self.guard = guard
        self.clock = clock
        self.policy = RetryPolicy(settings.retry_base_seconds, settings.retry_cap_seconds,
                                  settings.retry_max_attempts)
        self._claim = self.client.register_script(_CLAIM)

    def run(self, seconds: float = RUN_SECONDS) -> DrainReport:
        """Drain batch after batch while whole batches are due, for at most ``seconds``."""
        total = DrainReport()
        started = time.monotonic()
        while True:
            report = self.drain()
            for name, count in report.summary().items():
                setattr(total, name, getattr(total, name) + count)
            if report.claimed < BATCH or time.monotonic() - started > seconds:
                return total

    def drain(self, limit: int = BATCH) -> DrainReport:
        """Claim what is due now and confirm each one, ``CONCURRENCY`` reads at a time."""
        now = self.clock()
        reply = self._claim(keys=[keys.CONFIRM_DUE, keys.CONFIRM_REQUESTS],
                            args=[f"{now:.3f}", f"{now + LEASE_SECONDS:.3f}", limit])
        claimed = [(str(i), str(raw)) for i, raw in zip(reply[::2], reply[1::2], strict=True)]
        report = DrainReport(claimed=len(claimed))
        if not claimed:
            return report
        with ThreadPoolExecutor(min(CONCURRENCY, len(claimed)),
                                thread_name_prefix="confirm") as pool:
            for verdict in pool.map(lambda pair: self._one(*pair), claimed):
                setattr(report, verdict, getattr(report, verdict) + 1)
        return report

    def _one(self, request_id: str, raw: str) -> str:
        log = get_logger(request_id=request_id)
        try:
            entry = json.loads(raw)
            request = CancelRequest.model_validate(entry["request"])
        except (ValueError, KeyError, TypeError, ValidationError):
            log.error("confirm_unreadable")
            self._forget(request_id)
            return "dropped"
        state = ledger.read(self.client, keys.request_ledger(request_id))
        if state.version and state.phase != Phase.DONE:  # replayed, or not ended yet
            self._later(request_id, entry, self.settings.confirm_after_seconds)
            return "deferred"
        outcome = state.outcome if state.version else str(entry.get("outcome"))
        if outcome not in OUTCOMES:
            self._forget(request_id)
            return "dropped"
        if self.guard is not None and (hold := self.guard.admit(request.provider,
                                                                 "confirm:" + request_id)):
            self._later(request_id, entry, hold.seconds)
            return "deferred"
        checks = int(entry.get("checks") or 0) + 1
        read = self._read(request, checks)
        if read is None:
            delay = self.policy.delay(checks) or 0.0
            self._later(request_id, {**entry, "checks": checks}, delay)
            return "deferred"
        self._record(request, outcome, read, checks, float(entry.get("finished_at") or 0))
        CONFIRMATIONS.labels(request.provider, "confirmed" if read.confirmed else "failed").inc()
        log.info(CONFIRMED if read.confirmed else CONFIRMATION_FAILED,
                 provider=request.provider, provider_status=read.provider_status,
                 http_status=read.http_status, error=read.error, checks=checks)
        self._forget(request_id)
        return "confirmed" if read.confirmed else "failed"

    def _read(self, request: CancelRequest, checks: int) -> _Read | None:
        """What the provider's status read shows (None: a transient failure to retry)."""
        adapter = self.adapters(request.provider, self.settings)
        rule = adapter.rules.actions[request.action]
        deleting = request.action == "delete"
        try:
            status = adapter.read_status(request)
        except NotFound as exc:
            self._observe(request.provider, None)
            # Gone: what a deletion should leave; a cancelled session should still read.
            return _Read(deleting, None, exc.http_status or 404,
                         None if deleting else "not_found")
        except TransientError as exc:
            self._observe(request.provider, exc)
            if self.policy.delay(checks, retry_after=exc.retry_after) is not None:
                return None
            return _Read(False, None, exc.http_status, exc.code)
        except PermanentError as exc:
            self._observe(request.provider, exc)
            return _Read(False, _status(exc.provider_status), exc.http_status, exc.code)
        except Exception as exc:  # noqa: BLE001 - an adapter bug must not lose the confirmation
            get_logger(request_id=request.request_id).exception("confirm_read_error")
            return _Read(False, None, None, f"internal_error:{type(exc).__name__}")
        self._observe(request.provider, None)
        shown = _status(status)
        if status == rule.done_status:
            return _Read(True, shown, 200, None)
        return _Read(False, shown, 200, "still_active" if not deleting else "still_present")

    def _observe(self, provider: str, error: TransientError | PermanentError | None) -> None:
        if self.guard is not None:
            self.guard.record(provider, error)

    def _record(self, request: CancelRequest, outcome: str, read: _Read, checks: int,
                finished_at: float) -> None:
        step = CONFIRMED if read.confirmed else CONFIRMATION_FAILED
        draft = {
            "step": step, "at": utc_now_iso(), "request_id": request.request_id,
            "task_id": None, "requested_by": request.requested_by, "source": request.source,
            "reason": request.reason, "provider": request.provider, "action": request.action,
            "reference": request.reference, "outcome": outcome,
            "provider_status": read.provider_status, "http_status": read.http_status,
            "error": read.error, "checks": checks,
            "after_s": round(max(0.0, self.clock() - finished_at), 3),
        }
        key = keys.request_ledger(request.request_id)
        while self.journal.apply(key, ledger.read(self.client, key).version,
                                 records=[draft]) is not None:
            pass  # the ledger moved (a duplicate delivery's record): read it again
        if not read.confirmed:
            attention.add(self.client, {
                "request_id": request.request_id, "provider": request.provider,
                "action": request.action, "reference": request.reference,
                "outcome": outcome, "confirmation": step,
                "provider_status": read.provider_status, "http_status": read.http_status,
                "error": read.error, "checks": checks, "at": draft["at"],
            }, self.clock())

    def _later(self, request_id: str, entry: Mapping[str, Any], delay: float) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(keys.CONFIRM_REQUESTS, request_id, json.dumps(dict(entry), sort_keys=True))
        pipe.zadd(keys.CONFIRM_DUE, {request_id: self.clock() + delay})
        pipe.execute()

    def _forget(self, request_id: str) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.zrem(keys.CONFIRM_DUE, request_id)
        pipe.hdel(keys.CONFIRM_REQUESTS, request_id)
        pipe.execute()


def _status(value: str | None) -> str | None:
    """A provider's status as recorded: kept only when it looks like a status word."""
    return value if value is not None and _STATUS.fullmatch(value) else None
