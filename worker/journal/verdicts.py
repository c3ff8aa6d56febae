"""The last verdict of each verifier of the audit chain, kept in Redis for monitoring.

Whoever walks the chain says how it went here: ``idvcancel audit verify`` (``cli``), the
checkpoint task (``checkpoint``) and the retention task (``retention``, which verifies
what it archives), each run that walked records. The gauges
``idvcancel_audit_verify_ok{by}`` and ``idvcancel_audit_verify_age_seconds{by}``
(``worker.ops.gauges``) read it at scrape time, so an alert sees a failed verification
whichever process ran it. Each verifier keeps its own verdict: a checkpoint run that
found its new records good does not hide a break the CLI found further back.

Key ``idvcancel:audit:verified`` (hash verifier → JSON ``{"ok", "at"}``): a flag and a
time only, never a record's content.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import redis

from worker import keys


@dataclass(frozen=True)
class Verdict:
    """One verifier's last word: whether the chain verified, and when (epoch s)."""

    ok: bool
    at: float


def record(client: redis.Redis, verifier: str, verdict: Verdict) -> None:
    """Replace ``verifier``'s verdict."""
    client.hset(keys.AUDIT_VERIFIED, verifier, json.dumps(
        {"ok": verdict.ok, "at": verdict.at}))


def parse(raw: dict[str, str]) -> dict[str, Verdict]:
    """The verdicts of an ``HGETALL``; an unreadable entry reads as a failure (someone
    wrote it who should not have)."""
    verdicts = {}
    for verifier, text in raw.items():
        try:
            data = json.loads(text)
            verdicts[verifier] = Verdict(data["ok"] is True, float(data["at"]))
        except (ValueError, TypeError, KeyError):
            verdicts[verifier] = Verdict(False, 0.0)
    return verdicts
