"""Session tracking: services report sessions as they are issued and as they progress,
so that the sweep can find abandoned ones and a re-issued session can supersede the last.

Storage (``worker.keys``, script ``lua/track.lua``), per provider ``<p>``:

- ``idvcancel:track:active:<p>``: a sorted set of the sessions still *actionable* by the
  provider's rules table, scored by last activity. The sweep's "due" sessions are a score
  range of it, so finding k of n costs O(k log n), never a scan.
- ``idvcancel:track:session:<p>:<reference>``: a hash per session (status, application,
  options, state ``active`` → ``claimed`` → ``closed``).
- ``idvcancel:track:claimed:<p>``: sessions whose cancel is being enqueued (sweep or
  supersede); released once enqueued, handed out again by the sweep if never released.
- ``idvcancel:track:apps:<p>``: application id → its in-flight session (supersede pointer).

A terminal status takes a session out of tracking. A closed session's hash is kept for
``IDVCANCEL_TRACK_RETENTION_SECONDS`` so that a late, out-of-order report cannot revive
it; after that it expires.

Examples:
    >>> import fakeredis
    >>> from config.settings import Settings
    >>> client = fakeredis.FakeRedis(decode_responses=True)
    >>> first = TrackedSession(provider="idpass", application_id="app-1", status="opened",
    ...     reference="fe4291ca-d831-4760-96df-c9cb03b3cd95", last_activity=1_700_000_000)
    >>> record(client, first, retention_seconds=60).verdict
    'active'
    >>> again = first.model_copy(update={"reference": "0b5e4c1e-0000-4000-8000-000000000001"})
    >>> record(client, again, retention_seconds=60).superseded.reference
    'fe4291ca-d831-4760-96df-c9cb03b3cd95'
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Protocol, cast

import redis
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from config.settings import Settings, get_settings
from worker import keys, scripts
from worker.broker.producer import Producer
from worker.contract import (
    MAX_REQUEST_ID_LENGTH,
    ActionName,
    CancelRequest,
    ProviderName,
    SourceName,
    canonical_json,
)
from worker.delivery.intake import describe
from worker.errors import InvalidSession
from worker.logs import get_logger
from worker.providers import rules_for
from worker.providers.rules import ProviderRules
from worker.redis_client import redis_client

#: ``requested_by`` of the cancels that supersede a re-issued session.
SUPERSEDE_REQUESTER = "idvcancel-supersede"

Verdict = Literal["active", "dropped", "ignored"]
State = Literal["active", "claimed", "closed"]


class Sender(Protocol):
    """What enqueues cancel requests: ``worker.broker.producer.Producer`` or a test double."""

    def submit_many(self, requests: Iterable[CancelRequest | Mapping[str, Any]]) -> list[str]:
        """Enqueue every request (all or nothing); returns their request ids."""
        ...


def provider_rules(provider: str) -> ProviderRules:
    """The provider's rules table, or ``ValueError`` when this build cannot load it."""
    try:
        return rules_for(provider)
    except (KeyError, ImportError, AttributeError) as exc:
        raise ValueError(f"provider {provider} is not available") from exc


def cancel_action(rules: ProviderRules) -> ActionName:
    """The action that ends a session at this provider: ``cancel`` where there is an API
    for it, else ``delete`` (Jumio).

    Examples:
        >>> from worker.providers.jumio import RULES
        >>> cancel_action(RULES)
        'delete'
    """
    return "cancel" if "cancel" in rules.actions else "delete"


def request_id_for(source: SourceName, provider: str, reference: str) -> str:
    """The deterministic request id of a cancel we raise ourselves, so that the pipeline's
    idempotency ledger carries it out once however often it is enqueued.

    ``<source>:<provider>:<reference>``; a reference too long for a request id (128
    characters) is replaced by its SHA-256, which is just as deterministic.

    Examples:
        >>> request_id_for("sweep", "idpass", "fe4291ca-d831-4760-96df-c9cb03b3cd95")
        'sweep:idpass:fe4291ca-d831-4760-96df-c9cb03b3cd95'
        >>> len(request_id_for("supersede", "onespan", "x" * 256)) <= 128
        True
    """
    plain = f"{source}:{provider}:{reference}"
    if len(plain) <= MAX_REQUEST_ID_LENGTH:
        return plain
    return f"{source}:{provider}:sha256:{hashlib.sha256(reference.encode()).hexdigest()}"


