"""gu1: its rules table and reason, the reason it sends, and its two kinds of 400
(httpx MockTransport).

What every adapter does alike (the request, 401/403/404/429/5xx, transport failures,
missing credentials, the status read) is in test_provider_contract.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest

from config.settings import Settings
from worker.contract import CancelRequest, Outcome
from worker.errors import RuleViolation
from worker.providers import errors
from worker.providers.gu1 import RULES, Gu1Adapter
from worker.providers.rules import check

REF = "val_7f3c2a"
CANCEL = RULES.actions["cancel"]
REASON = "user asked to stop"


def request(**change: object) -> CancelRequest:
    base = {"request_id": "r", "provider": "gu1", "action": "cancel", "reference": REF,
            "requested_by": "t", "reason": REASON}
    return CancelRequest.model_validate({**base, **change})


def adapter(handler: Callable[[httpx.Request], httpx.Response]) -> Gu1Adapter:
    settings = Settings(gu1_base_url="http://gu1.test/prefix", gu1_api_key="gk_test_k")
    return Gu1Adapter(settings, transport=httpx.MockTransport(handler))


def answer(status: int, body: Any = None, headers: dict[str, str] | None = None
           ) -> Callable[[httpx.Request], httpx.Response]:
    return lambda _: httpx.Response(status, json=body, headers=headers)


def validation(status: str) -> dict[str, Any]:
    return {"id": REF, "entityId": "ent_42", "status": status, "isCurrent": False,
            "metadata": {"cancellationReason": REASON, "fullName": "Ana Pérez"}}


# -- rules ------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "allowed"), [
    ("pending", True), ("in_progress", True), ("in_review", True),
    ("approved", False), ("rejected", False), ("expired", False), ("abandoned", False),
    ("cancelled", False),
])
def test_rules_table_cancellable_states(status: str, allowed: bool) -> None:
    assert RULES.is_actionable("cancel", status) is allowed
    assert status in RULES.statuses
    assert RULES.is_actionable("delete", status) is False


def test_rules_table_shape() -> None:
    assert set(RULES.actions) == {"cancel"}
    assert len(RULES.statuses) == 8
    assert CANCEL.done_status == "cancelled" and CANCEL.outcome is Outcome.CANCELLED
    assert CANCEL.reason_min_length == 5
    assert RULES.abandoned_after == timedelta(days=7)


@pytest.mark.parametrize("reason", [None, "", "abcd", "  abc  ", "     ", "\tab\n"])
def test_check_refuses_a_reason_shorter_than_five_after_trimming(reason: str | None) -> None:
    # Given a reason under 5 characters once trimmed ("  abc  " is 7 long, 3 trimmed)
    # When the request is checked
    # Then it is refused before any call
    with pytest.raises(RuleViolation, match="at least 5 characters") as info:
        check(request(reason=reason), RULES)
    assert info.value.code == "reason_required"


def test_check_accepts_a_five_character_reason() -> None:
    assert check(request(reason=" abcde "), RULES) is CANCEL


# -- the request ------------------------------------------------------------------------


def test_cancel_sends_the_reason_trimmed() -> None:
    # Given a provider that records what it receives
    seen: list[httpx.Request] = []

    def handle(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json=validation("cancelled"))

    # When a cancel with a padded reason is executed
    adapter(handle).execute(request(reason=f"  {REASON}  "), CANCEL)
    # Then the DELETE's JSON body carries the reason without the padding
    assert json.loads(seen[0].content) == {"reason": REASON}


# -- success ----------------------------------------------------------------------------


def test_200_reports_the_body_status_and_nothing_else() -> None:
    result = adapter(answer(200, validation("cancelled"))).execute(request(), CANCEL)
    assert result.provider_status == "cancelled" and result.fee_refunded is None
    assert "Ana" not in repr(result) and "ent_42" not in repr(result)


# -- classification ---------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    {"error": "invalid status: validation is approved; only pending, in_progress, "
              "in_review can be cancelled"},  # the simulator
    {"message": "Validation can only be cancelled if status is pending, in_progress, "
                "or in_review"},  # the docs' wording
    {"error": {"code": "INVALID_STATUS", "message": "nope"}},
    {"statusCode": 400, "error": "Bad Request", "message": "Invalid status"},
])
def test_400_invalid_status_is_not_cancellable(body: dict[str, Any]) -> None:
    with pytest.raises(errors.NotCancellable) as info:
        adapter(answer(400, body)).execute(request(), CANCEL)
    assert info.value.outcome is Outcome.NOT_CANCELLABLE and info.value.http_status == 400


def test_not_cancellable_reports_the_blocking_status_when_named() -> None:
    said = {"error": "invalid status: validation is approved; only pending, in_progress, "
                     "in_review can be cancelled"}
    listed = {"message": "Validation can only be cancelled if status is pending"}
    explicit = {"message": "invalid status", "status": "abandoned"}
    for body, expected in ((said, "approved"), (listed, None), (explicit, "abandoned")):
        with pytest.raises(errors.NotCancellable) as info:
            adapter(answer(400, body)).execute(request(), CANCEL)
        assert info.value.provider_status == expected


@pytest.mark.parametrize("body", [
    {"error": "invalid reason: must be at least 5 characters"},  # the simulator
    {"message": "Reason must be at least 5 characters"},  # the docs' wording
    {"error": {"code": "INVALID_REASON", "message": "too short"}},
])
def test_400_invalid_reason_is_rejected_with_code_invalid_reason(body: dict[str, Any]) -> None:
    with pytest.raises(errors.ProviderRejected) as info:
        adapter(answer(400, body)).execute(request(), CANCEL)
    assert type(info.value) is errors.ProviderRejected
    assert info.value.code == "invalid_reason" and info.value.outcome is Outcome.REJECTED


def test_error_text_is_cut_short_and_other_fields_are_ignored() -> None:
    body = {"error": "invalid status: " + "x" * 5000, "metadata": {"fullName": "Ana Pérez"}}
    with pytest.raises(errors.NotCancellable) as info:
        adapter(answer(400, body)).execute(request(), CANCEL)
    assert len(info.value.message) == 200 and "Ana" not in info.value.message

