"""Submit cancels from Python: every request is checked against the contract before it
leaves, so a bad one fails here, not later as ``rejected``.

    IDVCANCEL_REDIS_URL=redis://127.0.0.1:6379/0 python docs/examples/submit.py REFERENCE...

With ``IDVCANCEL_BROKER_URL=amqp://...`` set too, the messages go to RabbitMQ.

Sends one ID Pass cancel per REFERENCE (the first alone, the rest as one pipelined
batch) and prints each request id on its own line.
"""

from __future__ import annotations

import os
import sys
import uuid

from worker import InvalidRequest, Producer


def cancel(reference: str) -> dict[str, str]:
    return {
        "request_id": f"example-{uuid.uuid4().hex[:12]}",  # your idempotency key
        "provider": "idpass",
        "action": "cancel",
        "reference": reference,
        "reason": "applicant withdrew",  # audited: never personal data
        "requested_by": "docs-example",
    }


def main(references: list[str]) -> int:
    producer = Producer(os.environ.get("IDVCANCEL_REDIS_URL", "redis://127.0.0.1:6379/0"),
                        broker_url=os.environ.get("IDVCANCEL_BROKER_URL") or None)
    try:
        # A bad request raises InvalidRequest and sends nothing.
        try:
            producer.submit({**cancel("x"), "provider": "acme"})
        except InvalidRequest as exc:
            print(f"refused before sending: {exc}", file=sys.stderr)

        first, *rest = references
        print(producer.submit(cancel(first)))
        # Many at once: all validated first, then sent over one connection, pipelined.
        for request_id in producer.submit_many([cancel(r) for r in rest]):
            print(request_id)
    finally:
        producer.close()
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1:]))
