"""Settings from the environment, every one named ``IDVCANCEL_*``.

The README lists each variable. Secrets are ``SecretStr`` so that printing a
``Settings`` object (or logging it by mistake) never shows a token.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from config.broker import DEFAULT_DELIVERY_LIMIT, is_amqp
from config.names import PROVIDERS
from config.urls import check_broker_url, check_http_url, check_redis_url, masked

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def _json_object(value: Any) -> Any:
    """An environment variable's text read as a JSON object (pydantic-settings would
    otherwise parse it before validation and raise a ``SettingsError`` that names
    neither the variable nor what it accepts)."""
    if not isinstance(value, str):
        return value
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at character {exc.pos + 1}); expected a"
                         ' JSON object of provider to number, e.g. {"txcloud": 16.6}') from None
    if not isinstance(parsed, dict):
        raise ValueError('expected a JSON object of provider to number, e.g. {"txcloud": 16.6}')
    return parsed


def _known_providers(value: dict[str, float]) -> dict[str, float]:
    # A typo in a provider name would otherwise silently keep the default.
    for provider in value:
        if provider not in PROVIDERS:
            raise ValueError(f"unknown provider {provider!r}; known: {', '.join(PROVIDERS)}")
    return value


#: A state-store Redis URL, a broker URL, a provider's base URL.
RedisUrl = Annotated[str, AfterValidator(check_redis_url)]
BrokerUrl = Annotated[str, AfterValidator(check_broker_url)]
BaseUrl = Annotated[str, AfterValidator(check_http_url)]
#: provider -> requests per second (0 = no limit), and provider -> seconds (> 0), each
#: from a JSON object such as ``IDVCANCEL_RATE_LIMITS='{"txcloud": 16.6}'``.
RatesPerProvider = Annotated[dict[str, Annotated[float, Field(ge=0)]], NoDecode,
                             BeforeValidator(_json_object), AfterValidator(_known_providers)]
SecondsPerProvider = Annotated[dict[str, Annotated[float, Field(gt=0)]], NoDecode,
                               BeforeValidator(_json_object), AfterValidator(_known_providers)]


class Settings(BaseSettings):
    """Everything idv-cancel reads from the environment.

    Examples:
        >>> Settings(redis_url="redis://127.0.0.1:6380/0").retry_max_attempts
        6
    """

    model_config = SettingsConfigDict(env_prefix="IDVCANCEL_", extra="ignore")

    redis_url: RedisUrl = DEFAULT_REDIS_URL
    # The broker. Unset: Redis at ``redis_url`` (one server for queue and state).
    # ``amqp://...``: RabbitMQ carries the queue (a quorum queue, config/broker.py) and
    # Redis at ``redis_url`` stays the state store (ledger, streams, dead letters, ...).
    broker_url: BrokerUrl = ""
    # RabbitMQ only: deliveries of one message that may end without an ack (its worker
    # died or lost its connection) before the broker dead-letters it; the worker then
    # answers it ``rejected`` on the record instead of letting it kill worker after worker.
    # Part of the queue's declaration: changing it needs the queue re-declared.
    delivery_limit: int = Field(DEFAULT_DELIVERY_LIMIT, ge=1, le=1000)

    # Retry policy: exponential backoff with full jitter, capped, honouring Retry-After.
    retry_base_seconds: float = Field(1.0, gt=0)
    retry_cap_seconds: float = Field(30.0, gt=0)
    retry_max_attempts: int = Field(6, ge=1)
    # How long kombu waits before redelivering an un-acked message (crashed worker).
    # Celery's default is one hour; we keep it short so a crash recovers in minutes.
    visibility_timeout_seconds: int = Field(120, ge=2)
    # How long a worker may hold a request before another may take it over.
    lease_seconds: float = Field(60.0, gt=0)
    http_timeout_seconds: float = Field(10.0, gt=0)
    # A transient failure after this long since the first attempt ends the request
    # ``failed`` whatever the attempt count (the circuit breaker holds requests back
    # without spending attempts, so time is the budget that bounds an outage).
    retry_deadline_seconds: float = Field(3600.0, gt=0)

    # Circuit breaker per provider, shared through Redis.
    breaker_failure_threshold: int = Field(5, ge=1)
    breaker_open_seconds: float = Field(30.0, gt=0)
    breaker_probe_seconds: float = Field(15.0, gt=0)
    # Requests per second per provider, shared through Redis (0 or absent = no limit).
    # Defaults from the published limits: TXCloud's smallest plan 60/min, Jumio
    # retrieval 15/s. Set e.g. IDVCANCEL_RATE_LIMITS='{"txcloud": 16.6}'.
    rate_limits: RatesPerProvider = Field(
        default_factory=lambda: {"txcloud": 1.0, "jumio": 15.0}
    )
    # Seconds added to the rate limit's window (worker.gate.ratelimit): how late a call may
    # reach the provider after the limiter let it go (waking up, the HTTP send) without
    # rate + 1 calls in any second there. Calls then go at rate / (1 + margin) at most.
    rate_limit_margin: float = Field(0.08, ge=0, le=0.5)
    # Port for /metrics and /healthz of a worker (0 = off): served by its first process,
    # counting the work of all its processes (prometheus_client's multiprocess mode).
    metrics_port: int = Field(0, ge=0, le=65535)

    # -- the worker's shape (config/celery.py, worker/runner): processes x threads --------
    # Worker processes that ``celery -A worker.app worker`` runs, each with its own
    # threads and broker connection; 0 = one per core this process may use (CPU
    # affinity and cgroup quota).
    worker_processes: int = Field(0, ge=0, le=256)
    # Threads per worker process: requests in flight per process (Celery's
    # ``worker_concurrency``; ``-c`` on the command line wins). About rate x provider
    # latency must fit, with room for the CPU queue (docs/performance.md).
    worker_threads: int = Field(128, ge=1, le=4096)
    # Messages each thread may hold in advance (``worker_prefetch_multiplier``).
    worker_prefetch: int = Field(4, ge=1, le=1000)
    # Message signing (worker.broker.signing): paths to a PEM key, its certificate, and a
    # directory (or glob) of the certificates whose signatures are accepted.
    signing_key: str = ""
    signing_key_password: SecretStr = SecretStr("")
    signing_certificate: str = ""
    signing_cert_store: str = ""

    # Provider endpoints and credentials.
    idpass_base_url: BaseUrl = "https://idpass.example.invalid"
    idpass_token: SecretStr = SecretStr("")
    txcloud_base_url: BaseUrl = "https://api.txcloud.io/v1"
    txcloud_api_key: SecretStr = SecretStr("")
    gu1_base_url: BaseUrl = "https://api.gu1.ai"
    gu1_api_key: SecretStr = SecretStr("")
    jumio_base_url_us: BaseUrl = "https://netverify.com"
    jumio_base_url_eu: BaseUrl = "https://lon.netverify.com"
    jumio_base_url_sgp: BaseUrl = "https://core-sgp.jumio.com"
    jumio_retrieval_base_url_us: BaseUrl = "https://retrieval.netverify.com"
    jumio_retrieval_base_url_eu: BaseUrl = "https://retrieval.lon.netverify.com"
    jumio_retrieval_base_url_sgp: BaseUrl = "https://retrieval.core-sgp.jumio.com"
    jumio_api_token: SecretStr = SecretStr("")
    jumio_api_secret: SecretStr = SecretStr("")
    jumio_user_agent: str = ""
    onespan_base_url: BaseUrl = "https://onespan.example.invalid"
    onespan_token: SecretStr = SecretStr("")
    onespan_tenant: str = ""
    # OneSpan deletes arriving within this many milliseconds of each other (same grace
    # period) go out in one mark-for-erasure call of up to 500 ids (0 = one call each).
    onespan_batch_window_ms: float = Field(50.0, ge=0, le=1000)

    @property
    def broker(self) -> str:
        """The broker's URL: ``broker_url`` when set, else the state store's Redis."""
        return self.broker_url or self.redis_url

    @property
    def broker_is_amqp(self) -> bool:
        return is_amqp(self.broker)

    @model_validator(mode="after")
    def _lease_outlasts_a_call(self) -> Settings:
        # A lease shorter than a call lets a redelivered copy take over while the first
        # call is still on the wire.
        if self.lease_seconds <= self.http_timeout_seconds:
            raise ValueError(
                f"IDVCANCEL_LEASE_SECONDS ({self.lease_seconds:g}) must exceed"
                f" IDVCANCEL_HTTP_TIMEOUT_SECONDS ({self.http_timeout_seconds:g})")
        return self

    @model_validator(mode="after")
    def _countdowns_stay_below_visibility(self) -> Settings:
        # A countdown held in a worker's memory longer than the visibility timeout is
        # redelivered and run again (kombu #337): keep the whole wait well below it.
        worst = self.retry_cap_seconds + self.http_timeout_seconds
        if worst * 2 > self.visibility_timeout_seconds:
            raise ValueError(
                f"IDVCANCEL_VISIBILITY_TIMEOUT_SECONDS ({self.visibility_timeout_seconds}) must be"
                f" at least twice the retry cap plus the HTTP timeout ({worst:g} s)"
            )
        return self

    # -- session tracking, the abandoned-application sweep and supersede ---------------
    # How often Celery beat enqueues ``idvcancel.sweep``.
    sweep_interval_seconds: float = Field(300.0, gt=0)
    # provider -> seconds without activity before the sweep cancels a session, as a JSON
    # object; a provider left out keeps its rules table's ``abandoned_after``.
    sweep_after_seconds: SecondsPerProvider = Field(default_factory=dict)
    # Most sessions one sweep run claims, all providers together (shared fairly).
    sweep_batch_size: int = Field(10_000, ge=1)
    # A claim not released after this long belongs to a sweep (or track) that died
    # between claiming and enqueueing: the next sweep enqueues it again (the request id
    # is deterministic, so the ledger makes that safe even if the first one got through).
    sweep_reclaim_after_seconds: float = Field(600.0, gt=0)
    # How long a finished session's record is kept, so a late or out-of-order report
    # for it cannot put it back into tracking.
    track_retention_seconds: int = Field(30 * 86400, ge=1)

    # -- retention: what keeps Redis bounded (worker.ops.retention, task idvcancel.retention) --
    # How long a finished request's ledger is kept (0 = forever). A duplicate of the
    # request arriving after that is carried out again, so this must exceed the longest
    # window in which a copy can still arrive (redeliveries, producer retries, replays).
    # Ledgers in flight (calling, waiting) never expire.
    ledger_ttl_seconds: int = Field(7 * 86400, ge=0)
    # Approximate cap on the results stream (XADD MAXLEN ~; 0 = unbounded).
    results_maxlen: int = Field(1_000_000, ge=0)
    # Audit records older than this are moved from Redis to the archive files.
    audit_retention_seconds: int = Field(30 * 86400, ge=0)
    # Where the archive's JSON Lines files go (one per UTC day). Every process that runs
    # idvcancel.retention must see the same directory (shared volume, or one host).
    audit_archive_dir: str = "./var/audit-archive"
    # How often Celery beat enqueues ``idvcancel.retention``.
    retention_interval_seconds: float = Field(3600.0, gt=0)

    # -- the reconciler: pushes again what the broker lost (worker.triggers.reconcile) ----
    # How often Celery beat enqueues ``idvcancel.reconcile``.
    reconcile_interval_seconds: float = Field(60.0, gt=0)
    # A request in the intake index this long without a ledger (or in flight with its
    # lease / retry time this long past) is pushed again. Unset: 3 x the visibility
    # timeout (a dead worker's messages come back after one).
    reconcile_after_seconds: float | None = Field(None, gt=0)

    # -- signed checkpoints of the audit chain (worker.journal.checkpoints, idvcancel.checkpoint) --
    # Path to the Ed25519 private key (PEM) that signs checkpoints; "" = no checkpoints.
    # Give it only to the process that signs (see audit_checkpoint_queue), not to every
    # worker: the point is a key that the chain's writers do not hold.
    audit_signing_key: str = ""
    audit_signing_key_password: SecretStr = SecretStr("")
    # This deployment's name, written into every checkpoint ("origin").
    audit_origin: str = Field("idvcancel", min_length=1, max_length=200)
    # At most this long between two checkpoints while records wait (beat looks every
    # minute, or every interval when shorter).
    audit_checkpoint_interval_seconds: float = Field(3600.0, gt=0)
    # The most records one checkpoint covers; as many waiting make a checkpoint at once.
    audit_checkpoint_records: int = Field(10_000, ge=1, le=1_000_000)
    # The queue beat sends idvcancel.checkpoint to. Default: the workers' own queue
    # (every worker then needs the key); set e.g. "idvcancel.signer" and run one
    # ``idvcancel worker -Q idvcancel.signer`` with the key, the only process that has it.
    audit_checkpoint_queue: str = Field("idvcancel", min_length=1)

    # -- confirmation: reading back that a cancel or deletion took hold (worker.delivery.confirm) --
    # How long after a request ends cancelled or deleted its provider status is read
    # again (a OneSpan erasure: after its grace period too).
    confirm_after_seconds: float = Field(60.0, ge=0)
    # How often Celery beat enqueues ``idvcancel.confirm`` (which reads what is due).
    confirm_interval_seconds: float = Field(10.0, gt=0)

    @property
    def checkpoint_tick_seconds(self) -> float:
        """How often beat enqueues ``idvcancel.checkpoint``: every minute, or every
        interval when that is shorter (the task decides whether one is due)."""
        return min(60.0, self.audit_checkpoint_interval_seconds)

    @property
    def reconcile_age_seconds(self) -> float:
        """``IDVCANCEL_RECONCILE_AFTER_SECONDS``, or 3 x the visibility timeout when unset."""
        if self.reconcile_after_seconds is not None:
            return self.reconcile_after_seconds
        return 3.0 * self.visibility_timeout_seconds

    @model_validator(mode="after")
    def _reconcile_waits_out_redelivery(self) -> Settings:
        # Younger than the visibility timeout, a message that kombu is about to hand out
        # again after a crash would be pushed a second time; older than a finished
        # ledger's TTL, a copy would find no ledger and be carried out again.
        age = self.reconcile_age_seconds
        named = ("IDVCANCEL_RECONCILE_AFTER_SECONDS" if self.reconcile_after_seconds is not None
                 else "IDVCANCEL_RECONCILE_AFTER_SECONDS (unset: 3 x the visibility timeout)")
        if age <= self.visibility_timeout_seconds:
            raise ValueError(
                f"{named} ({age:g}) must exceed IDVCANCEL_VISIBILITY_TIMEOUT_SECONDS"
                f" ({self.visibility_timeout_seconds}): a message waiting to be redelivered"
                " after a crash would be pushed again")
        if 0 < self.ledger_ttl_seconds <= age:
            raise ValueError(
                f"{named} ({age:g}) must be below IDVCANCEL_LEDGER_TTL_SECONDS"
                f" ({self.ledger_ttl_seconds}): a request pushed again after its ledger"
                " expired would be carried out again")
        return self

    @model_validator(mode="after")
    def _ledger_outlives_redelivery(self) -> Settings:
        # A finished ledger that expires before a redelivered copy arrives lets that copy
        # be carried out again: keep it well past the visibility timeout.
        if 0 < self.ledger_ttl_seconds <= 2 * self.visibility_timeout_seconds:
            raise ValueError(
                f"IDVCANCEL_LEDGER_TTL_SECONDS ({self.ledger_ttl_seconds}) must be 0 (keep "
                "forever) or more than twice the visibility timeout "
                f"({self.visibility_timeout_seconds} s): a redelivered duplicate would run again")
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()


#: Settings whose value a message never shows, besides every ``SecretStr``: a key's path
#: is no secret, but the key itself pasted into the variable by mistake would be.
NEVER_SHOWN = frozenset({"signing_key", "audit_signing_key"})


def describe_settings_error(error: ValidationError) -> str:
    """One line naming each refused variable, what it got and what it accepts.

    A secret's value is never echoed (only that it was refused), nor a URL's password.

    Examples:
        >>> try:
        ...     Settings(retry_max_attempts="abc")
        ... except ValidationError as exc:
        ...     print(describe_settings_error(exc))
        ... # doctest: +ELLIPSIS
        IDVCANCEL_RETRY_MAX_ATTEMPTS='abc': Input should be a valid integer, ...
        >>> try:
        ...     Settings(redis_url="redis://:pw@cache:port/0")
        ... except ValidationError as exc:
        ...     print(describe_settings_error(exc))
        ... # doctest: +ELLIPSIS
        IDVCANCEL_REDIS_URL='redis://:***@cache:port/0': Port could not be cast ...; expected ...
    """
    parts = []
    for item in error.errors():
        message = str(item["msg"]).removeprefix("Value error, ")
        if not item["loc"]:  # a check across settings: its message names the variables
            parts.append(message)
            continue
        field, *within = (str(part) for part in item["loc"])
        variable = f"IDVCANCEL_{field.upper()}" + "".join(f"[{key!r}]" for key in within)
        parts.append(f"{variable}={_shown(field, item.get('input'))}: {message}")
    return " ".join("; ".join(parts).splitlines())


def _shown(field: str, value: Any) -> str:
    """``value`` as a message may show it: secrets hidden, URL passwords masked, short."""
    known = Settings.model_fields.get(field)
    if field in NEVER_SHOWN or (known is not None and known.annotation is SecretStr):
        return "(hidden)"
    text = repr(masked(value) if isinstance(value, str) else value)
    return text if len(text) <= 80 else f"{text[:77]}..."
