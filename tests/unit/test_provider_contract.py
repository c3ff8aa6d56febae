"""The contract every provider adapter keeps, whatever its API: one test per behaviour,
run over each adapter with ``httpx.MockTransport`` as the provider.

Each row of ``PROVIDERS`` says how to build the adapter and a request for it, the call
its action makes and the one its status read makes (method, URL, body, headers), and how
the provider words an error. What only one provider does stays in its own file
(``test_<provider>.py``): rules tables, options, provider-specific 400s and bodies.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import pytest

from config.settings import Settings
from worker.contract import ActionName, CancelRequest, Outcome
from worker.errors import RuleViolation
from worker.providers import errors
from worker.providers.base import MAX_ERROR_TEXT, ProviderAdapter, ProviderAnswer
from worker.providers.gu1 import Gu1Adapter
from worker.providers.idpass import IdPassAdapter
from worker.providers.jumio import JumioAdapter
from worker.providers.onespan import MARKED, OneSpanAdapter
from worker.providers.rules import ActionRule, ProviderRules, check
from worker.providers.txcloud import TxCloudAdapter

Handler = Callable[[httpx.Request], httpx.Response]
Body = Callable[[str], dict[str, Any]]

#: The error text every provider's error body carries in the tests below.
MESSAGE = "the provider says no"
#: A reference that would add path segments and a query if it were not quoted whole.
HOSTILE_REFERENCE = "a/b?c"
#: Statuses that mean the same at every provider (``ProviderAdapter.raise_common``).
COMMON_STATUSES: dict[int, type[errors.ProviderError]] = {
    401: errors.Unauthorized, 403: errors.Unauthorized, 429: errors.RateLimited,
    500: errors.ProviderServerError, 502: errors.ProviderServerError,
    503: errors.ProviderServerError, 504: errors.ProviderServerError,
}
#: Transport failures, and what each means for the request (``ProviderAdapter.send``).
TRANSPORT_FAILURES: list[tuple[Callable[[str], httpx.TransportError],
                               type[errors.TransientError]]] = [
    (httpx.ConnectError, errors.ProviderUnreachable),  # nothing was sent
    (httpx.ConnectTimeout, errors.ProviderTimeout),
    (httpx.ReadTimeout, errors.ProviderTimeout),
    (httpx.ReadError, errors.AnswerLost),  # sent, the connection broke before the answer
    (httpx.RemoteProtocolError, errors.AnswerLost),
]


@dataclass(frozen=True)
class Call:
    """One HTTP call as the provider documents it."""

    method: str
    url: str
    json: dict[str, Any] | None = None  # the JSON body; None: no body at all
    headers: dict[str, str] = field(default_factory=dict)  # besides the provider's own


@dataclass(frozen=True)
class Missing:
    """A credential left unset, and the setting the error must name."""

    change: dict[str, str]
    setting: str
    on_read: bool = True  # the status read needs it too


@dataclass(frozen=True)
class Provider:
    """How to drive one adapter's action, and what its provider expects."""

    name: str
    adapter_class: type[ProviderAdapter]
    settings: dict[str, Any]
    request: dict[str, Any]  # CancelRequest fields besides the common ones
    action: Call  # what ``execute`` sends
    success: Any  # a 200 body to it (None: no body) ...
    answer: ProviderAnswer  # ... and the answer that makes
    read: Call  # what ``read_status`` sends
    status_body: Body  # a 200 body to the read, naming that status
    error_body: Body  # an error body carrying that message
    headers: dict[str, str]  # sent with both calls (each Call may add its own)
    missing: tuple[Missing, ...]
    error_code: str | None = None  # the code error_body carries (None: the error's default)
    rejected: tuple[int, ...] = (409,)  # 4xx with no documented meaning here: rejected
    unsupported: ActionName | None = None  # an action the provider has no API for
    quoted_path: bytes | None = None  # raw path for HOSTILE_REFERENCE (None: not in path)
    reference_is_a_resource: bool = True  # 404 to the action means "no such session"
    bare_200_succeeds: bool = True  # a 200 without a body is the action done

    @property
    def rules(self) -> ProviderRules:
        return self.adapter_class.rules

    @property
    def rule(self) -> ActionRule:
        return self.rules.actions[self.request["action"]]

    def adapter(self, handler: Handler, **change: str) -> ProviderAdapter:
        config = Settings(**{**self.settings, **change})
        return self.adapter_class(config, transport=httpx.MockTransport(handler))

    def cancel_request(self, **change: object) -> CancelRequest:
        base = {"request_id": "r", "provider": self.rules.provider, "requested_by": "t"}
        return CancelRequest.model_validate({**base, **self.request, **change})

    def execute(self, handler: Handler, **change: object) -> ProviderAnswer:
        return self.adapter(handler).execute(self.cancel_request(**change), self.rule)


