"""The intake index and the reconciler (``worker.triggers.reconcile``): what the producer writes,
what the journal forgets, what a run claims and pushes again, and what it leaves alone.

fakeredis runs the Lua scripts (push, transition, reconcile); the pipeline delivers the
messages with an ID Pass adapter on a mock transport. The recipe for foreign producers
and the claim race run against the session's real Redis. The same behaviour, with real
workers, a real beat and real crashes, is in tests/reliability/.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any, cast

import fakeredis
import httpx
import pytest
import redis
from pydantic import ValidationError

from config.celery import celery_config
from config.settings import Settings
from worker import keys
from worker.broker import wire
from worker.broker.producer import Producer, validate
from worker.delivery.pipeline import Finished, Pipeline, RetryLater
from worker.journal.steps import Journal
from worker.journal.verify import verify_stream
from worker.providers.idpass import IdPassAdapter
from worker.triggers.reconcile import ReconcileReport, queue_bound, run_reconcile

SETTINGS = Settings(idpass_base_url="http://idpass.test", idpass_token="tok",
                    retry_base_seconds=1, retry_cap_seconds=5)
AGE = SETTINGS.reconcile_age_seconds  # 3 x the 120 s visibility timeout
T0 = 1_800_000_000.0


def request(n: int = 1) -> dict[str, Any]:
    return {"request_id": f"r-{n}", "provider": "idpass", "action": "cancel",
            "reference": str(uuid.UUID(int=n)), "requested_by": "tests"}


class Clock:
    """The producer's and the pipeline's time, moved by the test."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Provider:
    """ID Pass answering ``statuses`` in order to cancels, then 200; status reads say
    ``read_as``."""

    def __init__(self, *statuses: int, read_as: str = "new") -> None:
        self.statuses = list(statuses)
        self.read_as = read_as
        self.cancels = 0

    def __call__(self, req: httpx.Request) -> httpx.Response:
        if req.url.path.endswith("/details"):
            return httpx.Response(200, json={"status": self.read_as})
        self.cancels += 1
        if self.statuses:
            return httpx.Response(self.statuses.pop(0), json={"error": "scripted"})
        return httpx.Response(200, json={"status": "cancelled", "fee_refunded": False})


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def producer(fake_redis: fakeredis.FakeRedis, clock: Clock) -> Iterator[Producer]:
    made = Producer("redis://127.0.0.1:1/0", client=fake_redis, clock=clock)
    yield made
    made.app.close()


@pytest.fixture
def journal(fake_redis: fakeredis.FakeRedis) -> Journal:
    return Journal(fake_redis)


@pytest.fixture
def pipeline_for(journal: Journal, clock: Clock) -> Callable[..., Pipeline]:
    def build(provider: Provider) -> Pipeline:
        adapter = IdPassAdapter(SETTINGS, transport=httpx.MockTransport(provider))
        return Pipeline(SETTINGS, journal, adapters=lambda *_: adapter, clock=clock)
    return build


def deliver(client: redis.Redis, pipeline: Pipeline) -> Any:
    """What a worker does with the oldest message on the queue (BRPOP, then the task)."""
    entry = json.loads(str(client.rpop("idvcancel")))
    args, kwargs, _embed = json.loads(base64.b64decode(entry["body"]))
    return pipeline.handle(args, kwargs, entry["headers"]["id"])


def lose(client: redis.Redis, count: int = 1) -> None:
    """kombu's window: popped from the queue, never recorded as un-acked."""
    for _ in range(count):
        assert client.rpop("idvcancel") is not None


def reconcile(client: redis.Redis, producer: Producer, journal: Journal, now: float,
              settings: Settings = SETTINGS) -> ReconcileReport:
    return run_reconcile(client, settings, now, sender=producer, journal=journal)


def steps(client: redis.Redis, request_id: str) -> list[dict[str, Any]]:
    entries = cast("list[tuple[str, dict[str, str]]]", client.xrange(keys.AUDIT))
    records = [json.loads(f["record"]) for _, f in entries]
    return [r for r in records if r["request_id"] == request_id]


