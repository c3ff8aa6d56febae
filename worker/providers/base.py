"""What every provider adapter shares: one pooled HTTP client, and the answers that
mean the same thing everywhere (timeouts, 429, 5xx, 401/403, 404).

An adapter never imports Celery: it takes a request that passed its ``rules`` table
(``rules.check``) and either returns a ``ProviderAnswer`` or raises one of
``worker.providers.errors``. What a request must meet is data in that table, never code
in an adapter, so that the producer refuses exactly what the worker would, without one.
Tests hand it an ``httpx.MockTransport`` (unit) or point it at the simulator
(integration).
"""

from __future__ import annotations

import abc
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, NoReturn
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from config.settings import Settings
from worker.contract import CancelRequest, Outcome
from worker.providers.errors import (
    AnswerLost,
    NotFound,
    PermanentError,
    ProviderRejected,
    ProviderServerError,
    ProviderTimeout,
    ProviderUnreachable,
    RateLimited,
    Unauthorized,
)
from worker.providers.rules import ActionRule, ProviderRules
from worker.providers.transport import PooledTransport, UntrustedCertificate

#: Sent with every call; an adapter's own headers win (Jumio names the business in its
#: User-Agent: it refuses library defaults).
DEFAULT_HEADERS = {"User-Agent": "idv-cancel/1.0", "Accept": "application/json"}

#: Longest provider error text an exception holds; provider bodies can echo personal
#: data, so we only ever copy named error fields, and cut them short. None of it is kept
#: past the exception: results, audit and dead letters get ``worker.providers.errortext``'s words.
MAX_ERROR_TEXT = 200


@dataclass(frozen=True)
class ProviderAnswer:
    """A provider call that reached a final outcome."""

    outcome: Outcome
    http_status: int | None
    provider_status: str | None
    fee_refunded: bool | None = None


