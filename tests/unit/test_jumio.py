"""Jumio: its rules table, options, the host and path per product and region, and its
start-up warnings (httpx MockTransport).

What every adapter does alike (the request, 401/403/404/429/5xx, transport failures,
missing credentials, the status read) is in test_provider_contract.py."""

from __future__ import annotations

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


def test_check_refuses_a_reference_longer_than_36_characters() -> None:
    # Given a delete with a 37-character reference / Then it is refused
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
    # When the rules table is checked (pipeline and producer) / Then it names the field
    with pytest.raises(RuleViolation, match=field) as info:
        check(request(options=options), RULES)
    assert info.value.code == "invalid_options"
    # And execute, should it be reached anyway, rejects without a call
    with pytest.raises(errors.ProviderRejected, match=field) as rejected:
        jumio.execute(request(options=options), DELETE)
    assert rejected.value.code == "invalid_options"
    assert seen == []


def test_good_options_pass_validation() -> None:
    """Given the default options and a product/region pair / Then the table admits both."""
    assert check(request(), RULES) is DELETE
    assert check(request(options={"product": "document", "region": "sgp"}), RULES) is DELETE


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


# -- recovery read -----------------------------------------------------------------------
def test_read_status_gets_the_product_and_region_path_the_delete_used() -> None:
    # Given a document deleted in the EU region
    seen, handle = recorder(200, json={"timestamp": "t", "scanReference": REF, "status": "DONE"})
    # When its status is read back / Then it is a GET on the same host and path
    status = adapter(handle).read_status(request(options={"product": "document", "region": "eu"}))
    assert status == "DONE"
    (sent,) = seen
    assert sent.method == "GET"
    assert str(sent.url) == f"http://retrieval-eu.test/p/api/netverify/v2/documents/{REF}"


# -- start-up ---------------------------------------------------------------------------
def test_startup_warns_about_a_missing_or_generic_user_agent() -> None:
    (missing,) = startup_warnings(settings(jumio_user_agent=""))
    assert "IDVCANCEL_JUMIO_USER_AGENT" in missing and "not set" in missing
    (generic,) = startup_warnings(settings(jumio_user_agent="python-httpx/0.27"))
    assert "IDVCANCEL_JUMIO_USER_AGENT" in generic and "python-httpx" in generic
    assert startup_warnings(settings()) == []