IDPASS_REF = "fe4291ca-d831-4760-96df-c9cb03b3cd95"
TXCLOUD_REF = "ver_a1b2c3d4e5f6"
GU1_REF = "val_7f3c2a"
JUMIO_REF = "8f0c2a4e-5b7d-4c1e-9a3f-0d2b6e8c1a57"  # 36 characters, the documented maximum
ONESPAN_REF = "968c1ceb-7508-4a92-aef7-3661b01ffcab"
ONESPAN_CANCEL = Provider(
    name="onespan-cancel",
    adapter_class=OneSpanAdapter,
    settings={"onespan_base_url": "http://onespan.test/prefix", "onespan_token": "jwt",
              "onespan_tenant": "acme", "onespan_batch_window_ms": 0},
    request={"action": "cancel", "reference": ONESPAN_REF},
    action=Call("PUT", f"http://onespan.test/prefix/api/transaction/{ONESPAN_REF}/event",
                {"trigger": "transaction_cancelled"}),
    success={"id": ONESPAN_REF, "status": "cancelled", "version": 5},
    answer=ProviderAnswer(Outcome.CANCELLED, 200, "cancelled"),
    read=Call("GET", f"http://onespan.test/prefix/api/transaction/{ONESPAN_REF}"),
    status_body=lambda status: {"id": ONESPAN_REF, "status": status},
    error_body=lambda message: {"message": message},
    headers={"authorization": "Bearer jwt", "accept": "application/json"},
    missing=(Missing({"onespan_token": ""}, "IDVCANCEL_ONESPAN_TOKEN"),),
    quoted_path=b"/prefix/api/transaction/a%2Fb%3Fc/event",
)

