"""Jumio: its rules table, options, the exact requests per product and region, and how each
answer is classified (httpx MockTransport)."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable

import httpx
import pytest

from config.settings import Settings
from worker.contract import CancelRequest, Outcome
from worker.errors import RuleViolation
from worker.providers import errors
from worker.providers.base import ProviderAnswer
from worker.providers.jumio import RULES, JumioAdapter, startup_warnings
from worker.providers.rules import check

REF = "8f0c2a4e-5b7d-4c1e-9a3f-0d2b6e8c1a57"  # 36 characters, the documented maximum
DELETE = RULES.actions["delete"]
BASIC = "Basic " + base64.b64encode(b"tok:sec").decode()
HOSTS = {
    "IDVCANCEL_JUMIO_BASE_URL_US": "http://us.test/p",
    "IDVCANCEL_JUMIO_BASE_URL_EU": "http://eu.test/p",
    "IDVCANCEL_JUMIO_BASE_URL_SGP": "http://sgp.test/p",
    "IDVCANCEL_JUMIO_RETRIEVAL_BASE_URL_US": "http://retrieval-us.test/p",
    "IDVCANCEL_JUMIO_RETRIEVAL_BASE_URL_EU": "http://retrieval-eu.test/p",
    "IDVCANCEL_JUMIO_RETRIEVAL_BASE_URL_SGP": "http://retrieval-sgp.test/p",
}
Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture(autouse=True)
def _no_jumio_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Settings read IDVCANCEL_* from the environment: keep the developer's out.
    for name in list(os.environ):
        if name.startswith("IDVCANCEL_JUMIO_"):
            monkeypatch.delenv(name)


def request(**change: object) -> CancelRequest:
    base = {"request_id": "r", "provider": "jumio", "action": "delete", "reference": REF,
            "requested_by": "t"}
    return CancelRequest.model_validate({**base, **change})


def settings(**change: str) -> Settings:
    values = {"jumio_api_token": "tok", "jumio_api_secret": "sec",
              "jumio_user_agent": "Acme Onboarding/2.1",
              **{k.removeprefix("IDVCANCEL_").lower(): v for k, v in HOSTS.items()}, **change}
    return Settings(**values)  # type: ignore[arg-type]


def recorder(status: int = 200, **response: object) -> tuple[list[httpx.Request], Handler]:
    seen: list[httpx.Request] = []

    def handle(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(status, **response)  # type: ignore[arg-type]

    return seen, handle


def adapter(handler: Handler, config: Settings | None = None) -> JumioAdapter:
    return JumioAdapter(config or settings(), transport=httpx.MockTransport(handler))


# -- rules ---------------------------------------------------------------------------
@pytest.mark.parametrize("status", ["PENDING", "DONE", "FAILED"])
def test_delete_is_possible_from_every_status(status: str) -> None:
    assert status in RULES.statuses
    assert RULES.is_actionable("delete", status) is True
    assert RULES.is_actionable("cancel", status) is False


def test_rules_table_shape() -> None:
    assert set(RULES.actions) == {"delete"}
    assert DELETE.outcome is Outcome.DELETED and DELETE.done_status == "DELETED"
    assert DELETE.reference_max_length == 36


def test_check_refuses_cancel_and_long_references() -> None:
    # Given a cancel, and a delete with a 37-character reference / Then both are refused
    with pytest.raises(RuleViolation, match="no API to cancel") as info:
        check(request(action="cancel"), RULES)
    assert info.value.code == "action_not_supported"
    with pytest.raises(RuleViolation, match="at most 36 characters; got 37") as info:
        check(request(reference="x" * 37), RULES)
    assert info.value.code == "invalid_reference"
    # And a 36-character reference passes
    assert check(request(), RULES) is DELETE


# -- options ---------------------------------------------------------------------------
@pytest.mark.parametrize(("options", "field"), [
    ({"product": "selfie"}, "options.product"),
    ({"product": "scans"}, "options.product"),
    ({"region": "mars"}, "options.region"),
    ({"region": "US"}, "options.region"),
    ({"product": 1}, "options.product"),
    ({"colour": "blue"}, "options.colour"),
])
def test_bad_options_are_refused_before_any_call(options: dict[str, object], field: str) -> None:
    seen, handle = recorder()
    jumio = adapter(handle)
    # When the pipeline validates the request / Then a RuleViolation names the field
    with pytest.raises(RuleViolation, match=field) as info:
        jumio.validate(request(options=options))
    assert info.value.code == "invalid_options"
    # And execute, should it be reached anyway, rejects without a call
    with pytest.raises(errors.ProviderRejected, match=field) as rejected:
        jumio.execute(request(options=options), DELETE)
    assert rejected.value.code == "invalid_options"
    assert seen == []


def test_good_options_pass_validation() -> None:
    jumio = adapter(recorder()[1])
    jumio.validate(request())
    jumio.validate(request(options={"product": "document", "region": "sgp"}))


# -- the requests ------------------------------------------------------------------------
@pytest.mark.parametrize("region", ["us", "eu", "sgp"])
@pytest.mark.parametrize(("product", "host", "path"), [
    ("scan", "{region}", "scans"),
    ("authentication", "{region}", "authentications"),
    ("document", "retrieval-{region}", "documents"),
])
def test_delete_goes_to_the_product_and_region_host(
    product: str, host: str, path: str, region: str
) -> None:
    # Given a provider that records what it receives
    seen, handle = recorder()
    # When a delete for that product and region is executed
    answer = adapter(handle).execute(
        request(options={"product": product, "region": region}), DELETE)
    # Then it is DELETE {host}/api/netverify/v2/{path}/{ref}, prefix kept
    (sent,) = seen
    assert sent.method == "DELETE"
    assert str(sent.url) == (
        f"http://{host.format(region=region)}.test/p/api/netverify/v2/{path}/{REF}")
    assert answer == ProviderAnswer(Outcome.DELETED, 200, "DELETED")


@pytest.mark.parametrize(("options", "url"), [
    ({}, "https://netverify.com/api/netverify/v2/scans/"),
    ({"region": "eu"}, "https://lon.netverify.com/api/netverify/v2/scans/"),
    ({"region": "sgp"}, "https://core-sgp.jumio.com/api/netverify/v2/scans/"),
    ({"product": "authentication"}, "https://netverify.com/api/netverify/v2/authentications/"),
    ({"product": "authentication", "region": "eu"},
     "https://lon.netverify.com/api/netverify/v2/authentications/"),
    ({"product": "authentication", "region": "sgp"},
     "https://core-sgp.jumio.com/api/netverify/v2/authentications/"),
    ({"product": "document"}, "https://retrieval.netverify.com/api/netverify/v2/documents/"),
    ({"product": "document", "region": "eu"},
     "https://retrieval.lon.netverify.com/api/netverify/v2/documents/"),
    ({"product": "document", "region": "sgp"},
     "https://retrieval.core-sgp.jumio.com/api/netverify/v2/documents/"),
])
def test_default_settings_reach_the_documented_hosts(options: dict[str, str], url: str) -> None:
    # Given the settings' default hosts (only credentials and User-Agent configured)
    config = Settings(jumio_api_token="tok", jumio_api_secret="sec",
                      jumio_user_agent="Acme Onboarding/2.1")
    seen, handle = recorder()
    # When a delete is executed / Then it reaches the host the Jumio guide documents
    adapter(handle, config).execute(request(options=options), DELETE)
    assert str(seen[0].url) == url + REF


def test_delete_sends_basic_auth_user_agent_and_accept() -> None:
    seen, handle = recorder()
    answer = adapter(handle).execute(request(), DELETE)
    (sent,) = seen
    assert sent.headers["authorization"] == BASIC
    assert base64.b64decode(BASIC.removeprefix("Basic ")) == b"tok:sec"
    assert sent.headers["user-agent"] == "Acme Onboarding/2.1"
    assert sent.headers["accept"] == "application/json"
    assert sent.content == b""
    # And 200 (no documented body) is deleted
    assert answer.outcome is Outcome.DELETED
    assert answer.http_status == 200 and answer.provider_status == "DELETED"


def test_reference_is_quoted_whole() -> None:
    seen, handle = recorder()
    adapter(handle).execute(request(reference="a/b?c"), DELETE)
    assert seen[0].url.raw_path == b"/p/api/netverify/v2/scans/a%2Fb%3Fc"


# -- answers ---------------------------------------------------------------------------
@pytest.mark.parametrize(("status", "error_type"), [
    (400, errors.ProviderRejected), (401, errors.Unauthorized), (403, errors.Unauthorized),
    (404, errors.NotFound), (405, errors.ProviderRejected), (406, errors.ProviderRejected),
    (409, errors.ProviderRejected), (429, errors.RateLimited),
    (500, errors.ProviderServerError), (502, errors.ProviderServerError),
    (503, errors.ProviderServerError), (504, errors.ProviderServerError),
    (302, errors.PermanentError),
])
def test_answers_are_classified(status: int, error_type: type[errors.ProviderError]) -> None:
    # Given Jumio's problem body and a Retry-After header
    body = {"title": "Some Title", "status": status, "detail": "Some detail"}
    _, handle = recorder(status, json=body, headers={"Retry-After": "3"})
    # When a delete is executed / Then the answer is classified by status
    with pytest.raises(error_type) as info:
        adapter(handle).execute(request(), DELETE)
    assert info.value.http_status == status
    assert isinstance(info.value, errors.TransientError) is (status in errors.TRANSIENT_STATUSES)
    if status != 302:
        assert info.value.message == "Some detail"
    if status == 429:
        assert isinstance(info.value, errors.RateLimited) and info.value.retry_after == 3.0


def test_documented_429_body_is_rate_limited_without_retry_after() -> None:
    body = {"title": "Too Many Requests", "status": 429, "detail": "Request limit exceeded"}
    _, handle = recorder(429, json=body)
    with pytest.raises(errors.RateLimited, match="Request limit exceeded") as info:
        adapter(handle).execute(request(), DELETE)
    assert info.value.retry_after is None


def test_connection_errors_and_timeouts_are_transient() -> None:
    def refuse(_: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    def slow(_: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow")

    with pytest.raises(errors.ProviderUnreachable):
        adapter(refuse).execute(request(), DELETE)
    with pytest.raises(errors.ProviderTimeout):
        adapter(slow).execute(request(), DELETE)


@pytest.mark.parametrize(("change", "setting"), [
    ({"jumio_user_agent": ""}, "IDVCANCEL_JUMIO_USER_AGENT"),
    ({"jumio_user_agent": "   "}, "IDVCANCEL_JUMIO_USER_AGENT"),
    ({"jumio_api_token": ""}, "IDVCANCEL_JUMIO_API_TOKEN"),
    ({"jumio_api_secret": ""}, "IDVCANCEL_JUMIO_API_SECRET"),
])
def test_missing_configuration_is_unauthorized_without_a_call(
    change: dict[str, str], setting: str
) -> None:
    # Given a worker missing one Jumio setting
    seen, handle = recorder()
    jumio = adapter(handle, settings(**change))
    # When a delete or a status read is attempted / Then unauthorized names it, no call
    with pytest.raises(errors.Unauthorized, match=setting) as info:
        jumio.execute(request(), DELETE)
    assert info.value.code == "missing_credentials"
    with pytest.raises(errors.Unauthorized, match=setting):
        jumio.read_status(request())
    assert seen == []


# -- recovery read -----------------------------------------------------------------------
def test_read_status_gets_the_same_path() -> None:
    seen, handle = recorder(200, json={"timestamp": "t", "scanReference": REF, "status": "DONE"})
    status = adapter(handle).read_status(request(options={"product": "document", "region": "eu"}))
    assert status == "DONE"
    (sent,) = seen
    assert sent.method == "GET"
    assert str(sent.url) == f"http://retrieval-eu.test/p/api/netverify/v2/documents/{REF}"
    assert sent.headers["authorization"] == BASIC
    assert sent.headers["user-agent"] == "Acme Onboarding/2.1"


def test_read_status_of_a_deleted_transaction_is_not_found() -> None:
    _, handle = recorder(404, json={"title": "Not Found", "status": 404})
    with pytest.raises(errors.NotFound) as info:
        adapter(handle).read_status(request())
    assert info.value.http_status == 404


# -- start-up ---------------------------------------------------------------------------
def test_startup_warns_about_a_missing_or_generic_user_agent() -> None:
    (missing,) = startup_warnings(settings(jumio_user_agent=""))
    assert "IDVCANCEL_JUMIO_USER_AGENT" in missing and "not set" in missing
    (generic,) = startup_warnings(settings(jumio_user_agent="python-httpx/0.27"))
    assert "IDVCANCEL_JUMIO_USER_AGENT" in generic and "python-httpx" in generic
    assert startup_warnings(settings()) == []