def queued_ids(client: redis.Redis) -> list[str | None]:
    raw = cast("list[str]", client.lrange("idvcancel", 0, -1))
    return [wire.request_id_of(m) for m in raw]


# -- losing a message --------------------------------------------------------------------


def test_a_lost_message_is_pushed_again_once_per_age(
        fake_redis: fakeredis.FakeRedis, producer: Producer, journal: Journal) -> None:
    # Given a request pushed at T0 whose message kombu lost after popping it
    producer.submit(request(1))
    lose(fake_redis)
    # When the reconciler runs just before the age is reached
    early = reconcile(fake_redis, producer, journal, T0 + AGE - 1)
    # Then nothing happens yet
    assert early.resubmitted == [] and fake_redis.llen("idvcancel") == 0
    # When it runs once the age has passed
    report = reconcile(fake_redis, producer, journal, T0 + AGE + 1)
    # Then the request is pushed again, once, and audited as resubmitted
    assert report.resubmitted == ["r-1"] and report.by_phase == {"none": 1}
    assert queued_ids(fake_redis) == ["r-1"]
    (record,) = steps(fake_redis, "r-1")
    assert record["step"] == "resubmitted" and record["phase"] is None
    assert record["waited_s"] == AGE + 1 and record["reference"] == request(1)["reference"]
    assert verify_stream(fake_redis) == (1, None)
    # and a second run at the same moment (another beat instance) pushes nothing
    assert reconcile(fake_redis, producer, journal, T0 + AGE + 1).resubmitted == []
    # and if that copy is lost too, it goes again one age later, not before
    lose(fake_redis)
    assert reconcile(fake_redis, producer, journal, T0 + 2 * AGE).resubmitted == []
    assert reconcile(fake_redis, producer, journal, T0 + 2 * AGE + 2).resubmitted == ["r-1"]


def test_a_finished_request_leaves_the_index_in_its_last_step(
        fake_redis: fakeredis.FakeRedis, producer: Producer,
        pipeline_for: Callable[..., Pipeline]) -> None:
    # Given a request whose first call fails (503), then succeeds
    pipeline = pipeline_for(Provider(503))
    producer.submit(request(1))
    # When it is delivered and a retry is scheduled
    assert isinstance(deliver(fake_redis, pipeline), RetryLater)
    # Then it is still in the index (in flight)
    assert fake_redis.zscore(keys.INTAKE, "r-1") is not None
    # When the retry ends it cancelled
    fake_redis.hset(keys.request_ledger("r-1"), "not_before", "0")
    producer.submit(request(1))  # stands in for Celery's retry message
    assert deliver(fake_redis, pipeline) == Finished("cancelled")
    # Then the step that made it done took it out of the index
    assert fake_redis.zcard(keys.INTAKE) == 0 and fake_redis.hlen(keys.INTAKE_REQUESTS) == 0


def test_a_rejected_request_leaves_the_index_too(
        fake_redis: fakeredis.FakeRedis, producer: Producer,
        pipeline_for: Callable[..., Pipeline]) -> None:
    # Given a request ID Pass cannot carry out (no delete API), sent past the producer's
    # rule check (as the sweep's producer sends: the worker records the refusal)
    producer.check_rules = False
    producer.submit({**request(1), "action": "delete"})
    # When it is delivered
    assert deliver(fake_redis, pipeline_for(Provider())) == Finished("rejected")
    # Then it ended done, and left the index
    assert fake_redis.zcard(keys.INTAKE) == 0