PROVIDERS = [
    Provider(
        name="idpass",
        adapter_class=IdPassAdapter,
        settings={"idpass_base_url": "http://idpass.test/prefix", "idpass_token": "tok"},
        request={"action": "cancel", "reference": IDPASS_REF},
        action=Call("POST", "http://idpass.test/prefix/idpass/cancel", {"id": IDPASS_REF}),
        success={"status": "cancelled", "fee_refunded": True},
        answer=ProviderAnswer(Outcome.CANCELLED, 200, "cancelled", fee_refunded=True),
        read=Call("POST", "http://idpass.test/prefix/idpass/details", {"id": IDPASS_REF}),
        status_body=lambda status: {"id": IDPASS_REF, "status": status},
        error_body=lambda message: {"error": message},
        headers={"authorization": "Bearer tok"},
        missing=(Missing({"idpass_token": ""}, "IDVCANCEL_IDPASS_TOKEN"),),
        unsupported="delete",
    ),
    Provider(
        name="txcloud",
        adapter_class=TxCloudAdapter,
        settings={"txcloud_base_url": "http://txcloud.test/prefix/v1",
                  "txcloud_api_key": "txc_test_k"},
        request={"action": "cancel", "reference": TXCLOUD_REF},
        action=Call("POST", "http://txcloud.test/prefix/v1/identity/verifications/"
                            f"{TXCLOUD_REF}/cancel"),
        success={"id": TXCLOUD_REF, "object": "identity.verification", "status": "cancelled"},
        answer=ProviderAnswer(Outcome.CANCELLED, 200, "cancelled"),
        read=Call("GET", f"http://txcloud.test/prefix/v1/identity/verifications/{TXCLOUD_REF}"),
        status_body=lambda status: {"id": TXCLOUD_REF, "status": status},
        # An error type that is not a state error: 400 and 409 are then plain refusals.
        error_body=lambda message: {"error": {"code": "provider_code", "type": "api_error",
                                              "message": message, "request_id": "req_1"}},
        error_code="provider_code",
        headers={"authorization": "Bearer txc_test_k"},
        missing=(Missing({"txcloud_api_key": ""}, "IDVCANCEL_TXCLOUD_API_KEY"),),
        rejected=(400, 405, 409),
        unsupported="delete",
        quoted_path=b"/prefix/v1/identity/verifications/a%2Fb%3Fc/cancel",
    ),
    Provider(
        name="gu1",
        adapter_class=Gu1Adapter,
        settings={"gu1_base_url": "http://gu1.test/prefix", "gu1_api_key": "gk_test_k"},
        request={"action": "cancel", "reference": GU1_REF, "reason": "user asked to stop"},
        action=Call("DELETE", f"http://gu1.test/prefix/api/kyc/validations/{GU1_REF}/cancel",
                    {"reason": "user asked to stop"},
                    headers={"content-type": "application/json"}),
        success={"id": GU1_REF, "status": "cancelled"},
        answer=ProviderAnswer(Outcome.CANCELLED, 200, "cancelled"),
        read=Call("GET", f"http://gu1.test/prefix/api/kyc/validations/{GU1_REF}"),
        status_body=lambda status: {"id": GU1_REF, "status": status},
        error_body=lambda message: {"error": message},
        headers={"authorization": "Bearer gk_test_k"},
        missing=(Missing({"gu1_api_key": ""}, "IDVCANCEL_GU1_API_KEY"),),
        rejected=(400, 409),  # a 400 that names neither a status nor the reason
        unsupported="delete",
        quoted_path=b"/prefix/api/kyc/validations/a%2Fb%3Fc/cancel",
    ),
    Provider(
        name="jumio",
        adapter_class=JumioAdapter,
        settings={"jumio_base_url_us": "http://us.test/p", "jumio_api_token": "tok",
                  "jumio_api_secret": "sec", "jumio_user_agent": "Acme Onboarding/2.1"},
        request={"action": "delete", "reference": JUMIO_REF},
        action=Call("DELETE", f"http://us.test/p/api/netverify/v2/scans/{JUMIO_REF}"),
        success=None,  # Jumio documents no body
        answer=ProviderAnswer(Outcome.DELETED, 200, "DELETED"),
        read=Call("GET", f"http://us.test/p/api/netverify/v2/scans/{JUMIO_REF}"),
        status_body=lambda status: {"timestamp": "t", "scanReference": JUMIO_REF,
                                    "status": status},
        error_body=lambda message: {"title": "Some Title", "detail": message},
        headers={"authorization": "Basic " + base64.b64encode(b"tok:sec").decode(),
                 "user-agent": "Acme Onboarding/2.1", "accept": "application/json"},
        missing=(
            Missing({"jumio_user_agent": ""}, "IDVCANCEL_JUMIO_USER_AGENT"),
            Missing({"jumio_user_agent": "   "}, "IDVCANCEL_JUMIO_USER_AGENT"),
            Missing({"jumio_api_token": ""}, "IDVCANCEL_JUMIO_API_TOKEN"),
            Missing({"jumio_api_secret": ""}, "IDVCANCEL_JUMIO_API_SECRET"),
        ),
        rejected=(400, 405, 406, 409),
        unsupported="cancel",
        quoted_path=b"/p/api/netverify/v2/scans/a%2Fb%3Fc",
    ),
    ONESPAN_CANCEL,
    # The same adapter's other action: one erasure call (the batch window is 0 here).
    replace(
        ONESPAN_CANCEL,
        name="onespan-delete",
        request={"action": "delete", "reference": ONESPAN_REF},
        action=Call("POST", "http://onespan.test/prefix/api/transactions/mark-for-erasure",
                    {"grace_period": 0, "transaction_ids": [ONESPAN_REF]},
                    headers={"x-tenant": "acme"}),
        success={"transactions": [{"transaction_id": ONESPAN_REF,
                                   "marking_event": "Transaction Erase Request - Accepted"}]},
        answer=ProviderAnswer(Outcome.DELETED, 200, MARKED),
        missing=(
            Missing({"onespan_token": ""}, "IDVCANCEL_ONESPAN_TOKEN"),
            Missing({"onespan_tenant": ""}, "IDVCANCEL_ONESPAN_TENANT", on_read=False),
        ),
        rejected=(400, 409),
        quoted_path=None,  # the id goes in the body
        reference_is_a_resource=False,  # a 404 is the endpoint's (test_onespan.py)
        bare_200_succeeds=False,  # no result for our id: retried (test_onespan.py)
    ),
]


def providers(keep: Callable[[Provider], bool] = lambda _: True) -> list[Any]:
    """``PROVIDERS`` as pytest parameters (those ``keep`` selects), named by provider."""
    return [pytest.param(p, id=p.name) for p in PROVIDERS if keep(p)]


