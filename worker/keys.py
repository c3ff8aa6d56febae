"""Every Redis key idv-cancel uses, in one place.

| key | type | holds |
|---|---|---|
| ``idvcancel:results`` | stream, field ``event`` | one result event per request (contract) |
| ``idvcancel:audit`` | stream, field ``record`` | the hash-chained audit trail (contract) |
| ``idvcancel:audit:head`` | string ``"<seq>:<hash>"`` | the chain's last link (compare-and-set) |
| ``idvcancel:audit:archived`` | hash (id, seq, hash, file, ...) | the last archived record |
| ``idvcancel:audit:archive:lock`` | string (token, PX) | held while records are archived |
| ``idvcancel:audit:verified`` | hash verifier → JSON | each verifier's last verdict on the chain |
| ``idvcancel:req:<request_id>`` | hash | one request's ledger (``worker.journal.ledger``) |
| ``idvcancel:msg:<task_id>`` | hash | the ledger of a message whose request id could not be read |
| ``idvcancel:dlq`` | hash id → JSON | dead letters: everything needed to replay a request |
| ``idvcancel:dlq:index`` | sorted set, score = ms | dead letters in the order they arrived |
| ``idvcancel:track:active:<p>`` | sorted set, score = last activity (s) | actionable sessions |
| ``idvcancel:track:claimed:<p>`` | sorted set, score = claim time (s) | cancels being enqueued |
| ``idvcancel:track:session:<p>:<ref>`` | hash | one tracked session and its state |
| ``idvcancel:track:apps:<p>`` | hash application id → ref | in-flight session per application |
| ``idvcancel:intake`` | sorted set, score = pushed (s) | request ids pushed, not yet done |
| ``idvcancel:intake:requests`` | hash request id → request JSON | what a resubmission sends |
| ``idvcancel:breaker:<p>`` | hash (state, failures, open_until, probe_until) | circuit breaker |
| ``idvcancel:ratelimit:<p>`` | string (theoretical arrival time, ms) | rate limiter (GCRA) |
| ``idvcancel:ratelimit:<p>:sent`` | sorted set, score = ms | calls sent in the last window |
| ``idvcancel:ratelimit:<p>:slot:<id>`` | string (ms), expires | a slot held for a parked request |
| ``idvcancel:held:<p>`` | sorted set, score = release time (ms) | parked requests, timed |
| ``idvcancel:held:<p>:breaker`` | sorted set, score = deadline (ms) | until the circuit closes |
| ``idvcancel:held:<p>:claimed`` | sorted set, score = lease end (ms) | being released |
| ``idvcancel:held:<p>:probe`` | string, expires | a probe was released lately |
| ``idvcancel:held:requests`` | hash request id → request JSON | what a release publishes |
| ``idvcancel:held:stats`` | hash ``released:<p>`` → count | requests released (published again) |
| ``idvcancel:internal:<task_id>`` | counter, expires in a day | deliveries that hit a bug of ours |
| ``idvcancel:confirm:due`` | sorted set, score = due (s) | confirmation reads to make |
| ``idvcancel:confirm:requests`` | hash request id → JSON | what each one reads |
| ``idvcancel:attention`` | hash request id → JSON | failed confirmations, for a person |
| ``idvcancel:attention:index`` | sorted set, score = added (s) | the same, oldest first |
| ``idvcancel:checkpoints`` | stream, field ``checkpoint`` | signed checkpoints of the audit chain |
| ``idvcancel:checkpoints:head`` | hash (seq, digest, hash, record_id, …) | the last checkpoint |
| ``idvcancel:demo:run`` | string (run id) | claims a database for one ``idvcancel demo`` run |

The chain left in ``idvcancel:audit`` continues from ``idvcancel:audit:archived`` once
older records were moved to the archive files (``worker.journal.archive``).
``<p>`` is a provider. The ``track:*`` keys belong to ``worker.triggers.tracking`` and
``worker.triggers.sweep`` (see ``lua/track.lua`` and ``lua/sweep.lua``).
The ``intake`` keys are the intake index (``worker.triggers.reconcile``): written with every push by
``worker.broker.producer`` (``lua/push.lua``), a member leaves when its ledger is done
(``lua/transition.lua``), and the reconciler resubmits what has waited too long
(``lua/reconcile.lua``). Its score is when the request was last pushed (or last looked
at by the reconciler).
The ``held`` keys and the held slots belong to ``worker.gate.parking`` (``lua/park.lua``,
``lua/release.lua``; the slots: ``lua/ratelimit.lua``); an entry leaves when it is
released, and a parked request is left alone by the reconciler (``lua/reconcile.lua``).
The ``confirm`` keys belong to ``worker.delivery.confirm`` (written just before the step that ends
a request ``cancelled`` or ``deleted``; claimed by ``lua/confirm_claim.lua``, removed once
the confirmation is recorded), the ``attention`` keys to ``worker.journal.attention``.
The ``checkpoints`` keys belong to ``worker.journal.checkpoints`` (``lua/checkpoint.lua``); they are
never trimmed (one small entry per checkpoint interval, or per
``IDVCANCEL_AUDIT_CHECKPOINT_RECORDS`` records when they come faster).
"""

