"""One delivery of ``idvcancel.process``, from parsed message to final step.

``Pipeline.handle`` reads the ledger (``worker.journal.ledger``), decides what this delivery
may do, calls the provider at most once, and writes each step through the journal.
It returns ``Finished``, ``RetryLater`` (the Celery task turns it into a countdown) or
``Parked`` (held back by the rate limit or the breaker, or busy elsewhere: the request
waits in Redis, ``worker.gate.parking``, and the message is acked). Jobs may run more
than once: this is where that stops mattering.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from config.settings import Settings
from worker import keys
from worker.contract import Outcome, ResultEvent, message_digest
from worker.delivery import confirm, intake, records
from worker.delivery.intake import Message
from worker.delivery.records import AuditStep
from worker.delivery.retry import RetryPolicy
from worker.errors import RuleViolation
from worker.gate.guard import Hold, ProviderGuard
from worker.gate.parking import (
    RELEASE_EARLY_SECONDS,
    RELEASE_LEAD_SECONDS,
    Parked,
    ParkingLot,
)
from worker.journal import ledger
from worker.journal.ledger import LedgerState, Phase
from worker.journal.steps import DeadLetter, Journal, Moved
from worker.logs import get_logger
from worker.metrics import (
    ATTEMPTS,
    DUPLICATES,
    LATENCY,
    NEAR_DEADLINE_FRACTION,
    REQUESTS,
    RETRIES,
    RETRIES_NEAR_DEADLINE,
)
from worker.providers import get_adapter
from worker.providers.base import ProviderAdapter, ProviderAnswer
from worker.providers.errors import (
    PermanentError,
    ProviderError,
    TransientError,
)
from worker.providers.errortext import public_code, public_error, public_message, public_status
from worker.providers.rules import ActionRule, check

#: Outcomes a person must act on: their requests are also kept as dead letters.
DEAD_LETTERED = frozenset({Outcome.FAILED, Outcome.UNAUTHORIZED})


class GaveUp(PermanentError):
    """Our own verdict, not the provider's: the retry budget or deadline ran out."""

    #: Its message is ours (built from ``errortext``'s fixed messages): it is kept.
    own_text = True

    outcome = Outcome.FAILED


@dataclass(frozen=True)
class Finished:
    outcome: str


@dataclass(frozen=True)
class RetryLater:
    countdown: float


Step = Finished | RetryLater | Parked


def _request_json(message: Message) -> str:
    """The request as a parked entry keeps it (published again when released)."""
    assert message.request is not None
    return json.dumps(message.request.model_dump(mode="json"))