def recorder(status: int = 200, body: Any = None, headers: dict[str, str] | None = None
             ) -> tuple[list[httpx.Request], Handler]:
    """A provider answering ``status`` with ``body`` to every call, and what it received."""
    seen: list[httpx.Request] = []

    def handle(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(status, json=body, headers=headers)

    return seen, handle


def failing(make: Callable[[str], httpx.TransportError]) -> Handler:
    def handle(_: httpx.Request) -> httpx.Response:
        raise make("the network failed")

    return handle


def assert_documented(sent: httpx.Request, call: Call, common: dict[str, str]) -> None:
    headers = {**common, **call.headers}
    assert (sent.method, str(sent.url)) == (call.method, call.url)
    if call.json is None:
        assert sent.content == b""
    else:
        assert httpx.Response(200, content=sent.content).json() == call.json
    assert {name: sent.headers.get(name) for name in headers} == headers


@pytest.fixture(autouse=True)
def _no_provider_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Settings read IDVCANCEL_* from the environment: keep the developer's out.
    for name in list(os.environ):
        if name.startswith("IDVCANCEL_"):
            monkeypatch.delenv(name)


# -- the rules -------------------------------------------------------------------------


@pytest.mark.parametrize("p", providers())
def test_check_accepts_the_action_the_provider_supports(p: Provider) -> None:
    assert check(p.cancel_request(), p.rules) is p.rule


@pytest.mark.parametrize("p", providers(lambda p: p.unsupported is not None))
def test_check_refuses_an_action_the_provider_has_no_api_for(p: Provider) -> None:
    # Given a request for the action the provider has no API for
    # When it is checked / Then it is refused, before any call
    with pytest.raises(RuleViolation, match=f"no API to {p.unsupported}") as info:
        check(p.cancel_request(action=p.unsupported), p.rules)
    assert info.value.code == "action_not_supported"


# -- the action's request and its success ----------------------------------------------


@pytest.mark.parametrize("p", providers())
def test_action_sends_the_documented_request_and_200_is_done(p: Provider) -> None:
    # Given a provider that records what it receives and answers 200
    seen, handle = recorder(200, p.success)
    # When the action is executed
    answer = p.execute(handle)
    # Then it is the documented method, URL, body and headers, once; and it is done
    (sent,) = seen
    assert_documented(sent, p.action, p.headers)
    assert answer == p.answer


@pytest.mark.parametrize("p", providers(lambda p: p.bare_200_succeeds))
def test_200_without_a_body_is_the_action_done(p: Provider) -> None:
    answer = p.execute(lambda _: httpx.Response(200, content=b""))
    assert answer == ProviderAnswer(p.rule.outcome, 200, p.rule.done_status)


@pytest.mark.parametrize("p", providers(lambda p: p.quoted_path is not None))
def test_reference_is_quoted_whole_in_the_path(p: Provider) -> None:
    # Given a reference with "/" and "?" in it
    seen, handle = recorder(200, p.success)
    # When the action is executed / Then it stays one path segment, no query added
    p.execute(handle, reference=HOSTILE_REFERENCE)
    assert seen[0].url.raw_path == p.quoted_path


@pytest.mark.parametrize("p", providers())
def test_missing_credentials_are_unauthorized_without_a_call(p: Provider) -> None:
    for missing in p.missing:
        # Given a worker missing one of the provider's settings
        seen, handle = recorder(200, p.success)
        adapter = p.adapter(handle, **missing.change)
        # When the action (and the status read, if it needs the setting) is attempted
        # Then it ends unauthorized, naming the setting, and nothing is sent
        with pytest.raises(errors.Unauthorized, match=missing.setting) as info:
            adapter.execute(p.cancel_request(), p.rule)
        assert info.value.code == "missing_credentials"
        if missing.on_read:
            with pytest.raises(errors.Unauthorized, match=missing.setting):
                adapter.read_status(p.cancel_request())
        assert seen == []


# -- how the action's answers are classified -------------------------------------------


@pytest.mark.parametrize("status", list(COMMON_STATUSES))
@pytest.mark.parametrize("p", providers())
def test_common_statuses_are_classified_alike(p: Provider, status: int) -> None:
    # Given the provider's error body, and a Retry-After header
    error_type = COMMON_STATUSES[status]
    _, handle = recorder(status, p.error_body(MESSAGE), {"Retry-After": "3"})
    # When the action is executed
    with pytest.raises(error_type) as info:
        p.execute(handle)
    # Then 401/403 are unauthorized, 429 rate limited, 5xx server errors: by status alone,
    # with the provider's message; the transient ones keep Retry-After
    exc = info.value
    assert type(exc) is error_type
    assert exc.http_status == status and exc.message == MESSAGE
    assert exc.code == (p.error_code or error_type.default_code)
    assert isinstance(exc, errors.TransientError) is (status in errors.TRANSIENT_STATUSES)
    if isinstance(exc, errors.TransientError):
        assert exc.retry_after == 3.0


@pytest.mark.parametrize("p", providers(lambda p: p.reference_is_a_resource))
def test_404_to_the_action_is_not_found(p: Provider) -> None:
    _, handle = recorder(404, p.error_body(MESSAGE))
    with pytest.raises(errors.NotFound) as info:
        p.execute(handle)
    assert info.value.http_status == 404 and info.value.outcome is Outcome.NOT_FOUND


@pytest.mark.parametrize("p", providers())
def test_an_undocumented_4xx_is_rejected(p: Provider) -> None:
    for status in p.rejected:
        _, handle = recorder(status, p.error_body(MESSAGE))
        with pytest.raises(errors.ProviderRejected) as info:
            p.execute(handle)
        assert type(info.value) is errors.ProviderRejected, status
        assert info.value.http_status == status and info.value.outcome is Outcome.REJECTED


@pytest.mark.parametrize("p", providers())
def test_a_redirect_is_not_followed_and_is_final(p: Provider) -> None:
    # Given a provider answering 302 elsewhere
    seen, handle = recorder(302, None, {"Location": "http://elsewhere.test/"})
    # When the action is executed / Then one call, and a permanent "unexpected" error
    with pytest.raises(errors.PermanentError) as info:
        p.execute(handle)
    assert type(info.value) is errors.PermanentError
    assert info.value.code == "unexpected_status" and info.value.http_status == 302
    assert len(seen) == 1


@pytest.mark.parametrize("p", providers())
def test_429_without_retry_after_leaves_the_wait_to_the_backoff(p: Provider) -> None:
    _, handle = recorder(429, p.error_body(MESSAGE))
    with pytest.raises(errors.RateLimited) as info:
        p.execute(handle)
    assert info.value.retry_after is None


@pytest.mark.parametrize("p", providers())
def test_long_error_texts_are_cut_short(p: Provider) -> None:
    _, handle = recorder(403, p.error_body("m" * 5000))
    with pytest.raises(errors.Unauthorized) as info:
        p.execute(handle)
    assert info.value.message == "m" * MAX_ERROR_TEXT


@pytest.mark.parametrize(("failure", "error_type"), TRANSPORT_FAILURES)
@pytest.mark.parametrize("p", providers())
def test_transport_failures_are_transient_and_say_whether_the_call_may_have_landed(
    p: Provider, failure: Callable[[str], httpx.TransportError],
    error_type: type[errors.TransientError],
) -> None:
    # Given a network that fails the call this way
    adapter = p.adapter(failing(failure))
    # When the action, or the status read, is attempted
    for attempt in (lambda: adapter.execute(p.cancel_request(), p.rule),
                    lambda: adapter.read_status(p.cancel_request())):
        with pytest.raises(errors.TransientError) as info:
            attempt()
        # Then it is retried; a call that may have reached the provider is read back first
        assert type(info.value) is error_type and info.value.http_status is None
        assert info.value.may_have_landed is (error_type is not errors.ProviderUnreachable)
        assert p.rules.provider in info.value.message


# -- the status read (crash recovery) --------------------------------------------------


@pytest.mark.parametrize("p", providers())
def test_status_read_sends_the_documented_request_and_returns_the_status(
    p: Provider,
) -> None:
    # Given a session in one of the provider's statuses
    status = sorted(p.rules.statuses)[0]
    seen, handle = recorder(200, p.status_body(status))
    # When its status is read back (after a crash mid-call)
    read = p.adapter(handle).read_status(p.cancel_request())
    # Then it is the documented read, and only the status comes back
    (sent,) = seen
    assert_documented(sent, p.read, p.headers)
    assert read == status


@pytest.mark.parametrize("p", providers())
def test_status_read_of_a_body_without_status_is_none(p: Provider) -> None:
    _, handle = recorder(200, {"id": "x"})
    assert p.adapter(handle).read_status(p.cancel_request()) is None


@pytest.mark.parametrize("status", [401, 403, 404, 429, 500, 503])
@pytest.mark.parametrize("p", providers())
def test_status_read_errors_are_classified(p: Provider, status: int) -> None:
    error_type = {404: errors.NotFound}.get(status) or COMMON_STATUSES[status]
    _, handle = recorder(status, p.error_body(MESSAGE), {"Retry-After": "2"})
    with pytest.raises(error_type) as info:
        p.adapter(handle).read_status(p.cancel_request())
    assert type(info.value) is error_type
    assert info.value.http_status == status and info.value.message == MESSAGE
    if isinstance(info.value, errors.TransientError):
        assert info.value.retry_after == 2.0
