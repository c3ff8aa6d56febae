"""No echo of personal data, on fakeredis and a mock transport: a provider's error text
never reaches the result event, the audit records or the dead letter; its own error code
does, when it looks like a code. The same against the simulator, for every provider:
tests/integration/test_no_echo_e2e.py.
"""

from __future__ import annotations

import json
from typing import cast

import fakeredis
import httpx
import pytest

from config.settings import Settings
from worker import keys
from worker.delivery.pipeline import GaveUp, Pipeline
from worker.journal.steps import Journal
from worker.providers.errors import NotCancellable, ProviderRejected, Unauthorized
from worker.providers.errortext import public_code, public_error, public_status
from worker.providers.txcloud import TxCloudAdapter


def _entries(client: fakeredis.FakeRedis, stream: str) -> list[tuple[str, dict[str, str]]]:
    """Every entry of ``stream`` (typed: fakeredis answers text here)."""
    return cast("list[tuple[str, dict[str, str]]]", client.xrange(stream))


ECHO = "Ana Souza, passport P1234567"
SETTINGS = Settings(txcloud_base_url="http://txc.test", txcloud_api_key="k",
                    retry_max_attempts=2, retry_base_seconds=0.01, retry_cap_seconds=0.02)


def carry_out(client: fakeredis.FakeRedis, answer: httpx.Response) -> str:
    adapter = TxCloudAdapter(SETTINGS, transport=httpx.MockTransport(lambda _: answer))
    pipeline = Pipeline(SETTINGS, Journal(client), adapters=lambda *_: adapter)
    request = {"request_id": "r-1", "provider": "txcloud", "action": "cancel",
               "reference": "ver_1", "requested_by": "tests"}
    step = pipeline.handle([request], {}, task_id="t-1")
    while not hasattr(step, "outcome"):  # retries: run them at once
        step = pipeline.handle([request], {}, task_id="t-1")
    return str(_entries(client, keys.RESULTS)) + str(_entries(client, keys.AUDIT)) + str(
        client.hgetall(keys.DLQ))


@pytest.mark.parametrize(("status", "body", "code"), [
    (400, {"error": {"type": "validation_error", "code": "verification_not_cancellable",
                     "message": f"verification of {ECHO} is verified"}},
     "verification_not_cancellable"),
    (403, {"error": {"type": "authorization_error", "code": f"forbidden for {ECHO}",
                     "message": ECHO}}, "unauthorized"),
    (503, {"error": {"type": "api_error", "message": f"down while reading {ECHO}"}},
     "api_error"),
])
def test_an_echoing_provider_leaves_no_trace(fake_redis: fakeredis.FakeRedis, status: int,
                                             body: dict[str, object], code: str) -> None:
    # Given a provider whose error answer echoes a name and a passport number
    # When a request meets it (a final answer, or retries until the budget is spent)
    kept = carry_out(fake_redis, httpx.Response(status, json=body))
    # Then nothing of the text is kept anywhere, and the code is the provider's own only
    # when it looks like a code
    assert "Ana" not in kept and "P1234567" not in kept
    entries = _entries(fake_redis, keys.RESULTS)
    event = json.loads(entries[0][1]["event"])
    assert event["error"]["code"] == code


def test_fixed_messages_name_the_kind_and_the_status() -> None:
    # Given provider errors whose text echoes a name and a passport number
    # Then the kept message is ours: the kind of error, or the code's, and the status
    assert public_error(NotCancellable(ECHO, http_status=409)) == (
        "not_cancellable",
        "the provider will not cancel or delete the session in its current state (HTTP 409)")
    assert public_error(ProviderRejected(ECHO, code="transaction_active", http_status=200)) == (
        "transaction_active", "the transaction is active: cancel it before deleting it "
                              "(HTTP 200)")
    # our own words stay: a missing setting, our retry verdict
    assert public_error(Unauthorized("IDVCANCEL_GU1_API_KEY is not set",
                                     code="missing_credentials"))[1] == (
        "IDVCANCEL_GU1_API_KEY is not set")
    assert public_error(GaveUp("gave up after 2 attempts: x", code="rate_limited"))[1] == (
        "gave up after 2 attempts: x")
    assert public_code(NotCancellable("x", code="a" * 65)) == "not_cancellable"
    assert public_status("verified") == "verified"
    assert public_status(f"held for {ECHO}") is None