def _epoch(value: object) -> datetime:
    """An aware UTC datetime from ISO 8601 text, epoch seconds, or a datetime."""
    if isinstance(value, bool):  # a bool is an int to Python, never a time to us
        raise ValueError("last_activity must be ISO 8601 text or epoch seconds")
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text)
        except ValueError:
            try:
                value = datetime.fromisoformat(text)
            except ValueError:
                raise ValueError(
                    "last_activity must be ISO 8601 text or epoch seconds") from None
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError("last_activity must be a finite, non-negative epoch")
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, datetime):
        # Naive times are taken as UTC: the one zone every service agrees on.
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    raise ValueError("last_activity must be ISO 8601 text or epoch seconds")


class TrackedSession(BaseModel):
    """One report of a session: issued, or progressed.

    Parameters:
        provider: the contract's provider name.
        reference: the provider's id of the session (what a cancel is sent for).
        application_id: our application it belongs to; a new session for the same
            application at the same provider supersedes the prior one.
        status: the session's status in the provider's own words (its rules table).
        last_activity: when the person last did something: ISO 8601 text or epoch
            seconds (naive times are UTC); default now.
        options: what a cancel needs, e.g. Jumio ``{"product": "scan", "region": "eu"}``.

    Examples:
        >>> TrackedSession.model_validate({"provider": "txcloud", "reference": "v-1",
        ...     "application_id": "a-1", "status": "pending",
        ...     "last_activity": "2024-05-01T12:00:00Z"}).last_activity.isoformat()
        '2024-05-01T12:00:00+00:00'
        >>> validate_session({"provider": "gu1", "reference": "v-1",
        ...     "application_id": "a-1", "status": "done"})
        Traceback (most recent call last):
        ...
        worker.errors.InvalidSession: request: Value error, unknown status 'done' for gu1; known: abandoned, approved, cancelled, expired, in_progress, in_review, pending, rejected
    """  # noqa: E501

    # Same strictness as a cancel request: unknown fields are an error, nothing coerced
    # (except last_activity, which takes two documented forms).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    provider: ProviderName
    reference: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    application_id: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    status: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    last_activity: datetime = Field(default_factory=lambda: datetime.now(UTC))
    options: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("last_activity", mode="before")
    @classmethod
    def _parse_last_activity(cls, value: object) -> datetime:
        return _epoch(value)

    @model_validator(mode="after")
    def _status_is_the_providers(self) -> TrackedSession:
        rules = provider_rules(self.provider)
        if self.status not in rules.statuses:
            known = ", ".join(sorted(rules.statuses))
            raise ValueError(f"unknown status {self.status!r} for {self.provider}; known: {known}")
        return self


def validate_session(session: TrackedSession | Mapping[str, Any]) -> TrackedSession:
    """The validated report, or ``InvalidSession`` saying which fields are wrong.

    Examples:
        >>> validate_session({"provider": "acme", "reference": "r", "application_id": "a",
        ...     "status": "new"})
        Traceback (most recent call last):
        ...
        worker.errors.InvalidSession: provider: Input should be 'idpass', 'txcloud', 'gu1', 'jumio' or 'onespan'
    """  # noqa: E501
    if isinstance(session, TrackedSession):
        return session
    if not isinstance(session, Mapping):
        raise InvalidSession(f"a session must be a JSON object, not {type(session).__name__}")
    try:
        return TrackedSession.model_validate(dict(session))
    except ValidationError as exc:
        raise InvalidSession(describe(exc)) from None