def test_a_copy_that_arrives_after_the_end_is_forgotten_not_pushed(
        fake_redis: fakeredis.FakeRedis, producer: Producer, journal: Journal,
        pipeline_for: Callable[..., Pipeline]) -> None:
    # Given a request that ended cancelled, then a copy of it answered as a duplicate
    provider = Provider()
    pipeline = pipeline_for(provider)
    producer.submit(request(1))
    assert deliver(fake_redis, pipeline) == Finished("cancelled")
    producer.submit(request(1))
    assert deliver(fake_redis, pipeline) == Finished("cancelled")
    assert fake_redis.zscore(keys.INTAKE, "r-1") is not None  # the copy's entry
    # When the reconciler runs an age later
    report = reconcile(fake_redis, producer, journal, T0 + AGE + 1)
    # Then it forgets the entry and pushes nothing: one call at the provider in all
    assert report.resubmitted == [] and report.forgotten == 1
    assert fake_redis.zcard(keys.INTAKE) == 0 and fake_redis.llen("idvcancel") == 0
    assert provider.cancels == 1


@pytest.mark.parametrize(("phase", "field", "since", "pushed"), [
    ("calling", "lease_until", 5, False),         # a worker holds it: its lease runs
    ("calling", "lease_until", AGE + 5, True),    # its worker died, nobody took over
    ("waiting", "not_before", 5, False),          # its retry is due soon
    ("waiting", "not_before", AGE + 5, True),     # its retry message was lost
])
def test_a_request_in_flight_is_pushed_again_only_when_nothing_works_on_it(
        fake_redis: fakeredis.FakeRedis, producer: Producer, journal: Journal,
        phase: str, field: str, since: float, pushed: bool) -> None:
    # Given a request pushed at T0 whose ledger is in flight, its lease or retry time
    # ``since`` seconds before the reconciler runs at T0 + 2 x the age
    now = T0 + 2 * AGE
    producer.submit(request(1))
    lose(fake_redis)
    fake_redis.hset(keys.request_ledger("r-1"), mapping={
        "v": "3", "phase": phase, field: f"{now - since:.3f}"})
    # When the reconciler runs
    report = reconcile(fake_redis, producer, journal, now)
    # Then it pushes it again only when the lease or the retry time is older than the age
    assert report.resubmitted == (["r-1"] if pushed else [])
    assert report.left == (0 if pushed else 1)
    assert [r["phase"] for r in steps(fake_redis, "r-1")] == ([phase] if pushed else [])
    # and either way looks at it again only an age later
    assert fake_redis.zscore(keys.INTAKE, "r-1") == now


def test_a_parked_request_is_left_to_its_releaser_however_long_it_waits(
        fake_redis: fakeredis.FakeRedis, producer: Producer, journal: Journal) -> None:
    # Given a request parked on an open breaker (worker.gate.parking) for long past the
    # age: its message was acked on purpose, its ledger waits with a long-past time
    now = T0 + 2 * AGE
    producer.submit(request(1))
    lose(fake_redis)
    fake_redis.hset(keys.request_ledger("r-1"), mapping={
        "v": "3", "phase": "waiting", "not_before": f"{now - AGE - 5:.3f}"})
    fake_redis.hset(keys.HELD_REQUESTS, "r-1", json.dumps(request(1)))
    # When the reconciler runs / Then it leaves it (the releaser publishes it when due)
    report = reconcile(fake_redis, producer, journal, now)
    assert report.resubmitted == [] and report.left == 1
    assert fake_redis.llen("idvcancel") == 0


def test_a_resubmitted_request_in_flight_is_recovered_not_called_twice(
        fake_redis: fakeredis.FakeRedis, producer: Producer, journal: Journal,
        pipeline_for: Callable[..., Pipeline], clock: Clock) -> None:
    # Given a request whose worker died mid-call after the cancel landed, and whose
    # redelivery was lost as well
    provider = Provider(read_as="cancelled")
    producer.submit(request(1))
    lose(fake_redis)
    fingerprint = validate(request(1)).fingerprint()
    fake_redis.hset(keys.request_ledger("r-1"), mapping={
        "v": "1", "fp": fingerprint, "phase": "calling", "lease_until": f"{T0 + 3:.3f}",
        "attempts": "0", "created": f"{T0:.3f}"})
    # When the reconciler pushes it again and a worker takes the copy
    clock.now = T0 + AGE + 10
    assert reconcile(fake_redis, producer, journal, clock.now).resubmitted == ["r-1"]
    assert deliver(fake_redis, pipeline_for(provider)) == Finished("cancelled")
    # Then the worker read the status back instead of cancelling again
    assert provider.cancels == 0
    assert [r["step"] for r in steps(fake_redis, "r-1")] == [
        "resubmitted", "recovery", "completed"]
    assert fake_redis.zcard(keys.INTAKE) == 0


