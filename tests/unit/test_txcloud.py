"""TXCloud: its rules table, the request it sends, and how each answer is classified
(httpx MockTransport)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest

from config.settings import Settings
from worker.contract import CancelRequest, Outcome
from worker.errors import RuleViolation
from worker.providers import errors
from worker.providers.base import ProviderAnswer
from worker.providers.rules import check
from worker.providers.txcloud import RULES, TxCloudAdapter

REF = "ver_a1b2c3d4e5f6"
CANCEL = RULES.actions["cancel"]
#: Personal data as TXCloud returns it in ``extracted_data`` (seed 001).
PII = ("El Amrani", "Mohammed", "AE123456", "1990-04-12", "P<MAREL<AMRANI")


def request(**change: object) -> CancelRequest:
    base = {"request_id": "r", "provider": "txcloud", "action": "cancel", "reference": REF,
            "requested_by": "t"}
    return CancelRequest.model_validate({**base, **change})


def adapter(handler: Callable[[httpx.Request], httpx.Response], key: str = "txc_test_k"
            ) -> TxCloudAdapter:
    settings = Settings(txcloud_base_url="http://txcloud.test/prefix/v1", txcloud_api_key=key)
    return TxCloudAdapter(settings, transport=httpx.MockTransport(handler))


def verification(status: str | None) -> dict[str, Any]:
    """A verification object like the seed's, PII included."""
    body: dict[str, Any] = {
        "id": REF, "object": "identity.verification",
        "extracted_data": {"document_number": "AE123456", "first_name": "Mohammed",
                           "last_name": "El Amrani", "date_of_birth": "1990-04-12",
                           "mrz": "P<MAREL<AMRANI<<MOHAMMED"},
        "risk_score": 120,
    }
    if status is not None:
        body["status"] = status
    return body


def envelope(code: str, kind: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "type": kind, "message": message,
                      "request_id": "req_123"}, **extra}


def answer(status: int, body: Any = None, headers: dict[str, str] | None = None
           ) -> Callable[[httpx.Request], httpx.Response]:
    return lambda _: httpx.Response(status, json=body, headers=headers)


# -- rules ------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "allowed"), [
    ("pending", True),
    # API reference enum
    ("verified", False), ("rejected", False), ("review", False), ("expired", False),
    ("error", False),
    # concepts page enum
    ("failed", False), ("cancelled", False), ("manual_review", False),
])
def test_rules_table_only_pending_is_cancellable(status: str, allowed: bool) -> None:
    assert RULES.is_actionable("cancel", status) is allowed
    assert status in RULES.statuses
    assert RULES.is_actionable("delete", status) is False


def test_rules_table_shape() -> None:
    assert set(RULES.actions) == {"cancel"}
    assert CANCEL.done_status == "cancelled" and CANCEL.outcome is Outcome.CANCELLED
    assert CANCEL.reason_min_length == 0
    assert RULES.abandoned_after == timedelta(days=1)


def test_check_refuses_delete_and_accepts_cancel_without_reason() -> None:
    with pytest.raises(RuleViolation, match="no API to delete") as info:
        check(request(action="delete"), RULES)
    assert info.value.code == "action_not_supported"
    assert check(request(), RULES) is CANCEL


# -- the request ------------------------------------------------------------------------


def test_cancel_sends_the_documented_request() -> None:
    # Given a provider that records what it receives
    seen: list[httpx.Request] = []

    def handle(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json=verification("cancelled"))

    # When a cancel is executed
    result = adapter(handle).execute(request(), CANCEL)
    # Then it is POST {base}/identity/verifications/{id}/cancel, no body, bearer key
    (sent,) = seen
    assert sent.method == "POST"
    assert str(sent.url) == f"http://txcloud.test/prefix/v1/identity/verifications/{REF}/cancel"
    assert sent.headers["authorization"] == "Bearer txc_test_k"
    assert sent.content == b""
    assert result == ProviderAnswer(Outcome.CANCELLED, 200, "cancelled")


def test_reference_cannot_escape_its_path_segment() -> None:
    seen: list[httpx.Request] = []

    def handle(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json={})

    adapter(handle).execute(request(reference="../../admin"), CANCEL)
    assert seen[0].url.raw_path == b"/prefix/v1/identity/verifications/..%2F..%2Fadmin/cancel"


