"""The arq worker for Herald's delivery tasks.

Run it as its own process with either of::

    arq tasks.worker.WorkerSettings     # arq's CLI
    python -m tasks.worker              # same worker; also rides out a Redis outage instead of exiting

``WorkerSettings`` reads the environment only when arq asks for its contents, not at import time.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import sys
from typing import Any

from arq.connections import RedisSettings

from core.arq_worker import EmbeddedWorker, worker_options
from core.config import Settings, get_settings
from core.errors import ConfigError
from core.logging import configure_logging
from tasks.registry import build_registry
from tasks.resources import delivery_resources

logger = logging.getLogger("herald.worker")


def build_worker_options(settings: Settings) -> dict[str, Any]:
    if settings.REDIS_URL is None:
        raise ConfigError("invalid configuration: REDIS_URL: the worker needs Redis")
    return worker_options(
        build_registry(settings),
        functools.partial(delivery_resources, settings),
        redis_settings=RedisSettings.from_dsn(settings.REDIS_URL.get_secret_value()),
        max_jobs=settings.WORKER_MAX_JOBS,
        poll_delay_s=settings.WORKER_POLL_DELAY_S,
        completion_wait_s=settings.SHUTDOWN_GRACE_S,
        heartbeat_interval_s=settings.HEARTBEAT_INTERVAL_S,
        record_ttl_s=settings.RECORD_TTL_S,
    )


class _FromEnvironment(dict[str, Any]):
    """arq reads a settings dict through ``.items()``; build it then, from the environment."""

    def items(self) -> Any:
        if not self:
            try:
                settings = get_settings()
            except ConfigError as exc:
                sys.stderr.write(f"herald worker: {exc}\n")
                raise SystemExit(2) from None
            configure_logging(settings.LOG_LEVEL)
            self.update(build_worker_options(settings))
        return super().items()


WorkerSettings = _FromEnvironment()


async def serve(settings: Settings) -> None:
    """Run the worker until SIGTERM/SIGINT, then stop picking jobs and finish within SHUTDOWN_GRACE_S."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    worker = EmbeddedWorker(build_worker_options(settings))
    await worker.start()
    await stop.wait()
    logger.info("stopping: finishing running jobs for up to %gs", settings.SHUTDOWN_GRACE_S)
    await worker.stop(settings.SHUTDOWN_GRACE_S)


def main() -> None:
    try:
        settings = get_settings()
        if settings.REDIS_URL is None:
            raise ConfigError("invalid configuration: REDIS_URL: the worker needs Redis")
    except ConfigError as exc:
        sys.stderr.write(f"herald worker: {exc}\n")
        raise SystemExit(2) from None
    configure_logging(settings.LOG_LEVEL)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
