"""Every Redis key idv-cancel uses, in one place.

| key | type | holds |
|---|---|---|
| ``idvcancel:results`` | stream, field ``event`` | one result event per request (contract) |
| ``idvcancel:audit`` | stream, field ``record`` | the hash-chained audit trail (contract) |
| ``idvcancel:audit:head`` | string ``"<seq>:<hash>"`` | the chain's last link (compare-and-set) |
| ``idvcancel:req:<request_id>`` | hash | one request's ledger (``worker.ledger``) |
| ``idvcancel:msg:<task_id>`` | hash | the ledger of a message whose request id could not be read |
| ``idvcancel:dlq`` | hash id → JSON | dead letters: everything needed to replay a request |
| ``idvcancel:dlq:index`` | sorted set, score = ms | dead letters in the order they arrived |
"""

from __future__ import annotations

from worker.contract import AUDIT_STREAM, RESULTS_STREAM

RESULTS = RESULTS_STREAM
AUDIT = AUDIT_STREAM
AUDIT_HEAD = "idvcancel:audit:head"
DLQ = "idvcancel:dlq"
DLQ_INDEX = "idvcancel:dlq:index"


def request_ledger(request_id: str) -> str:
    return f"idvcancel:req:{request_id}"


def message_ledger(task_id: str) -> str:
    return f"idvcancel:msg:{task_id}"
