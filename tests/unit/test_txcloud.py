"""TXCloud: its rules table, its error envelope, its 200s and its retry_after
(httpx MockTransport).

What every adapter does alike (the request, 401/403/404/429/5xx, transport failures,
missing credentials, the status read) is in test_provider_contract.py."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest

from config.settings import Settings
from worker.contract import CancelRequest, Outcome
from worker.providers import errors
from worker.providers.txcloud import RULES, TxCloudAdapter

REF = "ver_a1b2c3d4e5f6"
CANCEL = RULES.actions["cancel"]
#: Personal data as TXCloud returns it in ``extracted_data`` (seed 001).
PII = ("El Amrani", "Mohammed", "AE123456", "1990-04-12", "P<MAREL<AMRANI")


def request(**change: object) -> CancelRequest:
    base = {"request_id": "r", "provider": "txcloud", "action": "cancel", "reference": REF,
            "requested_by": "t"}
    return CancelRequest.model_validate({**base, **change})


def adapter(handler: Callable[[httpx.Request], httpx.Response]) -> TxCloudAdapter:
    settings = Settings(txcloud_base_url="http://txcloud.test/prefix/v1",
                        txcloud_api_key="txc_test_k")
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
def test_documented_error_types_keep_the_envelopes_code_and_message_only(
    status: int, kind: str, error_type: type[errors.ProviderError]
) -> None:
    # Given the error type TXCloud documents for the status, next to PII, as a careless
    # provider might send (a validation or idempotency error is a state error)
    body = envelope(f"code_{status}", kind, f"message {status}", **verification(None))
    # When the cancel is executed
    with pytest.raises(error_type) as info:
        adapter(answer(status, body)).execute(request(), CANCEL)
    # Then it is classified, with the envelope's code and message and nothing else
    exc = info.value
    assert type(exc) is error_type
    assert exc.http_status == status
    assert exc.code == f"code_{status}" and exc.message == f"message {status}"
    shown = f"{exc} {exc.message} {exc.code} {exc.provider_status}"
    assert not [p for p in PII if p in shown]


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


# -- read_status (crash recovery) -------------------------------------------------------


def test_status_read_429_takes_retry_after_from_the_body_too() -> None:
    # Given a 429 to the status read whose body says when to come back
    with pytest.raises(errors.RateLimited) as info:
        adapter(answer(429, {"retry_after": 2})).read_status(request())
    # Then the read waits as the body says, as the cancel does
    assert info.value.retry_after == 2.0
