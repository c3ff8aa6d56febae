"""Supersede-on-reissue end to end: a new session tracked for an application cancels the
application's session still in flight at the same provider."""

from __future__ import annotations

import threading

from config.settings import Settings
from tests.integration.conftest import Stack, new_reference, seed
from tests.integration.harness import send_process, wait_for
from worker import keys
from worker.broker.producer import Producer
from worker.triggers.tracking import get_session, track

#: Run on the Redis broker and on RabbitMQ (tests/integration/conftest.py).
BOTH_BROKERS = True

TRACK = "idvcancel.track"


def report(stack: Stack, reference: str, application_id: str, status: str = "opened") -> None:
    send_process(stack.broker_url, {"provider": "idpass", "reference": reference,
                                   "application_id": application_id, "status": status},
                 task_name=TRACK)


def active(stack: Stack, reference: str) -> bool:
    return stack.redis.zscore(keys.track_active("idpass"), reference) is not None


def test_reissue_cancels_the_prior_session(stack: Stack) -> None:
    # Given an application's session, opened at ID Pass and tracked
    prior, new = new_reference("idpass"), new_reference("idpass")
    seed(stack, "idpass", prior, "opened")
    seed(stack, "idpass", new, "new")
    report(stack, prior, "app-7")
    wait_for(lambda: active(stack, prior), timeout=15, message="prior tracked")
    # When a new session is tracked for the same application
    report(stack, new, "app-7", status="new")
    # Then the prior is cancelled, as a supersede naming the new session
    event = stack.result(f"supersede:idpass:{prior}")
    assert event["outcome"] == "cancelled" and event["source"] == "supersede"
    assert event["requested_by"] == "idvcancel-supersede" and event["reference"] == prior
    assert {r["reason"] for r in stack.audit(event["request_id"])} == {
        f"superseded by {new}"}
    assert stack.sim_client.status("idpass", prior) == "cancelled"
    # And the prior is out of tracking, the new one in flight and untouched
    record = get_session(stack.redis, "idpass", prior)
    assert record is not None and record.state == "closed"
    assert active(stack, new) and not active(stack, prior)
    assert stack.redis.hget(keys.track_apps("idpass"), "app-7") == new
    assert stack.provider_calls("idpass", new) == []
    stack.assert_chain_intact()


def test_prior_completing_in_parallel_ends_not_cancellable(stack: Stack) -> None:
    # Given a tracked session that completes at the provider before any report says so
    prior, new = new_reference("idpass"), new_reference("idpass")
    seed(stack, "idpass", prior, "opened")
    report(stack, prior, "app-8")
    wait_for(lambda: active(stack, prior), timeout=15, message="prior tracked")
    seed(stack, "idpass", prior, "complete")
    # When a new session is tracked for the application
    report(stack, new, "app-8")
    # Then the supersede cancel ends not_cancellable, which is true
    event = stack.result(f"supersede:idpass:{prior}")
    assert event["outcome"] == "not_cancellable" and event["provider_status"] == "complete"
    assert event["source"] == "supersede"
    # And nothing else breaks: the new session is tracked, the chain intact
    assert active(stack, new)
    assert stack.redis.hget(keys.track_apps("idpass"), "app-8") == new
    stack.assert_chain_intact()


def test_concurrent_reissues_cancel_the_prior_once(stack: Stack) -> None:
    # Given an application's session in flight
    prior = new_reference("idpass")
    seed(stack, "idpass", prior, "opened")
    settings = Settings(redis_url=stack.redis_url, broker_url=stack.broker_url)
    producer = Producer(stack.redis_url, broker_url=stack.broker_url)
    track(stack.redis, {"provider": "idpass", "reference": prior, "application_id": "app-9",
                        "status": "opened"}, settings=settings, sender=producer)
    # When two new sessions for it are tracked at the same moment
    news = [new_reference("idpass") for _ in range(2)]
    for ref in news:
        seed(stack, "idpass", ref, "new")
    barrier = threading.Barrier(2)

    def reissue(reference: str) -> None:
        barrier.wait()
        track(stack.redis, {"provider": "idpass", "reference": reference,
                            "application_id": "app-9", "status": "new"},
              settings=settings, sender=producer)

    threads = [threading.Thread(target=reissue, args=(ref,)) for ref in news]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    producer.close()
    # Then the prior is cancelled once, and exactly one of the two new ones is left
    # in flight (the other was superseded by it): neither both missed nor both cancelled
    assert stack.result(f"supersede:idpass:{prior}")["outcome"] == "cancelled"
    assert len(stack.provider_calls("idpass", prior)) == 1
    survivors = [ref for ref in news if active(stack, ref)]
    assert len(survivors) == 1
    (loser,) = set(news) - set(survivors)
    event = stack.result(f"supersede:idpass:{loser}")
    assert event["outcome"] == "cancelled"
    assert {r["reason"] for r in stack.audit(event["request_id"])} == {
        f"superseded by {survivors[0]}"}
    assert stack.provider_calls("idpass", survivors[0]) == []
