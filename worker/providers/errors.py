"""How a provider call can go wrong, and what each way means for the request.

Drawn as a tree, httpx-style. Transient errors are retried with backoff; permanent
errors end the request with the outcome written beside them. A transient error that
``may_have_landed`` (the request reached the provider, its answer did not reach us) makes
the next attempt read the session's status before calling again::

    ProviderError
    ├── TransientError                retry (backoff, full jitter, Retry-After)
    │   ├── ProviderUnreachable       connection refused / reset, DNS: nothing was sent
    │   │   └── AnswerLost            sent, then the connection broke before the answer
    │   ├── ProviderTimeout           no answer within the HTTP timeout
    │   ├── RateLimited               429
    │   └── ProviderServerError       500, 502, 503, 504
    └── PermanentError                final, never retried
        ├── NotCancellable            → not_cancellable (session in a final state)
        ├── NotFound                  → not_found (404)
        ├── Unauthorized              → unauthorized (401, 403, missing credentials)
        └── ProviderRejected          → rejected (any other 4xx: the provider refused
                                         the request as invalid; kept for a person)
"""

from __future__ import annotations

from worker.contract import Outcome


class ProviderError(Exception):
    """The provider call did not succeed.

    Parameters:
        message: for people; never contains a token or personal data.
        code: a stable machine-readable code (``provider_unavailable``, the provider's own
            error code when it has one, ...).
        http_status: the provider's HTTP status, or None when no answer came.
        provider_status: the session's status as the provider reported it, when known.
    """

    outcome: Outcome | None = None
    default_code = "provider_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        http_status: int | None = None,
        provider_status: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.http_status = http_status
        self.provider_status = provider_status


class TransientError(ProviderError):
    """Worth retrying: the same call may succeed later."""

    default_code = "provider_unavailable"
    #: The call may have been carried out although no answer came (see the tree).
    may_have_landed = False

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        #: Seconds the provider asked us to wait (Retry-After), if it said.
        self.retry_after = retry_after


class ProviderUnreachable(TransientError):
    default_code = "provider_unreachable"


class AnswerLost(ProviderUnreachable):
    default_code = "answer_lost"
    may_have_landed = True


class ProviderTimeout(TransientError):
    default_code = "provider_timeout"
    may_have_landed = True


class RateLimited(TransientError):
    default_code = "rate_limited"


class ProviderServerError(TransientError):
    default_code = "provider_server_error"


class PermanentError(ProviderError):
    """Final: retrying would give the same answer."""

    outcome: Outcome = Outcome.REJECTED


class NotCancellable(PermanentError):
    outcome = Outcome.NOT_CANCELLABLE
    default_code = "not_cancellable"


class NotFound(PermanentError):
    outcome = Outcome.NOT_FOUND
    default_code = "not_found"


class Unauthorized(PermanentError):
    outcome = Outcome.UNAUTHORIZED
    default_code = "unauthorized"


class ProviderRejected(PermanentError):
    outcome = Outcome.REJECTED
    default_code = "provider_rejected"


#: HTTP statuses that are worth retrying whatever the provider.
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
