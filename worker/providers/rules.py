"""Lifecycle rules as data: one ``ProviderRules`` table per provider, read by ``check``.

A table says which actions a provider has an API for, which session statuses allow
them, what the provider insists on (a reason, a reference's length or format, the
options it reads) and which status a session shows once the action is done. Tasks
never branch on a provider name. ``check`` is the one test of a request against them:
the worker asks it before any call, the producer (``worker.providers.admissible``)
before sending, so what one refuses the other refuses too; the sweep asks
``is_actionable``. ``worker.providers.rulesdoc`` renders the tables for the README.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from worker.contract import ActionName, CancelRequest, Outcome
from worker.errors import RuleViolation

OptionsT = TypeVar("OptionsT", bound=BaseModel)

#: Longest text of a refusal: option errors name each field, and there may be many.
MAX_MESSAGE = 200


@dataclass(frozen=True)
class ActionRule:
    """What one action needs at one provider.

    Parameters:
        allowed_from: statuses from which the provider carries the action out.
        done_status: the status the session shows once the action is done.
        outcome: the outcome of success (``cancelled`` or ``deleted``).
        reason_min_length: a reason of at least this many characters (after trimming)
            is required; 0 means the reason is optional.
        reference_max_length: longer references are refused before any call.
        reference_pattern: references must match it (full match) when set.
        reference_format: what ``reference_pattern`` means, for people ("a UUID"):
            the refusal and the README say it instead of the expression.
        options: the model the request's ``options`` must satisfy (strict, unknown keys
            refused); None: the provider reads no options, and any are ignored.
        refund_from: statuses from which a cancel refunds the fee (ID Pass).
    """

    allowed_from: frozenset[str]
    done_status: str
    outcome: Outcome
    reason_min_length: int = 0
    reference_max_length: int | None = None
    reference_pattern: re.Pattern[str] | None = None
    reference_format: str = ""
    options: type[BaseModel] | None = None
    refund_from: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ProviderRules:
    """The lifecycle table of one provider.

    Parameters:
        provider: the contract's provider name.
        actions: the actions it has an API for; any other is ``rejected`` before a call.
        statuses: every status the provider documents (for validation and the sweep).
        abandoned_after: how long without activity before the sweep cancels a session
            (defaults follow the provider's link validity).
    """

    provider: str
    actions: Mapping[ActionName, ActionRule]
    statuses: frozenset[str]
    abandoned_after: timedelta = field(default=timedelta(days=7))
    #: Statuses in which a session is still in flight (issued, not finished): only these
    #: are tracked for the abandoned sweep and supersede. Empty = where the provider's
    #: first action is allowed. Jumio deletes finished scans too, but a finished scan is
    #: not an abandoned application: deleting it is a retention decision, not a sweep's.
    in_flight: frozenset[str] = frozenset()

    def is_in_flight(self, status: str) -> bool:
        """Whether a session in ``status`` is still in flight (sweep and supersede)."""
        if self.in_flight:
            return status in self.in_flight
        first = next(iter(self.actions.values()))
        return status in first.allowed_from

    def is_actionable(self, action: ActionName, status: str) -> bool:
        """Whether ``action`` is possible from ``status``."""
        rule = self.actions.get(action)
        return rule is not None and status in rule.allowed_from


def check(request: CancelRequest, rules: ProviderRules) -> ActionRule:
    """Return the rule for the request's action, or raise ``RuleViolation``.

    Examples:
        >>> from worker.providers.idpass import RULES
        >>> req = CancelRequest(request_id="r", provider="idpass", action="delete",
        ...     reference="fe4291ca-d831-4760-96df-c9cb03b3cd95", requested_by="x")
        >>> check(req, RULES)
        Traceback (most recent call last):
        ...
        worker.errors.RuleViolation: idpass has no API to delete a session; only: cancel
    """
    rule = rules.actions.get(request.action)
    if rule is None:
        supported = ", ".join(sorted(rules.actions))
        raise RuleViolation(
            "action_not_supported",
            f"{rules.provider} has no API to {request.action} a session; only: {supported}",
            "action",
        )
    reference = request.reference
    if rule.reference_max_length is not None and len(reference) > rule.reference_max_length:
        raise RuleViolation(
            "invalid_reference",
            f"{rules.provider} references are at most {rule.reference_max_length} characters;"
            f" got {len(reference)}",
            "reference",
        )
    if rule.reference_pattern is not None and not rule.reference_pattern.fullmatch(reference):
        raise RuleViolation(
            "invalid_reference",
            f"{rules.provider} references must be"
            f" {rule.reference_format or f'a match of {rule.reference_pattern.pattern}'}",
            "reference",
        )
    if rule.reason_min_length:
        reason = (request.reason or "").strip()
        if len(reason) < rule.reason_min_length:
            raise RuleViolation(
                "reason_required",
                f"{rules.provider} requires a reason of at least {rule.reason_min_length}"
                f" characters to {request.action}",
                "reason",
            )
    if rule.options is not None:
        validate_options(rule.options, request.options, f"{rules.provider} {request.action}")
    return rule


def validate_options(model: type[OptionsT], options: Mapping[str, Any], what: str
                     ) -> OptionsT:
    """``options`` as ``model``, or ``RuleViolation("invalid_options")`` naming each field
    (``what`` says whose options: "jumio delete"), never echoing a value.

    Examples:
        >>> from worker.providers.onespan import DeleteOptions
        >>> validate_options(DeleteOptions, {"grace_period": -1}, "onespan delete")
        Traceback (most recent call last):
        ...
        worker.errors.RuleViolation: invalid onespan delete options: options.grace_period: Input should be greater than or equal to 0
    """  # noqa: E501
    try:
        return model.model_validate(options)
    except ValidationError as exc:
        problems = "; ".join(
            f"options.{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise RuleViolation("invalid_options", f"invalid {what} options: {problems}"[:MAX_MESSAGE],
                            "options") from None