def test_missing_api_key_is_unauthorized_without_a_call() -> None:
    calls: list[httpx.Request] = []

    def handle(req: httpx.Request) -> httpx.Response:
        calls.append(req)
        return httpx.Response(200)

    with pytest.raises(errors.Unauthorized, match="IDVCANCEL_TXCLOUD_API_KEY") as info:
        adapter(handle, key="").execute(request(), CANCEL)
    assert info.value.code == "missing_credentials"
    assert calls == []


# -- success: any 200 is a cancel -------------------------------------------------------


@pytest.mark.parametrize(("body_status", "reported"), [
    ("cancelled", "cancelled"),  # concepts page reading
    ("error", "error"),  # API reference reading: no `cancelled` in its enum
    ("expired", "expired"),
    (None, "cancelled"),  # no status in the body at all
])
def test_any_200_is_cancelled_and_reports_the_body_status(
    body_status: str | None, reported: str
) -> None:
    # Given a 200 whatever status the body carries (the docs disagree on it)
    result = adapter(answer(200, verification(body_status))).execute(request(), CANCEL)
    # Then the request is cancelled, and provider_status is the body's (or "cancelled")
    assert result.outcome is Outcome.CANCELLED and result.http_status == 200
    assert result.provider_status == reported
    assert result.fee_refunded is None


def test_200_without_json_body_is_cancelled() -> None:
    result = adapter(lambda _: httpx.Response(200, content=b"")).execute(request(), CANCEL)
    assert result.outcome is Outcome.CANCELLED and result.provider_status == "cancelled"


def test_pii_in_a_200_body_never_reaches_the_answer() -> None:
    # Given a 200 carrying extracted_data
    result = adapter(answer(200, verification("cancelled"))).execute(request(), CANCEL)
    # Then nothing of it is in the answer
    shown = repr(result)
    assert not [p for p in PII if p in shown]


# -- classification ---------------------------------------------------------------------


@pytest.mark.parametrize(("status", "kind", "error_type"), [
    (400, "validation_error", errors.NotCancellable),
    (401, "authentication_error", errors.Unauthorized),
    (403, "authorization_error", errors.Unauthorized),
    (404, "not_found_error", errors.NotFound),
    (409, "idempotency_error", errors.NotCancellable),
    (429, "rate_limit_error", errors.RateLimited),
    (500, "api_error", errors.ProviderServerError),
    (502, "api_error", errors.ProviderServerError),
    (503, "api_error", errors.ProviderServerError),
    (504, "api_error", errors.ProviderServerError),
])
def test_answers_are_classified(
    status: int, kind: str, error_type: type[errors.ProviderError]
) -> None:
    # Given an error envelope next to PII, as a careless provider might send
    body = envelope(f"code_{status}", kind, f"message {status}", **verification(None))
    # When the cancel is executed
    with pytest.raises(error_type) as info:
        adapter(answer(status, body)).execute(request(), CANCEL)
    # Then it is classified by status, with the envelope's code and message only
    exc = info.value
    assert type(exc) is error_type
    assert exc.http_status == status
    assert exc.code == f"code_{status}" and exc.message == f"message {status}"
    assert isinstance(exc, errors.TransientError) is (status in errors.TRANSIENT_STATUSES)
    shown = f"{exc} {exc.message} {exc.code} {exc.provider_status}"
    assert not [p for p in PII if p in shown]


def test_unexpected_4xx_is_rejected() -> None:
    body = envelope("method_not_allowed", "validation_error", "Method not allowed")
    with pytest.raises(errors.ProviderRejected) as info:
        adapter(answer(405, body)).execute(request(), CANCEL)
    assert info.value.outcome is Outcome.REJECTED and info.value.code == "method_not_allowed"


def test_400_of_another_error_type_is_rejected_not_not_cancellable() -> None:
    body = envelope("bad_thing", "api_error", "something else")
    with pytest.raises(errors.ProviderRejected) as info:
        adapter(answer(400, body)).execute(request(), CANCEL)
    assert type(info.value) is errors.ProviderRejected and info.value.code == "bad_thing"