@dataclass(frozen=True)
class SessionRecord:
    """A tracked session as stored (``get_session``), or one just claimed for a cancel.

    Parameters:
        state: ``active`` (tracked, actionable), ``claimed`` (its cancel is being
            enqueued) or ``closed`` (terminal, superseded or swept; kept for a while).
        claim: why it was claimed: ``sweep`` or ``supersede``.
        superseded_by: the reference of the session that superseded it.
    """

    provider: str
    reference: str
    application_id: str = ""
    status: str = ""
    last_activity: float = 0.0
    options: dict[str, JsonValue] = field(default_factory=dict)
    state: str = ""
    claim: str | None = None
    superseded_by: str | None = None

    @classmethod
    def from_fields(cls, provider: str, reference: str, fields: Mapping[str, str]
                    ) -> SessionRecord:
        """Build one from a session hash (missing fields read as empty)."""
        try:
            options = json.loads(fields.get("options") or "{}")
        except ValueError:
            options = {}
        return cls(
            provider=provider,
            reference=fields.get("reference") or reference,
            application_id=fields.get("application_id", ""),
            status=fields.get("status", ""),
            last_activity=float(fields.get("last_activity") or 0.0),
            options=options if isinstance(options, dict) else {},
            state=fields.get("state", ""),
            claim=fields.get("claim") or None,
            superseded_by=fields.get("superseded_by") or None,
        )


@dataclass(frozen=True)
class TrackResult:
    """What recording a report did.

    Parameters:
        verdict: ``active`` (tracked or updated), ``dropped`` (terminal status: out of
            tracking) or ``ignored`` (already closed, or its cancel is being enqueued).
        superseded: the application's prior session, claimed for a supersede cancel.
        request_ids: cancels enqueued by ``track`` (the supersede), if any.
    """

    verdict: Verdict
    superseded: SessionRecord | None = None
    request_ids: tuple[str, ...] = ()


