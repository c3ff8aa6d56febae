"""What a worker logs per request, with a real worker, Redis and the simulator."""

from __future__ import annotations

import json

from tests.integration.conftest import Stack, seed


def test_a_request_that_completes_logs_one_line_with_its_outcome(stack: Stack) -> None:
    """Given a pending ID Pass session
    When its cancel is carried out
    Then the worker's log holds one line for it, our JSON "completed" line with the
    request id and outcome, and none of Celery's own "received"/"succeeded" lines."""
    request = stack.request()
    seed(stack, "idpass", request["reference"], "opened")
    stack.producer.submit(request)
    assert stack.result(request["request_id"])["outcome"] == "cancelled"
    log = "".join(proc.log_text() for proc in stack.workers)
    lines = [line for line in log.splitlines() if request["request_id"] in line]
    assert len(lines) == 1, lines
    line = json.loads(lines[0])
    assert (line["event"], line["outcome"], line["level"]) == ("completed", "cancelled", "info")
    assert " received" not in log and " succeeded in " not in log