# -- what a run must not push ------------------------------------------------------------


def test_a_backlog_is_not_taken_for_a_loss(
        fake_redis: fakeredis.FakeRedis, producer: Producer, journal: Journal,
        clock: Clock) -> None:
    # Given three requests pushed at T0, T0 + 10 and T0 + 20, the oldest lost and the two
    # others still waiting on the queue (the workers are behind)
    for n in (1, 2, 3):
        clock.now = T0 + 10 * (n - 1)
        producer.submit(request(n))
    lose(fake_redis)
    # and, at the tail, a message that is not ours and one of another task
    fake_redis.rpush("idvcancel", "not a message")
    fake_redis.rpush("idvcancel", json.dumps({"headers": {"task": "idvcancel.sweep"},
                                              "body": "W10="}))
    # When the reconciler runs long after all three were pushed
    report = reconcile(fake_redis, producer, journal, T0 + 10 * AGE)
    # Then only the lost one goes again: the oldest request still queued was pushed at
    # T0 + 10, so what was pushed after it may simply be waiting
    assert report.queue_bound == T0 + 10
    assert report.resubmitted == ["r-1"]
    assert report.cut == T0 + 10


def test_the_queue_bound_reads_a_foreign_message_by_its_body(
        fake_redis: fakeredis.FakeRedis) -> None:
    # Given a foreign producer's minimal message (no header of ours) at the tail
    body = json.dumps([[request(7)], {}, {}]).encode()
    fake_redis.rpush("idvcancel", json.dumps({
        "body": base64.b64encode(body).decode(), "content-type": "application/json",
        "headers": {"task": "idvcancel.process", "id": "t-7"},
        "properties": {"body_encoding": "base64"}}))
    fake_redis.zadd(keys.INTAKE, {"r-7": 42.0})
    # Then its push time bounds the cut
    assert queue_bound(fake_redis) == 42.0
    # and an empty queue bounds nothing
    fake_redis.delete("idvcancel")
    assert queue_bound(fake_redis) is None


def test_an_unreadable_entry_is_dropped_not_pushed(
        fake_redis: fakeredis.FakeRedis, producer: Producer, journal: Journal) -> None:
    # Given entries whose JSON is not a valid request (a foreign producer's mistake)
    fake_redis.zadd(keys.INTAKE, {"r-x": T0, "r-y": T0})
    fake_redis.hset(keys.INTAKE_REQUESTS, mapping={
        "r-x": "{not json", "r-y": json.dumps({**request(2), "provider": "acme"})})
    # When the reconciler runs
    report = reconcile(fake_redis, producer, journal, T0 + AGE + 1)
    # Then both are dropped, nothing is sent
    assert sorted(report.unreadable) == ["r-x", "r-y"] and report.resubmitted == []
    assert fake_redis.zcard(keys.INTAKE) == 0 and fake_redis.hlen(keys.INTAKE_REQUESTS) == 0
    assert fake_redis.llen("idvcancel") == 0


def test_an_entry_without_a_request_is_forgotten(
        fake_redis: fakeredis.FakeRedis, producer: Producer, journal: Journal) -> None:
    # Given an index member whose request JSON is missing
    fake_redis.zadd(keys.INTAKE, {"r-1": T0})
    # When the reconciler runs
    report = reconcile(fake_redis, producer, journal, T0 + AGE + 1)
    # Then it is forgotten: there is nothing to push
    assert report.forgotten == 1 and fake_redis.zcard(keys.INTAKE) == 0


