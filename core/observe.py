"""What happens to each attempt, reported to observers (metrics, logs) without the runner knowing them.

Both backends put their observers in the job ctx under ``OBSERVERS_CTX_KEY``; ``run_attempt`` reports
to them when an attempt starts and when it ends. An observer must be quick and must not raise.

A run that ends ``deferred`` (the task raised DeferJob) was given back: it is not an attempt, and the
next run reports the same ``attempt`` number again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

logger = logging.getLogger("herald.jobs")

OBSERVERS_CTX_KEY = "herald_observers"

Phase = Literal["started", "succeeded", "retry", "failed", "skipped", "cancelled", "deferred"]


@dataclass(frozen=True, slots=True)
class AttemptReport:
    job_id: str
    task: str
    attempt: int
    phase: Phase
    duration_s: float = 0.0
    error: str | None = None


Observer = Callable[[AttemptReport], None]


def observers_of(ctx: Mapping[str, Any]) -> Iterable[Observer]:
    found: Iterable[Observer] = ctx.get(OBSERVERS_CTX_KEY, ())
    return found


def report(ctx: Mapping[str, Any], event: AttemptReport) -> None:
    for observer in observers_of(ctx):
        try:
            observer(event)
        except Exception:  # an observer's bug must not change a job's outcome
            logger.exception("observer %r failed", observer)
