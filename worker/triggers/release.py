"""The releaser: publishes parked requests again when they are due (``worker.gate.parking``).

One thread in every worker process, started when the worker is ready. The processes
share the work through Redis: ``lua/release.lua`` hands each due entry to one of them
under a lease, and an entry is confirmed (forgotten) only after its message is out, so
a process killed in between loses nothing (another claims it when the lease ends; a
second copy would be a ledger duplicate, never a second call).

Published where: on a Redis broker (unsigned messages), at the *consuming* end of the
queue (``RPUSH``; kombu pops with ``BRPOP`` from the right), so a request that has
waited for its slot is not late for it behind a backlog that arrived meanwhile; with
the intake index entry as any push (``worker.triggers.reconcile``). On RabbitMQ, and for
signed messages, through the producer (the back of the queue): a request that comes
back too late for its slot books another (one more publish, never an extra call).

The loop looks at each provider when its next timed entry is due (those due within
``RELEASE_EARLY_SECONDS`` go together) and at least every ``MAX_SLEEP_SECONDS`` (for entries other
processes park, and the breaker): an idle worker costs 20 cheap script calls a second, a
20/s drain about 10 looks a second at the provider draining.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence

import redis

from config.settings import Settings
from worker import keys
from worker.broker import wire
from worker.broker.producer import Producer
from worker.contract import QUEUE
from worker.gate.parking import RELEASE_EARLY_SECONDS, ParkingLot
from worker.gate.ratelimit import RateLimiter
from worker.logs import get_logger
from worker.providers import supported_providers
from worker.redis_client import redis_client

#: Longest sleep between two looks (entries parked by other processes, the breaker).
MAX_SLEEP_SECONDS = 0.25
#: Entries claimed (and published) at once per provider.
BATCH = 500
#: A claim not confirmed within this long is claimed again (its releaser died).
LEASE_SECONDS = 30.0
#: Once a circuit closes, parked entries get slots this far ahead at most per look: the
#: limiter's pace, and room for requests that arrive meanwhile.
PROMOTE_HORIZON_SECONDS = 2.0
#: Without a rate limit, entries released per look once the circuit has closed.
UNLIMITED_PER_LOOK = 50


class Releaser:
    """Parameters:
        settings: the state store, the broker, signing, the breaker's probe time.
        lot: the parked requests; limiter: books slots for entries the breaker held.
        producer: publishes on RabbitMQ or signed (default: one for ``settings``).
    """

    def __init__(self, settings: Settings, lot: ParkingLot, limiter: RateLimiter,
                 producer: Producer | None = None) -> None:
        self.settings = settings
        self.lot = lot
        self.limiter = limiter
        self.producer = producer or Producer(settings.redis_url, settings=settings)
        self.providers = tuple(supported_providers())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: When each provider is next looked at (monotonic): a provider with nothing due
        #: costs one script call per ``MAX_SLEEP_SECONDS``, not one per look.
        self._next_look = dict.fromkeys(self.providers, 0.0)
        self.log = get_logger()

    # -- the loop ----------------------------------------------------------------------
    def start(self) -> Releaser:
        self._thread = threading.Thread(target=self._run, name="idvcancel-releaser",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                pause = self.look()
            except (redis.RedisError, OSError) as exc:  # Redis or the broker away: retry
                self.log.warning("release_failed", error=type(exc).__name__)
                pause = 1.0
            except Exception:  # the thread must outlive a bug of ours; it logs it
                self.log.exception("release_error")
                pause = 1.0
            self._stop.wait(pause)

    def look(self) -> float:
        """Release what is due at every provider; returns how long to sleep."""
        now = time.monotonic()
        for provider in self.providers:
            if self._next_look[provider] <= now:
                self._next_look[provider] = now + self._look_at(provider)
        return max(0.0, min(self._next_look.values()) - time.monotonic())

    def _look_at(self, provider: str) -> float:
        """Release what is due at one provider; returns when to look again (seconds)."""
        claim = self.lot.claim(provider, BATCH, LEASE_SECONDS,
                               self.settings.breaker_probe_seconds, RELEASE_EARLY_SECONDS)
        pause = MAX_SLEEP_SECONDS
        if claim.entries:
            self.publish(claim.entries)
            self.lot.confirm(provider, [rid for rid, _ in claim.entries])
            if len(claim.entries) >= BATCH:
                pause = 0.0
        if claim.breaker == "closed" and claim.waiting:
            # slots up to PROMOTE_HORIZON_SECONDS ahead: topped up every MAX_SLEEP_SECONDS
            self._promote(provider, claim.waiting)
        if claim.next_due is not None:
            pause = min(pause, claim.next_due)
        return pause

    def _promote(self, provider: str, waiting: int) -> int:
        """Slots for entries that waited on a circuit now closed; returns how many got one."""
        if self.limiter.interval_ms(provider) is None:
            return self.lot.promote(provider, None, min(waiting, UNLIMITED_PER_LOOK))
        slots = self.limiter.reserve(provider, waiting, PROMOTE_HORIZON_SECONDS)
        if slots is None or not slots.count:
            return 0
        moved = self.lot.promote(provider, slots, slots.count)
        self.log.info("released_after_breaker", provider=provider, moved=moved,
                      waiting=waiting - moved)
        return moved

    # -- publishing --------------------------------------------------------------------
    def publish(self, entries: Sequence[tuple[str, str]]) -> None:
        """Publish (request id, request JSON) pairs, in order, with their index entries."""
        if self.producer.amqp is not None or self.producer.signed:
            self.producer.submit_many([json.loads(text) for _, text in entries])
            return
        # RPUSH a, b, c leaves c at the right, the end BRPOP takes first: push in reverse.
        messages = [wire.encode_json(text, rid) for rid, text in entries]
        now = time.time()
        pipe = self.producer.redis.pipeline(transaction=True)
        pipe.rpush(QUEUE, *reversed(messages))
        pipe.zadd(keys.INTAKE, {rid: now for rid, _ in entries}, nx=True)
        pipe.hset(keys.INTAKE_REQUESTS, mapping=dict(entries))
        pipe.execute()


_lock = threading.Lock()
_releaser: Releaser | None = None


def start_releaser(settings: Settings) -> Releaser:
    """This process's releaser, started once, on a Redis client of its own."""
    global _releaser  # noqa: PLW0603 - one releaser per process, started when the worker is ready
    with _lock:
        if _releaser is None:
            client = redis_client(settings.redis_url)
            limiter = RateLimiter(client, settings.rate_limits,
                                  margin=settings.rate_limit_margin)
            _releaser = Releaser(settings, ParkingLot(client), limiter).start()
        return _releaser
