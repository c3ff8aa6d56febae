"""Jumio (legacy Netverify v2): delete only; Jumio has no API to cancel a session.

``DELETE {base}/api/netverify/v2/{product}/{ref}`` with HTTP Basic (API token : secret),
``Accept: application/json`` and a **mandatory** ``User-Agent`` naming the business.
Jumio answers 403 to a missing or generic User-Agent (``python-httpx/…``), so while
``IDVCANCEL_JUMIO_USER_AGENT`` is unset no call is made at all: requests end
``unauthorized`` naming the setting, and the worker warns at start (``startup_warnings``).

The request's ``options`` pick the host and path:

============== ================================= =========================================
product        path                              host (us / eu / sgp)
============== ================================= =========================================
scan (default) ``/api/netverify/v2/scans/{ref}``  netverify.com / lon.netverify.com /
                                                  core-sgp.jumio.com
authentication ``…/authentications/{ref}``       same as scan
document       ``…/documents/{ref}``             retrieval.netverify.com /
                                                  retrieval.lon.netverify.com /
                                                  retrieval.core-sgp.jumio.com
============== ================================= =========================================

``region`` is ``us`` (default), ``eu`` or ``sgp``; every host is a setting
(``IDVCANCEL_JUMIO_BASE_URL_*``, ``IDVCANCEL_JUMIO_RETRIEVAL_BASE_URL_*``). A bad option
is refused before any call (``RULES``: ``rejected``, code ``invalid_options``).

Answers: 200 (no documented body) → ``deleted``; 404 → ``not_found``; 401/403 →
``unauthorized``; 429 (``{"title", "status", "detail"}``, maybe ``Retry-After``) and 5xx
are retried. References are at most 36 characters. Deletion is immediate and
irreversible, and a second delete of a deleted transaction is undocumented (the retrieval
API answers 404 for it): it ends ``not_found``, which is true. After a crash mid-call,
``read_status`` (``GET`` on the same path) reads 404 for a deleted transaction, which
the pipeline takes as "the delete landed".
"""

from __future__ import annotations

import base64
from typing import Literal

import httpx
from pydantic import BaseModel, ConfigDict

from config.settings import Settings
from worker.contract import CancelRequest, Outcome
from worker.errors import RuleViolation
from worker.providers.base import (
    ProviderAdapter,
    ProviderAnswer,
    join_url,
    json_body,
    short,
)
from worker.providers.errors import ProviderRejected
from worker.providers.rules import ActionRule, ProviderRules, validate_options

USER_AGENT_SETTING = "IDVCANCEL_JUMIO_USER_AGENT"
#: User-Agents Jumio treats as suspicious (answered 403): library defaults, not a business.
GENERIC_USER_AGENTS = ("python-httpx", "python-requests", "python-urllib", "curl", "wget")

STATUSES = frozenset({"PENDING", "DONE", "FAILED"})

Product = Literal["scan", "authentication", "document"]
Region = Literal["us", "eu", "sgp"]

#: product → (path segment, served by the retrieval host)
_PRODUCTS: dict[Product, tuple[str, bool]] = {
    "scan": ("scans", False),
    "authentication": ("authentications", False),
    "document": ("documents", True),
}


