"""gu1: its rules table, the DELETE-with-a-body it sends, and how each answer is
classified (httpx MockTransport)."""

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


def adapter(handler: Callable[[httpx.Request], httpx.Response], key: str = "gk_test_k"
            ) -> Gu1Adapter:
    settings = Settings(gu1_base_url="http://gu1.test/prefix", gu1_api_key=key)
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


def test_check_refuses_delete() -> None:
    with pytest.raises(RuleViolation, match="no API to delete") as info:
        check(request(action="delete"), RULES)
    assert info.value.code == "action_not_supported"


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


def test_cancel_sends_a_delete_with_the_trimmed_reason_as_json_body() -> None:
    # Given a provider that records what it receives
    seen: list[httpx.Request] = []

    def handle(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json=validation("cancelled"))

    # When a cancel with a padded reason is executed
    result = adapter(handle).execute(request(reason=f"  {REASON}  "), CANCEL)
    # Then it is DELETE {base}/api/kyc/validations/{id}/cancel with a JSON body
    (sent,) = seen
    assert sent.method == "DELETE"
    assert str(sent.url) == f"http://gu1.test/prefix/api/kyc/validations/{REF}/cancel"
    assert sent.headers["authorization"] == "Bearer gk_test_k"
    assert sent.headers["content-type"] == "application/json"
    assert json.loads(sent.content) == {"reason": REASON}
    assert result.outcome is Outcome.CANCELLED
    assert result.http_status == 200 and result.provider_status == "cancelled"


def test_missing_api_key_is_unauthorized_without_a_call() -> None:
    calls: list[httpx.Request] = []

    def handle(req: httpx.Request) -> httpx.Response:
        calls.append(req)
        return httpx.Response(200)

    with pytest.raises(errors.Unauthorized, match="IDVCANCEL_GU1_API_KEY"):
        adapter(handle, key="").execute(request(), CANCEL)
    assert calls == []


# -- success ----------------------------------------------------------------------------


def test_200_reports_the_body_status_and_nothing_else() -> None:
    result = adapter(answer(200, validation("cancelled"))).execute(request(), CANCEL)
    assert result.provider_status == "cancelled" and result.fee_refunded is None
    assert "Ana" not in repr(result) and "ent_42" not in repr(result)


def test_200_without_status_is_still_cancelled() -> None:
    result = adapter(lambda _: httpx.Response(200, content=b"")).execute(request(), CANCEL)
    assert result.outcome is Outcome.CANCELLED and result.provider_status == "cancelled"


# -- classification ---------------------------------------------------------------------


@pytest.mark.parametrize(("status", "error_type"), [
    (400, errors.ProviderRejected),  # a 400 that is neither documented kind
    (401, errors.Unauthorized), (403, errors.Unauthorized), (404, errors.NotFound),
    (409, errors.ProviderRejected), (429, errors.RateLimited),
    (500, errors.ProviderServerError), (502, errors.ProviderServerError),
    (503, errors.ProviderServerError), (504, errors.ProviderServerError),
])
def test_answers_are_classified(status: int, error_type: type[errors.ProviderError]) -> None:
    transport = answer(status, {"error": f"problem {status}"}, {"Retry-After": "3"})
    with pytest.raises(error_type) as info:
        adapter(transport).execute(request(), CANCEL)
    exc = info.value
    assert type(exc) is error_type
    assert exc.http_status == status and exc.message == f"problem {status}"
    assert isinstance(exc, errors.TransientError) is (status in errors.TRANSIENT_STATUSES)
    if isinstance(exc, errors.TransientError):
        assert exc.retry_after == 3.0


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


def test_rate_limit_without_retry_after_has_none() -> None:
    with pytest.raises(errors.RateLimited) as info:
        adapter(answer(429, {"error": "slow down"})).execute(request(), CANCEL)
    assert info.value.retry_after is None


def test_connection_errors_and_timeouts_are_transient() -> None:
    def refuse(_: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    def slow(_: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow")

    with pytest.raises(errors.ProviderUnreachable):
        adapter(refuse).execute(request(), CANCEL)
    with pytest.raises(errors.ProviderTimeout):
        adapter(slow).execute(request(), CANCEL)


# -- read_status (crash recovery) -------------------------------------------------------


def test_read_status_gets_the_validation_status() -> None:
    # Given a validation cancelled before the crash
    seen: list[httpx.Request] = []

    def handle(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json=validation("cancelled"))

    # When its status is read back
    status = adapter(handle).read_status(request())
    # Then it is GET {base}/api/kyc/validations/{id}, and the status is the done status
    (sent,) = seen
    assert sent.method == "GET" and sent.content == b""
    assert str(sent.url) == f"http://gu1.test/prefix/api/kyc/validations/{REF}"
    assert sent.headers["authorization"] == "Bearer gk_test_k"
    assert status == CANCEL.done_status


def test_read_status_errors_are_classified() -> None:
    assert adapter(answer(200, {})).read_status(request()) is None
    with pytest.raises(errors.NotFound):
        adapter(answer(404, {"error": "not found"})).read_status(request())
    with pytest.raises(errors.ProviderServerError):
        adapter(answer(503, {})).read_status(request())
