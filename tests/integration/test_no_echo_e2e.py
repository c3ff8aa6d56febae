"""No echo of personal data: every provider's error answers carry a name and a document
number in their text (the simulator's ``error_detail`` fault: a provider that echoes
what it holds), and none of it reaches a result event, an audit record, a dead letter
or a ledger. What is kept instead is our fixed message per error and the provider's own
error code where it has one.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.integration.conftest import Stack, seed
from worker.local.simulator.apis import PROVIDERS

ECHO = "(holder Zelda Canary-Leakmore, passport PX-CANARY-9876543)"
CANARIES = ("Zelda", "Canary-Leakmore", "PX-CANARY-9876543")


def everything_kept(stack: Stack) -> dict[str, str]:
    """Result events, audit records, dead letters and ledgers, as text."""
    kept = {"results": json.dumps(stack.events()), "audit": json.dumps(stack.audit()),
            "dead letters": json.dumps(stack.redis.hgetall("idvcancel:dlq"))}
    for key in stack.redis.scan_iter("idvcancel:req:*"):
        kept[key] = json.dumps(stack.redis.hgetall(key))
    return kept


def test_provider_error_text_is_never_kept(stack: Stack) -> None:
    # Given every provider echoing personal data in the text of its error answers
    for provider in PROVIDERS:
        stack.sim_client.set_faults(provider, error_detail=ECHO)
    cases: list[tuple[dict[str, Any], str | None, str, str]] = []

    def case(provider: str, status: str | None, outcome: str, code: str,
             action: str = "cancel", **fields: Any) -> None:
        request = stack.request(provider, action, **fields)
        if status is not None:
            extra = {"product": "scan", "region": "us"} if provider == "jumio" else {}
            seed(stack, provider, request["reference"], status, **extra)
        cases.append((request, status, outcome, code))

    case("idpass", "complete", "not_cancellable", "not_cancellable")
    case("idpass", None, "not_found", "not_found")
    case("txcloud", "verified", "not_cancellable", "verification_not_cancellable")
    case("txcloud", None, "not_found", "resource_not_found")
    case("gu1", "approved", "not_cancellable", "not_cancellable", reason="customer withdrew")
    case("jumio", None, "not_found", "not_found", action="delete")
    case("onespan", "completed", "not_cancellable", "not_cancellable")
    case("onespan", None, "not_found", "not_found", action="delete")
    case("idpass", "new", "failed", "provider_server_error")
    stack.sim_client.script_reference("idpass", cases[-1][0]["reference"], [503], sticky=True)
    # When they are carried out
    for request, _, _, _ in cases:
        stack.producer.submit(request)
    events = stack.results([r["request_id"] for r, _, _, _ in cases])
    # Then each ends as the provider's answer says, with its code and our fixed message
    for request, status, outcome, code in cases:
        event = events[request["request_id"]]
        assert (event["outcome"], event["error"]["code"]) == (outcome, code), event
        if outcome == "not_cancellable":
            assert event["error"]["message"] == (
                "the provider will not cancel or delete the session in its current state "
                "(HTTP 400)")
            assert event["provider_status"] == status
    failed = events[cases[-1][0]["request_id"]]
    assert failed["error"]["message"] == (
        "gave up after 4 attempts: the provider had a server error (HTTP 503)")
    # And the personal data the providers echoed is nowhere we keep
    leaks = {where: [c for c in CANARIES if c in text]
             for where, text in everything_kept(stack).items()}
    assert not any(leaks.values()), leaks
    # (though the provider really did send it)
    url = stack.env["IDVCANCEL_IDPASS_BASE_URL"] + "/idpass/cancel"
    answer = httpx.post(url, json={"id": cases[0][0]["reference"]}, headers={
        "Authorization": f"Bearer {stack.env['IDVCANCEL_IDPASS_TOKEN']}"})
    assert answer.status_code == 400 and ECHO in answer.text
