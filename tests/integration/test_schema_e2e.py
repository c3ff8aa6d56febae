"""Every result event the worker emits validates against the JSON Schema that
``idvcancel schema`` publishes: the schema consumers validate with is the worker's truth.

Requests are driven to all seven outcomes, and ``rejected`` along each way there is to
it (a rule, a malformed request, a conflicting reuse of an id, wrong task arguments and
an undecodable body, the last two with ``request_id`` null)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import jsonschema

from tests.integration.conftest import Stack, seed
from tests.integration.harness import send_process, send_raw
from worker.contract import Outcome

IDVCANCEL = str(Path(sys.executable).with_name("idvcancel"))


def published_schema() -> dict[str, Any]:
    """The result event's schema as ``idvcancel schema`` prints it."""
    done = subprocess.run([IDVCANCEL, "schema"], capture_output=True, text=True,
                          timeout=60, check=True)
    schema: dict[str, Any] = json.loads(done.stdout)["result_event"]
    return schema


def test_every_emitted_event_validates_against_the_published_schema(stack: Stack) -> None:
    schema = published_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema)
    # Given requests that end in every outcome
    cancelled = stack.request()
    seed(stack, "idpass", cancelled["reference"], "new")
    deleted = stack.request(provider="onespan", action="delete", reference=str(uuid.uuid4()))
    seed(stack, "onespan", deleted["reference"], "completed")
    not_cancellable = stack.request()
    seed(stack, "idpass", not_cancellable["reference"], "complete")
    not_found = stack.request()
    by_rule = stack.request(action="delete")  # ID Pass has no delete
    seed(stack, "idpass", by_rule["reference"], "new")
    unauthorized = stack.request()
    seed(stack, "idpass", unauthorized["reference"], "new")
    stack.sim_client.script_reference("idpass", unauthorized["reference"], [401], sticky=True)
    failed = stack.request()
    seed(stack, "idpass", failed["reference"], "new")
    stack.sim_client.script_reference("idpass", failed["reference"], [503], sticky=True)
    malformed = {**stack.request(), "provider": "acme"}
    sent = [cancelled, deleted, not_cancellable, not_found, by_rule, unauthorized, failed]
    # When they are submitted (the one that breaks a rule published raw: the producer
    # refuses it), with a malformed request and two without a request id
    for request in sent:
        if request is by_rule:
            send_process(stack.broker_url, request)
        else:
            stack.producer.submit(request)
    send_process(stack.broker_url, malformed)
    send_process(stack.broker_url, None, args=[1, 2, 3])
    send_raw(stack.broker_url, b"\xff\xfe not json at all")
    results = stack.results([r["request_id"] for r in [*sent, malformed]], timeout=60)
    # and the id of a finished request comes back with other fields (a conflict)
    stack.producer.submit({**cancelled, "reference": str(uuid.uuid4())})
    stack.wait_events(lambda e: e["request_id"] == cancelled["request_id"]
                      and e["outcome"] == "rejected")
    anonymous = stack.wait_events(lambda e: e["request_id"] is None, count=2)
    # Then they end as meant
    assert [results[r["request_id"]]["outcome"] for r in sent] == [
        "cancelled", "deleted", "not_cancellable", "not_found", "rejected", "unauthorized",
        "failed"]
    assert results[malformed["request_id"]]["outcome"] == "rejected"
    assert {e["error"]["code"] for e in anonymous} == {"invalid_message",
                                                      "undecodable_message"}
    # And every event on the stream validates, with no field the schema does not name
    events = stack.events()
    assert {e["outcome"] for e in events} == {o.value for o in Outcome}
    assert len(events) == len(sent) + 4
    for event in events:
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                  for e in validator.iter_errors(event)]
        assert not errors, (event, errors)
        assert set(event) <= set(schema["properties"]), event
        assert set(schema["required"]) <= set(event), event
