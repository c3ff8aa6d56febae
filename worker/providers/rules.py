"""Lifecycle rules as data: one ``ProviderRules`` table per provider, read by ``check``.

A table says which actions a provider has an API for, which session statuses allow
them, what the provider insists on (a reason, a short reference) and which status a
session shows once the action is done. Tasks never branch on a provider name; they
ask ``check`` before any call, and the sweep asks ``is_actionable``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from worker.contract import ActionName, CancelRequest, Outcome
from worker.errors import RuleViolation


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
        refund_from: statuses from which a cancel refunds the fee (ID Pass).
    """

    allowed_from: frozenset[str]
    done_status: str
    outcome: Outcome
    reason_min_length: int = 0
    reference_max_length: int | None = None
    reference_pattern: re.Pattern[str] | None = None
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
        )
    reference = request.reference
    if rule.reference_max_length is not None and len(reference) > rule.reference_max_length:
        raise RuleViolation(
            "invalid_reference",
            f"{rules.provider} references are at most {rule.reference_max_length} characters;"
            f" got {len(reference)}",
        )
    if rule.reference_pattern is not None and not rule.reference_pattern.fullmatch(reference):
        raise RuleViolation(
            "invalid_reference",
            f"{rules.provider} references must match {rule.reference_pattern.pattern}",
        )
    if rule.reason_min_length:
        reason = (request.reason or "").strip()
        if len(reason) < rule.reason_min_length:
            raise RuleViolation(
                "reason_required",
                f"{rules.provider} requires a reason of at least {rule.reason_min_length}"
                f" characters to {request.action}",
            )
    return rule
