"""Follow the result stream: print each outcome as it is published.

    IDVCANCEL_REDIS_URL=redis://127.0.0.1:6379/0 python docs/examples/follow_results.py
    python docs/examples/follow_results.py REQUEST_ID...   # wait for these, then exit

Every request ends in one result event on ``idvcancel:results`` (a replayed dead letter
gets one more); ``worker.ops.results.follow`` reads it with XREAD BLOCK and filters it.
"""

from __future__ import annotations

import os
import sys

import redis

from worker.ops.results import follow


def main(waiting_for: set[str]) -> int:
    client = redis.Redis.from_url(
        os.environ.get("IDVCANCEL_REDIS_URL", "redis://127.0.0.1:6379/0"),
        decode_responses=True)
    for event in follow(client, from_start=True, block_ms=5000):
        if waiting_for and event["request_id"] not in waiting_for:
            continue
        error = f" ({event['error']['code']})" if event["error"] else ""
        print(f"{event['request_id']} {event['outcome']}{error}", flush=True)
        waiting_for.discard(event["request_id"])
        if not waiting_for and len(sys.argv) > 1:
            return 0  # every id we waited for has its result
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(set(sys.argv[1:])))
    except KeyboardInterrupt:
        sys.exit(0)