class JumioOptions(BaseModel):
    """The request's ``options`` for Jumio: which product and which region."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    product: Product = "scan"
    region: Region = "us"


RULES = ProviderRules(
    provider="jumio",
    actions={
        "delete": ActionRule(
            # Any transaction can be deleted, whatever its status.
            allowed_from=STATUSES,
            # Not a Jumio status: a deleted transaction reads as 404 (see read_status).
            done_status="DELETED",
            outcome=Outcome.DELETED,
            reference_max_length=36,
            options=JumioOptions,
        ),
    },
    statuses=STATUSES,
    # Only a scan still PENDING is an application in flight: the sweep and supersede
    # delete those; finished scans are deleted only on request.
    in_flight=frozenset({"PENDING"}),
)


def parse_options(request: CancelRequest) -> JumioOptions:
    """The validated options, or ``RuleViolation("invalid_options")`` naming the field.

    Examples:
        >>> from worker.contract import CancelRequest
        >>> req = CancelRequest(request_id="r", provider="jumio", action="delete",
        ...     reference="abc", requested_by="x", options={"region": "mars"})
        >>> parse_options(req)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        worker.errors.RuleViolation: invalid jumio delete options: options.region: ...
    """
    return validate_options(JumioOptions, request.options, "jumio delete")


def base_url(settings: Settings, options: JumioOptions) -> str:
    """The host serving ``options.product`` in ``options.region``."""
    _, retrieval = _PRODUCTS[options.product]
    bases = {
        (False, "us"): settings.jumio_base_url_us,
        (False, "eu"): settings.jumio_base_url_eu,
        (False, "sgp"): settings.jumio_base_url_sgp,
        (True, "us"): settings.jumio_retrieval_base_url_us,
        (True, "eu"): settings.jumio_retrieval_base_url_eu,
        (True, "sgp"): settings.jumio_retrieval_base_url_sgp,
    }
    return bases[(retrieval, options.region)]


def transaction_url(settings: Settings, options: JumioOptions, reference: str) -> str:
    """``{host}/api/netverify/v2/{product}/{reference}`` (the reference quoted whole).

    Examples:
        >>> transaction_url(Settings(), JumioOptions(product="document", region="eu"), "r1")
        'https://retrieval.lon.netverify.com/api/netverify/v2/documents/r1'
    """
    segment, _ = _PRODUCTS[options.product]
    return join_url(base_url(settings, options), f"api/netverify/v2/{segment}", reference)


def startup_warnings(settings: Settings) -> list[str]:
    """Configuration problems to log when a worker starts."""
    agent = settings.jumio_user_agent.strip()
    if not agent:
        return [
            f"{USER_AGENT_SETTING} is not set: Jumio requires a User-Agent naming the business"
            " (e.g. 'Company App/1.0'); every Jumio request ends unauthorized, without a"
            " call, until it is set"
        ]
    if agent.lower().startswith(GENERIC_USER_AGENTS):
        return [
            f"{USER_AGENT_SETTING} looks like a library default ({agent.split('/')[0]}):"
            " Jumio answers 403 to such User-Agents; name the business instead"
        ]
    return []


class JumioAdapter(ProviderAdapter):
    rules = RULES

    def _headers(self) -> dict[str, str]:
        """Basic auth and the mandatory User-Agent; ``unauthorized`` when one is unset."""
        agent = self.require(self.settings.jumio_user_agent.strip(), USER_AGENT_SETTING)
        token = self.require(
            self.settings.jumio_api_token.get_secret_value(), "IDVCANCEL_JUMIO_API_TOKEN"
        )
        secret = self.require(
            self.settings.jumio_api_secret.get_secret_value(), "IDVCANCEL_JUMIO_API_SECRET"
        )
        basic = base64.b64encode(f"{token}:{secret}".encode()).decode("ascii")
        return {
            "Authorization": f"Basic {basic}",
            "User-Agent": agent,
            "Accept": "application/json",
        }

    def _url(self, request: CancelRequest) -> str:
        try:
            options = parse_options(request)
        except RuleViolation as exc:
            # RULES refuses these before the pipeline calls; should one get here,
            # end it rejected without a call (a RuleViolation here would be retried).
            raise ProviderRejected(exc.message, code=exc.code) from None
        return transaction_url(self.settings, options, request.reference)

    def execute(self, request: CancelRequest, rule: ActionRule) -> ProviderAnswer:
        url = self._url(request)
        response = self.send("DELETE", url, headers=self._headers())
        if response.status_code == 200:
            return ProviderAnswer(
                outcome=rule.outcome, http_status=200, provider_status=rule.done_status
            )
        self.fail(response, self._message(response))

    def read_status(self, request: CancelRequest) -> str | None:
        """``GET`` the same path: ``PENDING``/``DONE``/``FAILED``; 404 (deleted) raises
        ``NotFound``, which the pipeline reads as "the delete landed"."""
        url = self._url(request)
        response = self.send("GET", url, headers=self._headers())
        if response.status_code == 200:
            status = json_body(response).get("status")
            return str(status) if status else None
        self.fail(response, self._message(response))

    @staticmethod
    def _message(response: httpx.Response) -> str:
        """Jumio's error text: ``detail`` (or ``title``) of its problem body."""
        body = json_body(response)
        return short(body.get("detail") or body.get("title") or "")
