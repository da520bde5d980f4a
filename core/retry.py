"""Retry policy: how many attempts, how long each may take, how long to wait between them."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential back-off with jitter and a cap.

    The nominal delay before attempt ``n + 1`` is ``base_delay_s * factor ** (n - 1)``, capped at
    ``max_delay_s``; jitter then shortens it by up to ``jitter`` (a fraction), so that many jobs
    failing together do not retry in lock-step. A server's ``Retry-After`` raises the delay to at
    least what it asked for, still capped at ``max_delay_s``.
    """

    max_attempts: int = 5
    timeout_s: float = 30.0
    base_delay_s: float = 2.0
    max_delay_s: float = 300.0
    factor: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        # written as positive comparisons so that NaN fails them
        if not (self.timeout_s > 0 and 0 <= self.base_delay_s <= self.max_delay_s < math.inf):
            raise ValueError("need timeout_s > 0 and 0 <= base_delay_s <= max_delay_s < inf")
        if not (1 <= self.factor < math.inf and 0 <= self.jitter < 1):
            raise ValueError("need factor >= 1 and 0 <= jitter < 1")

    def nominal_delay_s(self, attempt: int) -> float:
        """Delay after failed attempt ``attempt`` (1-based), before jitter."""
        try:
            grown = self.base_delay_s * self.factor ** (attempt - 1)
        except OverflowError:  # the power is past any float, so past any cap too
            grown = math.inf if self.base_delay_s > 0 else 0.0
        return float(min(self.max_delay_s, grown))

    def delay_s(self, attempt: int, *, retry_after_s: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` before the next one."""
        nominal = self.nominal_delay_s(attempt)
        draw = (rng or random).random()
        delay = nominal * (1 - self.jitter * draw)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.max_delay_s))
        return delay

    def should_retry(self, attempt: int) -> bool:
        return attempt < self.max_attempts

    def span_s(self) -> float:
        """The longest a job can take from its first attempt to giving up (for expiry times)."""
        waits = sum(self.nominal_delay_s(n) for n in range(1, self.max_attempts))
        return waits + self.max_attempts * self.timeout_s
