"""ID Pass: its rules table and its own 400 (httpx MockTransport).

What every adapter does alike (the request, 401/403/404/429/5xx, transport failures,
missing credentials, the status read) is in test_provider_contract.py."""

from __future__ import annotations

import httpx
import pytest

from config.settings import Settings
from worker.contract import CancelRequest
from worker.errors import RuleViolation
from worker.providers import errors
from worker.providers.idpass import RULES, IdPassAdapter
from worker.providers.rules import check

REF = "fe4291ca-d831-4760-96df-c9cb03b3cd95"


def request(**change: object) -> CancelRequest:
    base = {"request_id": "r", "provider": "idpass", "action": "cancel", "reference": REF,
            "requested_by": "t"}
    return CancelRequest.model_validate({**base, **change})


def adapter(handler: httpx.MockTransport) -> IdPassAdapter:
    settings = Settings(idpass_base_url="http://idpass.test/prefix", idpass_token="tok")
    return IdPassAdapter(settings, transport=handler)


@pytest.mark.parametrize(("status", "allowed"), [
    ("new", True), ("opened", True), ("in_progress", True), ("complete", False),
    ("failed", False), ("expired", False), ("cancelled", False),
])
def test_rules_table_cancellable_states(status: str, allowed: bool) -> None:
    assert RULES.is_actionable("cancel", status) is allowed
    assert status in RULES.statuses


def test_check_refuses_a_reference_that_is_not_a_uuid() -> None:
    """Given a reference that is no UUID / Then the refusal says what one must be."""
    with pytest.raises(RuleViolation, match="must be a UUID") as info:
        check(request(reference="not-a-uuid"), RULES)
    assert info.value.code == "invalid_reference" and info.value.field == "reference"


def test_400_is_not_cancellable_with_the_status_the_body_names() -> None:
    # Given the only 400 a well-formed cancel gets: the pass is in a terminal status
    transport = httpx.MockTransport(
        lambda _: httpx.Response(400, json={"error": "x", "status": "complete"}))
    # When the cancel is executed / Then it is not cancellable, the status reported
    with pytest.raises(errors.NotCancellable) as info:
        adapter(transport).execute(request(), RULES.actions["cancel"])
    assert info.value.http_status == 400 and info.value.provider_status == "complete"
    assert info.value.message == "x"