def text(value: object) -> str:
    """A Redis reply as text, whether or not the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else str(value)


def pairs(flat: Sequence[object]) -> dict[str, str]:
    """``[k1, v1, k2, v2, ...]`` (an HGETALL inside Lua) as a dict."""
    return {text(flat[i]): text(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


def record(client: redis.Redis, session: TrackedSession, *, retention_seconds: int,
           now: float | None = None) -> TrackResult:
    """Store one report atomically (``lua/track.lua``); claim the prior session when a new
    one supersedes it. Enqueues nothing: ``track`` does, then ``release``\\s the claim.

    Parameters:
        client: Redis (the broker's).
        session: a validated report.
        retention_seconds: how long a closed session's hash is kept.
        now: epoch seconds (default: the clock); a last activity after it is clamped to
            it, so a producer's fast clock cannot put a session beyond the sweep's reach.

    Examples:
        >>> import fakeredis
        >>> client = fakeredis.FakeRedis(decode_responses=True)
        >>> done = TrackedSession(provider="gu1", reference="v1", application_id="a",
        ...     status="approved")
        >>> record(client, done, retention_seconds=60).verdict
        'dropped'
    """
    at = time.time() if now is None else now
    rules = provider_rules(session.provider)
    actionable = rules.is_in_flight(session.status)
    activity = min(session.last_activity.timestamp(), at)
    provider = session.provider
    script = scripts.script(client, "track")
    reply = script(
        keys=[keys.track_session(provider, session.reference), keys.track_active(provider),
              keys.track_claimed(provider), keys.track_apps(provider)],
        args=[session.reference, session.application_id, session.status, f"{activity:.3f}",
              canonical_json(session.options), "1" if actionable else "", f"{at:.3f}",
              str(retention_seconds), keys.track_session_prefix(provider)],
    )
    prior = text(reply[1])
    superseded = (SessionRecord.from_fields(provider, prior, pairs(reply[2:]))
                  if prior else None)
    return TrackResult(verdict=cast(Verdict, text(reply[0])), superseded=superseded)


def get_session(client: redis.Redis, provider: str, reference: str) -> SessionRecord | None:
    """The stored session (any state), or None when it was never tracked or has expired."""
    raw = client.hgetall(keys.track_session(provider, reference))
    fields = {text(k): text(v) for k, v in raw.items()}
    return SessionRecord.from_fields(provider, reference, fields) if fields else None


def active_sessions(client: redis.Redis, provider: str) -> int:
    """How many sessions of ``provider`` are tracked and actionable."""
    return int(client.zcard(keys.track_active(provider)))


def supersede_request(prior: SessionRecord) -> CancelRequest:
    """The cancel of a session superseded by a new one for the same application.

    Examples:
        >>> prior = SessionRecord(provider="txcloud", reference="v-old", superseded_by="v-new")
        >>> supersede_request(prior).reason
        'superseded by v-new'
    """
    return cancel_of(prior, source="supersede", requested_by=SUPERSEDE_REQUESTER,
                     reason=f"superseded by {prior.superseded_by or 'a new session'}")


def cancel_of(session: SessionRecord, *, source: SourceName, requested_by: str,
              reason: str) -> CancelRequest:
    """The cancel a trigger (the sweep, supersede) sends for a tracked session: its
    request id derived from the session, so that sending it again is a duplicate."""
    return CancelRequest(
        request_id=request_id_for(source, session.provider, session.reference),
        provider=session.provider,  # type: ignore[arg-type]  # validated when tracked
        action=cancel_action(provider_rules(session.provider)),
        reference=session.reference,
        reason=reason,
        source=source,
        requested_by=requested_by,
        options=session.options,
    )




def release(client: redis.Redis, provider: str, references: Iterable[str], *,
            retention_seconds: int, now: float | None = None) -> None:
    """Close claimed sessions once their cancels are enqueued (one script call)."""
    refs = list(references)
    if not refs:
        return
    at = time.time() if now is None else now
    scripts.script(client, "track_release")(
        keys=[keys.track_claimed(provider)],
        args=[keys.track_session_prefix(provider), f"{at:.3f}", str(retention_seconds), *refs])


def track(client: redis.Redis, session: TrackedSession | Mapping[str, Any], *,
          settings: Settings | None = None, sender: Sender | None = None,
          now: float | None = None) -> TrackResult:
    """Track one report; when it is a new session for an application whose previous
    session at that provider is still in flight, cancel the previous one.

    The supersede cancel has ``source: "supersede"``, reason ``"superseded by <new
    reference>"`` and request id ``supersede:<provider>:<prior reference>``. Should the
    enqueue fail, the claim stays and the next sweep enqueues it.

    Parameters:
        client: Redis (the broker's).
        session: a ``TrackedSession`` or a mapping of its fields (``InvalidSession`` if
            it is not valid).
        settings: for the retention and the broker (default: the environment).
        sender: what enqueues the supersede cancel (default: a shared ``Producer``).
        now: epoch seconds (default: the clock).

    Examples:
        >>> track(client, {"provider": "idpass", "reference": ref,     # doctest: +SKIP
        ...     "application_id": "app-7", "status": "opened"}).verdict
        'active'
    """
    valid = validate_session(session)
    conf = settings or get_settings()
    at = time.time() if now is None else now
    result = record(client, valid, retention_seconds=conf.track_retention_seconds, now=at)
    log = get_logger(provider=valid.provider, reference=valid.reference)
    if result.superseded is None:
        log.info("session_tracked", verdict=result.verdict)
        return result
    prior = result.superseded
    ids = (sender or shared_sender(conf)).submit_many([supersede_request(prior)])
    release(client, prior.provider, [prior.reference],
            retention_seconds=conf.track_retention_seconds, now=at)
    log.info("session_tracked", verdict=result.verdict, superseded=prior.reference,
             request_id=ids[0])
    return TrackResult(result.verdict, prior, tuple(ids))


# -- process-wide clients, built on first use (after any fork) ----------------------------

_lock = threading.Lock()
_clients: dict[str, redis.Redis] = {}
_senders: dict[str, Sender] = {}


def shared_client(settings: Settings) -> redis.Redis:
    """This process's Redis client for ``settings.redis_url``."""
    with _lock:
        client = _clients.get(settings.redis_url)
        if client is None:
            client = _clients[settings.redis_url] = redis_client(settings.redis_url)
        return client


def shared_sender(settings: Settings) -> Sender:
    """This process's producer for ``settings.redis_url`` (one broker connection pool),
    signing its messages when the workers expect signed ones.

    It sends a request that breaks its provider's rules instead of refusing it
    (``check_rules=False``): what the sweep, supersede and the reconciler send has no
    caller to be told — a tracked session whose cancel cannot be carried out (an ID Pass
    reference that is no UUID, Jumio options it does not know), a request admitted
    before a rule tightened. Refused here, it would stop the whole run (and a sweep
    would claim it again forever) or vanish; sent, the worker records it ``rejected``
    with the rule's code, in the results and the audit chain, and the session is closed.
    """
    with _lock:
        sender = _senders.get(settings.redis_url)
        if sender is None:
            sender = _senders[settings.redis_url] = Producer(
                settings.redis_url, settings=settings, check_rules=False)
        return sender