class Pipeline:
    """Carries requests out; one instance per worker process, shared by its threads."""

    def __init__(
        self,
        settings: Settings,
        journal: Journal,
        *,
        adapters: Callable[[str, Settings], ProviderAdapter] = get_adapter,
        clock: Callable[[], float] = time.time,
        guard: ProviderGuard | None = None,
    ) -> None:
        self.settings = settings
        self.guard = guard
        self.journal = journal
        self.adapters = adapters
        self.clock = clock
        self.policy = RetryPolicy(
            settings.retry_base_seconds, settings.retry_cap_seconds, settings.retry_max_attempts
        )
        self.owner = uuid.uuid4().hex[:12]

    # -- entry -------------------------------------------------------------------------
    def handle(self, args: Sequence[Any], kwargs: Mapping[str, Any], task_id: str) -> Step:
        return self._run(intake.parse(args, kwargs, task_id), raw=(args, kwargs))

    def reject_unreadable(self, task_id: str, code: str, text: str, raw: Any) -> Step:
        """Answer a message Celery could not turn into a task call (see worker.broker.consumer)."""
        message = Message(keys.message_ledger(task_id), message_digest(repr(raw)), None, None,
                          (code, text), {}, task_id)
        return self._run(message, raw=(raw,))

    def reject_dead(self, args: Sequence[Any], kwargs: Mapping[str, Any], task_id: str,
                    why: str, code: str = "delivery_limit") -> Step:
        """Answer a message that will not be carried out: one the broker gave up on
        (``delivery_limit``: RabbitMQ's delivery limit, its deliveries kept ending without
        an ack, so a worker died on it again and again) or one that arrived past the
        ``expires`` its producer set (``expired``: Celery drops those unrun).

        Nothing is carried out: the request ends ``rejected`` with a dead letter, unless it
        had finished meanwhile (then this copy is a duplicate).
        """
        parsed = intake.parse(args, kwargs, task_id)
        message = replace(parsed, error=(code, why))
        log = get_logger(request_id=message.request_id, task_id=task_id)
        while True:
            state = ledger.read(self.journal.client, message.ledger_key)
            if state.phase == Phase.DONE:
                step = self._decide(parsed, state, log, raw=(args, kwargs))
            else:
                drafts = [] if state.version else [records.draft(AuditStep.RECEIVED, message)]
                error = message.error
                if state.phase == Phase.CALLING:  # say so: a call was on the wire when it died
                    error = (code, why + "; a provider call was in flight when"
                             " its worker died and may have taken effect: check the session"
                             " before replaying")
                result = records.event(message, Outcome.REJECTED, attempts=state.attempts,
                                       error=error)
                step = self._finish(message, state.version, result, drafts, log,
                                    raw=(args, kwargs), force_dead_letter=True)
            if not isinstance(step, Moved):
                return step

    def _run(self, message: Message, raw: Any) -> Step:
        log = get_logger(request_id=message.request_id, task_id=message.task_id)
        state = LedgerState()  # optimistic: most requests are new
        while True:
            step = self._decide(message, state, log, raw=raw)
            if not isinstance(step, Moved):
                return step
            state = ledger.read(self.journal.client, message.ledger_key)

    def _decide(self, message: Message, state: LedgerState, log: Any, raw: Any) -> Step | Moved:
        if state.version == 0:
            return self._first_delivery(message, log, raw)
        if state.fingerprint != message.fingerprint:
            return self._conflict(message, state, log)
        if state.phase == Phase.DONE:
            log.info("duplicate", outcome=state.outcome)
            DUPLICATES.labels(message.field("provider") or "unknown").inc()
            return self.journal.apply(
                message.ledger_key, state.version,
                records=[records.draft(AuditStep.DUPLICATE, message, outcome=state.outcome)],
            ) or Finished(str(state.outcome or ""))
        now = self.clock()
        busy_until = state.lease_until if state.phase == Phase.CALLING else state.not_before
        if busy_until > now:
            wait = min(busy_until - now, self.settings.retry_cap_seconds)
            if (parking := self._parking(message)) is not None and (
                    parked := self._defer(parking, message, wait, state, log)) is not None:
                return parked
            countdown = wait + random.random()
            log.info("deferred", phase=state.phase, countdown=round(countdown, 3))
            return RetryLater(countdown)
        assert message.request is not None  # same fingerprint as a valid claim
        try:  # rules may have tightened since the first delivery (a deploy)
            adapter = self.adapters(message.request.provider, self.settings)
            rule = check(message.request, adapter.rules)
        except RuleViolation as exc:
            return self._final(message, state.version, state.attempts,
                               PermanentError(exc.message, code=exc.code), [], log)
        recovering = state.phase == Phase.CALLING or state.recover
        extra = [records.draft(AuditStep.RECOVERY, message, previous_owner=state.owner)] if (
            state.phase == Phase.CALLING) else []
        moved = self._claim(message, state, attempts=state.attempts, drafts=extra,
                            recover=recovering)
        return moved or self._carry_out(message, rule, state.version + 1, state.attempts,
                                        recovering, log, created=state.created or self.clock())

    # -- first sight -------------------------------------------------------------------
    def _first_delivery(self, message: Message, log: Any, raw: Any) -> Step | Moved:
        received = records.draft(AuditStep.RECEIVED, message)
        if message.error is not None:
            return self._finish(message, 0, records.event(
                message, Outcome.REJECTED, error=message.error), [received], log, raw=raw)
        assert message.request is not None
        request = message.request
        try:
            adapter = self.adapters(request.provider, self.settings)
            rule = check(request, adapter.rules)  # the producer's test too (admissible)
        except KeyError:
            error = ("provider_not_supported", f"no adapter for provider {request.provider}")
            return self._finish(message, 0, records.event(
                message, Outcome.REJECTED, error=error), [received], log)
        except RuleViolation as exc:
            return self._finish(message, 0, records.event(
                message, Outcome.REJECTED, error=(exc.code, exc.message)), [received], log)
        now = self.clock()
        moved = self._claim(message, LedgerState(), attempts=0, drafts=[received], created=now)
        return moved or self._carry_out(message, rule, 1, 0, False, log, created=now)

    def _conflict(self, message: Message, state: LedgerState, log: Any) -> Step | Moved:
        if state.phase != Phase.DONE:
            # Answer the conflict once the original has finished: writing to its ledger
            # now would move the version under the worker that holds it mid-call.
            return RetryLater(self.settings.retry_cap_seconds * (0.5 + random.random() / 2))
        if message.fingerprint in state.conflicts:
            return self.journal.apply(message.ledger_key, state.version, records=[
                records.draft(AuditStep.DUPLICATE, message, outcome="rejected", conflict=True)
            ]) or Finished(Outcome.REJECTED)
        error = ("request_id_conflict",
                 "this request_id was already used for a request with different fields")
        result = records.event(message, Outcome.REJECTED, error=error)
        log.warning("conflict", outcome="rejected")
        return self.journal.apply(
            message.ledger_key, state.version,
            ledger=state.with_conflict(message.fingerprint),
            records=[records.draft(AuditStep.RECEIVED, message),
                     records.draft(AuditStep.REJECTED, message, error=records.error_of(result))],
            event=result.model_dump(mode="json"),
            ledger_ttl=None,  # the original is done (see above)
        ) or Finished(Outcome.REJECTED)

    def _claim(self, message: Message, state: LedgerState, *, attempts: int,
               drafts: list[dict[str, Any]], recover: bool = False,
               created: float | None = None) -> Moved | None:
        lease_until = self.clock() + self.settings.lease_seconds
        return self.journal.apply(message.ledger_key, state.version, ledger=LedgerState.claimed(
            message.fingerprint, self.owner, lease_until, attempts, recover=recover,
            created=created), records=drafts, ledger_ttl=0)

    # -- the provider call -------------------------------------------------------------
    def _carry_out(self, message: Message, rule: ActionRule, version: int, attempts: int,
                   recovering: bool, log: Any, *, created: float) -> Step | Moved:
        request = message.request
        assert request is not None
        adapter = self.adapters(request.provider, self.settings)
        if self.guard is not None and (hold := self.guard.admit(request.provider,
                                                                 request.request_id)):
            return self._held(message, version, attempts, hold, created, log)
        attempt = attempts + 1
        started = time.monotonic()
        try:
            if recovering and (done := self._recover(adapter, message, rule, log)):
                return self._final(message, version, attempts, done, [], log, recovered=True)
            answer: ProviderAnswer | ProviderError = adapter.execute(request, rule)
        except TransientError as exc:
            self._observe(request.provider, exc, started)
            return self._transient(message, version, attempt, exc, started, log, created)
        except PermanentError as exc:
            answer = exc
        except RuleViolation as exc:  # refused by the adapter before any call
            return self._final(message, version, attempts,
                               PermanentError(exc.message, code=exc.code), [], log)
        except Exception as exc:  # a bug in an adapter must not lose the request
            log.exception("adapter_error")
            wrapped = TransientError(f"internal error: {type(exc).__name__}", code="internal_error")
            return self._transient(message, version, attempt, wrapped, started, log, created)
        self._observe(request.provider, answer, started)
        attempt_record = self._attempt_record(message, attempt, answer, started)
        return self._final(message, version, attempt, answer, [attempt_record], log)

    def _recover(self, adapter: ProviderAdapter, message: Message, rule: ActionRule,
                 log: Any) -> ProviderAnswer | None:
        """After a crash mid-call, did the call land? Read the status instead of calling
        twice. Returns the answer when it did, None when a call is still needed; a
        transient read failure propagates (the request waits, still recovering)."""
        assert message.request is not None
        try:
            status = adapter.read_status(message.request)
        except PermanentError as exc:
            if message.request.action != "delete" or exc.http_status != 404:
                raise
            status = rule.done_status  # a deleted session reads as 404
        log.info("recovery_read", provider_status=status)
        if status == rule.done_status:
            return ProviderAnswer(rule.outcome, None, status)
        return None

    def _observe(self, provider: str, answer: ProviderAnswer | ProviderError,
                 started: float) -> None:
        LATENCY.labels(provider).observe(time.monotonic() - started)
        ATTEMPTS.labels(provider, str(answer.http_status or "none")).inc()
        if self.guard is not None:
            self.guard.record(provider, answer if isinstance(answer, ProviderError) else None)

    def _held(self, message: Message, version: int, attempts: int, hold: Hold, created: float,
              log: Any) -> Step | Moved:
        """The breaker or the rate limit held the call back: wait, spending no attempt,
        unless the retry deadline has passed. A rate-limit hold comes with a slot held
        for this request (``worker.gate.ratelimit``): no jitter needed, each waits for
        its own."""
        left = created + self.settings.retry_deadline_seconds - self.clock()
        if left < 0:
            failed = GaveUp(f"gave up: {hold.reason} past the retry deadline",
                            code=hold.reason)
            return self._final(message, version, attempts, failed, [], log)
        self._count_if_near_deadline(message, created)
        parking = self._parking(message)
        if parking is None:
            return self._wait(message, version, attempts, hold.seconds, hold.reason, None,
                              [], log)
        assert message.request is not None and message.request_id is not None
        provider, request_id = message.request.provider, message.request_id
        text = _request_json(message)
        # Released by the deadline at the latest: the pipeline then ends it.
        if hold.reason == "circuit_open":
            delay = min(hold.seconds, left)
            deadline = created + self.settings.retry_deadline_seconds

            def park() -> None:
                parking.wait_for_breaker(provider, request_id, text, deadline)
        else:
            release = min(max(0.0, hold.seconds - RELEASE_LEAD_SECONDS), left)
            # the ledger's time allows for an early release (its slot still holds it)
            delay = max(0.0, release - RELEASE_EARLY_SECONDS)

            def park() -> None:
                parking.hold(provider, request_id, text, release)
        return self._wait(message, version, attempts, delay, hold.reason, None, [], log,
                          park=park)

    def _parking(self, message: Message) -> ParkingLot | None:
        """Where this request can be parked (None: it goes back through the queue)."""
        if self.guard is None or message.request is None or message.request_id is None:
            return None
        return self.guard.parking

    def _defer(self, parking: ParkingLot, message: Message, seconds: float,
               state: LedgerState, log: Any) -> Step | None:
        """A copy of a request another delivery holds (its lease) or that waits (its
        retry or its slot): parked until then (at most the retry cap), so that it does
        not come back through the queue again and again meanwhile. None when the request
        is parked already (one entry per request): then this copy goes back through the
        queue as before, so that every copy is still answered on the record (a
        ``duplicate`` step once the request is done), never dropped."""
        assert message.request is not None and message.request_id is not None
        # released at most RELEASE_EARLY_SECONDS early: not before the ledger's time
        parked = parking.defer(message.request.provider, message.request_id,
                               _request_json(message),
                               seconds + RELEASE_EARLY_SECONDS + random.random() * 0.1)
        if not parked:
            return None
        log.info("deferred", phase=state.phase, wait=round(seconds, 3), parked=True)
        return Parked()

    def _count_if_near_deadline(self, message: Message, created: float) -> None:
        """A retry late in the request's deadline: an alert warns before it ends failed."""
        if (self.clock() - created
                > NEAR_DEADLINE_FRACTION * self.settings.retry_deadline_seconds):
            RETRIES_NEAR_DEADLINE.labels(message.field("provider") or "unknown").inc()

    def _wait(self, message: Message, version: int, attempts: int, delay: float, reason: str,
              http_status: int | None, drafts: list[dict[str, Any]], log: Any,
              *, recover: bool = False, park: Callable[[], None] | None = None
              ) -> Step | Moved:
        """Record the wait (ledger ``waiting``, audit ``retry_scheduled``); then ``park``
        the request (its message is acked) or send it back with a countdown.

        """
        RETRIES.labels(message.field("provider") or "unknown", reason).inc()
        log.info("retry_scheduled", attempt=attempts, delay=round(delay, 3), error=reason,
                 http_status=http_status, parked=park is not None)
        moved = self.journal.apply(message.ledger_key, version, ledger=LedgerState.waiting(
            attempts, self.clock() + delay, http_status, recover=recover,
        ), records=[*drafts, records.draft(
            AuditStep.RETRY_SCHEDULED, message, attempt=attempts, delay_s=round(delay, 3),
            error=reason)], ledger_ttl=0)  # in flight: only finished ledgers expire
        if moved is not None:
            return self._settle_after_race(message, moved, log)
        if park is not None:
            park()
            return Parked()
        return RetryLater(min(delay, self.settings.retry_cap_seconds))

    def _park_on_open_circuit(self, message: Message, created: float
                              ) -> Callable[[], None] | None:
        """A retry after a failure while the provider's circuit is open (this failure
        opened it, or it was a failed probe) waits parked on the breaker rather than with
        a countdown: it would only come back to be held there (one publish saved)."""
        parking = self._parking(message)
        if parking is None:
            return None
        assert self.guard is not None and message.request is not None
        provider, request_id = message.request.provider, message.request_id
        if request_id is None or self.guard.breaker.state(provider) == "closed":
            return None
        text = _request_json(message)
        # the retry deadline counts from the first claim
        deadline = created + self.settings.retry_deadline_seconds

        def park() -> None:
            parking.wait_for_breaker(provider, request_id, text, deadline)
        return park

    def _attempt_record(self, message: Message, attempt: int,
                        answer: ProviderAnswer | ProviderError, started: float) -> dict[str, Any]:
        return records.draft(
            AuditStep.ATTEMPT, message, attempt=attempt, http_status=answer.http_status,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
            error=public_code(answer) if isinstance(answer, ProviderError) else None,
        )

    def _transient(self, message: Message, version: int, attempt: int, exc: TransientError,
                   started: float, log: Any, created: float) -> Step | Moved:
        attempt_record = self._attempt_record(message, attempt, exc, started)
        delay = self.policy.delay(attempt, retry_after=exc.retry_after)
        past_deadline = self.clock() - created > self.settings.retry_deadline_seconds
        if delay is None or past_deadline:
            failed = GaveUp(f"gave up after {attempt} attempts: {public_message(exc)}",
                            code=public_code(exc), http_status=exc.http_status)
            return self._final(message, version, attempt, failed, [attempt_record], log)
        self._count_if_near_deadline(message, created)
        # The call may have landed although no answer came: read before calling again.
        maybe_landed = exc.may_have_landed or exc.http_status in (502, 504)
        return self._wait(message, version, attempt, delay, public_code(exc), exc.http_status,
                          [attempt_record], log, recover=maybe_landed,
                          park=self._park_on_open_circuit(message, created))

    def _final(self, message: Message, version: int, attempts: int,
               answer: ProviderAnswer | ProviderError, drafts: list[dict[str, Any]], log: Any,
               *, recovered: bool = False) -> Step | Moved:
        if isinstance(answer, ProviderError):
            outcome = answer.outcome or Outcome.FAILED
            result = records.event(message, outcome, attempts=attempts,
                                   http_status=answer.http_status,
                                   provider_status=public_status(answer.provider_status),
                                   error=public_error(answer))
        else:
            result = records.event(message, answer.outcome, attempts=attempts,
                                   http_status=answer.http_status,
                                   provider_status=public_status(answer.provider_status),
                                   fee_refunded=answer.fee_refunded, recovered=recovered)
        moved = self._finish(message, version, result, drafts, log)
        return self._settle_after_race(message, moved, log) if isinstance(moved, Moved) else moved

    def _settle_after_race(self, message: Message, moved: Moved, log: Any) -> Step | Moved:
        # We called the provider, but another delivery moved the ledger meanwhile (our
        # lease ran out). Whoever finishes first publishes; the other is a duplicate.
        log.warning("lease_lost", version=moved.version)
        return moved

    def _finish(self, message: Message, version: int, result: ResultEvent,
                drafts: list[dict[str, Any]], log: Any, raw: Any = None,
                force_dead_letter: bool = False) -> Step | Moved:
        outcome = result.outcome
        step = AuditStep.REJECTED if outcome is Outcome.REJECTED else AuditStep.COMPLETED
        steps = [*drafts, records.draft(step, message, outcome=outcome.value,
                                        error=records.error_of(result),
                                        attempts=result.attempts)]
        # Written in the step that ends it: no crash can lose the read-back.
        confirmation = confirm.confirmation(
            message.request, outcome.value, self.settings, self.clock(),
        ) if outcome in confirm.OUTCOMES and message.request is not None else None
        dead: DeadLetter | None = None
        if force_dead_letter or outcome in DEAD_LETTERED or message.request_id is None:
            dead = records.dead_letter(message, result, raw)
            steps.append(records.draft(AuditStep.DEAD_LETTERED, message, outcome=outcome.value))
        moved = self.journal.apply(message.ledger_key, version, ledger=LedgerState.done(
            message.fingerprint, outcome, result.attempts, result.http_status,
            result.provider_status,
        ), records=steps, event=result.model_dump(mode="json"), dead_letter=dead,
            ledger_ttl=None, confirmation=confirmation)
        if moved is None:
            REQUESTS.labels(message.field("provider") or "unknown", outcome.value).inc()
            log.info("completed", outcome=outcome.value, attempts=result.attempts,
                     http_status=result.http_status,
                     error=result.error.code if result.error else None)
            return Finished(outcome.value)
        return moved