def test_not_cancellable_reports_the_blocking_status() -> None:
    # Given the simulator's wording, and an explicit status field
    said = envelope("verification_not_cancellable", "validation_error",
                    "Verification in status 'verified' cannot be cancelled")
    explicit = envelope("x", "validation_error", "cannot cancel", status="manual_review")
    listed = envelope("x", "validation_error", "Only a verification whose status is pending")
    # Then the status named is reported; one only listing cancellable ones gives none
    for body, expected in ((said, "verified"), (explicit, "manual_review"), (listed, None)):
        with pytest.raises(errors.NotCancellable) as info:
            adapter(answer(400, body)).execute(request(), CANCEL)
        assert info.value.provider_status == expected
    assert info.value.code == "x"


def test_error_code_falls_back_to_type_and_bare_bodies_still_classify() -> None:
    with pytest.raises(errors.NotFound) as info:
        adapter(answer(404, {"error": {"type": "not_found_error", "message": "gone"}})
                ).execute(request(), CANCEL)
    assert info.value.code == "not_found_error" and info.value.message == "gone"
    with pytest.raises(errors.NotCancellable) as bare:
        adapter(lambda _: httpx.Response(409, content=b"<html>conflict</html>")
                ).execute(request(), CANCEL)
    assert bare.value.code == "not_cancellable" and bare.value.message


def test_long_error_messages_are_cut_short() -> None:
    body = envelope("x", "validation_error", "m" * 5000)
    with pytest.raises(errors.NotCancellable) as info:
        adapter(answer(400, body)).execute(request(), CANCEL)
    assert len(info.value.message) == 200


@pytest.mark.parametrize(("body", "headers", "expected"), [
    ({"retry_after": 7}, {}, 7.0),  # documented: top-level body field
    ({"error": {"type": "rate_limit_error", "retry_after": 4}}, {}, 4.0),  # inside error
    ({"retry_after": 7}, {"Retry-After": "2"}, 7.0),  # the body wins
    ({}, {"Retry-After": "3"}, 3.0),  # header only
    ({"retry_after": "5"}, {}, 5.0),  # a string of seconds
    ({}, {}, None),  # neither
])
def test_rate_limit_retry_after(body: dict[str, Any], headers: dict[str, str],
                                expected: float | None) -> None:
    base = envelope("rate_limit_exceeded", "rate_limit_error", "slow down")
    full = {**base, **body, "error": {**base["error"], **body.get("error", {})}}
    with pytest.raises(errors.RateLimited) as info:
        adapter(answer(429, full, headers)).execute(request(), CANCEL)
    assert info.value.retry_after == expected
    assert info.value.code == "rate_limit_exceeded" and info.value.http_status == 429


def test_server_error_honours_retry_after_header() -> None:
    with pytest.raises(errors.ProviderServerError) as info:
        adapter(answer(503, {}, {"Retry-After": "2"})).execute(request(), CANCEL)
    assert info.value.retry_after == 2.0 and info.value.code == "provider_server_error"


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


def test_read_status_gets_the_verification_and_returns_only_its_status() -> None:
    # Given a verification that was cancelled before the crash
    seen: list[httpx.Request] = []

    def handle(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json=verification("cancelled"))

    # When its status is read back
    status = adapter(handle).read_status(request())
    # Then it is GET {base}/identity/verifications/{id}, and "cancelled" means it landed
    (sent,) = seen
    assert sent.method == "GET" and sent.content == b""
    assert str(sent.url) == f"http://txcloud.test/prefix/v1/identity/verifications/{REF}"
    assert sent.headers["authorization"] == "Bearer txc_test_k"
    assert status == CANCEL.done_status == "cancelled"


def test_read_status_errors_are_classified() -> None:
    assert adapter(answer(200, {"id": REF})).read_status(request()) is None
    with pytest.raises(errors.NotFound):
        adapter(answer(404, envelope("resource_not_found", "not_found_error", "no"))
                ).read_status(request())
    with pytest.raises(errors.RateLimited) as info:
        adapter(answer(429, {"retry_after": 2})).read_status(request())
    assert info.value.retry_after == 2.0
    with pytest.raises(errors.ProviderServerError):
        adapter(answer(500, {})).read_status(request())
    with pytest.raises(errors.Unauthorized):
        adapter(answer(200, {}), key="").read_status(request())
