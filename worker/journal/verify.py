"""Reading the audit chain back out of Redis, page by page, and verifying it."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import redis

from worker import keys
from worker.contract import AUDIT_FIELD
from worker.journal.chain import BrokenLink

PAGE = 1000


def iter_records(
    client: redis.Redis, stream: str = keys.AUDIT
) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """``(entry id, record)`` for every audit record, oldest first."""
    start = "-"
    while True:
        page: list[tuple[str, dict[str, str]]] = client.xrange(  # type: ignore[assignment]
            stream, min=start, max="+", count=PAGE
        )
        for entry_id, fields in page:
            try:
                record = json.loads(fields.get(AUDIT_FIELD, ""))
            except ValueError:
                record = {"unreadable": True}
            yield entry_id, record if isinstance(record, dict) else {"unreadable": True}
        if len(page) < PAGE:
            return
        start = "(" + page[-1][0]


def verify_stream(client: redis.Redis) -> tuple[int, BrokenLink | None]:
    """Verify the chain held in Redis: from the archived head when records have been
    archived (``worker.ops.retention``), to the chain head (records cut off the end count)."""
    from worker.ops.retention import verify_redis  # retention reads records through us

    report = verify_redis(client)
    return report.in_redis, report.broken
