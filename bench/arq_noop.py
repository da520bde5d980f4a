"""Raw arq, for the worker-drain baseline: one no-op job, and worker settings tuned like Herald's and arq's defaults.

REDIS_URL=redis://... arq --burst bench.arq_noop.TunedSettings
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from arq.connections import RedisSettings

from core.config import Settings


async def noop(ctx: dict[str, Any]) -> None:
    return None


REDIS = RedisSettings.from_dsn(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
# Herald's shipped defaults, read from its Settings so that the baseline follows them if they change.
HERALD_MAX_JOBS: int = Settings.model_fields["WORKER_MAX_JOBS"].default
HERALD_POLL_DELAY_S: float = Settings.model_fields["WORKER_POLL_DELAY_S"].default


# arq reads a settings class's own __dict__, so each class spells out every setting (no inheritance).
class DefaultSettings:
    functions: ClassVar[list[Any]] = [noop]
    redis_settings = REDIS


class TunedSettings:
    functions: ClassVar[list[Any]] = [noop]
    redis_settings = REDIS
    max_jobs = HERALD_MAX_JOBS
    poll_delay = HERALD_POLL_DELAY_S