def join_url(base: str, *segments: str) -> str:
    """Join ``base`` (which may carry a path prefix) and path segments.

    Segments after the first are quoted whole, so a reference can never add a path.

    Examples:
        >>> join_url("http://h:1/prefix/", "/idpass/cancel")
        'http://h:1/prefix/idpass/cancel'
        >>> join_url("http://h/v1", "verifications", "a/b", "cancel")
        'http://h/v1/verifications/a%2Fb/cancel'
    """
    path = "/".join(s if i == 0 else quote(s, safe="") for i, s in enumerate(segments))
    return base.rstrip("/") + "/" + path.lstrip("/")


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def json_body(response: httpx.Response) -> dict[str, Any]:
    """The response's JSON object, or an empty dict when it has none."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return body if isinstance(body, dict) else {}


#: "... status 'verified' ...", "... status: approved", "... is expired": a status a
#: provider's error message names.
_NAMED_STATUS = re.compile(r"\b(?:status|is)\s*:?\s+['\"]?([a-z_]+)")


def blocking_status(body: Mapping[str, Any], message: str, rule: ActionRule,
                    statuses: frozenset[str]) -> str | None:
    """The status that made the action impossible, when the answer names one.

    An explicit ``status`` field (top level, then inside ``error``) wins. Otherwise a
    message naming exactly one known status from which the action is *not* allowed
    gives it; a message that only names allowed statuses gives None.

    Examples:
        >>> from worker.providers.gu1 import RULES
        >>> rule, known = RULES.actions["cancel"], RULES.statuses
        >>> blocking_status({}, "invalid status: validation is approved", rule, known)
        'approved'
        >>> blocking_status({}, "only if status is pending", rule, known) is None
        True
    """
    error = body.get("error")
    for source in (body, error if isinstance(error, Mapping) else {}):
        value = source.get("status")
        if isinstance(value, str) and value in statuses:
            return value
    named = {w for w in _NAMED_STATUS.findall(message.lower()) if w in statuses}
    named -= rule.allowed_from
    return named.pop() if len(named) == 1 else None


def short(text: object) -> str:
    return str(text)[:MAX_ERROR_TEXT]


class ProviderAdapter(abc.ABC):
    """One provider's API. Subclasses set ``rules`` and implement ``execute``.

    Parameters:
        settings: endpoints, credentials and the HTTP timeout.
        transport: an httpx transport to use instead of the network (tests).
    """

    rules: ClassVar[ProviderRules]

    def __init__(self, settings: Settings, transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings
        # One transport per provider and process, shared by all threads: kept-alive
        # connections instead of a TCP (and TLS) handshake per request. Requests go to
        # it straight, without ``httpx.Client``: its cookie jar, redirect and auth
        # handling cost more CPU than the call itself and none of it is wanted here (a
        # cookie from one session's answer must not ride along on the next session's).
        self.transport = transport or PooledTransport()
        self._timeout = httpx.Timeout(settings.http_timeout_seconds).as_dict()

    @abc.abstractmethod
    def execute(self, request: CancelRequest, rule: ActionRule) -> ProviderAnswer:
        """Carry the action out: one HTTP call, answer classified."""

    def read_status(self, request: CancelRequest) -> str | None:
        """The session's status now, for recovery after a crash; None if unreadable."""
        return None

    def close(self) -> None:
        self.transport.close()

    def send(self, method: str, url: str, *, json: Any = None,
             headers: Mapping[str, str] | None = None) -> httpx.Response:
        """Send one request (``json`` as its body), read the whole answer; connection
        trouble and timeouts become transient errors. Redirects are not followed."""
        request = httpx.Request(method, url, json=json,
                                headers={**DEFAULT_HEADERS, **(headers or {})},
                                extensions={"timeout": self._timeout})
        try:
            response = self.transport.handle_request(request)
            response.read()
            return response
        except httpx.TimeoutException as exc:
            raise ProviderTimeout(
                f"{self.rules.provider} did not answer within"
                f" {self.settings.http_timeout_seconds:g} s ({type(exc).__name__})"
            ) from exc
        except (httpx.ReadError, httpx.RemoteProtocolError) as exc:
            raise AnswerLost(
                f"{self.rules.provider} took the request but the connection broke before"
                f" its answer ({type(exc).__name__})"
            ) from exc
        except httpx.TransportError as exc:
            # An untrusted certificate is a setting to fix, not a network blip: say so.
            why = str(exc) if isinstance(exc, UntrustedCertificate) else type(exc).__name__
            raise ProviderUnreachable(f"{self.rules.provider} could not be reached ({why})"
                                      ) from exc

    def raise_common(self, response: httpx.Response, message: str, code: str | None) -> None:
        """Raise for the statuses that mean the same at every provider."""
        status = response.status_code
        kw: dict[str, Any] = {"http_status": status, "code": code}
        if status == 429:
            raise RateLimited(
                message or "rate limited",
                retry_after=parse_retry_after(response.headers.get("retry-after")),
                **kw,
            )
        if status in (500, 502, 503, 504):
            raise ProviderServerError(
                message or f"server error {status}",
                retry_after=parse_retry_after(response.headers.get("retry-after")),
                **kw,
            )
        if status in (401, 403):
            raise Unauthorized(message or f"credentials refused ({status})", **kw)
        if status == 404:
            raise NotFound(message or "no such session at the provider", **kw)

    def fail(
        self, response: httpx.Response, message: str = "", code: str | None = None
    ) -> NoReturn:
        """Classify a non-success answer; always raises."""
        self.raise_common(response, message, code)
        status = response.status_code
        if 400 <= status < 500:
            raise ProviderRejected(
                message or f"the provider refused the request ({status})",
                http_status=status,
                code=code,
            )
        raise PermanentError(
            message or f"unexpected answer {status}", http_status=status, code="unexpected_status"
        )

    def bearer(self, secret: SecretStr, setting: str) -> dict[str, str]:
        """``Authorization: Bearer …`` from a secret setting (``unauthorized`` if unset)."""
        return {"Authorization": f"Bearer {self.require(secret.get_secret_value(), setting)}"}

    def require(self, value: str, setting: str) -> str:
        """A credential's value, or ``unauthorized`` naming the setting when it is unset."""
        if not value:
            raise Unauthorized(f"{setting} is not set", code="missing_credentials")
        return value
