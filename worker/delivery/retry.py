"""Retry policy: exponential backoff with full jitter, capped, honouring Retry-After.

Full jitter (a uniform draw in ``[0, min(cap, base * 2**(n-1))]``) spreads the retries of
many workers after a shared outage instead of synchronising them. A provider's
``Retry-After`` is a floor: we never come back sooner than it asked.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """When to try again after attempt number ``attempt`` failed transiently.

    Parameters:
        base: seconds; the first window is ``[0, base]``.
        cap: seconds; no window grows beyond it.
        max_attempts: provider calls in all, the first included.

    Examples:
        >>> policy = RetryPolicy(base=1, cap=30, max_attempts=3)
        >>> 0 <= policy.delay(1, rng=random.Random(1)) <= 1
        True
        >>> policy.delay(3) is None   # budget spent
        True
        >>> policy.delay(1, retry_after=7.5) >= 7.5
        True
    """

    base: float
    cap: float
    max_attempts: int

    def window(self, attempt: int) -> float:
        """The upper bound of the jitter window after ``attempt`` failures."""
        return min(self.cap, self.base * 2.0 ** max(0, attempt - 1))

    def delay(
        self,
        attempt: int,
        *,
        retry_after: float | None = None,
        rng: random.Random | None = None,
    ) -> float | None:
        """Seconds to wait before the next attempt, or None when the budget is spent."""
        if attempt >= self.max_attempts:
            return None
        drawn = (rng or random).uniform(0, self.window(attempt))
        if retry_after is not None:
            return max(drawn, retry_after)
        return drawn