def test_a_request_a_worker_takes_between_the_claim_and_the_push_is_not_pushed(
        fake_redis: fakeredis.FakeRedis, producer: Producer, journal: Journal,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a request whose message was only slow: a worker claims it while the
    # reconciler is between its claim and its audit step
    producer.submit(request(1))
    lose(fake_redis)
    apply_many = journal.apply_many

    def worker_first(step_list: Any) -> Any:
        fake_redis.hset(keys.request_ledger("r-1"), mapping={"v": "1", "phase": "calling"})
        return apply_many(step_list)

    monkeypatch.setattr(journal, "apply_many", worker_first)
    # When the reconciler runs
    report = reconcile(fake_redis, producer, journal, T0 + AGE + 1)
    # Then it pushes nothing and audits nothing: a delivery is at work
    assert report.resubmitted == [] and report.moved == 1
    assert fake_redis.llen("idvcancel") == 0 and steps(fake_redis, "r-1") == []


def test_a_run_claims_in_chunks_and_is_bounded(
        fake_redis: fakeredis.FakeRedis, producer: Producer, journal: Journal,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.triggers import reconcile as module

    # Given 25 lost requests, chunks of 10 and at most 20 looked at per run
    monkeypatch.setattr(module, "CLAIM_CHUNK", 10)
    monkeypatch.setattr(module, "MAX_PER_RUN", 20)
    producer.submit_many([request(n) for n in range(25)])
    lose(fake_redis, 25)
    # When the reconciler runs twice
    first = reconcile(fake_redis, producer, journal, T0 + AGE + 1)
    second = reconcile(fake_redis, producer, journal, T0 + AGE + 1)
    # Then the first pushes 20 again, the second the other 5, and each one is audited once
    assert len(first.resubmitted) == 20 and len(second.resubmitted) == 5
    assert sorted(first.resubmitted + second.resubmitted) == sorted(
        f"r-{n}" for n in range(25))
    assert verify_stream(fake_redis) == (25, None)


# -- the recipe for foreign producers, and the claim race, on a real Redis ----------------


def test_the_documented_recipe_for_foreign_producers_is_reconciled(
        redis_client: redis.Redis, redis_url: str) -> None:
    # Given a foreign producer that follows the README: one MULTI with the LPUSH of its
    # message and the two index commands
    req = request(9)
    message = json.dumps({
        "body": base64.b64encode(json.dumps([[req], {}, {}]).encode()).decode(),
        "content-type": "application/json", "content-encoding": "utf-8",
        "headers": {"task": "idvcancel.process", "id": "t-9"},
        "properties": {"body_encoding": "base64", "delivery_tag": "d-9"}})
    pipe = redis_client.pipeline(transaction=True)
    pipe.lpush("idvcancel", message)
    pipe.zadd("idvcancel:intake", {"r-9": T0}, nx=True)
    pipe.hset("idvcancel:intake:requests", "r-9", json.dumps(req))
    pipe.execute()
    # When the message is lost, and the reconciler runs an age later
    lose(redis_client)
    producer = Producer(redis_url, clock=lambda: T0 + AGE + 1)
    try:
        report = run_reconcile(redis_client, SETTINGS, T0 + AGE + 1, sender=producer,
                               journal=Journal(redis_client))
    finally:
        producer.close()
    # Then the request is pushed again, with the defaults the worker would have applied
    assert report.resubmitted == ["r-9"]
    entry = json.loads(str(redis_client.lindex("idvcancel", 0)))
    args = json.loads(base64.b64decode(entry["body"]))[0]
    assert args == [{**req, "source": "api", "options": {}, "reason": None}]


def test_reconcilers_running_at_once_push_each_request_once(
        redis_client: redis.Redis, redis_url: str) -> None:
    # Given 300 lost requests
    producer = Producer(redis_url, clock=lambda: T0)
    try:
        producer.submit_many([request(n) for n in range(300)])
        redis_client.delete("idvcancel")
        pushed: list[str] = []
        lock = threading.Lock()

        def run() -> None:
            # each reconciler with its own producer and journal, as on another host
            own = Producer(redis_url, clock=lambda: T0 + AGE + 1)
            try:
                report = run_reconcile(redis_client, SETTINGS, T0 + AGE + 1, sender=own,
                                       journal=Journal(redis_client))
            finally:
                own.close()
            with lock:
                pushed.extend(report.resubmitted)

        # When four reconcilers run at the same moment
        threads = [threading.Thread(target=run) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        producer.close()
    # Then every request was pushed again exactly once, and audited once
    assert sorted(pushed) == sorted(f"r-{n}" for n in range(300))
    assert redis_client.llen("idvcancel") == 300
    assert verify_stream(redis_client) == (300, None)


# -- wire, settings and wiring -----------------------------------------------------------


def test_a_message_names_its_request() -> None:
    assert wire.request_id_of(wire.encode(request(3))) == "r-3"
    assert wire.request_id_of(json.dumps({"headers": {"task": "idvcancel.track"}})) is None
    assert wire.request_id_of(b"\xff") is None


def test_reconcile_settings_have_their_defaults_and_env_names(
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings()
    assert settings.reconcile_interval_seconds == 60
    assert settings.reconcile_after_seconds is None
    assert settings.reconcile_age_seconds == 3 * 120  # 3 x the visibility timeout
    assert Settings(visibility_timeout_seconds=300).reconcile_age_seconds == 900
    monkeypatch.setenv("IDVCANCEL_RECONCILE_INTERVAL_SECONDS", "15")
    monkeypatch.setenv("IDVCANCEL_RECONCILE_AFTER_SECONDS", "600")
    settings = Settings()
    assert (settings.reconcile_interval_seconds, settings.reconcile_age_seconds) == (15, 600)


@pytest.mark.parametrize(("fields", "message"), [
    ({"reconcile_after_seconds": 100},
     r"IDVCANCEL_RECONCILE_AFTER_SECONDS \(100\) must exceed "
     r"IDVCANCEL_VISIBILITY_TIMEOUT_SECONDS \(120\)"),
    ({"ledger_ttl_seconds": 300},
     r"IDVCANCEL_RECONCILE_AFTER_SECONDS \(unset: 3 x the visibility timeout\) \(360\) "
     r"must be below IDVCANCEL_LEDGER_TTL_SECONDS \(300\)"),
    ({"reconcile_interval_seconds": 0}, "reconcile_interval_seconds"),
])
def test_a_reconcile_age_that_cannot_work_is_refused(fields: dict[str, Any],
                                                     message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**fields)


def test_beat_enqueues_the_reconcile_task() -> None:
    schedule = celery_config(Settings(reconcile_interval_seconds=30))["beat_schedule"]
    entry = schedule["idvcancel-reconcile"]
    assert entry["task"] == "idvcancel.reconcile" and entry["schedule"] == 30
    assert entry["options"] == {"queue": "idvcancel", "expires": 30}


def test_the_worker_runs_the_reconcile_task(
        fake_redis: fakeredis.FakeRedis, producer: Producer, journal: Journal,
        clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    import tasks.reconcile as task_module
    from worker.app import app

    # Given the worker app and one request lost long ago (the task runs on the clock)
    assert "tasks.reconcile" in app.conf.include
    clock.now = 1_000_000_000.0
    producer.submit(request(1))
    lose(fake_redis)
    monkeypatch.setattr(task_module, "get_settings", lambda: SETTINGS)
    monkeypatch.setattr(task_module, "shared_client", lambda _settings: fake_redis)
    monkeypatch.setattr(task_module, "shared_sender", lambda _settings: producer)
    monkeypatch.setattr(task_module, "pipeline", lambda: type("P", (), {"journal": journal}))
    # When the task runs
    summary = app.tasks["idvcancel.reconcile"].apply().get()
    # Then it pushed the request again and says so
    assert summary["ok"] is True and summary["resubmitted"] == 1
    assert summary["by_phase"] == {"none": 1}
    assert queued_ids(fake_redis) == ["r-1"]
