"""Reading results back: follow the result stream, and the whole story of one request.

``follow`` reads ``idvcancel:results`` (field ``event``) with ``XREAD BLOCK``, filtered by
request id, provider and outcome; ``status`` gathers what Redis knows about one request:
its ledger, its audit records, its result event(s) and its dead letter.

Examples:
    >>> from worker.ops.results import follow, status
    >>> for event in follow(client, outcome="failed", from_start=False):  # doctest: +SKIP
    ...     print(event["request_id"], event["error"]["code"])
    >>> status(client, "r-1")["ledger"]["phase"]                           # doctest: +SKIP
    'done'
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import redis

from worker import keys
from worker.contract import RESULTS_FIELD
from worker.gate.parking import ParkingLot
from worker.journal.ledger import LedgerState
from worker.journal.verify import iter_records
from worker.ops import deadletters

#: Entries read per XREAD / XRANGE call.
PAGE = 500


def _matches(event: dict[str, Any], request_id: str | None, provider: str | None,
             outcome: str | None) -> bool:
    return ((request_id is None or event.get("request_id") == request_id)
            and (provider is None or event.get("provider") == provider)
            and (outcome is None or event.get("outcome") == outcome))


def _event(fields: dict[str, str]) -> dict[str, Any] | None:
    try:
        event = json.loads(fields.get(RESULTS_FIELD, ""))
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def _last_id(client: redis.Redis, stream: str) -> str:
    """The id of the newest entry, so that "from now on" does not skip what arrives
    between two reads (as ``$`` would)."""
    newest: list[tuple[str, Any]] = client.xrevrange(stream, count=1)  # type: ignore[assignment]
    return newest[0][0] if newest else "0-0"


def follow(
    client: redis.Redis,
    *,
    request_id: str | None = None,
    provider: str | None = None,
    outcome: str | None = None,
    from_start: bool = True,
    block_ms: int | None = 5000,
    stream: str = keys.RESULTS,
) -> Iterator[dict[str, Any]]:
    """Yield result events that match every given filter, oldest first.

    Parameters:
        client: a Redis client with ``decode_responses=True``.
        request_id, provider, outcome: filters (None = any).
        from_start: begin with the oldest event still in the stream; False = only
            events published from now on.
        block_ms: how long one ``XREAD BLOCK`` waits; the generator then waits again,
            forever. None = do not wait: stop once the stream is read to its end.
        stream: the stream key (tests may point it elsewhere).

    Examples:
        >>> events = list(follow(client, provider="gu1", block_ms=None))  # doctest: +SKIP
    """
    cursor = "0-0" if from_start else _last_id(client, stream)
    while True:
        reply: list[tuple[str, list[tuple[str, dict[str, str]]]]] = client.xread(  # type: ignore[assignment]
            {stream: cursor}, count=PAGE, block=block_ms)
        entries = reply[0][1] if reply else []
        for entry_id, fields in entries:
            cursor = entry_id
            event = _event(fields)
            if event is not None and _matches(event, request_id, provider, outcome):
                yield event
        if block_ms is None and len(entries) < PAGE:
            return


def _iso(epoch: float) -> str | None:
    if epoch <= 0:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def ledger_view(client: redis.Redis, request_id: str) -> dict[str, Any] | None:
    """The ledger of ``request_id`` for people (None when there is none)."""
    raw: dict[str, str] = client.hgetall(keys.request_ledger(request_id))  # type: ignore[assignment]
    if not raw:
        return None
    state = LedgerState.from_hash(raw)
    return {
        "phase": state.phase or "",
        "attempts": state.attempts,
        "outcome": state.outcome or None,
        "replays": state.replays,
        "http_status": state.http_status,
        "provider_status": state.provider_status,
        "lease_until": _iso(state.lease_until),
        "not_before": _iso(state.not_before),
        "conflicts": len(state.conflicts),
        "version": state.version,
    }


def status(client: redis.Redis, request_id: str) -> dict[str, Any]:
    """Everything Redis holds about ``request_id``; ``found`` is False when nothing.

    The audit trail and the result events are found by reading both streams from the
    start (there is no index by request id): fine for an operator's command, not for a
    hot path. Audit records trimmed away by an archive job are not seen.

    Examples:
        >>> status(client, "r-1")["results"][-1]["outcome"]            # doctest: +SKIP
        'cancelled'
    """
    ledger = ledger_view(client, request_id)
    audit = [dict(record) for _, record in iter_records(client)
             if record.get("request_id") == request_id]
    results = list(follow(client, request_id=request_id, block_ms=None))
    dead_letter = deadletters.get(client, request_id)
    # In the intake index: pushed and not yet done (when it was last pushed or looked at).
    pushed = client.zscore(keys.INTAKE, request_id)
    intake = None if pushed is None else {"pushed_at": float(pushed)}
    parked = ParkingLot(client).where(request_id)  # held back in Redis: where, until when
    return {
        "request_id": request_id,
        "found": bool(ledger or audit or results or dead_letter or intake),
        "ledger": ledger,
        "intake": intake,
        "parked": parked,
        "results": results,
        "dead_letter": dead_letter,
        "audit": audit,
    }
