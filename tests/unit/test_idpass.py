"""ID Pass: its rules table, and how each answer is classified (httpx MockTransport)."""

from __future__ import annotations

import json

import httpx
import pytest

from config.settings import Settings
from worker.contract import CancelRequest, Outcome
from worker.errors import RuleViolation
from worker.providers import errors
from worker.providers.idpass import RULES, IdPassAdapter
from worker.providers.rules import check

REF = "fe4291ca-d831-4760-96df-c9cb03b3cd95"


def request(**change: object) -> CancelRequest:
    base = {"request_id": "r", "provider": "idpass", "action": "cancel", "reference": REF,
            "requested_by": "t"}
    return CancelRequest.model_validate({**base, **change})


def adapter(handler: httpx.MockTransport, token: str = "tok") -> IdPassAdapter:
    settings = Settings(idpass_base_url="http://idpass.test/prefix", idpass_token=token)
    return IdPassAdapter(settings, transport=handler)


@pytest.mark.parametrize(("status", "allowed"), [
    ("new", True), ("opened", True), ("in_progress", True), ("complete", False),
    ("failed", False), ("expired", False), ("cancelled", False),
])
def test_rules_table_cancellable_states(status: str, allowed: bool) -> None:
    assert RULES.is_actionable("cancel", status) is allowed
    assert status in RULES.statuses


def test_rules_refuse_delete_and_non_uuid_references() -> None:
    with pytest.raises(RuleViolation, match="no API to delete"):
        check(request(action="delete"), RULES)
    with pytest.raises(RuleViolation, match="must match"):
        check(request(reference="not-a-uuid"), RULES)
    assert check(request(), RULES).outcome is Outcome.CANCELLED


def test_cancel_sends_the_documented_request() -> None:
    # Given a provider that records what it receives
    seen: list[httpx.Request] = []

    def handle(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json={"status": "cancelled", "fee_refunded": True})

    # When a cancel is executed
    answer = adapter(httpx.MockTransport(handle)).execute(request(), RULES.actions["cancel"])
    # Then it is POST {base}/idpass/cancel with the id and the bearer token, prefix kept
    (sent,) = seen
    assert sent.method == "POST"
    assert str(sent.url) == "http://idpass.test/prefix/idpass/cancel"
    assert sent.headers["authorization"] == "Bearer tok"
    assert json.loads(sent.content) == {"id": REF}
    assert answer.outcome is Outcome.CANCELLED and answer.fee_refunded is True


@pytest.mark.parametrize(("status", "error_type"), [
    (400, errors.NotCancellable), (401, errors.Unauthorized), (403, errors.Unauthorized),
    (404, errors.NotFound), (409, errors.ProviderRejected), (429, errors.RateLimited),
    (500, errors.ProviderServerError), (502, errors.ProviderServerError),
    (503, errors.ProviderServerError), (504, errors.ProviderServerError),
])
def test_answers_are_classified(status: int, error_type: type[errors.ProviderError]) -> None:
    transport = httpx.MockTransport(
        lambda _: httpx.Response(status, json={"error": "x", "status": "complete"},
                                 headers={"Retry-After": "3"}))
    with pytest.raises(error_type) as info:
        adapter(transport).execute(request(), RULES.actions["cancel"])
    assert info.value.http_status == status
    transient = isinstance(info.value, errors.TransientError)
    assert transient is (status in errors.TRANSIENT_STATUSES)
    if status == 429:
        assert isinstance(info.value, errors.RateLimited) and info.value.retry_after == 3.0


def test_connection_errors_and_timeouts_are_transient() -> None:
    def refuse(_: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    def slow(_: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow")

    with pytest.raises(errors.ProviderUnreachable):
        adapter(httpx.MockTransport(refuse)).execute(request(), RULES.actions["cancel"])
    with pytest.raises(errors.ProviderTimeout):
        adapter(httpx.MockTransport(slow)).execute(request(), RULES.actions["cancel"])


def test_missing_token_is_unauthorized_without_a_call() -> None:
    calls: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda r: calls.append(r) or httpx.Response(200))
    with pytest.raises(errors.Unauthorized, match="IDVCANCEL_IDPASS_TOKEN"):
        adapter(transport, token="").execute(request(), RULES.actions["cancel"])
    assert calls == []
