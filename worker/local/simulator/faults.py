"""Per-provider fault settings and the decision taken for each provider call."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

TIMEOUT_MODES = ("504", "close")


@dataclass
class Faults:
    """What goes wrong at one provider. Replaced as a whole by ``PUT /_sim/faults/{provider}``.

    Precedence for a call: ``down`` > ``fail_next`` > ``timeout_next`` > ``error_rate``;
    ``latency_ms`` is added to every call, faulted or not.
    """

    latency_ms: float = 0
    error_rate: float = 0.0
    error_statuses: list[int] = field(default_factory=lambda: [503])
    fail_next: list[int] = field(default_factory=list)
    retry_after: int | None = None
    timeout_next: int = 0
    hang_seconds: float = 5.0
    timeout_mode: str = "504"
    apply_on_timeout: bool = False
    down: bool = False
    #: Per reference: statuses answered to that reference's next calls, in order.
    fail_reference: dict[str, list[int]] = field(default_factory=dict)
    #: Per reference: a status answered to every call for that reference.
    stuck_reference: dict[str, int] = field(default_factory=dict)
    #: References whose session no call changes: a cancel or delete is answered as
    #: usual (200) but the session keeps showing as it was (a provider that said yes and
    #: did not do it: what a confirmation read must catch).
    keep_active: list[str] = field(default_factory=list)
    #: Text added to every error message this provider answers (a provider that echoes
    #: what it holds, a name or a document number, in its error text).
    error_detail: str = ""

    def copy(self) -> Faults:
        return replace(
            self, error_statuses=list(self.error_statuses), fail_next=list(self.fail_next),
            fail_reference={k: list(v) for k, v in self.fail_reference.items()},
            stuck_reference=dict(self.stuck_reference), keep_active=list(self.keep_active),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Faults:
        """Validated settings; raises ValueError naming the offending key."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown fault settings: {', '.join(unknown)}")
        faults = cls()
        for key, value in data.items():
            setattr(faults, key, _CHECKS[key](key, value))
        return faults


def _number(key: str, value: Any, upper: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{key} must be a number >= 0")
    if upper is not None and value > upper:
        raise ValueError(f"{key} must be <= {upper}")
    return value


def _count(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} must be an integer >= 0")
    return value


def _statuses(key: str, value: Any, allow_empty: bool = True) -> list[int]:
    ok = isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and 400 <= v <= 599 for v in value
    )
    if not ok or (not allow_empty and not value):
        raise ValueError(f"{key} must be a list of HTTP error statuses (400..599)")
    return list(value)


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be a boolean")
    return value


def _mode(key: str, value: Any) -> str:
    if value not in TIMEOUT_MODES:
        raise ValueError(f"{key} must be one of {', '.join(TIMEOUT_MODES)}")
    return str(value)


def _per_reference(key: str, value: Any) -> dict[str, list[int]]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"{key} must map references to lists of statuses")
    return {k: _statuses(key, v) for k, v in value.items()}


def _stuck(key: str, value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        raise ValueError(f"{key} must map references to a status")
    return {str(k): _statuses(key, [v])[0] for k, v in value.items()}


def _references(key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{key} must be a list of references")
    return list(value)


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or len(value) > 1000:
        raise ValueError(f"{key} must be text of at most 1000 characters")
    return value


_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "keep_active": _references,
    "error_detail": _text,
    "fail_reference": _per_reference,
    "stuck_reference": _stuck,
    "latency_ms": _number,
    "error_rate": lambda k, v: _number(k, v, 1.0),
    "error_statuses": lambda k, v: _statuses(k, v, allow_empty=False),
    "fail_next": _statuses,
    "retry_after": lambda k, v: None if v is None else _count(k, v),
    "timeout_next": _count,
    "hang_seconds": _number,
    "timeout_mode": _mode,
    "apply_on_timeout": _flag,
    "down": _flag,
}


@dataclass(frozen=True)
class Decision:
    """The fault (if any) chosen for one call. ``kind`` is None for a normal answer."""

    latency: float
    kind: str | None = None
    status: int | None = None
    retry_after: int | None = None
    hang: float = 0.0
    close: bool = False
    apply: bool = False


def decide(
    faults: Faults, rng: random.Random, references: Sequence[str | None] = ()
) -> Decision:
    """Choose this call's fault, consuming ``fail_next``/``timeout_next`` (caller holds lock)."""
    latency = faults.latency_ms / 1000.0
    for reference in references:
        if reference in faults.stuck_reference:
            return Decision(latency, "stuck", faults.stuck_reference[reference],
                            faults.retry_after)
        scripted = faults.fail_reference.get(reference or "")
        if scripted:
            return Decision(latency, "fail_next", scripted.pop(0), faults.retry_after)
    if faults.down:
        return Decision(latency, "down", 503, faults.retry_after)
    if faults.fail_next:
        return Decision(latency, "fail_next", faults.fail_next.pop(0), faults.retry_after)
    if faults.timeout_next > 0:
        faults.timeout_next -= 1
        close = faults.timeout_mode == "close"
        return Decision(latency, "timeout", 504, None, faults.hang_seconds, close,
                        faults.apply_on_timeout)
    if faults.error_rate > 0 and rng.random() < faults.error_rate:
        status = rng.choice(faults.error_statuses)
        return Decision(latency, "error_rate", status, faults.retry_after)
    return Decision(latency)
