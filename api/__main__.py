"""``python -m api``: validate settings, then serve with uvicorn on HOST:PORT.

An application that adds its own TaskSets and routes serves itself the same way: ``serve(build)``
with its own ``build(settings) -> FastAPI`` (see examples/reports/).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI

from api.app import create_app
from core.config import Settings, get_settings
from core.errors import ConfigError
from core.logging import configure_logging

# Open connections get this long to finish after SIGTERM; the job drain has its own
# SHUTDOWN_GRACE_S after that. Their sum must stay under the platform's SIGKILL (30 s).
HTTP_DRAIN_S = 5


def serve(build: Callable[[Settings], FastAPI]) -> None:
    """Read settings from the environment (exit 2 naming the bad variable), then serve ``build(settings)``."""
    try:
        settings = get_settings()
        app = build(settings)
    except ConfigError as exc:
        sys.stderr.write(f"herald: {exc}\n")
        raise SystemExit(2) from None
    configure_logging(settings.LOG_LEVEL, settings.LOG_FORMAT)
    uvicorn.run(
        app,
        host=settings.HOST,
        port=settings.PORT,
        timeout_graceful_shutdown=HTTP_DRAIN_S,
        log_level=settings.LOG_LEVEL.lower(),
        log_config=None,  # keep configure_logging's handler: no uvicorn formatter, JSON lines throughout
        proxy_headers=True,
    )


def main() -> None:
    serve(create_app)


if __name__ == "__main__":
    main()
