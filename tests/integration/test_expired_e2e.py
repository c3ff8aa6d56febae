"""A message its producer gave an expiry (Celery's ``expires``) that is reached before a
worker runs it is answered, not dropped: Celery acks such a message unrun (Redis), and
RabbitMQ expires it in the queue and dead-letters it (RabbitMQ). Either way it ends
``rejected`` (``error.code: expired``) with an audit record and a dead letter, and the
provider is never called."""

from __future__ import annotations

from tests.integration.conftest import Stack, seed
from tests.integration.harness import producer_app

#: Run on the Redis broker and on RabbitMQ (tests/integration/conftest.py).
BOTH_BROKERS = True


def test_a_request_past_its_expiry_ends_rejected_on_the_record(stack: Stack) -> None:
    # Given a live session
    request = stack.request()
    seed(stack, "idpass", request["reference"], "new")
    # When its cancel is sent with an expiry that has already passed
    app = producer_app(stack.broker_url)
    app.send_task("idvcancel.process", args=[request], queue="idvcancel",
                  expires=-60)  # seconds from now: already past
    # Then it ends rejected as expired, with a dead letter, and no provider call
    event = stack.result(request["request_id"])
    assert event["outcome"] == "rejected"
    assert event["error"]["code"] == "expired"
    assert stack.redis.hexists("idvcancel:dlq", request["request_id"])
    assert [r["step"] for r in stack.audit(request["request_id"])][-2:] == [
        "rejected", "dead_lettered"]
    assert stack.provider_calls("idpass", request["reference"]) == []