from __future__ import annotations

from worker.contract import AUDIT_STREAM, RESULTS_STREAM

RESULTS = RESULTS_STREAM
AUDIT = AUDIT_STREAM
AUDIT_HEAD = "idvcancel:audit:head"
AUDIT_ARCHIVED = "idvcancel:audit:archived"
AUDIT_ARCHIVE_LOCK = "idvcancel:audit:archive:lock"
#: The last verdict of each verifier of the chain (``worker.journal.verdicts``).
AUDIT_VERIFIED = "idvcancel:audit:verified"
DLQ = "idvcancel:dlq"
DLQ_INDEX = "idvcancel:dlq:index"
#: The intake index: request id → when it was (last) pushed, and → its request JSON.
INTAKE = "idvcancel:intake"
INTAKE_REQUESTS = "idvcancel:intake:requests"
#: Prefix of request ledgers; ``request_ledger`` appends the id (the Lua scripts too).
REQUEST_LEDGER_PREFIX = "idvcancel:req:"
#: Signed checkpoints of the audit chain (``worker.journal.checkpoints``) and the last one's head.
CHECKPOINTS = "idvcancel:checkpoints"
CHECKPOINTS_HEAD = "idvcancel:checkpoints:head"
#: Confirmations due (``worker.delivery.confirm``) and what each reads.
CONFIRM_DUE = "idvcancel:confirm:due"
CONFIRM_REQUESTS = "idvcancel:confirm:requests"
#: Failed confirmations waiting for a person (``worker.journal.attention``).
ATTENTION = "idvcancel:attention"
ATTENTION_INDEX = "idvcancel:attention:index"
#: Claims a database for one demo run (``worker.local.demo_site``); deleted with the rest.
DEMO_RUN = "idvcancel:demo:run"


def request_ledger(request_id: str) -> str:
    return REQUEST_LEDGER_PREFIX + request_id


def request_id_of_ledger(ledger_key: str) -> str | None:
    """The request id whose ledger is ``ledger_key`` (None for a message ledger).

    Examples:
        >>> request_id_of_ledger("idvcancel:req:r-1"), request_id_of_ledger("idvcancel:msg:t")
        ('r-1', None)
    """
    if ledger_key.startswith(REQUEST_LEDGER_PREFIX):
        return ledger_key[len(REQUEST_LEDGER_PREFIX):]
    return None


def message_ledger(task_id: str) -> str:
    return f"idvcancel:msg:{task_id}"


# -- session tracking, sweep and supersede (worker.triggers.tracking, .sweep) -----------


def track_active(provider: str) -> str:
    return f"idvcancel:track:active:{provider}"


def track_claimed(provider: str) -> str:
    return f"idvcancel:track:claimed:{provider}"


def track_session_prefix(provider: str) -> str:
    """Prefix of the session hashes of ``provider``; the Lua scripts append a reference."""
    return f"idvcancel:track:session:{provider}:"


def track_session(provider: str, reference: str) -> str:
    return track_session_prefix(provider) + reference


def track_apps(provider: str) -> str:
    return f"idvcancel:track:apps:{provider}"


# -- the gate and the task (worker.gate, tasks/process.py) ---------------------------------


def breaker(provider: str) -> str:
    """One provider's circuit breaker (hash: state, failures, open_until, probe_until)."""
    return f"idvcancel:breaker:{provider}"


def ratelimit(provider: str) -> str:
    """One provider's rate limiter (string: the GCRA's theoretical arrival time)."""
    return f"idvcancel:ratelimit:{provider}"


def ratelimit_slot(provider: str, request_id: str) -> str:
    """A slot the rate limiter holds for one parked request (string: its time, ms)."""
    return f"{ratelimit_slot_prefix(provider)}{request_id}"


def ratelimit_sent(provider: str) -> str:
    """The calls one provider was sent lately (zset, score = ms): the rate limit's gate."""
    return f"idvcancel:ratelimit:{provider}:sent"


def ratelimit_slot_prefix(provider: str) -> str:
    """Prefix of one provider's held slots; ``lua/park.lua`` appends a request id."""
    return f"idvcancel:ratelimit:{provider}:slot:"


#: Parked requests' JSON and the releasers' counts (``worker.gate.parking``).
HELD_REQUESTS = "idvcancel:held:requests"
HELD_STATS = "idvcancel:held:stats"


def held(provider: str) -> str:
    """Parked requests of one provider, released at a time (zset, score = ms)."""
    return f"idvcancel:held:{provider}"


def held_breaker(provider: str) -> str:
    """Parked requests waiting for one provider's circuit to close (score = deadline ms)."""
    return f"idvcancel:held:{provider}:breaker"


def held_claimed(provider: str) -> str:
    """Parked requests a releaser is publishing (score = end of its lease, ms)."""
    return f"idvcancel:held:{provider}:claimed"


def held_probe(provider: str) -> str:
    """Set (with an expiry) when a releaser let a probe go to an open circuit."""
    return f"idvcancel:held:{provider}:probe"


def internal_failures(task_id: str) -> str:
    """Deliveries of one message that hit a bug in our code (counter, expires in a day)."""
    return f"idvcancel:internal:{task_id}"
